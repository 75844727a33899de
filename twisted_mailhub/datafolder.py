# -*- test-case-name: tests.test_e2e_data_folder_moved -*-
"""
The data folder (C{--data}) while the hub runs. Its parts (an account's
Maildir, an FTP home) are made when first used; if the folder was moved
or removed under the running hub, making them would make the data
folder again at the old place, and an account's mail or files would be
split between the two. L{must_exist} refuses that instead, and
L{DataFolder} does so for a store that saw its data folder when it was
made (a store made on a fresh path, as an embedding program or a test
does, makes the whole path as before).
"""

from __future__ import annotations

import errno
import os


def must_exist(part_root: str) -> None:
    """
    Raise C{FileNotFoundError} when the data folder holding C{part_root}
    (its parent: C{DATA} for C{DATA/mail} or C{DATA/ftp}) is gone. One
    C{stat}; called before a part is made for an account, not per write.
    """
    data = os.path.dirname(os.path.abspath(part_root))
    if not os.path.isdir(data):
        raise FileNotFoundError(errno.ENOENT, "the data folder is gone (moved or removed while the hub runs)", data)


class DataFolder:
    """
    The data folder holding C{part_root} (its parent), as a store saw it
    when it was made: L{check} refuses to make a part once a folder that
    was there is gone (L{must_exist}); a folder that was not there yet
    (a store made on a fresh path) is made with the part, as before.
    """

    __slots__ = ("part_root", "was_there")

    def __init__(self, part_root: str):
        self.part_root = part_root
        self.was_there = os.path.isdir(os.path.dirname(os.path.abspath(part_root)))

    def check(self) -> None:
        """
        @raise FileNotFoundError: the data folder was there when the store
            was made and is gone now (moved or removed under the hub).
        """
        if self.was_there:
            must_exist(self.part_root)
