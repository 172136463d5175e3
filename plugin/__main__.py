"""``python -m plugin``: the same as the ``crosscheck`` console script."""

import sys

from plugin.cli import main

sys.exit(main())
