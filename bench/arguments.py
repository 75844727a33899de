"""
argparse types for the bench scripts' options: a value that cannot be
used (a folder that does not exist, "32:abc" for a case, a part that is
not one) is refused while the command line is read, in argparse's words
(the usage, then C{error: argument --dir: ...}, exit status 2), before a
server starts, never as a Python traceback from deep in the run or a run
that measures something else.

    parser.add_argument("--dir", type=folder)
    parser.add_argument("--py-spy", type=file_to_write, metavar="FILE")
    parser.add_argument("--case", type=numbers(":", 2), action="append")
    parser.add_argument("--sizes", type=numbers(","), default="10000,100000")
    parser.add_argument("--only", type=names_of("smtp", "store"), default="smtp,store")
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
    folder(os.path.dirname(path) or ".")
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


def numbers(separator: str, count: int | None = None):
    """
    An argparse type: whole numbers of 1 or more joined by C{separator}
    (C{count} of them when given), as a tuple of ints.
    """

    def parse(text: str) -> tuple[int, ...]:
        parts = text.split(separator)
        form = separator.join(["N"] * count) if count else f"N{separator}N..."
        if (count is not None and len(parts) != count) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"{text!s} is not {form} (whole numbers of 1 or more)")
        return tuple(int(p) for p in parts)

    return parse


def names_of(*known: str):
    """An argparse type: some of C{known}, joined by commas, as a tuple in the order given (each once)."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{', '.join(unknown) or text!s}: not one of {', '.join(known)}")
        return names

    return parse
