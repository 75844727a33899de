# -*- test-case-name: tests.test_testing -*-
"""
Compiled code of this package for the hubs one test run starts, where
Python is told to write none (C{PYTHONDONTWRITEBYTECODE=1}, as many CI
containers set it, with a checkout on C{PYTHONPATH}).

Why: such a hub compiles every module of C{twisted_mailhub} from source at
each start (about 110 modules; 0.6 s of CPU on a 2-core machine, more than
the rest of its start-up), and a suite that takes the C{mailhub} fixture
in many tests starts many hubs. C{sys.pycache_prefix} is no answer: it
moves the cache of every module, so the first hub would compile all of
Twisted too, whose installed C{.pyc} files it would no longer read.

How: L{twisted_mailhub.testing.Mailhub} gives its hub
C{MAILHUB_BYTECODE_CACHE=DIR}, a temp folder of the test process (removed
when that process exits). The package's C{__init__} then calls L{install}:
modules under this package's folder are loaded by L{CachingLoader}, which
keeps their code in C{DIR} (never beside the sources, which is what the
variable asks for); every other module loads as before.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import marshal
import os
import struct
import sys

ENVIRONMENT_VARIABLE = "MAILHUB_BYTECODE_CACHE"

# The package's own folder: only its modules are loaded here (where it is
# installed, its parent is site-packages, with everyone's modules).
_ROOT = os.path.dirname(os.path.abspath(__file__))


class CachingLoader(importlib.machinery.SourceFileLoader):
    """
    A source loader that keeps compiled code in the folder C{cache}
    rather than in C{__pycache__}: one file per source path, named by a
    hash of it, headed by the interpreter's magic number and the source's
    modification time and size (in whole seconds and octets, as a C{.pyc}
    file is); a changed source is compiled again.
    """

    cache = ""

    def get_code(self, fullname: str):
        source_path = self.get_filename(fullname)
        try:
            st = os.stat(source_path)
        except OSError:
            return super().get_code(fullname)
        header = importlib.util.MAGIC_NUMBER + struct.pack("<III", 0, int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)
        cached = os.path.join(self.cache, hashlib.sha256(source_path.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".pyc")
        try:
            with open(cached, "rb") as f:
                data = f.read()
            if data[: len(header)] == header:
                return marshal.loads(data[len(header):])
        except (OSError, ValueError, EOFError, TypeError):
            pass
        code = self.source_to_code(self.get_data(source_path), source_path)
        temporary = f"{cached}.{os.getpid()}.tmp"
        try:
            with open(temporary, "wb") as f:
                f.write(header + marshal.dumps(code))
            os.replace(temporary, cached)  # hubs starting side by side see a whole file or none
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        return code


def install(cache: str) -> None:
    """
    Load this package's modules (C{.py} files under its folder) with
    a L{CachingLoader} whose folder is C{cache} (a folder that exists; if
    it does not, nothing changes). Other folders are left to Python's own
    finders. Safe to call twice.
    """
    if not cache or not os.path.isdir(cache):
        return
    loader = type("MailhubCachingLoader", (CachingLoader,), {"cache": cache})
    hook = importlib.machinery.FileFinder.path_hook((loader, importlib.machinery.SOURCE_SUFFIXES))

    def ours(path: str):
        folder = os.path.abspath(path or ".")
        if folder != _ROOT and not folder.startswith(_ROOT + os.sep):
            raise ImportError("not in the mailhub package")
        return hook(path)

    ours.mailhub_bytecode_cache = True  # type: ignore[attr-defined]
    if any(getattr(h, "mailhub_bytecode_cache", False) for h in sys.path_hooks):
        return
    sys.path_hooks.insert(0, ours)
    for path in list(sys.path_importer_cache):
        folder = os.path.abspath(path or ".")
        if folder == _ROOT or folder.startswith(_ROOT + os.sep):
            del sys.path_importer_cache[path]


def install_from_environment() -> None:
    """L{install} with the folder C{MAILHUB_BYTECODE_CACHE} names, if it does."""
    cache = os.environ.get(ENVIRONMENT_VARIABLE)
    if cache:
        install(cache)
