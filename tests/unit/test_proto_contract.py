"""The contract guarded: `buf lint` on proto/ and `buf breaking` against the last released contract
(proto/released/), with the buf CLI from the npm registry (clients/typescript's devDependencies).
The configuration and its documented lint exceptions are in proto/buf.yaml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from _node import BUF, ROOT, npm_ci

PROTO = ROOT / "proto"
RELEASED = PROTO / "released"
FILE = Path("explaind") / "v1" / "explaind.proto"


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    npm_ci()
    return subprocess.run([str(BUF), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_lint_passes():
    result = buf("lint", "proto")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_the_released_contract():
    result = buf("breaking", "proto", "--against", "proto/released")
    assert result.returncode == 0, (result.stdout + result.stderr
                                    + "\n(a change to an existing field, message, enum or RPC breaks the clients "
                                    "compiled against proto/released; add new fields with new numbers instead)")


def _mutated(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of proto/ (without released/) whose explaind.proto has `old` replaced by `new` once."""
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy, ignore=shutil.ignore_patterns("released"))
    text = (copy / FILE).read_text()
    assert text.count(old) == 1, old
    (copy / FILE).write_text(text.replace(old, new))
    return copy


BREAKING = {
    "renumbered": ("  Tensor attribution = 1;", "  Tensor attribution = 14;", 'Previously present field "1"'),
    "deleted": ("  string target_label = 3;\n", "", 'field "3" with name "target_label"'),
    "renamed": ("  uint64 seed = 5;      // 0: the server picks", "  uint64 random_seed = 5;      // 0: the server picks",
                'changed name from "seed" to "random_seed"'),
    "retyped": ("  int32 target_class = 2;", "  int64 target_class = 2;", 'changed type from "int32" to "int64"'),
    "reserved number reused": ('  reserved 8, 9, 10;\n  reserved "segments", "segment_weights", "masks";\n',
                               "  int32 reused = 8;\n", "reserved"),
    "rpc deleted": ("  rpc ListMethods(ListMethodsRequest) returns (ListMethodsResponse);\n", "",
                    'Previously present RPC "ListMethods"'),
    "enum value renumbered": ("  LOGIT = 2;", "  LOGIT = 3;", 'enum value "2"'),
}


@pytest.mark.parametrize("change", sorted(BREAKING))
def test_breaking_changes_fail(tmp_path, change):
    old, new, message = BREAKING[change]
    result = buf("breaking", str(_mutated(tmp_path, old, new)), "--against", "proto/released")
    assert result.returncode != 0, f"{change} passed buf breaking"
    assert message in result.stdout + result.stderr, result.stdout + result.stderr


def test_additions_pass(tmp_path):
    """A new method in the ExplainRequest oneof with a new number, as new methods are added (900: above
    the numbers the methods use)."""
    copy = _mutated(tmp_path, "    Cam cam = 30;\n", "    Cam cam = 30;\n    Cam cam_again = 900;\n")
    result = buf("breaking", str(copy), "--against", "proto/released")
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_fails_on_a_violation(tmp_path):
    copy = _mutated(tmp_path, "message LinearShap {\n}", "message LinearShap {\n  int32 fooBar = 1;\n}")
    result = buf("lint", str(copy))
    assert result.returncode != 0
    assert 'Field name "fooBar" should be lower_snake_case' in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("protoc") is None, reason="needs protoc (Debian: protobuf-compiler)")
def test_java_generation_command(tmp_path):
    """The --java_out half of clients/README.md's Java command (grpc-java's plugin is not reachable here):
    the messages land in the proto's java_package, one file each."""
    result = subprocess.run(["protoc", "-I", "proto", f"--java_out={tmp_path}", "proto/explaind/v1/explaind.proto"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    package = tmp_path / "dev" / "explaind" / "v1"
    assert (package / "ExplainRequest.java").exists() and (package / "ExplainResponse.java").exists()
    assert "package dev.explaind.v1;" in (package / "Tensor.java").read_text()
