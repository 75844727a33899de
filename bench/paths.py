"""
argparse types for the bench scripts' folder and file options: a path
that cannot be used is refused while the command line is read, in
argparse's words (the usage, then C{error: argument --dir: ...}, exit
status 2), before a server starts, never as a Python traceback from
deep in the run.

    parser.add_argument("--dir", type=folder)
    parser.add_argument("--py-spy", type=file_to_write, metavar="FILE")
"""

from __future__ import annotations

import argparse
import os


def folder(path: str) -> str:
    """
    C{path} when it is an existing folder this user may make files in;
    else L{argparse.ArgumentTypeError} saying which of the three it is not.
    """
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"{path} does not exist (make the folder first)")
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {path} (permission denied)")
    return path


def file_to_write(path: str) -> str:
    """
    C{path} when a file can be written there: its folder exists and may
    be written, and it is not itself a folder; else
    L{argparse.ArgumentTypeError}.
    """
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a folder; name a file in it")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"the folder {parent} does not exist (make it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {parent} (permission denied)")
    return path


def source_tree(path: str) -> str:
    """
    C{path} when it is the root of a twisted-mailhub tree (a checkout or
    a C{git worktree} of another commit: it holds C{twisted_mailhub/}),
    else L{argparse.ArgumentTypeError}.
    """
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is not a folder (give a checkout's root, e.g. one made with git worktree add)")
    if not os.path.isfile(os.path.join(path, "twisted_mailhub", "__init__.py")):
        raise argparse.ArgumentTypeError(f"{path} holds no twisted_mailhub/ (give a checkout's root)")
    return path
