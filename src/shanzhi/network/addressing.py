"""Address plans: a subnet per VDC per site from one pool, an address per instance.

The pool's first address is the management address: the platform's side of the management link,
from which health checks come. It is never handed to an instance.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from shanzhi.domain.errors import Conflict, InvalidInput

DEFAULT_POOL = "10.240.0.0/16"
DEFAULT_PREFIX = 24


def parse_pool(pool: str, prefix: int = DEFAULT_PREFIX) -> ipaddress.IPv4Network:
    """The pool as a network; refuse what is not IPv4, not a network address, or too small."""
    try:
        net = ipaddress.ip_network(pool, strict=True)
    except ValueError as err:
        raise InvalidInput(f"network pool {pool!r}: {err}", field="network_pool") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidInput(f"network pool {pool} is not IPv4", field="network_pool")
    if not 8 <= prefix <= 29 or net.prefixlen > prefix:
        raise InvalidInput(
            f"a /{prefix} subnet per VDC does not fit in the pool {pool} (a prefix between /{net.prefixlen} and /29)",
            field="network_prefix",
        )
    return net


def management_address(pool: str) -> str:
    return str(next(ipaddress.ip_network(pool).hosts()))


def allocate_subnet(pool: str, prefix: int, taken: Iterable[str]) -> str:
    """The first /prefix subnet of the pool that overlaps nothing taken (nor the management
    address); Conflict when the pool is full."""
    net = parse_pool(pool, prefix)
    used = [ipaddress.ip_network(t) for t in taken]
    mgmt = ipaddress.ip_address(management_address(pool))
    for candidate in net.subnets(new_prefix=prefix):
        if mgmt in candidate or any(candidate.overlaps(u) for u in used):
            continue
        return str(candidate)
    raise Conflict(
        f"the network pool {pool} has no free /{prefix} left ({len(used)} subnets given out); "
        "start the server with a larger --network-pool",
        field="network_pool",
    )


def allocate_address(subnet: str, taken: Iterable[str]) -> str:
    """The lowest usable address of the subnet not taken; Conflict when it is full."""
    used = set(taken)
    for host in ipaddress.ip_network(subnet).hosts():
        if str(host) not in used:
            return str(host)
    raise Conflict(f"subnet {subnet} has no free address left ({len(used)} in use)", field="network")
