"""C{python -m twisted_mailhub.mailauth}: see L{twisted_mailhub.mailauth.main}."""

import sys

from twisted_mailhub.mailauth import main

sys.exit(main())
