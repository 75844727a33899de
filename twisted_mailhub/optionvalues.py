# -*- test-case-name: tests.test_option_values -*-
"""
The kinds of value the command line takes, each read by one function that
either returns it or raises L{ValueError} with one line a person can act on:
what the option wants, an example, and what was given (control characters
shown visibly, never a Python repr).

 - L{whole_number} and L{seconds}: the coerces of C{optParameters} rows
   (C{tap._number_rows} puts them on every component's C{int} and
   C{float} rows).
 - L{size} (L{octets}): a size option, C{26214400} or C{25M} alike
   (C{--max-message-size}, C{--quota}, C{--sftp-max-packet}, and
   C{mailhub-admin user add --quota}).
 - L{host_port}: C{HOST:PORT}, C{[IPv6]:PORT} or a bare C{HOST} (with the
   option's default port): C{--smarthost}, C{--dns-server},
   C{--mx-override}. A colon with no port after it (C{host:}) is refused,
   not read as the default port: it is a port left out by mistake.
 - L{host_name}: a DNS name (RFC 1123 §2.1 labels; a U-label through
   IDNA) or an address literal.
 - L{listener}: a listener's strports description, read (files of an
   C{ssl:} one included) without binding anything.
 - L{data_folder}: C{--data}, a folder the hub can make or use.

C{twistd mailhub} raises them as C{usage.UsageError} from option parsing,
and C{mailhub-admin check} parses the same options, so both say the same.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from typing import Any, Callable

from twisted.python import usage

# RFC 1123 §2.1: letters, digits and hyphens, not starting or ending with a
# hyphen, 63 octets at most; "_" is allowed too (service names in the DNS,
# and hosts named so exist on LANs). 253 octets in all (RFC 1035 §2.3.4).
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def shown(value: str, limit: int = 80) -> str:
    """
    C{value} as an error line may show it: control characters visible
    (C{^A}, C{<U+0085>}), at most C{limit} characters; C{nothing} for "".
    """
    from twisted_mailhub.lines import quote

    return quote(value, limit) or "nothing"


#: The largest whole number an option takes: what a C int holds, so every
#: limit, count and size is one the kernel, the libraries and PostgreSQL
#: take as it is (a 10**20 --max-connections was silently "no limit").
MOST = 2**31 - 1

#: The longest time an option takes, in seconds: a year. A timeout or a
#: wait longer than that is a typing slip, and 1e300 s made timers no
#: calendar can show (and a whole number past 1e308 made the reactor's
#: addition fail when the timer was set).
LONGEST = 365 * 86400


def whole_number(name: str, most: int | None = None) -> Callable[[str], int]:
    """
    The coerce of a number option C{--NAME}: a whole number from 0 to
    C{most} (default L{MOST}; L{LONGEST} for a C{--...-timeout}).

    Anything else is a C{usage.UsageError} that names the option and shows
    what was given (not Python's C{invalid literal for int() with base
    10}, which a L{ValueError} here would show); a minus sign is refused
    here, so no limit or count is ever negative.
    """
    if most is None:
        most = LONGEST if name.endswith("-timeout") else MOST

    def coerce(value: str) -> int:
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise usage.UsageError(f"--{name} wants a whole number (0, 1, 2, ...), not {shown(value)}")
        if len(text) > 30 or int(text) > most:
            unit = " seconds (a year)" if most == LONGEST else ""
            raise usage.UsageError(f"--{name} wants a whole number from 0 to {most}{unit}, not {shown(value)}")
        return int(text)

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


#: What a size may say: a whole number of octets, or a number (a decimal
#: fraction allowed) and a multiple of 1024: K, M, G or T, with an
#: optional B or iB after it (K, KB and KiB are all 1024 octets, as
#: C{--quota} always read them), in either case: C{26214400}, C{25M},
#: C{25MB}, C{25MiB}, C{1.5G}, C{100k}; C{500B} is 500 octets.
_SIZE = re.compile(r"(?:(\d+)\s*b?|(\d+(?:\.\d+)?)\s*([kmgt])(?:i?b)?)\Z", re.I)
_MULTIPLES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def shown_size(octets: int) -> str:
    """C{octets} the way a size option may be given: C{16M}, C{1024T}, C{1536} (an exact multiple of 1024 with its letter)."""
    for letter in "TGMK":
        step = _MULTIPLES[letter.lower()]
        if octets >= step and octets % step == 0:
            return f"{octets // step}{letter}"
    return str(octets)


def octets(value: str, least: int = 1, most: int = MOST) -> int:
    """
    The octets a size says (see L{_SIZE}: C{1048576}, C{500M}, C{2GB},
    C{1.5GiB}, C{100k}; binary multiples, 1K = 1024), rounded down to a
    whole octet.

    @raise ValueError: one line starting with C{wants}, naming the forms,
        the range from C{least} to C{most} and what was given; the caller
        puts the option's name in front (C{--max-message-size wants ...}).
    """
    text = str(value).strip()
    found = _SIZE.match(text) if text.isascii() and len(text) <= 40 else None
    number = 0
    if found:
        whole, decimal, letter = found.groups()
        if whole is not None:
            number = int(whole)
        else:
            # Exact arithmetic: 1.1T is no float's rounding of it.
            units, _, fraction = decimal.partition(".")
            step = _MULTIPLES[letter.lower()]
            number = int(units) * step + (int(fraction) * step // 10 ** len(fraction) if fraction else 0)
    if not found or not least <= number <= most:
        raise ValueError(
            f"wants a whole number of octets or a size in K, M, G or T (1K = 1024 octets; B or iB may follow: "
            f"25M, 25MB, 25MiB, 1.5G) from {shown_size(least)} to {shown_size(most)}, not {shown(str(value))}"
        )
    return number


def size(name: str, least: int = 1, most: int = MOST) -> Callable[[str], int]:
    """
    The coerce of a size option C{--NAME} (C{--max-message-size},
    C{--quota}, C{--sftp-max-packet}): L{octets} from C{least} to C{most},
    anything else a C{usage.UsageError} that names the option.
    """

    def coerce(value: str) -> int:
        try:
            return octets(value, least, most)
        except ValueError as e:
            raise usage.UsageError(f"--{name} {e}") from None

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def seconds(name: str) -> Callable[[str], float]:
    """
    The coerce of a time option C{--NAME}: a number of seconds more than 0
    and at most L{LONGEST} (C{90}, C{2.5}); anything else is a
    C{usage.UsageError}.

    C{nan} and C{inf} are refused as well as words and zero: a timer at
    NaN never compares as due (the session never times out, and it
    unsettles the order of every other timer), and "no limit" is not what
    these options offer.
    """

    def coerce(value: str) -> float:
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not (text.isascii() and math.isfinite(number) and 0 < number <= LONGEST):
            raise usage.UsageError(f"--{name} wants a number of seconds more than 0 and at most {LONGEST} (a year), such as 30 or 2.5, not {shown(value)}")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def host_name(host: str) -> str | None:
    """
    Why C{host} cannot be a host to connect to, or L{None} when it can:
    an IPv4 or IPv6 address, or a DNS name of RFC 1123 labels (a U-label
    such as C{exämple.test} through IDNA; a final dot is allowed).
    """
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return "not a host name"
    if not ascii_name or len(ascii_name) > 253:
        return "not a host name"
    if not all(_LABEL.match(label) for label in ascii_name.split(".")):
        return "not a host name (letters, digits, hyphens and dots)"
    return None


def host_port(text: str, default_port: int | None = None, address_only: bool = False) -> tuple[str, int]:
    """
    Read C{HOST:PORT}, C{[IPv6]:PORT}, a bare IPv6 address or a bare
    C{HOST} (C{default_port}, when there is one). With C{address_only}
    the host must be an IP address (a DNS server: a resolver is given
    addresses, as in C{resolv.conf}).

    @return: C{(host, port)}, the host without brackets, port 1-65535.
    @raise ValueError: one line saying what is wrong (without the option's
        name: the caller puts it in front).
    """
    text = text.strip()
    example = "an IP address such as 127.0.0.1:53" if address_only else "HOST:PORT such as mail.example.org:587"
    wants = f"want {example}" + (f", or no :PORT for port {default_port}" if default_port else "")

    def wrong(why: str) -> ValueError:
        from twisted_mailhub.lines import quote

        return ValueError(f'"{quote(text, 80)}": {why}; {wants}')

    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise wrong("a [ without its ] before the port")
        has_port, port = bool(rest), rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        has_port = True
    else:
        host, has_port, port = text, False, ""
    if not host:
        raise wrong("no host")
    if has_port and not port:
        raise wrong("no port after the colon")
    if not has_port:
        if default_port is None:
            raise wrong("no port")
        number = default_port
    elif not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise wrong("the port is a number from 1 to 65535")
    else:
        number = int(port)
    if address_only:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise wrong("the server is given by its IP address, not a name") from None
    else:
        why = host_name(host)
        if why is not None:
            raise wrong(f"{shown(host)} is {why}")
    return host, number


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """
    One network of C{--trusted-networks}: C{10.0.0.0/8}, C{2001:db8::/32},
    or one address (C{10.0.0.7}: that host alone).

    @raise ValueError: one line: not a network, or an address with bits set
        past its prefix (C{10.0.0.1/8} was read as C{10.0.0.0/8}, 16
        million addresses, when the person may have meant one host).
    """
    text = text.strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{shown(text)} is not a network; want ADDRESS/PREFIX such as 10.0.0.0/8 or fd00::/8, or one address") from None
    host = text.partition("/")[0]
    one = f"{host}/{loose.max_prefixlen}"
    raise ValueError(f"{shown(text)} has bits set past its /{loose.prefixlen}: the network is {loose}, one host is {one}")


def networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Comma-separated L{network}s (empty items skipped)."""
    return [network(part) for part in text.split(",") if part.strip()]


