"""Makes the shared test helpers in tests/ (inprocess.py, the oracles package) importable from every
test folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
