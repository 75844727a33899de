"""
The built-in listener components, registered as plugins exactly as a
third-party component would be (see L{twisted_mailhub.components}).

A new component adds one line here (or ships its own plugin module); the
order numbers leave room between them.
"""

from twisted_mailhub.components import ModuleComponent

# Quotas before everything: each component then gets the store with them.
quota = ModuleComponent("quota", "twisted_mailhub.quota", order=5)
# The queue next: the SMTP component hands mail for other domains to the
# relay the queue component sets up.
queue = ModuleComponent("queue", "twisted_mailhub.queue.component", order=10)
smtp = ModuleComponent("smtp", "twisted_mailhub.smtp.component", order=20)
# --catch-all and --test-mode (fault injection) for the SMTP listeners
catch_all = ModuleComponent("catch-all", "twisted_mailhub.smtp.catchall", order=21)
test_mode = ModuleComponent("test-mode", "twisted_mailhub.smtp.faults", order=22)
# DKIM signing and SPF/DKIM/DMARC checks on what the SMTP listeners accept
mailauth = ModuleComponent("mailauth", "twisted_mailhub.mailauth", order=25)
pop3 = ModuleComponent("pop3", "twisted_mailhub.pop3", order=30)
imap = ModuleComponent("imap", "twisted_mailhub.imap", order=40)
ftp = ModuleComponent("ftp", "twisted_mailhub.ftp.component", order=50)
web = ModuleComponent("web", "twisted_mailhub.web", order=60)
# the JSON API under /api/v1 on the web listeners
api = ModuleComponent("api", "twisted_mailhub.web.api", order=61)
# SFTP over SSH (twisted.conch) on the FTP file system
sftp = ModuleComponent("sftp", "twisted_mailhub.sftp.component", order=70)
# DATA/control.sock for mailhub-admin (reload, status): no listener option
control = ModuleComponent("control", "twisted_mailhub.control", order=90)
