# -*- test-case-name: tests.test_queue_component -*-
"""
The outbound-mail component of the hub: its options and C{install(hub)},
which sets C{hub.relay} (the L{Relay} the SMTP server hands mail for other
domains to) and starts the queue with the hub.
"""

from __future__ import annotations

import os

from twisted.internet import defer, ssl
from twisted.logger import Logger
from twisted.python import usage

from twisted_mailhub.queue.admin import QueueControl
from twisted_mailhub.queue.mx import Hop, Router, parse_host_port, parse_override
from twisted_mailhub.queue.relay import Relay
from twisted_mailhub.queue.schedule import RetrySchedule, parse_duration
from twisted_mailhub.queue.storage import QueueStorage

log = Logger(namespace="mailhub.relay")

listeners: list = []

option_parameters = [
    ["smarthost", None, None, "Send all outbound mail through this relay, HOST:PORT, instead of looking up MX records."],
    ["smarthost-auth", None, None, "USER:PASSWORD to log in to the smarthost with (AUTH PLAIN or LOGIN; only after STARTTLS, never in the clear)."],
    ["retry-schedule", None, "5m,30m", "Waits between delivery attempts, comma-separated; the last repeats (5m,30m: after 5 minutes, then every 30)."],
    ["queue-lifetime", None, "5d", "How long a message may stay queued before it is bounced (s, m, h, d)."],
    ["delay-warning", None, "4h", "Tell the sender a message is delayed after this long (0: never)."],
    ["dns-server", None, None, "HOST:PORT of the DNS server for MX lookups (default: the system's resolvers)."],
    ["relay-port", None, 25, "The port outbound SMTP connects to on MX hosts.", int],
    ["relay-connections", None, 20, "Most outbound SMTP connections open at once.", int],
    ["queue", None, None, "Where the outbound queue is kept: disk (files under DATA/queue; the default) or postgresql[:DSN] (a table every hub on the database shares; the default with --store postgresql:DSN, whose database it uses)."],
]

option_flags = [
    ["relay-require-tls", None, "Deliver outbound mail only over STARTTLS (default: use it when offered)."],
]

# Repeatable options: each use adds to a list (see tap.py).
option_lists = [
    ["mx-override", "DOMAIN=HOST:PORT: deliver mail for DOMAIN (* for every domain) to HOST:PORT, no DNS; repeatable."],
]


def _host_port(options, name: str, default_port: int, address_only: bool = False):
    """
    C{--NAME}'s (host, port), or L{None} when not given; L{ValueError}
    names the option (C{--smarthost host:} and C{--dns-server x} were
    taken silently: the first as port 25, the second failed every lookup).
    """
    value = options.get(name)
    if value is None:
        return None
    try:
        return parse_host_port(value, default_port, address_only)
    except ValueError as e:
        raise ValueError(f"--{name} {e}") from None


def _config(options):
    """
    The relay settings from the command line; L{ValueError} says what is wrong.
    """
    config = {}
    config["smarthost"] = _host_port(options, "smarthost", 25)
    auth = options.get("smarthost-auth")
    if auth:
        user, sep, password = auth.partition(":")
        if not sep or not user:
            raise ValueError("--smarthost-auth wants USER:PASSWORD")
        if not config["smarthost"]:
            raise ValueError("--smarthost-auth needs --smarthost")
        config["auth"] = (user.encode("utf-8"), password.encode("utf-8"))
    else:
        config["auth"] = None
    def named(option, read, default):
        # the option's name in front of the reader's one line
        try:
            return read(options.get(option) or default)
        except ValueError as e:
            raise ValueError(f"--{option}: {e}") from None

    config["schedule"] = named("retry-schedule", RetrySchedule.parse, "5m,30m")
    config["lifetime"] = named("queue-lifetime", parse_duration, "5d")
    if config["lifetime"] <= 0:
        raise ValueError("--queue-lifetime must be positive")
    config["delay_warning"] = named("delay-warning", parse_duration, "0")
    config["dns_server"] = _host_port(options, "dns-server", 53, address_only=True)
    port = options.get("relay-port")
    port = int(port) if port is not None else 25
    if not 0 < port < 65536:
        raise ValueError("--relay-port must be a TCP port")
    config["port"] = port
    connections = options.get("relay-connections")
    config["connections"] = int(connections) if connections is not None else 20
    if config["connections"] < 1:
        raise ValueError("--relay-connections must be at least 1")
    config["overrides"] = dict(parse_override(o) for o in options.get("mx-override") or [])
    config["require_tls"] = bool(options.get("relay-require-tls"))
    return config


