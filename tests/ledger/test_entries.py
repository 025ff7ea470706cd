from __future__ import annotations

import json

import pytest

from shanzhi.ledger.entries import EntryError, make_entry, open_entry
from shanzhi.ledger.note import Signer, sign

HEALTH = Signer.generate("gz.gov.cn/health")
KEYS = {HEALTH.name: HEALTH.verifier}
CATALOG = {
    "code": "440100-HEALTH-0001",
    "version": 1,
    "name": "Licensed clinics",
    "provider": "gz/health",
    "items": [{"name": "licence_no"}, {"name": "address"}],
    "share_type": "conditional",
    "share_conditions": "for licensing and inspection only",
    "update_cycle": "daily",
}


def test_an_entry_is_a_canonical_note_signed_by_its_department() -> None:
    data = make_entry(
        HEALTH, "catalog", "catalog/440100-HEALTH-0001", CATALOG, links=[("responsibility", 3, bytes(32))]
    )
    env = open_entry(data, KEYS)
    assert (env.type, env.submitter, env.links[0].index) == ("catalog", "gz.gov.cn/health", 3)
    text = data.decode().split("\n\n")[0]
    assert json.loads(text)["body"]["share_type"] == "conditional"
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_a_department_cannot_deny_or_be_impersonated() -> None:
    data = make_entry(HEALTH, "access", "catalog/x", {"catalog": "x", "consumer": "gz/transport", "records": 10})
    with pytest.raises(EntryError, match="does not verify"):
        open_entry(data.replace(b'"records":10', b'"records":99'), KEYS)
    impostor = Signer.generate("gz.gov.cn/health")  # same name, other key
    forged = make_entry(impostor, "access", "catalog/x", {"catalog": "x", "consumer": "y", "records": 1})
    with pytest.raises(EntryError, match="no signature from a trusted key"):
        open_entry(forged, KEYS)
    with pytest.raises(EntryError, match="has no registered key"):
        open_entry(data, {})


def test_bad_entries_are_refused_by_field() -> None:
    with pytest.raises(EntryError, match="share_type"):
        make_entry(HEALTH, "catalog", "c", {**CATALOG, "share_type": "maybe"})
    with pytest.raises(EntryError, match="unknown entry type"):
        make_entry(HEALTH, "gossip", "c", {})
    with pytest.raises(EntryError, match="unknown field 'mood'"):
        make_entry(HEALTH, "audit", "c", {"actor": "a", "action": "b", "target": "t", "outcome": "o", "mood": "x"})
    with pytest.raises(EntryError, match="floats"):
        make_entry(HEALTH, "responsibility", "r", {"code": "c", "title": "t", "duties": [], "basis": "", "x": 1.5})


def test_non_canonical_text_is_refused_even_if_signed() -> None:
    audit = {"actor": "a", "action": "b", "target": "t", "outcome": "o", "source": ""}
    body = {"v": 1, "type": "audit", "submitter": HEALTH.name, "at": "2026-01-01T00:00:00Z", "subject": "s"}
    body |= {"links": [], "body": audit}
    loose = sign(json.dumps(body) + "\n", HEALTH).encode()  # spaces, unsorted keys
    with pytest.raises(EntryError, match="canonical"):
        open_entry(loose, KEYS)
