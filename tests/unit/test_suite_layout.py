"""The test tree has no __init__.py files (pytest's rootdir-relative imports), so two test modules
with the same file name in different folders fail collection of the whole suite ("import file
mismatch"). Caught here with the names, before a merge makes CI fail on it."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique():
    names = Counter(path.name for path in TESTS.rglob("test_*.py") if "node_modules" not in path.parts)
    assert [name for name, count in names.items() if count > 1] == []