def queue_dsn(queue: str | None, store: str | None) -> str | None:
    """
    The database of a PostgreSQL queue, or L{None} for the disk queue:
    C{--queue postgresql:DSN}, or C{--queue postgresql} / no C{--queue}
    with C{--store postgresql:DSN}.

    @raise ValueError: a C{--queue} that is neither.
    """
    store_dsn = store.partition(":")[2] if store and store.startswith("postgresql:") else None
    if queue is None:
        return store_dsn
    kind, sep, dsn = queue.partition(":")
    if kind in ("disk", "maildir") and not sep:
        return None
    if kind == "postgresql":
        if dsn.strip():
            return dsn
        if store_dsn:
            return store_dsn
        raise ValueError("--queue postgresql needs a DSN (postgresql:DSN) unless --store is postgresql:DSN")
    raise ValueError(f"--queue {queue}: expected disk or postgresql[:DSN]")


def check_options(options) -> None:
    try:
        _config(options)
        queue_dsn(options.get("queue"), options.get("store"))
    except ValueError as e:
        raise usage.UsageError(str(e))


def make_resolver(dns_server, reactor):
    from twisted.names import client

    if dns_server is None:
        return None  # the system's, made on first use
    return client.Resolver(servers=[dns_server], reactor=reactor, timeout=(1, 3, 5))


def install(hub) -> None:
    config = _config(hub.options)
    dsn = queue_dsn(hub.options.get("queue"), hub.options.get("store"))
    directory = os.path.join(hub.data_dir, "queue")
    relay_class = Relay
    if dsn is not None:
        # Shared by every hub on the database (queue/pgqueue.py).
        from twisted_mailhub.cluster.schema import SchemaError
        from twisted_mailhub.queue.pgqueue import PostgresQueueStorage, PostgresRelay
        from twisted_mailhub.store.interfaces import StoreError

        try:
            storage = PostgresQueueStorage(dsn, hub.reactor, owner=f"{hub.hostname}:{os.getpid()}")
        except (StoreError, SchemaError) as e:
            raise SystemExit(f"mailhub: --queue postgresql: {e}") from None
        relay_class = PostgresRelay
    else:
        storage = QueueStorage(directory, reactor=hub.reactor)
    router = Router(
        make_resolver(config["dns_server"], hub.reactor),
        port=config["port"],
        overrides=config["overrides"],
        smarthost=config["smarthost"],
    )

    def is_local(address: str) -> bool:
        return hub.accounts.is_local_domain(address.rpartition("@")[2])

    def deliver_local(address: str, message: bytes):
        account = hub.accounts.find(address)
        if account is None:
            log.info("queue: no local account <{address}>; notice dropped", address=address)
            return defer.succeed(None)
        return hub.store.deliver(account.address, message)

    relay = relay_class(
        hub.reactor,
        storage,
        router,
        hub.hostname,
        deliver_local,
        is_local,
        schedule=config["schedule"],
        lifetime=config["lifetime"],
        delay_warning=config["delay_warning"],
        auth=config["auth"],
        require_tls=config["require_tls"],
        tls_context=ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2),
        # the bus records relay sessions when --transcript or the console
        # wants them (decided per connection: the web installs later)
        transcript=hub.events if hasattr(hub, "events") else hub.transcript,
        max_connections=config["connections"],
    )
    hub.relay = relay
    relay.metrics = getattr(hub, "metrics", None)
    # The control service takes the queue's lock, so it starts first
    # (the PostgreSQL queue has no lock: mailhub-admin queue uses the table).
    if dsn is None:
        hub.add_service(QueueControl(relay, directory, hub.reactor))
    hub.add_service(relay)
    overrides = config["overrides"]
    route = "by MX lookup"
    if config["smarthost"]:
        host, port = config["smarthost"][:2]
        route = f"by smarthost {Hop(host, host, port)}"
    elif "*" in overrides:
        # (what the test kit's hubs run with: say so, not "MX lookup")
        host, port = overrides["*"]
        route = f"for every domain to {Hop(host, host, port)} (--mx-override)"
    elif overrides:
        route = f"by MX lookup, for {', '.join(sorted(overrides))} to its --mx-override"
    log.info("queue: outbound mail {route}, retries {schedule}, lifetime {lifetime}", route=route, schedule=str(config["schedule"]), lifetime=hub.options.get("queue-lifetime"))
