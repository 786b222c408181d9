"""The CLI's connection flags as ExplaindClient options, and its progress bar's terminal rule. The
subcommands themselves run against a real server in tests/integration/test_cli.py."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from explaind.cli import ProgressBar, build_parser, connection_options


def options(*flags: str, env: dict[str, str] | None = None) -> dict:
    args = build_parser().parse_args(["models", *flags])
    return connection_options(args, env={} if env is None else env)


def test_no_connection_flags_give_no_options_so_the_client_is_built_as_a_plaintext_one():
    assert options() == {}
    assert options("--server", "example:1234", "--timeout", "3") == {}


def test_the_token_comes_from_the_flag_or_the_file_before_the_environment(tmp_path):
    (tmp_path / "token").write_text("from-file\n")
    assert options(env={"EXPLAIND_TOKEN": "from-env"}) == {"token": "from-env"}
    assert options("--token", "from-flag", env={"EXPLAIND_TOKEN": "from-env"}) == {"token": "from-flag"}
    assert options("--token-file", str(tmp_path / "token"), env={"EXPLAIND_TOKEN": "from-env"}) == \
        {"token": "from-file"}
    assert options(env={"EXPLAIND_TOKEN": "  "}) == {}  # a blank variable is no token


def test_token_and_token_file_are_exclusive(tmp_path):
    (tmp_path / "t").write_text("b")
    with pytest.raises(ValueError, match="^--token and --token-file: give one of them, not both$"):
        options("--token", "a", "--token-file", str(tmp_path / "t"))


@pytest.mark.parametrize("flags, message", [
    (["--token", ""], "--token: expected a token, got an empty string"),
    (["--tls-key", "k.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-ca", "/nonexistent/ca.pem"], "--tls-ca /nonexistent/ca.pem: cannot read it (No such file or directory)"),
    (["--token-file", "/dev/zero"], "--token-file /dev/zero: expected at most 1048576 bytes, the file holds more"),
])
def test_bad_connection_flags_are_named(flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        options(*flags)


def test_tls_files_are_read_and_imply_tls(tmp_path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_bytes(f"-----{name}-----".encode())
    assert options("--tls") == {"tls": True}
    assert options("--tls-ca", str(tmp_path / "ca.pem")) == {"tls": True, "root_certificates": b"-----ca.pem-----"}
    assert options("--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
                   "--server-name", "explaind.internal", "--token", "t") == {
        "tls": True, "certificate_chain": b"-----cert.pem-----", "private_key": b"-----key.pem-----",
        "server_name": "explaind.internal", "token": "t"}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_draws_frames_on_a_terminal_only():
    pipe = io.StringIO()
    bar = ProgressBar(pipe)
    bar.update(1, 4)
    bar.end()
    assert pipe.getvalue() == ""

    terminal = Terminal()
    bar = ProgressBar(terminal)
    for done in (1, 1, 4):  # a repeated update redraws nothing
        bar.update(done, 4)
    bar.end()
    assert terminal.getvalue() == (f"\r[{'#' * 10}{'.' * 30}] 1/4 rows ( 25.0%)"
                                   f"\r[{'#' * 40}] 4/4 rows (100.0%)\n")

    quiet = Terminal()
    bar = ProgressBar(quiet, enabled=False)
    bar.update(1, 4)
    bar.end()
    assert quiet.getvalue() == ""


def test_the_feature_table_sorts_by_magnitude_names_by_position_and_keeps_ties_in_input_order():
    import numpy as np
    from explaind_client.v1 import explaind_pb2 as pb

    from explaind.cli_text import feature_names, feature_table

    assert feature_names(pb.ModelInfo(feature_names=["a", "b", "c"]), 3) == ["a", "b", "c"]
    assert feature_names(pb.ModelInfo(feature_names=["a", "b"]), 3) == ["f0", "f1", "f2"]  # not one a feature
    assert feature_names(pb.ModelInfo(), 2) == ["f0", "f1"]
    text = feature_table(["a", "b", "c", "d"], np.array([1.5, 2, 3, 4]), np.array([0.1, -0.5, 0.25, -0.1]), None)
    assert text.splitlines() == ["FEATURE  VALUE  ATTRIBUTION",
                                 "b            2         -0.5",
                                 "c            3         0.25",
                                 "a          1.5          0.1",
                                 "d            4         -0.1"]
    top = feature_table(["a", "b", "c", "d"], np.arange(4), np.array([0.1, -0.5, 0.25, -0.1]), 2).splitlines()
    assert [line.split() for line in top[1:3]] == [["b", "1", "-0.5"], ["c", "2", "0.25"]]
    assert top[3:] == ["... 2 more features (--top N shows more)"]


def test_the_feature_table_shows_30_features_unless_asked_for_more():
    import numpy as np

    from explaind.cli_text import feature_table

    names = [f"f{i}" for i in range(31)]
    assert len(feature_table(names[:30], np.zeros(30), np.arange(30.0), None).splitlines()) == 31
    lines = feature_table(names, np.zeros(31), np.arange(31.0), None).splitlines()
    assert len(lines) == 32 and lines[1].split()[0] == "f30" and lines[-1].startswith("... 1 more features")
    assert len(feature_table(names, np.zeros(31), np.arange(31.0), 31).splitlines()) == 32


@pytest.mark.parametrize("fields, text", [
    ({}, ""),
    ({"minimum": "1"}, "[1, inf)"),
    ({"maximum": "5", "exclusive_maximum": True}, "(-inf, 5)"),
    ({"minimum": "0", "maximum": "1", "exclusive_minimum": True}, "(0, 1]"),
])
def test_parameter_bounds_in_interval_notation(fields, text):
    from explaind_client.v1 import explaind_pb2 as pb

    from explaind.cli_text import bounds

    assert bounds(pb.ParameterInfo(name="x", **fields)) == text


@pytest.mark.parametrize("command", ["serve", "explain", "evaluate", "models", "methods", "model", "load", "unload"])
def test_every_subcommand_prints_its_help(command):
    """argparse formats help strings with %: a literal % in a setting's help broke `serve --help`."""
    result = subprocess.run([sys.executable, "-m", "explaind", command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: explaind " + command)
