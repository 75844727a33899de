"""
The built-in FTP file system backend, registered as a plugin exactly as a
third-party backend would be (C{--ftp-filesystem NAME}).
"""

import os

from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_mailhub.ftp.vfs import IFileSystemFactory


@implementer(IPlugin, IFileSystemFactory)
class _Disk:
    name = "disk"
    description = "files on the local disk under DATA/ftp/ (default)"

    def make_filesystem(self, data_dir):
        from twisted_mailhub.ftp.vfs import DiskFileSystem

        return DiskFileSystem(os.path.join(data_dir, "ftp"))


disk = _Disk()
