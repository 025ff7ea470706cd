"""How a server's work is spread over processes.

One process by default: the API, the controllers and the ledger's publisher together. With
`serve --workers N`, the parent prepares the store once (migrations, bootstrap, demo), starts
the controllers and the ledger's publisher in a process of their own, and uvicorn runs N API
worker processes that only answer requests: the control loop no longer shares a GIL with the
API. Leadership is unchanged: any process may try, one at a time acts (advisory locks).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import threading
from dataclasses import replace
from datetime import timedelta
from typing import Any

from shanzhi.config import Settings
from shanzhi.controllers import ControllerManager, Fleet
from shanzhi.files import secure_data_dir
from shanzhi.ledger.keys import load_or_create, stored_name
from shanzhi.ledger.note import Verifier
from shanzhi.ledger.service import Ledger, Witness
from shanzhi.providers.credentials import CREDENTIALS_KEY
from shanzhi.providers.sandbox import Sandbox
from shanzhi.sealing import Vault
from shanzhi.services.autoscale import Autoscaler
from shanzhi.services.demo import seed_demo, seed_ledger, seed_vm_demo
from shanzhi.services.identity import ensure_bootstrap
from shanzhi.store import Database, open_database

log = logging.getLogger("shanzhi.api")
SETTINGS_ENV = "SHANZHI_WORKER_SETTINGS"
PR_SET_PDEATHSIG = 1


def make_ledger(settings: Settings, db: Database) -> Ledger | None:
    """This server's ledger (not started)."""
    if not settings.ledger:
        return None
    key, platform_key = settings.data_dir / "ledger.key", settings.data_dir / "platform.key"
    # the origin: as given, else the one this log already has (it never changes), else the
    # server's URL prefix without its scheme, as C2SP tlog-checkpoint recommends
    origin = settings.ledger_origin or stored_name(key) or settings.base_url.split("://", 1)[1] + "/api/v1/ledger"
    signer = load_or_create(key, origin)
    platform = load_or_create(platform_key, stored_name(platform_key) or origin.split("/", 1)[0] + "/platform")
    witnesses = [Witness(url, Verifier.decode(vkey)) for url, vkey in settings.witnesses]
    quorum = settings.witness_quorum if settings.witness_quorum is not None else len(witnesses) // 2 + bool(witnesses)
    ledger = Ledger(db, signer, platform=platform, witnesses=witnesses, quorum=quorum)
    log.info("ledger %s: %d entries, log key %s", ledger.origin, ledger.log.size, signer.verifier.encode())
    return ledger


def prepare(settings: Settings, db: Database) -> None:
    """Once per start, before anything serves: the data dir's modes, migrations, the bootstrap
    administrators, the keys, the demo world."""
    tightened = secure_data_dir(settings.data_dir)
    if tightened:
        log.warning("data dir: took group/other access away from %d paths (e.g. %s)", len(tightened), tightened[0])
    sandbox = Sandbox.for_data_dir(settings.data_dir)
    (log.info if sandbox.isolate and sandbox.cgroups else log.warning)("local clouds: %s", sandbox.describe())
    db.migrate()
    with db.session() as s, s.begin():
        ensure_bootstrap(s, settings.data_dir, timedelta(days=settings.token_max_days))
    Vault.for_data_dir(settings.data_dir)  # the keys are made here, once, never by racing workers
    Vault.for_data_dir(settings.data_dir, CREDENTIALS_KEY)
    ledger = make_ledger(settings, db)
    if settings.demo:
        with db.session() as s, s.begin():
            created = seed_demo(s)
        if created and settings.demo_vms:
            with db.session() as s, s.begin():
                why = seed_vm_demo(s)
            if why is None:
                log.info("demo: a libvirt cloud (vm-huangpu) runs records-db, a VM with a volume")
            else:
                log.warning("demo: no VM cloud, this machine cannot run VMs here: %s", why)
        if ledger is not None:
            seed_ledger(ledger, settings.data_dir)


def controllers(db: Database, fleet: Fleet, settings: Settings) -> ControllerManager:
    """The controller manager, with the use cases that run in its leader loop (the autoscaler)."""
    manager = ControllerManager.for_settings(db, fleet, settings)
    scaler = Autoscaler(db, lambda: dict(manager.metrics.latest), lambda: manager.metrics.rounds)
    manager.add_pass(scaler.run_once)
    return manager


def run_controllers(settings: Settings) -> None:
    """The body of the controller process: reconcile, housekeeping and the ledger's publisher,
    until SIGTERM (or the parent's death)."""
    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    db = open_database(settings.database_url)
    manager = controllers(db, Fleet(settings.data_dir), settings)
    ledger = make_ledger(settings, db)
    if ledger is not None:
        ledger.start(sequence=False, publish=True)
    manager.start()
    log.info("controllers up in process %d", os.getpid())
    stop.wait()
    manager.stop()  # stops reconciling; workloads keep running by design
    if ledger is not None:
        ledger.stop()
    db.dispose()


def worker_settings(settings: Settings) -> dict[str, str]:
    """The environment that hands an API worker its settings (it neither prepares nor controls)."""
    worker = replace(settings, controller=False, publisher=False, prepared=True)
    return {SETTINGS_ENV: base64.b64encode(pickle.dumps(worker)).decode()}


def settings_from_env() -> Settings:
    raw: Any = pickle.loads(base64.b64decode(os.environ[SETTINGS_ENV]))  # written by our own parent
    assert isinstance(raw, Settings)
    return raw


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):  # not Linux: the parent's SIGTERM still stops us
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
