"""``python -m appserver``: the same as the ``appserver`` console script."""

import sys

from .cli import main

sys.exit(main())
