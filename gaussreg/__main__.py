"""``python -m gaussreg COMMAND``: the same as the ``gaussreg`` console script."""
import sys

from .cli import main

sys.exit(main())
