"""``python -m hvcore.cli``: the same as the ``hv`` console script."""

import sys

from hvcore.cli import main

sys.exit(main())
