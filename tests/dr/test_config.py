"""The engines' configuration, as Shanzhi writes it, and Patroni's records, as Shanzhi reads them."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import yaml

from shanzhi.dr.etcd import EtcdMember, member_argv
from shanzhi.dr.patroni import (
    Secrets,
    connection_string,
    etcd_prefix,
    lag_bytes,
    member_config,
    parse_member,
    scope,
    settings_to_mend,
)
from shanzhi.store.tables import DrCluster

SECRETS = Secrets("su", "repl", "app", "etcd-pw")


def config(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "cluster_scope": scope(7, "db"), "member": "tax-db-1", "etcd_hosts": ["127.0.1.1:2379"],
        "secrets": SECRETS, "synchronous": True,
    }  # fmt: skip
    return dict(yaml.safe_load(member_config(**{**base, **kw})))  # type: ignore[arg-type]


def test_a_member_runs_with_rpo_0_rewind_and_its_own_etcd_user() -> None:
    c = config()
    dcs = c["bootstrap"]["dcs"]  # type: ignore[index]
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is True
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (20, 1, 5)
    # the synchronous standby races even when the lost primary wrote WAL no commit waited for
    assert dcs["maximum_lag_on_failover"] == 64 * 2**20
    assert dcs["postgresql"]["use_pg_rewind"] is True and dcs["postgresql"]["parameters"]["wal_log_hints"] == "on"
    assert "standby_cluster" not in dcs
    assert c["etcd3"] == {"hosts": ["127.0.1.1:2379"], "username": "patroni-a7-db", "password": "etcd-pw"}
    pg = c["postgresql"]
    assert pg["listen"] == "${ADDRESS}:${PORT_PG}" and pg["data_dir"] == "${VOLUME_DATA}/pgdata"  # type: ignore[index]
    assert pg["authentication"]["replication"] == {"username": "replicator", "password": "repl"}  # type: ignore[index]
    assert etcd_prefix(scope(7, "db")) == "/shanzhi/a7-db/"


def test_the_remote_member_is_a_standby_cluster_of_its_source_and_not_synchronous() -> None:
    c = config(cluster_scope=scope(7, "db", remote=True), synchronous=False, standby_of=("127.0.2.1", 5433),
               parameters={"work_mem": "8MB"}, restore_from="/srv/wal archive/")  # fmt: skip
    dcs = c["bootstrap"]["dcs"]  # type: ignore[index]
    assert c["scope"] == "a7-db-remote" and dcs["synchronous_mode"] is False
    assert "maximum_lag_on_failover" not in dcs  # Patroni's own 1 MiB where replication is asynchronous
    assert dcs["standby_cluster"]["host"] == "127.0.2.1" and dcs["standby_cluster"]["port"] == 5433
    # what the source no longer keeps comes from the main cluster's WAL archive (the path quoted)
    assert dcs["standby_cluster"]["restore_command"] == "cp '/srv/wal archive'/%f %p"
    assert "archive_command" not in dcs["postgresql"]["parameters"]  # the standby cluster archives nothing
    assert dcs["postgresql"]["parameters"]["work_mem"] == "8MB"


def test_patroni_records_are_read_with_the_leader_key_in_mind() -> None:
    raw = {"conn_url": "postgres://127.0.2.1:43573/postgres", "api_url": "http://127.0.2.1:8008/patroni",
           "state": "running", "role": "master", "timeline": 3, "xlog_location": 5000}  # fmt: skip
    m = parse_member("a", json.dumps(raw))
    assert (m.role, m.host, m.timeline, m.wal_position) == ("primary", "127.0.2.1:43573", 3, 5000)
    r = parse_member("b", json.dumps({"state": "starting", "role": "replica", "xlog_location": 4000}))
    assert r.host is None and r.timeline is None
    assert lag_bytes([m, r], 5000) == {"a": 0, "b": 1000}
    assert lag_bytes([m, r], None) == {"a": 0, "b": None}


def test_the_connection_string_reaches_only_the_writable_member() -> None:
    dsn = connection_string(["127.0.1.1:5432", "127.0.2.1:5432"], "app", "p@ss/word", "ledger")
    assert dsn.startswith("postgresql://app:p%40ss%2Fword@127.0.1.1:5432,127.0.2.1:5432/ledger?")
    assert "target_session_attrs=read-write" in dsn
    assert ":********@" in connection_string(["h:1"], "app", None, "ledger")


def test_an_etcd_member_knows_its_whole_cluster() -> None:
    ms = [EtcdMember("q-a", "127.0.1.1", 2379, 2380), EtcdMember("q-b", "127.0.2.1", 2379, 2380)]
    argv = member_argv(ms[1], ms, "/d", "tok")
    assert argv[argv.index("--initial-cluster") + 1] == "q-a=http://127.0.1.1:2380,q-b=http://127.0.2.1:2380"
    assert argv[argv.index("--listen-client-urls") + 1] == "http://127.0.2.1:2379"


def test_two_data_centres_stay_writable_after_losing_one_but_never_promote_an_async_standby() -> None:
    dcs = config(strict=False)["bootstrap"]["dcs"]  # type: ignore[index]
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is False
    off = config(synchronous=False, strict=True)["bootstrap"]["dcs"]  # type: ignore[index]
    assert off["synchronous_mode"] is False and off["synchronous_mode_strict"] is False


def test_wal_is_archived_whole_once_and_never_overwritten_with_something_else(tmp_path: Path) -> None:
    archive = tmp_path / "arch ive"  # a space: the command quotes the path
    archive.mkdir()
    params = config(archive=str(archive))["bootstrap"]["dcs"]["postgresql"]["parameters"]  # type: ignore[index]
    assert params["archive_mode"] == "on" and params["archive_timeout"] == 60
    assert "archive_mode" not in config()["bootstrap"]["dcs"]["postgresql"]["parameters"]  # type: ignore[index]
    segment = tmp_path / "000000010000000000000001"

    def archive_it() -> int:  # as PostgreSQL runs it: %p the segment's path, %f its name
        cmd = str(params["archive_command"]).replace("%p", str(segment)).replace("%f", segment.name)
        return subprocess.run(["sh", "-c", cmd], check=False).returncode

    segment.write_bytes(b"wal" * 1000)
    assert archive_it() == 0 and (archive / segment.name).read_bytes() == b"wal" * 1000
    assert archive_it() == 0  # the same segment again (a retry): accepted, unchanged
    segment.write_bytes(b"other")
    assert archive_it() != 0 and (archive / segment.name).read_bytes() == b"wal" * 1000
    assert not list(archive.glob("*.part"))


def test_a_restore_in_place_bootstraps_production_from_the_copy_without_a_password_on_its_command() -> None:
    plain = config()
    assert "method" not in plain["bootstrap"]  # type: ignore[operator]  # initdb, as always
    c = config(bootstrap_from=("127.0.0.1", 5999), data_subdir="pgdata-p1")
    boot = c["bootstrap"]
    assert boot["method"] == "clone" and boot["clone"]["keep_existing_recovery_conf"] is False  # type: ignore[index]
    argv = shlex.split(boot["clone"]["command"])  # type: ignore[index]
    assert argv[0] == "/usr/bin/python3" and argv[-2:] == ["127.0.0.1", "5999"]
    assert "repl" not in argv and "pg_basebackup" in argv[2] and "SHANZHI_CLONE_PASSWORD" in argv[2]
    assert c["postgresql"]["data_dir"] == "${VOLUME_DATA}/pgdata-p1"  # type: ignore[index]


def test_members_start_afresh_beside_the_old_data_after_a_rebuild_or_a_restore_in_place() -> None:
    def subdirs(activation: dict[str, object] | None, restore: dict[str, object] | None) -> tuple[str, str]:
        c = DrCluster(activation=activation, restore=restore)
        return c.data_subdir(False), c.data_subdir(True)

    assert subdirs(None, None) == ("pgdata", "pgdata")
    assert subdirs({"generation": 2}, None) == ("pgdata-r2", "pgdata")  # the remote cluster kept its data
    assert subdirs(None, {"count": 1, "state": "succeeded"}) == ("pgdata-p1", "pgdata-p1")  # both started afresh
    assert subdirs({"generation": 2}, {"count": 3, "state": "starting"}) == ("pgdata-r2-p3", "pgdata-p3")
    assert DrCluster(restore={"state": "stopping"}).restoring == "stopping"
    assert DrCluster(restore={"state": "succeeded"}).restoring is None


def test_after_restores_in_place_only_the_data_before_the_latest_is_kept_beside_the_current() -> None:
    def superseded(activation: dict[str, object] | None, count: int) -> tuple[list[str], list[str]]:
        c = DrCluster(activation=activation, restore={"count": count, "state": "succeeded"} if count else None)
        return c.superseded_subdirs(False), c.superseded_subdirs(True)

    assert superseded(None, 0) == ([], [])
    assert superseded(None, 1) == ([], [])  # pgdata-p1 runs, pgdata (before it) kept
    assert superseded(None, 3) == (["pgdata", "pgdata-p1"], ["pgdata", "pgdata-p1"])  # pgdata-p2 kept
    # a rebuilt main cluster's restores never touch the data from before the activation (pgdata)
    assert superseded({"generation": 1}, 2) == (["pgdata-r1"], ["pgdata"])


def test_a_members_wal_fits_its_volume_unless_the_spec_says_otherwise() -> None:
    wal = ("max_wal_size", "min_wal_size", "wal_keep_size", "max_slot_wal_keep_size")
    local = config()["postgresql"]["parameters"]  # type: ignore[index]  # a 1 GiB volume, the default
    assert tuple(local[k] for k in wal) == ("256MB", "64MB", "128MB", "256MB")
    big = config(volume_bytes=100 * 2**30)["postgresql"]["parameters"]  # type: ignore[index]
    assert (big["max_wal_size"], big["wal_keep_size"], big["max_slot_wal_keep_size"]) == ("1024MB", "256MB", "25600MB")
    tiny = config(volume_bytes=64 * 2**20)["postgresql"]["parameters"]  # type: ignore[index]
    assert (tiny["max_wal_size"], tiny["min_wal_size"]) == ("64MB", "32MB")  # PostgreSQL's own floor: 2 segments
    mine = config(parameters={"max_wal_size": "4GB"})
    assert "max_wal_size" not in mine["postgresql"]["parameters"]  # type: ignore[index]
    assert mine["bootstrap"]["dcs"]["postgresql"]["parameters"]["max_wal_size"] == "4GB"  # type: ignore[index]


def test_a_synchronous_cluster_made_before_gets_the_failover_lag_it_would_be_bootstrapped_with() -> None:
    assert settings_to_mend({"synchronous_mode": True, "ttl": 20}) == {"maximum_lag_on_failover": 64 * 2**20}
    assert settings_to_mend({"synchronous_mode": True, "maximum_lag_on_failover": 2**20}) != {}
    assert settings_to_mend({"synchronous_mode": True, "maximum_lag_on_failover": 64 * 2**20}) == {}
    assert settings_to_mend({"synchronous_mode": False}) == {}  # a standby cluster keeps Patroni's default
    assert settings_to_mend({}) == {}
