"""Makes the unit tests' helpers in tests/unit (_linear.py, _onnx_builders.py, _autodiff_cases.py)
importable from its subfolders (methods/: one file per method)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
