"""Whether a host name or address is this machine's loopback: the one question both the servers'
door (open to their own host only) and the CLI (no token in clear to another host) ask."""

from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=1024)  # asked for every request's client address: parse each once
def is_loopback(host: str) -> bool:
    """'localhost', or an IPv4/IPv6 loopback address (brackets allowed); anything else, names
    included, is not (a name may resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
