"""Shared fixtures: a database on each backend, a data directory whose workloads are stopped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shanzhi.controllers.dr import stop_quorum
from shanzhi.providers.fabric.member import remove_fabric
from shanzhi.providers.local import stop_all_under
from shanzhi.store import Database, open_database
from tests.e2e.harness import Server, stop_everything
from tests.pg import pg_available, throwaway_database

_PG_OK, _PG_WHY = pg_available()
REQUIRE_PG = bool(os.environ.get("SHANZHI_REQUIRE_POSTGRES"))
_DAEMONS = pytest.StashKey[list[Path]]()


def pytest_configure(config: pytest.Config) -> None:
    """libvirtd and virtlogd for the VM tests, started once by the controlling process (not by
    each xdist worker) when this machine has what real VMs need, and stopped at the end."""
    from tests.vm import missing, start_daemons

    if not hasattr(config, "workerinput") and missing() is None:
        config.stash[_DAEMONS] = start_daemons()


def pytest_unconfigure(config: pytest.Config) -> None:
    from tests.vm import stop_daemons

    stop_daemons(config.stash.get(_DAEMONS, []))


_RERUN: list[tuple[str, str]] = []  # (test, why its first try failed), in the controlling process


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.outcome == "rerun":  # pytest-rerunfailures' mark: the try that failed before the rerun
        _RERUN.append((report.nodeid, report.longreprtext))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Why each rerun test failed the first time (the plugin shows only that it was rerun): a
    flaky test's cause, in the CI log where it happened."""
    for nodeid, why in _RERUN:
        terminalreporter.write_sep("-", f"first try of {nodeid}")
        terminalreporter.write_line(why[-3000:])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow end-to-end tests run last."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


def _postgres() -> Iterator[str]:
    """A throwaway PostgreSQL database; skip (or fail, where CI requires it) if none answers."""
    if not _PG_OK:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required but not reachable: {_PG_WHY}")
        pytest.skip(f"PostgreSQL not reachable: {_PG_WHY}")
    with throwaway_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+pysqlite:///{tmp_path / 'shanzhi.db'}"
    else:
        yield from _postgres()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _postgres()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = open_database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory; every local workload started under it is stopped afterwards."""
    d = tmp_path / "data"
    d.mkdir()
    yield d
    stop_all_under(d / "clouds", remove=True)
    stop_quorum(d, remove=True)
    remove_fabric(d)


@pytest.fixture
def server(data_dir: Path) -> Iterator[Server]:
    """A real `shanzhi serve` on SQLite in its own data directory, stopped with all it started
    (modules that need another kind define their own `server`)."""
    s = Server(data_dir)
    yield s
    stop_everything(data_dir, s)
