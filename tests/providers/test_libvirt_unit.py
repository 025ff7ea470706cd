"""The libvirt provider against libvirt's own `test:///default` driver (no hypervisor needed):
naming, metadata, idempotent create, adoption, foreign domains, failures, bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install -e '.[vm]')")

from shanzhi.domain.errors import CloudUnavailable, InvalidInput, NotFound  # noqa: E402
from shanzhi.providers import InstanceRequest, load_provider  # noqa: E402
from shanzhi.providers.libvirt.domain_xml import Domain, Meta  # noqa: E402
from shanzhi.providers.libvirt.images import ImageError, ImageStore, _initramfs  # noqa: E402
from shanzhi.providers.libvirt.provider import LibvirtProvider  # noqa: E402


@pytest.fixture
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "images"
    monkeypatch.setenv("SHANZHI_IMAGES_DIR", str(root))
    d = root / "tiny"
    d.mkdir(parents=True)
    sums = {}
    for f in ("vmlinuz", "initrd.gz"):
        (d / f).write_bytes(f.encode())
        sums[f] = hashlib.sha256(f.encode()).hexdigest()
    (d / "manifest.json").write_text(json.dumps({"kind": "tiny", "size": 2, "sha256": sums, "detail": "test"}))
    return root


def provider(data_dir: Path, **opts: object) -> LibvirtProvider:
    name = f"lv{secrets.token_hex(3)}"  # test:///default is one state per process: keep clouds apart
    p = load_provider(
        "libvirt",
        name,
        LibvirtProvider.validate_options({"uri": "test:///default", **opts}),
        data_dir / "clouds" / name,
    )
    assert isinstance(p, LibvirtProvider)
    return p


def req(name: str = "web-1", memory: int = 256 * 2**20, image: str | None = "tiny") -> InstanceRequest:
    return InstanceRequest(
        name=name,
        app="hello",
        component="web",
        vdc="gz",
        host="node-0",
        cpu=1500,
        memory=memory,
        ports=(("http", 8080), ("admin", 9090)),
        image=image,
    )


def test_create_is_idempotent_and_adopted_by_a_new_provider(data_dir: Path, images: Path) -> None:
    p = provider(data_dir)
    a = p.create_instance(req())
    assert a.state == "running" and a.endpoint == f"127.0.0.1:{a.ports['http']}" and set(a.ports) == {"http", "admin"}
    assert a.detail.startswith("domain shz-") and a.detail.endswith(f"-{p.name}-web-1 (running)")
    assert p.create_instance(req()) == a  # the same domain, not a second
    # a restarted server builds a new provider object: it finds its VMs from libvirt alone
    again = load_provider("libvirt", p.name, p.opts, p.state_dir)
    assert [o.name for o in again.list_instances()] == ["web-1"]
    assert again.list_instances()[0].ports == a.ports
    conn = libvirt.open("test:///default")
    dom = conn.lookupByName(a.detail.split()[1])
    xml = dom.XMLDesc()
    assert "<vcpu placement='static'>2</vcpu>" in xml  # 1.5 cpu: two vcpus
    assert "seed.iso" in xml  # name, ports and volumes come from the cloud-init seed, not the command line
    assert "<shanzhi:generation>" not in xml  # a request without a generation writes none
    p.delete_instance("web-1")
    assert p.list_instances() == [] and p.name not in [d.name() for d in conn.listAllDomains()]
    p.delete_instance("web-1")  # gone already: fine


def test_domains_that_are_not_ours_are_never_listed_or_touched(data_dir: Path, images: Path) -> None:
    p = provider(data_dir)
    conn = libvirt.open("test:///default")
    foreign = Domain(
        f"someone-else-{p.name}",
        Meta(p.name, "x", "y", "gz", "web-1", "node-0"),
        1,
        131072,
        "/k",
        "/i",
        "",
        "/log",
        "qemu",
    )
    conn.defineXML(foreign.xml())  # says it is this cloud's, but its name is not one we give
    plain = conn.defineXML(
        f"<domain type='test'><name>plain-{p.name}</name><memory>131072</memory><os><type>hvm</type></os></domain>"
    )
    plain.create()
    assert p.list_instances() == []
    p.inject_failure()  # destroys this cloud's VMs: none of these
    p.recover()
    assert plain.isActive() and conn.lookupByName(f"someone-else-{p.name}").name() == f"someone-else-{p.name}"
    plain.destroy()
    plain.undefine()
    conn.lookupByName(f"someone-else-{p.name}").undefine()


def test_failure_injection_and_recovery(data_dir: Path, images: Path) -> None:
    p = provider(data_dir)
    p.create_instance(req())
    p.inject_failure()
    assert not p.status().healthy and not p.hosts()[0].healthy
    with pytest.raises(CloudUnavailable):
        p.list_instances()
    with pytest.raises(CloudUnavailable):
        p.create_instance(req("web-2"))
    with pytest.raises(InvalidInput, match="only fail as a whole"):
        p.inject_failure("node-0")
    p.recover()
    assert p.status().healthy and [o.state for o in p.list_instances()] == ["exited"]  # destroyed with the cloud
    assert p.create_instance(req()).state == "running"  # started again by name
    p.delete_instance("web-1")


def test_bad_requests_name_the_problem(data_dir: Path, images: Path) -> None:
    p = provider(data_dir)
    with pytest.raises(InvalidInput, match="has no image"):
        p.create_instance(req(image=None))
    with pytest.raises(InvalidInput, match="image nope does not exist; build it with 'shanzhi image build nope'"):
        p.create_instance(req(image="nope"))
    with pytest.raises(InvalidInput, match="at least 128Mi"):
        p.create_instance(req(memory=64 * 2**20))
    (images / "tiny" / "initrd.gz").write_bytes(b"tampered")
    with pytest.raises(InvalidInput, match=r"initrd\.gz does not match its checksum"):
        p.create_instance(req())
    with pytest.raises(InvalidInput, match="accel must be auto, kvm or tcg"):
        LibvirtProvider.validate_options({"accel": "xen"})
    assert p.list_instances() == []
    bad = provider(data_dir, uri="test:///nowhere/at/all.xml")
    assert not bad.status().healthy and "libvirt at test:///nowhere" in bad.status().message
    with pytest.raises(CloudUnavailable):
        bad.list_instances()


def test_the_status_says_how_vms_are_accelerated(data_dir: Path, images: Path) -> None:
    p = provider(data_dir)
    assert p.status().healthy and "not a QEMU driver" in p.status().message
    assert p.read_log is not None
    with pytest.raises(Exception, match="no log for instance web-9"):
        p.read_log("web-9", 100)


def test_metadata_round_trips_and_the_initramfs_is_a_valid_cpio(tmp_path: Path) -> None:
    m = Meta("c<1>", "a&b", "web", "gz/x", "i-1", "node-0", {"http": 4000}, {"http": 8080})
    assert Meta.parse(m.to_xml()) == m
    full = Meta("c", "a", "web", "gz", "i-1", "node-0", {}, {}, "10.0.0.5", owner="s1", generation="7")
    assert Meta.parse(full.to_xml()) == full and Meta.parse(full.to_xml(prefixed=False)) == full
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed (apt-get install cpio): it checks our archive independently")
    archive = _initramfs(Path("/bin/sh"), tmp_path, [])
    listed = subprocess.run(["cpio", "-t"], input=archive, capture_output=True, check=True).stdout.decode().split()
    assert {"init", "bin/busybox", "dev/console", "etc/modules.order", "www"} <= set(listed)
    assert gzip.decompress(gzip.compress(archive, mtime=0)) == archive
    with pytest.raises(ImageError, match="must be lower-case"):
        ImageStore(tmp_path).get("../etc")


needs_tools = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("xorriso") is None,
    reason="qemu-img and xorriso are missing (apt-get install qemu-utils xorriso)",
)


@needs_tools
def test_an_imported_disk_is_checked_stored_as_qcow2_and_booted_through_an_overlay(
    data_dir: Path, images: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "cloud.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "4M"], check=True)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    store = ImageStore(images)
    with pytest.raises(ImageError, match="not the 00"):
        store.import_disk("distro", raw, "00" * 32)
    assert not (images / "distro").exists()
    img = store.import_disk("distro", raw, digest)
    assert img.kind == "disk" and img.disk.exists() and digest[:16] in img.detail
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(img.disk)], capture_output=True, check=True, text=True
        ).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 4 * 2**20
    with pytest.raises(ImageError, match="exists already"):
        store.import_disk("distro", raw)
    with pytest.raises(ImageError, match="no file"):
        store.import_disk("other", tmp_path / "missing.img")
    # a VM of it boots from its own overlay (the image stays untouched), with the seed as the last disk
    p = provider(data_dir, ssh_key="ssh-ed25519 AAAAC3Nza test@shanzhi")
    r = InstanceRequest(
        name="web-1",
        app="hello",
        component="web",
        vdc="gz",
        host="node-0",
        cpu=1000,
        memory=512 * 2**20,
        ports=(("http", 80),),
        image="distro",
        env={"GREETING": "hi there"},
    )
    o = p.create_instance(r)
    xml = libvirt.open("test:///default").lookupByName(o.detail.split()[1]).XMLDesc()
    assert "<boot dev='hd'/>" in xml and "<kernel>" not in xml
    root = next(p._files("web-1").glob("root.qcow2"))
    backing = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(root)], capture_output=True, check=True, text=True
        ).stdout
    )["backing-filename"]
    assert backing == str(img.disk)
    assert "seed.iso" in xml and "<readonly/>" in xml
    out = tmp_path / "seed"
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(p._files("web-1") / "seed.iso"), "-extract", "/", str(out)],
        check=True,
        capture_output=True,
    )
    assert json.loads((out / "meta-data").read_text()) == {"instance-id": "web-1", "local-hostname": "web-1"}
    user = (out / "user-data").read_text()
    assert user.startswith("#cloud-config\n") and "ssh-ed25519 AAAAC3Nza test@shanzhi" in user
    env = (out / "shanzhi.env").read_text()
    assert "SHANZHI_NAME=web-1\n" in env and "PORT_HTTP=80\n" in env and "GREETING='hi there'\n" in env
    seed = str(p._files("web-1") / "seed.iso")
    pvd = subprocess.run(["xorriso", "-indev", seed, "-pvd_info"], check=True, capture_output=True, text=True)
    label = pvd.stdout + pvd.stderr
    assert "cidata" in label
    p.delete_instance("web-1")


def test_a_domain_made_elsewhere_is_listed_adopted_without_restart_and_then_managed(
    data_dir: Path, images: Path
) -> None:
    from shanzhi.domain.errors import Conflict

    p = provider(data_dir)
    conn = libvirt.open("test:///default")
    legacy = conn.defineXML(
        f"<domain type='test'><name>legacy-{p.name}</name><memory>524288</memory><vcpu>2</vcpu>"
        "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<source file='/srv/vm/legacy-{p.name}.qcow2'/><target dev='vda'/></disk></devices></domain>"
    )
    legacy.create()
    before = legacy.ID()
    [found] = [r for r in p.inventory() if r.kind == "server" and r.name == f"legacy-{p.name}"]
    assert (found.id, found.managed, found.instance) == (legacy.UUIDString(), False, None)
    assert found.attrs["cpu"] == 2000 and found.attrs["memory"] == 512 * 2**20
    assert found.attrs["image"] == f"/srv/vm/legacy-{p.name}.qcow2" and found.attrs["host"] == "node-0"

    o = p.adopt(legacy.UUIDString(), req("tax-web-0", image=None))
    assert (o.name, o.state) == ("tax-web-0", "running") and legacy.ID() == before  # not restarted
    assert o.detail.startswith(f"domain legacy-{p.name} ")  # it keeps its name
    assert [x.name for x in p.list_instances()] == ["tax-web-0"]
    assert p.adopt(legacy.UUIDString(), req("tax-web-0", image=None)) == o  # asked again: the same
    with pytest.raises(Conflict, match="already Shanzhi's replica tax-web-0"):
        p.adopt(legacy.UUIDString(), req("other-0", image=None))
    servers = {r.name: r for r in p.inventory() if r.kind == "server"}
    assert servers["tax-web-0"].managed and f"legacy-{p.name}" not in servers  # listed once, as the replica
    # a restarted server finds it; another cloud on the same libvirt does not
    assert [x.name for x in load_provider("libvirt", p.name, p.opts, p.state_dir).list_instances()] == ["tax-web-0"]
    assert provider(data_dir).list_instances() == []
    # healed as itself: started again, never rebuilt from an image
    legacy.destroy()
    assert [(x.name, x.state) for x in p.list_instances()] == [("tax-web-0", "exited")]
    assert p.create_instance(req("tax-web-0", image=None)).state == "running" and legacy.isActive()
    assert p.describe("tax-web-0")["domain"] == f"legacy-{p.name}"
    p.delete_instance("tax-web-0")  # a managed replica now: deleting it removes the domain
    assert f"legacy-{p.name}" not in [d.name() for d in conn.listAllDomains()]
    with pytest.raises(NotFound):
        p.adopt(legacy.UUIDString(), req("tax-web-0", image=None))


def test_adopt_turns_a_found_domain_into_an_app_the_reconciler_keeps(db: object, data_dir: Path, images: Path) -> None:
    from sqlalchemy import select

    from shanzhi.controllers import Fleet, Reconciler
    from shanzhi.controllers.inventory import InventoryController
    from shanzhi.domain.quota import Quota
    from shanzhi.services.clouds import add_cloud
    from shanzhi.services.inventory import adopt
    from shanzhi.services.vdcs import create_vdc
    from shanzhi.store import Database
    from shanzhi.store.tables import Instance

    assert isinstance(db, Database)
    name = f"lv{secrets.token_hex(3)}"
    conn = libvirt.open("test:///default")
    legacy = conn.defineXML(
        f"<domain type='test'><name>erp-{name}</name><memory>524288</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
        f"<devices><disk type='file' device='disk'><source file='/srv/erp-{name}.qcow2'/><target dev='vda'/></disk>"
        "</devices></domain>"
    )
    legacy.create()
    fleet = Fleet(data_dir)
    with db.session() as s, s.begin():
        add_cloud(s, name, "libvirt", "site-a", "gz", {}, {"uri": "test:///default"})
        create_vdc(s, "gz", Quota(cpu=4000, memory=8 * 2**30))
    InventoryController(db, fleet, lambda: True).run_once()
    with db.session() as s, s.begin():
        dry = adopt(s, name, [legacy.UUIDString()], "gz", "erp", "app", dry_run=True, author="t")
        assert dry["spec"]["spec"]["components"] == [
            {"name": "app", "replicas": 1, "image": f"/srv/erp-{name}.qcow2",
             "resources": {"cpu": "1000m", "memory": "512Mi"}, "ports": []}
        ]  # fmt: skip
        adopt(s, name, [legacy.UUIDString()], "gz", "erp", "app", dry_run=False, author="t")
    rec = Reconciler(db, fleet, failover_grace=0)
    try:
        for _ in range(3):
            rec.run_once()
        with db.session() as s, s.begin():
            [row] = s.scalars(select(Instance))
            assert (row.state, row.adopted_from) == ("running", legacy.UUIDString()), row.reason
        assert legacy.isActive() and [d.name() for d in conn.listAllDomains()].count(f"erp-{name}") == 1
    finally:
        rec.close()
        legacy.destroy()
        legacy.undefine()


def test_the_inventory_follows_libvirts_domain_events_between_whole_listings(data_dir: Path, images: Path) -> None:
    from datetime import UTC, datetime

    p = provider(data_dir)
    since = datetime.now(UTC)
    assert p.inventory_since(since) is None  # nothing to compare with yet: list whole
    whole = p.inventory()
    assert {r.kind for r in whole} == {"host"} | ({"server"} if any(r.kind == "server" for r in whole) else set())

    def servers(want: object = None) -> tuple[dict[str, object], tuple[tuple[str, str], ...]]:
        """What the listings by change said until they said `want` (events come a moment after)."""
        import time

        seen: dict[str, object] = {}
        gone: tuple[tuple[str, str], ...] = ()
        for _ in range(50):
            listing = p.inventory_since(since)
            assert listing is not None and listing.partial == {"server"}
            assert any(r.kind == "host" for r in listing.resources)  # hosts are listed whole
            seen |= {r.id: r.state for r in listing.resources if r.kind == "server"}
            gone += listing.gone
            if (seen, gone) == want:
                break
            time.sleep(0.1)
        return seen, gone

    assert servers() == ({}, ())  # nothing happened: no domain looked at
    p.create_instance(req("web-1"))
    conn = libvirt.open("test:///default")
    other = conn.defineXML(
        f"<domain type='test'><name>byhand-{p.name}</name><memory>131072</memory><os><type>hvm</type></os></domain>"
    )
    other.create()
    want = ({"web-1": "running", other.UUIDString(): "running"}, ())
    assert servers(want) == want
    p.adopt(other.UUIDString(), req("web-2", image=None))  # its metadata changes: its id becomes the replica's
    want = ({"web-2": "running"}, (("server", other.UUIDString()),))
    assert servers(want) == want
    p.delete_instance("web-1")
    want = ({}, (("server", "web-1"),))
    assert servers(want) == want
    p.hv._conn.close()  # a new connection may have missed events: the next listing is whole
    assert p.inventory_since(since) is None
    p.delete_instance("web-2")


def test_external_snapshots_freeze_a_layer_restore_by_branching_and_survive_a_crash(
    data_dir: Path, images: Path
) -> None:
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io is not installed (apt-get install qemu-utils)")
    p = provider(data_dir)
    key = "gz_db_pg-0_data"
    disk = p._disk(key, 1 << 20)

    def write(byte: int) -> None:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {byte} 0 4k", str(disk)], check=True,
                       capture_output=True)  # fmt: skip

    def holds(byte: int) -> bool:
        done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {byte} 0 4k", str(disk)],
                              check=False, capture_output=True, text=True)  # fmt: skip
        return done.returncode == 0 and "Pattern verification failed" not in done.stdout

    write(0x41)
    p.snapshot_volume(key, None, "a")
    write(0x42)
    p.snapshot_volume(key, None, "b")
    write(0x43)
    assert holds(0x43) and [s["name"] for s in p.volume_snapshots(key)] == ["a", "b"]
    p.snapshot_volume(key, None, "a", restore=True)
    assert holds(0x41)  # what was written after "a" is gone from the disk ...
    p.snapshot_volume(key, None, "b", restore=True)
    assert holds(0x42)  # ... but "b", taken after it, is still whole: restores branch
    with pytest.raises(InvalidInput, match="already has a snapshot 'a'"):
        p.snapshot_volume(key, None, "a")
    with pytest.raises(InvalidInput, match="has no snapshot 'c'"):
        p.snapshot_volume(key, None, "c", restore=True)
    # a crash between freezing the layer and putting the new one in place: finished at next use
    layer = p._overlay(key, p._snapshot_file(key, "c"))
    disk.rename(p._snapshot_file(key, "c"))
    assert not disk.exists() and layer.exists()
    p._disk(key, 1 << 20)
    assert disk.exists() and not layer.exists() and holds(0x42)
    p.delete_volume(key)
    assert sorted(x.name for x in disk.parent.iterdir()) == []  # the disk, its snapshots, nothing left
    from shanzhi.providers.sandbox import default_workload_root

    shutil.rmtree(default_workload_root(data_dir), ignore_errors=True)
