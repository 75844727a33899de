# -*- test-case-name: tests.test_ports -*-
"""
Listening ports inside the kernel's ephemeral range.

Linux gives every outgoing TCP connection (and every C{bind} to port 0) a
local port from C{net.ipv4.ip_local_port_range}, 32768-60999 by default.
A listener on a fixed port inside that range (C{--port-base 35000}, or
C{--smtp tcp:40025}) can find the port already taken by some program's
outgoing connection, or the hub's own (relaying, DNS), when the hub
starts or restarts: the listener then fails to bind, now and then, with no
change of configuration. So the hub warns at start (one line for the
listeners C{--port-base} put there, one for each other), unless the port
is reserved (C{net.ipv4.ip_local_reserved_ports}: the
kernel then never hands it out), and C{mailhub-admin check} says so too.
"""

from __future__ import annotations

from typing import Any, Iterable

RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
RESERVED = "/proc/sys/net/ipv4/ip_local_reserved_ports"


def ephemeral_range(path: str = RANGE) -> tuple[int, int] | None:
    """The kernel's ephemeral port range C{(low, high)}, or None where it cannot be read (not Linux)."""
    try:
        with open(path) as f:
            low, high = (int(word) for word in f.read().split()[:2])
    except (OSError, ValueError):
        return None
    return low, high


def reserved_ports(path: str = RESERVED) -> set[int]:
    """The ports reserved from the ephemeral range (C{8080,9148-9150}), an empty set where none or unreadable."""
    ports: set[int] = set()
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return ports
    for item in filter(None, text.split(",")):
        low, _, high = item.strip().partition("-")
        try:
            ports.update(range(int(low), int(high or low) + 1))
        except ValueError:
            continue
    return ports


def tcp_listen_address(description: str) -> tuple[str, str, int] | None:
    """
    C{(kind, interface, port)} of a C{tcp:}, C{tcp6:} or C{ssl:} listener
    description (behind a C{haproxy:} prefix too), read as Twisted's
    strports reads it: C{\\:} escapes a colon (C{tcp6:25:interface=\\:\\:1}),
    C{port=} and C{interface=} may be given by name. The interface is
    C{0.0.0.0} (C{::} for C{tcp6}) when none is given. L{None} for another
    kind (C{unix:}) or a description that does not read (the option
    checks say why).
    """
    from twisted.internet.endpoints import _parse

    try:
        args, named = _parse(description)
    except (ValueError, IndexError):
        return None
    if args[:1] == ["haproxy"]:
        args = args[1:]
    if not args or args[0] not in ("tcp", "tcp6", "ssl"):
        return None
    kind = args[0]
    port = named.get("port", args[1] if len(args) > 1 else "")
    interface = named.get("interface", args[2] if kind != "ssl" and len(args) > 2 else "")
    if not (isinstance(port, str) and port.isascii() and port.isdigit()):
        return None
    return kind, interface or ("::" if kind == "tcp6" else "0.0.0.0"), int(port)


def fixed_port(description: str) -> int | None:
    """The fixed TCP port a C{tcp:}, C{tcp6:} or C{ssl:} endpoint description listens on (None for port 0 or another kind)."""
    address = tcp_listen_address(description)
    if address is None or address[2] == 0:
        return None
    return address[2]


def ephemeral_warnings(listeners: Iterable[tuple[str, str, bool]], port_base: int | None, span: tuple[int, int] | None = None, reserved: set[int] | None = None) -> list[str]:
    """
    What to warn of for listeners C{(name, endpoint description, whether
    --port-base gave it)} whose fixed port is inside the ephemeral range
    C{span} (read from the kernel when not given) and not reserved
    (C{reserved}, read likewise): one line for those C{--port-base} put
    there, one for each other; C{[]} when none is.

    @param port_base: C{--port-base} as given (named in the line), or None.
    """
    span = ephemeral_range() if span is None else span
    if span is None:
        return []
    reserved = reserved_ports() if reserved is None else reserved
    low, high = span
    moved, given = [], []
    for name, description, by_base in listeners:
        port = fixed_port(description)
        if port is None or not low <= port <= high or port in reserved:
            continue
        (moved if by_base else given).append((name, description, port))
    where = (
        f"inside this machine's ephemeral port range {low}-{high} ({RANGE}): the kernel gives those ports "
        "to outgoing connections, so one may hold a port when the hub starts or restarts, and that listener "
        "then fails to bind."
    )
    lower = f" (e.g. --port-base 10000)" if low > 11000 else ""
    lines = []
    if moved:
        names = ", ".join(f"{name} {port}" for name, _, port in moved)
        lines.append(
            f"mailhub: warning: --port-base {port_base} puts {len(moved)} listener{'s' if len(moved) != 1 else ''} ({names}) {where} "
            f"Use a base that keeps them below {low}{lower}, or reserve them: "
            f"sysctl -w net.ipv4.ip_local_reserved_ports={','.join(str(p) for _, _, p in moved)}"
        )
    for name, description, port in given:
        lines.append(
            f"mailhub: warning: --{name} {description} listens on port {port}, {where} "
            f"Use a port below {low}, or reserve it: sysctl -w net.ipv4.ip_local_reserved_ports={port}"
        )
    return lines


def options_warnings(options: Any) -> list[str]:
    """L{ephemeral_warnings} for the listeners C{twistd mailhub} C{options} (parsed) would start."""
    from twisted_mailhub import tap
    from twisted_mailhub.hub import moved_endpoint

    base = options.get("port-base")
    listeners = []
    for component in tap._components():
        for spec in getattr(component, "listeners", []):
            description = options.get(spec.name)
            if options.get(f"no-{spec.name}") or not description:
                continue
            try:
                moved = base is not None and description == moved_endpoint(spec, base) != spec.default
            except ValueError:
                moved = False
            listeners.append((spec.name, description, moved))
    return ephemeral_warnings(listeners, base)
