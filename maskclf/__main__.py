"""`python -m maskclf`: see maskclf.cli."""

import sys

from .cli import main

sys.exit(main())
