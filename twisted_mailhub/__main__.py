# -*- test-case-name: tests.test_sighup -*-
"""
C{python3 -m twisted_mailhub ARGS}: C{twistd ARGS} (e.g. C{-n mailhub --data
DIR}), with SIGHUP held from the first line of Python that runs.

C{twistd} imports Twisted before it reaches the hub's plugin, the first
code of the hub it runs (about 0.1 s, 0.5 s on a loaded machine); a SIGHUP
in that time ends the process (L{twisted_mailhub.sighup}). Started this
way, only Python's own start is left before the hold. A SIGHUP held here
is acted on once the hub runs, as one held by the plugin.
"""

import sys

from twisted_mailhub import sighup

sighup.hold()


def main() -> None:
    """Run twistd with this process's arguments."""
    from twisted.scripts.twistd import run

    sys.argv[0] = "twistd"
    run()


if __name__ == "__main__":
    main()
