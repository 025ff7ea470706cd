"""A controller's thread: call `run_once` every `every` seconds while this process leads, sooner
when woken, and log (never die of) a failed round. The inventory, metrics and alarm notifier
threads are each one of these."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class LeaderThread:
    def __init__(self, name: str, run_once: Callable[[], object], is_leader: Callable[[], bool], every: float) -> None:
        self.name = name
        self.run_once = run_once
        self.is_leader = is_leader
        self.every = every
        self.stopped = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = logging.getLogger(f"shanzhi.{name}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self.stopped.is_set():
            if self.is_leader():
                try:
                    self.run_once()
                except Exception:
                    self._log.exception("%s round failed", self.name)
            self._wake.wait(self.every)
            self._wake.clear()