def passive_address(text: str) -> str:
    """
    C{--passive-address}: the IPv4 address a PASV reply names (RFC 959
    sends it as h1,h2,h3,h4), one a client can connect to.

    @raise ValueError: one line: not an IPv4 address, or one no client can
        connect to (0.0.0.0, a broadcast or multicast address, 240/4).
    """
    try:
        address = ipaddress.IPv4Address(text.strip())
    except ValueError:
        # "notanip" in every 227 was a reply no client could read.
        raise ValueError(f"wants the IPv4 address clients connect to (PASV can carry no other), not {shown(text)}") from None
    if address.is_unspecified or address.is_multicast or address.is_reserved or address == ipaddress.IPv4Address("255.255.255.255"):
        kind = "any address" if address.is_unspecified else "a multicast address" if address.is_multicast else "a reserved or broadcast address"
        raise ValueError(f"{address} is {kind}, which no client can connect to; want the IPv4 address of this hub that clients reach")
    return str(address)


def listener(description: str) -> Any:
    """
    Read a listener's strports description as the hub will, without
    binding: C{tcp:8025}, C{tcp:25:interface=127.0.0.1}, C{tcp6:...},
    C{unix:/run/x.sock}, C{ssl:...} (whose files are read now), any of
    them but C{ssl:} behind C{haproxy:} (the PROXY header first).

    @return: the endpoint (not listening).
    @raise ValueError: one line: an unknown kind, a port that is not a
        number from 0 to 65535 (0: any free port), an unusable file.
    """
    from twisted.internet import endpoints

    from twisted_mailhub import proxyheader

    why = proxyheader.problem(description)
    if why is not None:
        raise ValueError(f"{shown(description)}: {why}")
    try:
        endpoint = endpoints.serverFromString(None, proxyheader.split(description)[1])
    except OSError as e:
        raise ValueError(f"{shown(description)}: cannot use it: {e.filename + ': ' if e.filename else ''}{e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, IndexError) as e:
        from twisted_mailhub.lines import quote

        why = str(e)
        if "Unknown endpoint type" in why:
            why = f"no such kind of listener: {quote(description.partition(':')[0])}"
        elif "invalid literal for int()" in why:
            why = "the port is a number from 0 to 65535"
        elif "got multiple values" in why and "interface=" in description:
            # tcp:25:interface=::1 splits at every colon
            raise ValueError(f"{shown(description)}: each colon of an IPv6 address in a listener description is escaped: tcp:PORT:interface=\\:\\:1") from None
        raise ValueError(f"{shown(description)}: not a listener description ({quote(why, 120)}); want e.g. tcp:PORT or tcp:PORT:interface=ADDRESS") from None
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ValueError(f"{shown(description)}: the port is a number from 0 to 65535 (0: any free port), not {port}")
    interface = getattr(endpoint, "_interface", None)
    if isinstance(interface, str) and interface:
        try:
            ipaddress.ip_address(interface.partition("%")[0])
        except ValueError:
            # (Twisted binds a name after looking it up; the hub's own
            # addresses are not left to the DNS at start)
            raise ValueError(f"{shown(description)}: interface= takes an IP address of this machine (127.0.0.1, 0.0.0.0, \\:\\:1), not {shown(interface)}") from None
    return endpoint


def data_folder(path: str) -> str:
    """
    C{--data}: a folder that exists, or can be made, and that the hub can
    write in (tried with a folder made and removed at once: as root,
    C{access(2)} says yes to C{/proc/1}). Nothing is left behind. Returns
    the absolute path.

    @raise ValueError: C{path} is empty, or is (or lies under) something
        that is not a folder, or cannot be written in.
    """
    import tempfile

    if not path.strip():
        raise ValueError("--data wants a folder, not nothing")
    absolute = os.path.abspath(path)
    probe = absolute
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        what = "is not a folder" if probe == absolute else f"cannot be made: {probe} is not a folder"
        raise ValueError(f"--data {shown(path, 200)}: {what}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mailhub-probe-", dir=probe))
    except OSError as e:
        where = "" if probe == absolute else f" ({probe})"
        raise ValueError(f"--data {shown(path, 200)}: cannot write in it{where}: {e.strerror or e}") from None
    return absolute


def unnamed_accounts(options: Any, accounts: Any) -> list[str]:
    """
    The options that name an account that is not in C{accounts} (an
    L{twisted_mailhub.accounts.AccountBook}), one line each: C{--catch-all}
    (every stray message would go nowhere) and C{--postmaster} (mail to
    postmaster@ is then refused, which RFC 5321 §4.5.1 forbids).
    C{--teacher} is not here: it may name an account added later, and the
    hub says so in a warning.
    """
    lines = []
    for name in ("catch-all", "postmaster"):
        address = options.get(name)
        if address and accounts.find(address) is None:
            lines.append(f"--{name} {shown(address, 200)}: no such account (add it with --user ADDRESS:PASSWORD)")
    return lines
