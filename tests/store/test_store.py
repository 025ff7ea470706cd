"""Migrations, the UTC column type and the leader lock, on SQLite and PostgreSQL."""

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from shanzhi.store import Database, open_database
from shanzhi.store.locks import LeaderLock
from shanzhi.store.tables import AppRevision, ApprovalRequest, Base, Event, Site, Token, User


def test_migrations_create_every_table_and_rerun_cleanly(db: Database) -> None:
    names = set(inspect(db.engine).get_table_names())
    assert {"sites", "clouds", "hosts", "vdcs", "apps", "instances", "events", "audit", "tokens"} <= names
    assert {"vdc_subnets", "dr_clusters", "dr_etcd_members", "dr_reports", "metric_points"} <= names
    assert "alembic_version" in names
    db.migrate()  # a second run is a no-op
    with db.engine.connect() as c:
        assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0019"
    assert "mode" in {col["name"] for col in inspect(db.engine).get_columns("inventory_syncs")}
    assert "activation" in {col["name"] for col in inspect(db.engine).get_columns("dr_clusters")}


def test_upgrading_a_0005_database_keeps_its_rows_and_fills_the_new_columns(database_url: str) -> None:
    """Rows written by the previous release survive 0006 and 0007 (SQLite rebuilds tables to add
    columns), and the approvers column is filled from each request's stages."""
    from sqlalchemy import text

    db = open_database(database_url)
    try:
        db.migrate("0005")
        now = datetime.now(UTC)
        stages = '{"stages": [{"approvers": ["role:vdc-admin", "li.wei"]}, {"approvers": ["admin"]}]}'
        with db.engine.begin() as c:
            c.execute(text("INSERT INTO vdcs (id, path, strict, created_at) VALUES (1, 'gz', false, :t)"), {"t": now})
            c.execute(
                text(
                    "INSERT INTO users (id, name, display_name, failed_logins, disabled, created_at) "
                    "VALUES (1, 'li.wei', 'Li Wei', 0, false, :t)"
                ),
                {"t": now},
            )
            c.execute(
                text("INSERT INTO tokens (id, name, token_hash, user_id, created_at) VALUES (1, 'ci', 'h', 1, :t)"),
                {"t": now},
            )
            c.execute(
                text(
                    "INSERT INTO approval_requests (id, vdc_id, app, document, requester, status, reasons, stages, "
                    "stage, comments, outcome, created_at, expires_at) VALUES (1, 1, 'big', '{}', 'zhang.min', "
                    "'pending', '{}', :stages, 0, '{}', '', :t, :t)"
                ),
                {"stages": stages, "t": now},
            )
            c.execute(
                text(
                    "INSERT INTO apps (id, vdc_id, name, spec, generation, deleting, cpu, memory, instances, storage, "
                    "created_at, updated_at) VALUES (1, 1, 'web', '{\"kind\": \"App\"}', 3, false, 0, 0, 0, 0, :t, :t)"
                ),
                {"t": now},
            )
        db.migrate()
        with db.session() as s:
            req = s.get(ApprovalRequest, 1)
            token = s.get(Token, 1)
            user = s.get(User, 1)
            assert req is not None and req.approvers == "|admin|li.wei|role:vdc-admin|" and req.action == "apply"
            assert req.stages["stages"][1]["approvers"] == ["admin"]
            assert token is not None and token.session is False and token.name == "ci"
            assert user is not None and user.display_name == "Li Wei" and user.oidc_subject is None
            # 0009: an existing app's current generation is its first revision
            rev = s.scalar(select(AppRevision))
            assert rev is not None and (rev.app_id, rev.generation, rev.spec) == (1, 3, {"kind": "App"})
    finally:
        db.dispose()


def test_the_migrations_build_exactly_the_orm_schema(db: Database) -> None:
    """A column, index or constraint added to the tables but not to a migration (or the other
    way round) is a drift that only shows on upgraded databases: alembic's autogenerate finds it."""
    with db.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_datetimes_come_back_aware_and_in_utc(db: Database) -> None:
    at = datetime(2026, 5, 1, 8, 0, tzinfo=timezone(timedelta(hours=8)))
    with db.session() as s, s.begin():
        s.add(Event(at=at, reason="R", object_kind="k", object_name="n", message="m"))
    with db.session() as s, s.begin():
        got = s.scalar(select(Event.at))
    assert got == at and got is not None and got.tzinfo == UTC


