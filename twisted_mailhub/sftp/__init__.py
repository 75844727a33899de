"""
SFTP (SSH File Transfer Protocol, version 3) on twisted.conch, serving the
same accounts and the same virtual file system as FTP: C{component} (the
listener and its options), C{ssh} (the SSH server around the subsystem),
C{protocol} (SFTP requests onto the file system), C{keys} (host and user
keys), C{transcript} (decoded sessions for C{--transcript}).
"""
