"""C{python -m twisted_mailhub.queue list|flush|remove ID}: see L{twisted_mailhub.queue.admin}."""

import sys

from twisted_mailhub.queue.admin import main

sys.exit(main())
