"""A loopback stand-in for an OpenStack cloud: exactly the calls the `openstack` provider makes.

No OpenStack runs on this machine. This server answers those calls (through openstacksdk)
with the request and response bodies the OpenStack API reference documents for Keystone v3
(password token with a catalog, `X-Subject-Token`), Nova (version discovery, availability
zones, flavors, servers, volume attachments), Glance v2 (images), Neutron (networks, subnets,
security groups and rules) and Cinder v3 (volumes), keeps everything in memory and plays the
services' part: a server is BUILD, then ACTIVE after 0.3 s; a volume is `creating`, then
`available`, `in-use` while attached and available again when its server is deleted.

    python -m tests.openstack.standin --port P [--password PW]
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

app = FastAPI()
PROJECT = "p-gz-tax"
ZONES = ["gz-az1", "gz-az2"]
FLAVORS = [
    {"id": "f1", "name": "s1.tiny", "vcpus": 1, "ram": 512, "disk": 10},
    {"id": "f2", "name": "s1.small", "vcpus": 1, "ram": 1024, "disk": 20},
    {"id": "f3", "name": "s1.medium", "vcpus": 2, "ram": 4096, "disk": 40},
    {"id": "f4", "name": "s1.large", "vcpus": 4, "ram": 8192, "disk": 80},
]
IMAGES = [
    {"id": "0e8f1c2a-0000-4000-8000-000000000001", "name": "kylin-v10", "status": "active"},
    {"id": "0e8f1c2a-0000-4000-8000-000000000002", "name": "euleros-2.10", "status": "active"},
]
NETWORK = {"id": "8d4c1f4e-0000-4000-8000-00000000000a", "name": "gz-tax-net", "status": "ACTIVE"}
SUBNET = {"id": "8d4c1f4e-0000-4000-8000-00000000000b", "cidr": "10.20.0.0/24", "network_id": NETWORK["id"]}
STATE: dict[str, dict[str, dict[str, Any]]] = {"servers": {}, "volumes": {}, "groups": {}, "rules": {}, "deleted": {}}
LOCK = threading.Lock()
PASSWORD = {"value": "standin-password"}
DIAGNOSTICS = {"refused": False}
_ips = itertools.count(10)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"badRequest": {"code": 400, "message": message}}, 400)


def _not_found(what: str, ident: str) -> JSONResponse:
    return JSONResponse({"itemNotFound": {"code": 404, "message": f"{what} {ident} could not be found."}}, 404)


# -- Keystone v3 ---------------------------------------------------------------------------------


@app.get("/identity")
@app.get("/identity/")
def identity_versions(request: Request) -> JSONResponse:
    v = {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z"}
    v["links"] = [{"rel": "self", "href": f"{base(request)}/identity/v3/"}]  # type: ignore[assignment]
    return JSONResponse({"versions": {"values": [v]}}, status_code=300)


@app.get("/identity/v3")
@app.get("/identity/v3/")
def identity_v3(request: Request) -> dict[str, Any]:
    links = [{"rel": "self", "href": f"{base(request)}/identity/v3/"}]
    return {"version": {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z", "links": links}}


@app.post("/identity/v3/auth/tokens")
async def token(request: Request) -> JSONResponse:
    body = await request.json()
    user = body["auth"]["identity"].get("password", {}).get("user", {})
    if user.get("name") != "shanzhi" or user.get("password") != PASSWORD["value"]:
        err = {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}
        return JSONResponse({"error": err}, status_code=401)
    b = base(request)

    def service(kind: str, name: str, url: str) -> dict[str, Any]:
        ep = {"id": f"e-{kind}", "interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": url}
        return {"type": kind, "name": name, "id": f"s-{kind}", "endpoints": [ep]}

    domain = {"id": "default", "name": "Default"}
    tok = {
        "methods": ["password"],
        "user": {"id": "u-shanzhi", "name": "shanzhi", "domain": domain, "password_expires_at": None},
        "audit_ids": [uuid.uuid4().hex[:22]],
        "expires_at": "2099-01-01T00:00:00.000000Z",
        "issued_at": now(),
        "project": {"id": PROJECT, "name": "gz-tax", "domain": domain},
        "is_domain": False,
        "roles": [{"id": "r-member", "name": "member"}],
        "catalog": [
            service("compute", "nova", f"{b}/compute/v2.1"),
            service("image", "glance", f"{b}/image"),
            service("network", "neutron", f"{b}/network"),
            service("block-storage", "cinder", f"{b}/volume/v3/{PROJECT}"),
            service("volumev3", "cinderv3", f"{b}/volume/v3/{PROJECT}"),
        ],
    }
    return JSONResponse({"token": tok}, status_code=201, headers={"X-Subject-Token": uuid.uuid4().hex})


# -- version discovery of the other services ------------------------------------------------------


def _version(request: Request, path: str, vid: str, **extra: Any) -> dict[str, Any]:
    return {"id": vid, "status": "CURRENT", "links": [{"rel": "self", "href": f"{base(request)}{path}"}], **extra}


@app.get("/compute/")
@app.get("/compute")
def compute_versions(request: Request) -> dict[str, Any]:
    return {"versions": [_version(request, "/compute/v2.1/", "v2.1", version="2.90", min_version="2.1")]}


@app.get("/compute/v2.1/")
@app.get("/compute/v2.1")
def compute_version(request: Request) -> dict[str, Any]:
    return {"version": _version(request, "/compute/v2.1/", "v2.1", version="2.90", min_version="2.1")}


@app.get("/image/")
@app.get("/image")
def image_versions(request: Request) -> JSONResponse:
    return JSONResponse({"versions": [_version(request, "/image/v2/", "v2.16")]}, status_code=300)


@app.get("/network/")
@app.get("/network")
def network_versions(request: Request) -> dict[str, Any]:
    return {"versions": [_version(request, "/network/v2.0/", "v2.0")]}


@app.get("/volume/")
@app.get("/volume")
def volume_versions(request: Request) -> JSONResponse:
    body = {"versions": [_version(request, "/volume/v3/", "v3.0", version="3.70", min_version="3.0")]}
    return JSONResponse(body, status_code=300)


@app.get("/volume/v3/")
@app.get("/volume/v3")
def volume_version(request: Request) -> dict[str, Any]:
    return {"versions": [_version(request, "/volume/v3/", "v3.0", version="3.70", min_version="3.0")]}


# -- Nova -----------------------------------------------------------------------------------------


@app.get("/compute/v2.1/os-availability-zone")
def zones() -> dict[str, Any]:
    return {"availabilityZoneInfo": [{"zoneName": z, "zoneState": {"available": True}, "hosts": None} for z in ZONES]}


@app.get("/compute/v2.1/flavors/detail")
def flavors() -> dict[str, Any]:
    return {
        "flavors": [
            f | {"links": [], "OS-FLV-DISABLED:disabled": False, "os-flavor-access:is_public": True} for f in FLAVORS
        ]
    }


def _server_view(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if not k.startswith("_")}


@app.get("/compute/v2.1/servers/detail")
def servers(request: Request) -> dict[str, Any]:
    """With `changes-since`: only the servers changed since then, deleted ones too (status
    DELETED), as Nova answers; its `updated` is bumped by every change."""
    name = request.query_params.get("name")
    since = request.query_params.get("changes-since")
    with LOCK:
        rows = list(STATE["servers"].values())
        if since is not None:
            cut = datetime.fromisoformat(since.replace("Z", "+00:00"))
            rows = [s for s in rows + list(STATE["deleted"].values()) if datetime.fromisoformat(s["updated"]) >= cut]
        found = [_server_view(s) for s in rows if name is None or s["name"] == name]
    return {"servers": found}


def _touch(s: dict[str, Any]) -> None:
    s["updated"] = now()


@app.post("/compute/v2.1/servers")
async def create_server(request: Request) -> JSONResponse:
    body = (await request.json())["server"]
    flavor = next((f for f in FLAVORS if f["id"] == body.get("flavorRef")), None)
    image = next((i for i in IMAGES if i["id"] == body.get("imageRef")), None)
    if flavor is None or image is None:
        bad = "Flavor" if flavor is None else "Image"
        return _bad(f"{bad} could not be found.")
    zone = body.get("availability_zone") or ZONES[0]
    if zone not in ZONES:
        return JSONResponse(
            {"badRequest": {"code": 400, "message": "The requested availability zone is not available"}}, 400
        )
    sid = str(uuid.uuid4())
    groups = [g.get("name") for g in body.get("security_groups", [{"name": "default"}])]
    server = {
        "id": sid,
        "name": body["name"],
        "status": "BUILD",
        "metadata": body.get("metadata", {}),
        "addresses": {NETWORK["name"]: [{"addr": f"10.20.0.{next(_ips)}", "version": 4, "OS-EXT-IPS:type": "fixed"}]},
        "flavor": {
            "original_name": flavor["name"],
            "vcpus": flavor["vcpus"],
            "ram": flavor["ram"],
            "disk": flavor["disk"],
        },
        "image": {"id": image["id"]},
        "OS-EXT-AZ:availability_zone": zone,
        "OS-EXT-SRV-ATTR:user_data": body.get("user_data"),
        "created": now(),
        "updated": now(),
        "tenant_id": PROJECT,
        "user_id": "u-shanzhi",
        "security_groups": [{"name": g} for g in groups],
        "os-extended-volumes:volumes_attached": [],
        "_born": time.monotonic(),
    }
    with LOCK:
        STATE["servers"][sid] = server
    return JSONResponse({"server": {"id": sid, "links": [], "security_groups": server["security_groups"]}}, 202)


@app.get("/compute/v2.1/servers/{sid}")
def get_server(sid: str) -> JSONResponse:
    with LOCK:
        s = STATE["servers"].get(sid)
        return JSONResponse({"server": _server_view(s)}) if s else _not_found("Instance", sid)


@app.delete("/compute/v2.1/servers/{sid}")
def delete_server(sid: str) -> Response:
    with LOCK:
        s = STATE["servers"].pop(sid, None)
        if s is None:
            return _not_found("Instance", sid)
        STATE["deleted"][sid] = {**s, "status": "DELETED", "updated": now()}
        for v in STATE["volumes"].values():
            if any(a["server_id"] == sid for a in v["attachments"]):
                v["attachments"], v["status"] = [], "available"
    return Response(status_code=204)


@app.get("/compute/v2.1/servers/{sid}/diagnostics")
def server_diagnostics(sid: str) -> JSONResponse:
    """The hypervisor's counters for a server (microversion 2.48's standard format): half a
    core busy, 300 MiB used, 2,000 B/s in and 500 out, 4,096 B/s written, since it was made;
    403 for a project the `diagnostics_refused` flag names (Nova's admin-only default)."""
    with LOCK:
        s = STATE["servers"].get(sid)
        if s is None:
            return _not_found("Instance", sid)
        if DIAGNOSTICS["refused"]:
            message = "Policy doesn't allow os_compute_api:os-server-diagnostics to be performed."
            return JSONResponse({"forbidden": {"code": 403, "message": message}}, 403)
        up = time.monotonic() - s["_born"]
    return JSONResponse(
        {
            "state": "running",
            "driver": "libvirt",
            "hypervisor": "qemu",
            "hypervisor_os": "linux",
            "uptime": int(up),
            "config_drive": False,
            "num_cpus": 2,
            "num_nics": 1,
            "num_disks": 1,
            "cpu_details": [
                {"id": 0, "time": int(up * 0.3e9), "utilisation": 30},
                {"id": 1, "time": int(up * 0.2e9), "utilisation": 20},
            ],
            "nic_details": [
                {
                    "mac_address": "fa:16:3e:00:00:01",
                    "rx_octets": int(up * 2000),
                    "tx_octets": int(up * 500),
                    "rx_drop": 0,
                    "rx_errors": 0,
                    "rx_packets": 0,
                    "rx_rate": None,
                    "tx_drop": 0,
                    "tx_errors": 0,
                    "tx_packets": 0,
                    "tx_rate": None,
                }
            ],
            "disk_details": [
                {
                    "read_bytes": 0,
                    "read_requests": 0,
                    "write_bytes": int(up * 4096),
                    "write_requests": 0,
                    "errors_count": 0,
                }
            ],
            "memory_details": {"maximum": 1024, "used": 300},
        }
    )


@app.post("/compute/v2.1/servers/{sid}/metadata")
async def update_metadata(sid: str, request: Request) -> JSONResponse:
    given = (await request.json())["metadata"]
    with LOCK:
        s = STATE["servers"].get(sid)
        if s is None:
            return _not_found("Instance", sid)
        s["metadata"] = {**s["metadata"], **given}
        _touch(s)
        return JSONResponse({"metadata": dict(s["metadata"])})


@app.post("/compute/v2.1/servers/{sid}/os-volume_attachments")
async def attach(sid: str, request: Request) -> JSONResponse:
    vid = (await request.json())["volumeAttachment"]["volumeId"]
    with LOCK:
        s, v = STATE["servers"].get(sid), STATE["volumes"].get(vid)
        if s is None or v is None:
            return _not_found("Instance" if s is None else "Volume", sid if s is None else vid)
        if v["status"] != "available":
            return JSONResponse(
                {"badRequest": {"code": 400, "message": f"Invalid volume: volume {vid} status must be available"}}, 400
            )
        if v["availability_zone"] != s["OS-EXT-AZ:availability_zone"]:
            return JSONResponse(
                {"badRequest": {"code": 400, "message": "Invalid volume: the volume is in another availability zone"}},
                400,
            )
        device = f"/dev/vd{'bcdefghij'[len(s['os-extended-volumes:volumes_attached'])]}"
        s["os-extended-volumes:volumes_attached"].append({"id": vid, "delete_on_termination": False})
        _touch(s)
        v["status"] = "in-use"
        v["attachments"] = [
            {"server_id": sid, "attachment_id": str(uuid.uuid4()), "device": device, "volume_id": vid, "id": vid}
        ]
    return JSONResponse({"volumeAttachment": {"id": vid, "serverId": sid, "volumeId": vid, "device": device}})


@app.delete("/compute/v2.1/servers/{sid}/os-volume_attachments/{vid}")
def detach(sid: str, vid: str) -> Response:
    with LOCK:
        s, v = STATE["servers"].get(sid), STATE["volumes"].get(vid)
        if s is None or v is None:
            return _not_found("Instance" if s is None else "Volume", sid if s is None else vid)
        attached = s["os-extended-volumes:volumes_attached"]
        if not any(a["id"] == vid for a in attached):
            return _not_found("Volume attachment", vid)
        s["os-extended-volumes:volumes_attached"] = [a for a in attached if a["id"] != vid]
        _touch(s)
        v["attachments"], v["status"] = [], "available"
    return Response(status_code=202)


@app.get("/compute/v2.1/servers/{sid}/os-volume_attachments")
def attachments(sid: str) -> JSONResponse:
    with LOCK:
        s = STATE["servers"].get(sid)
        if s is None:
            return _not_found("Instance", sid)
        out = [a | {"serverId": sid, "volumeId": a["id"]} for a in s["os-extended-volumes:volumes_attached"]]
    return JSONResponse({"volumeAttachments": out})


# -- Glance ---------------------------------------------------------------------------------------


@app.get("/image/v2/images")
def images(request: Request) -> dict[str, Any]:
    name, ident = request.query_params.get("name"), request.query_params.get("id")
    found = [i for i in IMAGES if (name is None or i["name"] == name) and (ident is None or i["id"] == ident)]
    return {
        "images": [i | {"visibility": "public", "created_at": "2026-01-01T00:00:00Z"} for i in found],
        "schema": "/v2/schemas/images",
    }


@app.get("/image/v2/images/{iid}")
def image(iid: str) -> JSONResponse:
    found = next((i for i in IMAGES if i["id"] == iid), None)
    if found is None:
        return JSONResponse({"message": f"No image found with ID {iid}", "code": "404 Not Found"}, 404)
    return JSONResponse(found | {"visibility": "public", "created_at": "2026-01-01T00:00:00Z"})


# -- Neutron --------------------------------------------------------------------------------------


@app.get("/network/v2.0/networks")
def networks(request: Request) -> dict[str, Any]:
    name, ident = request.query_params.get("name"), request.query_params.get("id")
    net = NETWORK | {"subnets": [SUBNET["id"]], "shared": False, "project_id": PROJECT, "tenant_id": PROJECT}
    ok = (name is None or name == NETWORK["name"]) and (ident is None or ident == NETWORK["id"])
    return {"networks": [net] if ok else []}


@app.get("/network/v2.0/networks/{nid}")
def network(nid: str) -> JSONResponse:
    if nid != NETWORK["id"]:
        return JSONResponse(
            {
                "NeutronError": {
                    "type": "NetworkNotFound",
                    "message": f"Network {nid} could not be found.",
                    "detail": "",
                }
            },
            404,
        )
    return JSONResponse({"network": NETWORK | {"subnets": [SUBNET["id"]], "project_id": PROJECT}})


@app.get("/network/v2.0/subnets")
def subnets() -> dict[str, Any]:
    return {"subnets": [SUBNET | {"ip_version": 4, "project_id": PROJECT}]}


@app.get("/network/v2.0/subnets/{sid}")
def subnet(sid: str) -> dict[str, Any]:
    return {"subnet": SUBNET | {"ip_version": 4, "project_id": PROJECT}}


def _group_view(g: dict[str, Any]) -> dict[str, Any]:
    rules = [r for r in STATE["rules"].values() if r["security_group_id"] == g["id"]]
    return g | {"security_group_rules": rules}


@app.get("/network/v2.0/security-groups")
def groups(request: Request) -> dict[str, Any]:
    name = request.query_params.get("name")
    with LOCK:
        return {
            "security_groups": [_group_view(g) for g in STATE["groups"].values() if name is None or g["name"] == name]
        }


@app.post("/network/v2.0/security-groups")
async def create_group(request: Request) -> JSONResponse:
    body = (await request.json())["security_group"]
    g = {
        "id": str(uuid.uuid4()),
        "name": body["name"],
        "description": body.get("description", ""),
        "project_id": PROJECT,
        "tenant_id": PROJECT,
        "tags": [],
    }
    with LOCK:
        STATE["groups"][g["id"]] = g
        return JSONResponse({"security_group": _group_view(g)}, 201)


@app.get("/network/v2.0/security-groups/{gid}")
def get_group(gid: str) -> JSONResponse:
    with LOCK:
        g = STATE["groups"].get(gid)
        return JSONResponse({"security_group": _group_view(g)}) if g else _not_found("Security group", gid)


@app.delete("/network/v2.0/security-groups/{gid}")
def delete_group(gid: str) -> Response:
    with LOCK:
        g = STATE["groups"].get(gid)
        if g is None:
            return _not_found("Security group", gid)
        if any(any(x["name"] == g["name"] for x in s["security_groups"]) for s in STATE["servers"].values()):
            err = {"type": "SecurityGroupInUse", "message": f"Security Group {gid} in use.", "detail": ""}
            return JSONResponse({"NeutronError": err}, 409)
        del STATE["groups"][gid]
        for rid in [r for r, rule in STATE["rules"].items() if rule["security_group_id"] == gid]:
            del STATE["rules"][rid]
    return Response(status_code=204)


@app.post("/network/v2.0/security-group-rules")
async def create_rule(request: Request) -> JSONResponse:
    body = (await request.json())["security_group_rule"]
    rule = {"id": str(uuid.uuid4()), "project_id": PROJECT, "tenant_id": PROJECT, "ethertype": "IPv4", **body}
    with LOCK:
        if rule["security_group_id"] not in STATE["groups"]:
            return _not_found("Security group", rule["security_group_id"])
        STATE["rules"][rule["id"]] = rule
    return JSONResponse({"security_group_rule": rule}, 201)


@app.delete("/network/v2.0/security-group-rules/{rid}")
def delete_rule(rid: str) -> Response:
    with LOCK:
        if STATE["rules"].pop(rid, None) is None:
            return _not_found("Security group rule", rid)
    return Response(status_code=204)


# -- Cinder ---------------------------------------------------------------------------------------


@app.get("/volume/v3/{project}/volumes/detail")
def volumes(project: str, request: Request) -> dict[str, Any]:
    name = request.query_params.get("name")
    with LOCK:
        return {"volumes": [dict(v) for v in STATE["volumes"].values() if name is None or v["name"] == name]}


@app.post("/volume/v3/{project}/volumes")
async def create_volume(project: str, request: Request) -> JSONResponse:
    body = (await request.json())["volume"]
    v = {
        "id": str(uuid.uuid4()),
        "name": body.get("name"),
        "size": int(body["size"]),
        "availability_zone": body.get("availability_zone") or ZONES[0],
        "metadata": body.get("metadata", {}),
        "volume_type": body.get("volume_type") or "__DEFAULT__",
        "status": "available",
        "attachments": [],
        "created_at": now(),
        "bootable": "false",
    }
    with LOCK:
        STATE["volumes"][v["id"]] = v
    return JSONResponse({"volume": v}, 202)


@app.get("/volume/v3/{project}/volumes/{vid}")
def get_volume(project: str, vid: str) -> JSONResponse:
    with LOCK:
        v = STATE["volumes"].get(vid)
        return JSONResponse({"volume": dict(v)}) if v else _not_found("Volume", vid)


@app.delete("/volume/v3/{project}/volumes/{vid}")
def delete_volume(project: str, vid: str) -> Response:
    with LOCK:
        v = STATE["volumes"].get(vid)
        if v is None:
            return _not_found("Volume", vid)
        if v["status"] == "in-use":
            return JSONResponse(
                {"badRequest": {"code": 400, "message": "Invalid volume: Volume status must be available or error"}},
                400,
            )
        del STATE["volumes"][vid]
    return Response(status_code=202)


# -- the services' part, and tests' controls ------------------------------------------------------


def _boot() -> None:
    while True:
        time.sleep(0.1)
        with LOCK:
            for s in STATE["servers"].values():
                if s["status"] == "BUILD" and time.monotonic() - s["_born"] > 0.3:
                    s["status"], s["updated"] = "ACTIVE", now()


@app.post("/_standin/reset")
def reset() -> dict[str, Any]:
    with LOCK:
        for table in STATE.values():
            table.clear()
        DIAGNOSTICS["refused"] = False
    return {}


@app.post("/_standin/diagnostics/refuse")
def refuse_diagnostics() -> dict[str, Any]:
    """Nova's default policy: server diagnostics are for administrators only."""
    with LOCK:
        DIAGNOSTICS["refused"] = True
    return {}


@app.post("/_standin/servers/{sid}/stop")
def stop(sid: str) -> dict[str, Any]:
    with LOCK:
        STATE["servers"][sid]["status"] = "SHUTOFF"
        _touch(STATE["servers"][sid])
    return {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--password", default="standin-password")
    args = ap.parse_args()
    PASSWORD["value"] = args.password
    threading.Thread(target=_boot, daemon=True).start()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
