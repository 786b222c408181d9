"""The committed gRPC stubs are exactly what scripts/generate_protos.py makes from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_protos.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stale_stubs_are_detected(tmp_path, monkeypatch):
    """The check fails when a stub differs from what protoc makes (so the test above can fail)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import generate_protos
    finally:
        sys.path.pop(0)
    for name, text in generate_protos.generate().items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(generate_protos, "OUT_DIR", tmp_path)
    monkeypatch.setattr(sys, "argv", ["generate_protos.py", "--check"])
    assert generate_protos.main() == 0
    (tmp_path / "explaind_pb2.pyi").write_text((tmp_path / "explaind_pb2.pyi").read_text() + "\n# edited by hand\n")
    assert generate_protos.main() == 1