def test_naive_datetimes_are_refused(db: Database) -> None:
    with pytest.raises(Exception, match="naive datetime"), db.session() as s, s.begin():
        s.add(Site(name="x", created_at=datetime(2026, 1, 1)))


def test_a_failed_transaction_changes_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as s, s.begin():
        s.add(Site(name="half"))
        s.flush()
        raise RuntimeError("boom")
    with db.session() as s, s.begin():
        assert s.scalar(select(Site).where(Site.name == "half")) is None


def test_leader_lock_is_exclusive_within_and_across_processes(database_url: str) -> None:
    a, b = open_database(database_url), open_database(database_url)
    la, lb = LeaderLock(a), LeaderLock(b)
    try:
        assert la.try_acquire()
        assert la.held()
        assert not lb.try_acquire()
        probe = textwrap.dedent(
            f"""
            from shanzhi.store import open_database
            from shanzhi.store.locks import LeaderLock
            print(LeaderLock(open_database({database_url!r})).try_acquire())
            """
        )
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        assert other.stdout.strip() == "False"
        la.release()
        assert lb.try_acquire()
    finally:
        la.release()
        lb.release()
        a.dispose()
        b.dispose()


def test_a_killed_leader_frees_the_lock(database_url: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from shanzhi.store import open_database\n"
            "from shanzhi.store.locks import LeaderLock\n"
            f"lock = LeaderLock(open_database({database_url!r}))\n"
            "assert lock.try_acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        db = open_database(database_url)
        lock = LeaderLock(db)
        assert not lock.try_acquire()
        holder.kill()
        holder.wait()
        import time

        deadline = time.monotonic() + 10
        while not lock.try_acquire():
            assert time.monotonic() < deadline, "lock not freed after the holder died"
            time.sleep(0.1)
        lock.release()
        db.dispose()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()


def test_the_app_list_reads_scopes_and_vdcs_as_subtrees_never_as_patterns(db: Database) -> None:
    """The list's statements are built once per shape with the paths bound: `_` and `%` in a
    filter match themselves, a root's subtree holds its descendants only, and pages follow."""
    from shanzhi.domain.quota import Quota
    from shanzhi.domain.rbac import Scope
    from shanzhi.domain.spec import parse_app
    from shanzhi.services.apps import apply_app, list_apps
    from shanzhi.services.vdcs import create_vdc

    paths = ["gaz", "gaz/a", "gazz", "gbz", "sz", "sz/b", "sz/b/c"]
    with db.session() as s, s.begin():
        for p in paths:
            create_vdc(s, p, Quota())
        for p in paths:
            doc = {"apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": "x", "vdc": p},
                   "spec": {"components": [{"name": "c", "image": "x", "replicas": 2}]}}  # fmt: skip
            apply_app(s, parse_app(doc))

    def listed(vdc: str | None = None, roots: set[str] | None = None, **page: int) -> list[str]:
        scope = Scope(None if roots is None else frozenset(roots))
        with db.reader.connect() as conn, conn.begin():
            return [a.vdc for a in list_apps(conn, vdc, scope, **page)]  # type: ignore[arg-type]

    assert listed() == sorted(paths)
    assert listed("gaz") == ["gaz", "gaz/a"]  # not gazz
    assert listed("sz/b") == ["sz/b", "sz/b/c"]
    assert listed(roots={"gaz", "sz/b", "sz/b/c"}) == ["gaz", "gaz/a", "sz/b", "sz/b/c"]
    assert listed("sz", roots={"gaz", "sz/b"}) == ["sz/b", "sz/b/c"]
    assert listed(roots=set()) == []
    for pattern in ("g_z", "g%", "%", "g_z/%", "ga%"):
        assert listed(pattern) == [] and listed(roots={pattern}) == [], pattern
    assert listed(limit=2, offset=1) == ["gaz/a", "gazz"]
    assert listed("sz", roots={"sz", "gaz"}, limit=2, offset=1) == ["sz/b", "sz/b/c"]
    with db.reader.connect() as conn, conn.begin():
        assert list_apps(conn, "gbz")[0].components == (("c", 2),)
