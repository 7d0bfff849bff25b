"""Network facts shared by the two web services (the judge, the dashboard)."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """Whether `host` only reaches this machine (servers on it need no key; anything else does)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now (for servers that cannot bind port 0 themselves, like Ray Serve's proxy)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bind_error(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port right now (the port is taken, the address is not this
    machine's), None when it can: checked before a server loads anything or prints its address."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
            s.bind(address)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
