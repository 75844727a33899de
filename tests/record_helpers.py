"""
Helpers shared by the lazy-record tests (tests/test_ftp_lazy_record.py,
tests/test_smtp_lazy_record.py): a watcher joining a session record the
way each part of the console does.
"""

from __future__ import annotations


def start_watching(how: str, bus, record, seen: list) -> None:
    """
    Start watching C{record} on C{bus} as C{how} says, appending to C{seen}
    what the watcher is told, (record id, event, line count), and first
    what it would be shown at once: C{"all"} every event of every session
    (the console's live view), C{"list"} the session list's events only,
    C{"session"} one session's events (after its events so far, as the
    session page shows them first), C{"read"} no watcher, a read of the
    record's events and summary (the API).
    """

    def watcher(r, event):
        seen.append((r.id, event, r.summary()["lines"]))

    if how == "all":
        bus.subscribe(watcher)
    elif how == "list":
        bus.subscribe(watcher, lines=False)
    elif how == "session":
        bus.subscribe(watcher, session=record.id)
        seen.append(list(record.events))  # what the console shows first
    else:
        seen.append((list(record.events), record.summary()))
