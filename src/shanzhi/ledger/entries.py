"""Ledger entries: typed, canonical, signed by the department that submits them.

An entry is a C2SP signed note whose text is one line of canonical JSON (keys sorted, no
spaces, UTF-8, integers and strings only: no floats, whose text form is ambiguous) signed
with the submitter's Ed25519 key. A link names an earlier entry by index and leaf hash, so
"responsibility -> catalog entry -> data resource" chains are themselves verifiable.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shanzhi.ledger.note import NoteError, Signer, Verifier, parse, sign, verify
from shanzhi.store.audit import commitment_of

ENTRY_TYPES = ("responsibility", "catalog", "share-request", "share-approval", "access", "audit")
Code = Annotated[str, Field(min_length=1, max_length=128)]
Text = Annotated[str, Field(max_length=4000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Responsibility(_Body):
    """A department's duty (the "three determinations"): what it is responsible for, by what law."""

    code: Code
    title: Text
    duties: list[Text] = Field(default_factory=list)
    basis: Text = ""


class CatalogItem(_Body):
    name: Code
    type: Code = "string"
    description: Text = ""


class Catalog(_Body):
    """A version of a government information resource catalog entry."""

    code: Code
    version: Annotated[int, Field(ge=1)]
    name: Text
    provider: Code
    summary: Text = ""
    items: list[CatalogItem] = Field(default_factory=list)
    share_type: Literal["unconditional", "conditional", "not-shared"]
    share_conditions: Text = ""
    update_cycle: Code = "irregular"


class ShareRequest(_Body):
    catalog: Code
    requester: Code
    purpose: Text
    items: list[Code] = Field(default_factory=list)


class ShareApproval(_Body):
    decision: Literal["approved", "rejected"]
    approver: Code
    conditions: Text = ""


class Access(_Body):
    catalog: Code
    consumer: Code
    records: Annotated[int, Field(ge=0)]
    operation: Literal["pull", "push", "query"] = "pull"


class AuditCommitment(_Body):
    """An audit record, committed to but not disclosed: `commitment` is sha256(salt || the record's
    chain hash). The record and its salt stay in the audit trail, which only the audit
    administrator reads; they check a record against its entry, anyone checks the entry is there."""

    record: Annotated[int, Field(ge=1)]
    commitment: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class LegacyAudit(_Body):
    """Audit entries written before commitments (they held the record in the clear)."""

    actor: Code
    action: Text
    target: Text
    outcome: Code
    source: Code = ""
    role: Text = ""


class Audit(_Body):
    """Either form; new entries are always commitments."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and "commitment" in data:
            AuditCommitment.model_validate(data)
        else:
            LegacyAudit.model_validate(data)
        return data


def audit_commitment(record: int, chain_hash: str, salt: str) -> dict[str, Any]:
    """The body of the ledger entry for audit record `record`."""
    return {"record": record, "commitment": commitment_of(chain_hash, salt)}


BODIES: dict[str, type[_Body]] = {
    "responsibility": Responsibility,
    "catalog": Catalog,
    "share-request": ShareRequest,
    "share-approval": ShareApproval,
    "access": Access,
    "audit": Audit,
}


class Link(_Body):
    rel: Code
    index: Annotated[int, Field(ge=0)]
    leaf: Annotated[str, Field(min_length=44, max_length=44)]  # base64 of the linked leaf hash


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["responsibility", "catalog", "share-request", "share-approval", "access", "audit"]
    submitter: Code
    at: str
    subject: Code
    links: list[Link] = Field(default_factory=list)
    body: dict[str, Any]


class EntryError(ValueError):
    """An entry is malformed, not canonical, or not signed by its submitter."""


def _no_floats(v: Any) -> None:
    if isinstance(v, float):
        raise EntryError("entries may not contain floats (use integers or strings)")
    if isinstance(v, dict):
        for x in v.values():
            _no_floats(x)
    elif isinstance(v, list):
        for x in v:
            _no_floats(x)


def _problem(err: ValidationError) -> EntryError:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return EntryError(f"unknown field '{where}'")
    return EntryError(f"{where}: {first['msg']}")


def canonical(value: Any) -> str:
    _no_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def make_entry(
    signer: Signer,
    type_: str,
    subject: str,
    body: dict[str, Any],
    links: list[tuple[str, int, bytes]] | None = None,
    at: datetime | None = None,
) -> bytes:
    """Build, validate and sign an entry; returns the bytes to append."""
    _no_floats(body)
    model = BODIES.get(type_)
    if model is None:
        raise EntryError(f"unknown entry type {type_!r}; use one of {', '.join(ENTRY_TYPES)}")
    try:
        checked = model.model_validate(body).model_dump(mode="json")
        env = Envelope(
            type=type_,  # type: ignore[arg-type]
            submitter=signer.name,
            at=(at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            subject=subject,
            links=[Link(rel=r, index=i, leaf=base64.b64encode(h).decode()) for r, i, h in links or []],
            body=checked,
        )
    except ValidationError as err:
        raise _problem(err) from None
    return sign(canonical(env.model_dump(mode="json")) + "\n", signer).encode()


def open_entry(data: bytes, keys: Mapping[str, Verifier] | Callable[[str], Verifier | None]) -> Envelope:
    """Check an entry: a signed note from its submitter's registered key, canonical, typed."""
    try:
        note = data.decode()
        parsed = parse(note)
    except (UnicodeDecodeError, NoteError) as err:
        raise EntryError(f"not a signed note: {err}") from None
    text = parsed.text
    try:
        raw = json.loads(text)
    except ValueError:
        raise EntryError("entry text is not JSON") from None
    if not isinstance(raw, dict):
        raise EntryError("entry text is not a JSON object")
    submitter = raw.get("submitter")
    lookup = keys if callable(keys) else keys.get
    key = lookup(submitter) if isinstance(submitter, str) else None
    if key is None:
        raise EntryError(f"submitter {submitter!r} has no registered key")
    try:
        verify(note, key)
    except NoteError as err:
        raise EntryError(f"signature of {submitter}: {err}") from None
    if canonical(raw) + "\n" != text:
        raise EntryError("entry text is not in canonical form")
    try:
        env = Envelope.model_validate(raw)
        BODIES[env.type].model_validate(env.body)
    except ValidationError as err:
        raise _problem(err) from None
    return env
