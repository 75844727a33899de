"""
An example third-party listener for twisted-mailhub: a tiny finger server
(RFC 1288) that says whether a name is a mail account of the hub.

Copy this file into a directory called C{twisted_mailhub/plugins/} (with no
C{__init__.py}) somewhere on C{sys.path}; the hub then offers its options
with no edit of the hub itself:

    mkdir -p ~/mailhub-plugins/twisted_mailhub/plugins
    cp etc/example_listener.py ~/mailhub-plugins/twisted_mailhub/plugins/
    PYTHONPATH=~/mailhub-plugins twistd mailhub --help | grep finger
    PYTHONPATH=~/mailhub-plugins twistd -n mailhub --user alice:secret --finger tcp:8079
    printf 'alice\\r\\n' | nc -N 127.0.0.1 8079

A component is any object providing C{IHubComponent} with the module
contract of the built-in protocols: C{listeners} (each becomes C{--NAME EP}
and C{--no-NAME}), C{option_parameters} / C{option_flags}, an optional
C{check_options(options)}, and C{install(hub)}, which calls
C{hub.listen_each} so that the hub binds the listener with its connection
limits, transcript and TLS like every other. C{order} places it among the
others (built-ins use 10-60).
"""

from twisted.internet import protocol
from twisted.plugin import IPlugin
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python import usage
from zope.interface import implementer

from twisted_mailhub.components import IHubComponent
from twisted_mailhub.hub import ListenerSpec


class Finger(LineOnlyReceiver):
    """
    One query (RFC 1288 §2.3: a name, or an empty line), one answer, close.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 512

    def connectionMade(self):
        self.factory.hub.connection_made(self, "finger")

    def lineReceived(self, line):
        name = line.decode("utf-8", "replace").strip()
        if name.startswith("/W"):  # the "verbose" switch of RFC 1288 §2.5.3
            name = name[2:].strip()
        hub = self.factory.hub
        if not name:
            answer = f"{hub.hostname}: {len(hub.accounts)} mail accounts"
        elif not name.isprintable() or "@" in name:
            answer = "finger: only a local name, please (RFC 1288 §2.5.5: no forwarding)"
        else:
            account = hub.accounts.find(name)
            answer = f"{account.address}: mail account on {hub.hostname}" if account else f"{name}: no such account"
        plan = hub.options.get("finger-plan")
        if plan and name and hub.accounts.find(name):
            answer += f"\r\nPlan: {plan}"
        self.transport.write(answer.encode("utf-8") + b"\r\n")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line):
        self.transport.loseConnection()


class FingerFactory(protocol.Factory):
    protocol = Finger

    def __init__(self, hub):
        self.hub = hub


@implementer(IPlugin, IHubComponent)
class FingerComponent:
    name = "finger"
    order = 90
    listeners = [ListenerSpec("finger", "tcp:8079", "Finger listener (RFC 1288): is NAME a mail account here?")]
    option_parameters = [["finger-plan", None, None, "A line every account's finger answer ends with."]]
    option_flags = []
    option_lists = []

    def check_options(self, options):
        plan = options.get("finger-plan")
        if plan is not None and not plan.isprintable():
            raise usage.UsageError("--finger-plan must be one line of printable text")

    def install(self, hub):
        hub.listen_each(self.listeners, lambda spec: FingerFactory(hub))


finger = FingerComponent()
