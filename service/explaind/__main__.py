"""`python -m explaind` is the `explaind` command."""

import sys

from .cli import main

sys.exit(main())
