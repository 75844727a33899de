"""
Pruning of the PostgreSQL store's change journal (C{--journal-retention}),
a component registered as a plugin exactly as a third-party one would be.
"""

from twisted_mailhub.components import ModuleComponent

# After the quotas (5), before the queue (10): it only adds a service.
journal = ModuleComponent("journal", "twisted_mailhub.store.pgjournal", order=6)
