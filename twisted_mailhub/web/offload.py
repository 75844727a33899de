# -*- test-case-name: tests.test_web_big_messages -*-
"""
The web face's parsing threads: the hub's own (L{twisted_mailhub.offload},
shared with IMAP since s12 so that one small pool bounds what parsing
takes, whichever protocol asks).
"""

from __future__ import annotations

from twisted_mailhub.offload import THREADS, in_thread

__all__ = ["THREADS", "in_thread"]
