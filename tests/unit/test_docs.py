"""The documentation users read lives in the repository and matches the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_methods_reference_is_generated_from_the_declarations():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_docs.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_links_only_to_files_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "docs/methods.md" in readme
    assert "../shared" not in readme
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target
    for doc in (ROOT / "docs").glob("*.md"):
        assert "../shared" not in doc.read_text(), doc
