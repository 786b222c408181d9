"""The CLI's client subcommands against a real server: `models`, `methods`, `model NAME`, `explain`
(its per-feature table for tabular models, its progress bar on a terminal and not on a pipe), their
--json output and their errors."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import json_format

from explaind.cli import main
from explaind_client.v1 import explaind_pb2 as pb

from _server import DEMO

IMAGE = DEMO / "examples" / "circle_0.png"
TABULAR_ROWS = np.load(DEMO / "repository" / "tabular" / "background.npy")


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI run in process: its exit code, stdout and stderr."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_process(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explaind.cli", *argv], capture_output=True, text=True,
                          timeout=120, **kwargs)


def rows_of(table: str) -> list[list[str]]:
    """A table's rows under its header, split on runs of spaces (no cell holds two spaces)."""
    lines = [line for line in table.splitlines() if line.strip()]
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


def fields_of(text: str) -> dict[str, str]:
    """`key: value` lines as a dict; continuation lines (indented, no key) joined to the key before."""
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line[:16].strip():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        elif key:
            fields[key] += "\n" + line.strip()
    return fields


# models ---------------------------------------------------------------------------------------

def test_models_lists_every_model_with_its_status_kind_and_version(server, client, capsys):
    code, out, err = cli(capsys, "models", "--server", server.address)
    assert (code, err) == (0, "")
    table, _, reasons = out.partition("\n\n")
    assert table.splitlines()[0].split() == ["NAME", "STATUS", "KIND", "CLASSES", "FEATURES", "WHITE-BOX",
                                             "METHODS", "SHA256"]
    got = {row[0]: row[1:] for row in (line.split() for line in table.splitlines()[1:])}
    infos = {m.name: m for m in client.list_models()}
    assert sorted(got) == sorted(infos) == ["broken", "shapes", "tabular"]
    shapes, tabular = infos["shapes"], infos["tabular"]
    assert got["shapes"] == ["READY", "image", "5", "-", "yes", str(len(shapes.methods)), shapes.sha256[:12]]
    assert got["tabular"] == ["READY", "tabular", "3", "13", "no", str(len(tabular.methods)), tabular.sha256[:12]]
    assert got["broken"][:2] == ["FAILED", "image"]
    assert reasons.strip() == f"broken (FAILED): {infos['broken'].reason}"


def test_models_json_is_the_list_models_response(server, client, capsys):
    code, out, _ = cli(capsys, "models", "--json", "--server", server.address)
    assert code == 0
    parsed = json_format.ParseDict(json.loads(out), pb.ListModelsResponse())
    assert parsed == pb.ListModelsResponse(models=client.list_models())
    tabular = next(m for m in json.loads(out)["models"] if m["name"] == "tabular")
    assert tabular["white_box"] is False and tabular["num_features"] == 13  # defaults shown, proto names


# methods --------------------------------------------------------------------------------------

def method_blocks(out: str) -> dict[str, list[str]]:
    blocks = {}
    for block in out.strip().split("\n\n"):
        lines = block.splitlines()
        blocks[lines[0].split(" ")[0]] = lines
    return blocks


def test_methods_lists_each_method_with_needs_kinds_and_parameters(server, client, capsys):
    code, out, err = cli(capsys, "methods", "--server", server.address)
    assert (code, err) == (0, "")
    blocks = method_blocks(out)
    methods = client.list_methods()
    assert list(blocks) == [m.name for m in methods]
    assert blocks["rise"][0] == "rise (RISE): needs forward; kinds image"
    assert blocks["saliency"][0].startswith("saliency (") and "needs input_gradients" in blocks["saliency"][0]
    for m in methods:
        params = {row[0]: row[1:] for row in rows_of("\n".join(blocks[m.name][1:len(m.parameters) + 2]))}
        assert list(params) == [p.name for p in m.parameters] or not m.parameters
        for p in m.parameters:
            assert params[p.name][:2] == [p.type, p.default_value or "-"], (m.name, p.name)


def test_methods_of_a_model_show_bounds_and_choices(server, client, capsys):
    code, out, _ = cli(capsys, "methods", "--model", "tabular", "--server", server.address)
    assert code == 0
    blocks = method_blocks(out)
    assert list(blocks) == [m.name for m in client.list_methods("tabular")] == ["occlusion", "lime", "kernel_shap", "tree_shap"]
    assert blocks["occlusion"][0] == "occlusion (Occlusion): needs forward; kinds image, tabular"
    lime = {row[0]: row for row in rows_of("\n".join(blocks["lime"][1:6]))}
    assert lime["kernel_width"][-1] == "(0, 1e+06)"      # both ends exclusive
    assert lime["num_samples"][-1] == "[2, inf)"         # a minimum only
    assert lime["segmentation"][-1] == "quickshift|slic|felzenszwalb"
    shap = {row[0]: row for row in rows_of("\n".join(blocks["kernel_shap"][1:10]))}
    assert shap["fill_value"][-1] == "[-1e+06, 1e+06]"
    assert "  arrays: segments, segment_weights, standard_errors" in blocks["lime"]


def test_methods_json_is_the_list_methods_response(server, client, capsys):
    code, out, _ = cli(capsys, "methods", "--model", "shapes", "--json", "--server", server.address)
    assert code == 0
    assert json_format.ParseDict(json.loads(out), pb.ListMethodsResponse()) == \
        pb.ListMethodsResponse(methods=client.list_methods("shapes"))


# model NAME -----------------------------------------------------------------------------------

def test_model_shows_what_get_model_gives_for_an_image_model(server, client, capsys):
    code, out, err = cli(capsys, "model", "shapes", "--server", server.address)
    assert (code, err) == (0, "")
    info, fields = client.get_model("shapes"), fields_of(out)
    assert fields["name"] == "shapes" and fields["status"] == "READY" and fields["kind"] == "image"
    assert fields["sha256"] == info.sha256
    assert fields["input"] == "input float32 [-1, 3, 64, 64]"
    assert fields["labels"].replace("\n", " ") == ", ".join(info.labels)
    assert fields["preprocess"] == ("resize to 64x64, divide by 255, mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25], "
                                    "layout NCHW")
    assert fields["white box"] == "yes"
    assert fields["rules"] == ", ".join(info.rule_families) and "lrp" in info.rule_families
    assert fields["default layer"] == info.default_layer
    assert fields["layers"].split("\n") == list(info.layers)
    assert fields["methods"].replace("\n", " ") == ", ".join(info.methods)
    assert fields["run failures"] == str(info.run_failures)
    assert fields["loaded at"] == (info.loaded_at.ToJsonString() if info.HasField("loaded_at") else "-")


def test_model_shows_feature_names_and_why_a_model_is_not_white_box(server, client, capsys):
    code, out, _ = cli(capsys, "model", "tabular", "--server", server.address)
    assert code == 0
    info, fields = client.get_model("tabular"), fields_of(out)
    assert fields["kind"] == "tabular" and fields["features"] == "13"
    assert fields["white box"] == f"no: {info.white_box_reason}" and "TreeEnsembleClassifier" in info.white_box_reason
    names = fields["feature names"].replace("\n", " ")
    assert names == (", ".join(info.feature_names) if info.feature_names else "(none: f0, f1, ... by position)")
    assert "preprocess" not in fields and "layers" not in fields


def test_model_of_a_failed_folder_shows_its_reason(server, client, capsys):
    code, out, _ = cli(capsys, "model", "broken", "--server", server.address)
    assert code == 0
    fields = fields_of(out)
    assert fields["status"] == "FAILED" and fields["reason"] == client.get_model("broken").reason != ""


@pytest.mark.parametrize("name", ["shapes", "tabular", "broken"])
def test_model_json_is_the_get_model_response(server, client, capsys, name):
    code, out, _ = cli(capsys, "model", name, "--json", "--server", server.address)
    assert code == 0
    assert json_format.ParseDict(json.loads(out), pb.ModelInfo()) == client.get_model(name)


# errors ---------------------------------------------------------------------------------------

def test_an_unknown_model_is_one_line_and_exit_1(server):
    for argv in (["model", "nope"], ["methods", "--model", "nope"]):
        done = cli_process(*argv, "--server", server.address)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith(f"explaind {argv[0]}: NOT_FOUND: ") and "'nope'" in done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_an_unreachable_server_is_unavailable_and_exit_1(capsys):
    from _server import free_port

    code, out, err = cli(capsys, "models", "--server", f"127.0.0.1:{free_port()}", "--timeout", "5")
    assert code == 1 and out == ""
    assert err.startswith("explaind models: UNAVAILABLE: ") and err.count("\n") == 1


def test_connection_usage_errors_exit_2_before_connecting(server, capsys, tmp_path):
    code, _, err = cli(capsys, "models", "--server", server.address, "--tls-cert", str(tmp_path / "c.pem"))
    assert code == 2 and err == ("explaind models: --tls-cert and --tls-key go together (the client's certificate "
                                 "and its key, for mTLS); got only --tls-cert\n")
    code, _, err = cli(capsys, "model", "shapes", "--server", server.address, "--token-file", str(tmp_path / "none"))
    assert code == 2 and err.startswith(f"explaind model: --token-file {tmp_path / 'none'}: cannot read it")
    (tmp_path / "empty").write_text("\n")
    np.save(tmp_path / "row.npy", TABULAR_ROWS[0])
    code, _, err = cli(capsys, "explain", "--model", "tabular", "--method", "occlusion", "--tensor",
                       str(tmp_path / "row.npy"),
                       "--server", server.address, "--token-file", str(tmp_path / "empty"))
    assert code == 2 and err == f"explaind explain: --token-file {tmp_path / 'empty'}: the file holds no token\n"
    code, _, err = cli(capsys, "explain", "--model", "tabular", "--method", "occlusion", "--tensor",
                       str(tmp_path / "missing.npy"), "--server", server.address)
    assert code == 2 and err.startswith(f"explaind explain: --tensor {tmp_path / 'missing.npy'}: cannot read it")


def test_every_client_subcommand_takes_the_connection_flags():
    from explaind.cli import build_parser

    flags = ["--server", "--timeout", "--token", "--token-file", "--tls", "--tls-ca", "--tls-cert", "--tls-key",
             "--server-name"]
    subcommands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in ("explain", "models", "methods", "model"):
        options = {o for action in subcommands[name]._actions for o in action.option_strings}
        assert set(flags) <= options, name


# explain: the tabular table and the progress bar ----------------------------------------------

def explain_tabular(capsys, server, tmp_path, *extra: str) -> tuple[list[list[str]], np.ndarray, np.ndarray, str]:
    row = TABULAR_ROWS[5]
    np.save(tmp_path / "row.npy", row)
    code, out, err = cli(capsys, "explain", "--model", "tabular", "--method", "occlusion", "--param", "window=1",
                         "--param", "stride=1", "--tensor", str(tmp_path / "row.npy"), "--server", server.address,
                         "--save-attribution", str(tmp_path / "a.npy"), *extra)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("target: class_") and "model evaluations" in lines[1]
    table = "\n".join(line for line in lines[2:] if not line.startswith("attribution "))
    assert table.splitlines()[0].split() == ["FEATURE", "VALUE", "ATTRIBUTION"]
    return rows_of(table), row, np.load(tmp_path / "a.npy"), table


def test_explain_of_a_tabular_model_lists_features_by_attribution(server, client, capsys, tmp_path):
    rows, row, saved, _ = explain_tabular(capsys, server, tmp_path)
    direct = client.explain("tabular", method="occlusion", tensor=row, params={"window": [1], "stride": [1]})
    np.testing.assert_allclose(saved, direct.attribution)  # the CLI shows the explanation the server gives
    info = client.get_model("tabular")
    names = list(info.feature_names) or [f"f{i}" for i in range(13)]
    order = np.argsort(-np.abs(saved), kind="stable")
    assert len(rows) == 13
    assert [r[0] for r in rows] == [names[i] for i in order]
    np.testing.assert_allclose([float(r[1]) for r in rows], row[order], rtol=1e-5)
    np.testing.assert_allclose([float(r[2]) for r in rows], saved[order], rtol=1e-5, atol=1e-12)
    assert abs(float(rows[0][2])) > abs(float(rows[-1][2]))  # the features do not all weigh the same


def test_explain_top_n_shows_the_largest_features_and_says_how_many_are_left(server, capsys, tmp_path):
    rows, _, saved, table = explain_tabular(capsys, server, tmp_path, "--top", "4")
    assert len(rows) == 5 and rows[-1] == ["... 9 more features (--top N shows more)"]
    order = np.argsort(-np.abs(saved), kind="stable")[:4]
    np.testing.assert_allclose([float(r[2]) for r in rows[:4]], saved[order], rtol=1e-5, atol=1e-12)


def test_explain_of_an_image_prints_no_feature_table(server, capsys):
    code, out, _ = cli(capsys, "explain", "--model", "shapes", "--method", "occlusion", "--image", str(IMAGE),
                       "--param", "window=16,16", "--param", "stride=16,16", "--server", server.address)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("target: circle (class 0)") and "model evaluations" in lines[1]


RISE = ["explain", "--model", "shapes", "--method", "rise", "--param", "num_masks=640", "--image", str(IMAGE)]


def test_no_progress_frames_when_stderr_is_a_pipe(server):
    done = cli_process(*RISE, "--server", server.address)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no frame, no carriage return, not even the closing newline
    assert done.stdout.startswith("target: circle")


def run_with_terminal_stderr(*argv: str) -> tuple[int, bytes]:
    """The CLI with a pseudo-terminal as its stderr: its exit code and what it wrote there."""
    primary, secondary = os.openpty()
    process = subprocess.Popen([sys.executable, "-m", "explaind.cli", *argv], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    written = b""
    try:
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError as exc:  # EIO once the child closed its end
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(primary)
    return process.wait(60), written


def test_progress_frames_on_a_terminal_and_none_when_quiet(server):
    code, written = run_with_terminal_stderr(*RISE, "--server", server.address)
    assert code == 0, written
    frames = [f for f in written.replace(b"\r\n", b"\n").split(b"\r") if f]
    assert len(frames) >= 2 and all(f.startswith(b"[") for f in frames), written
    assert frames[-1].rstrip() == b"[" + b"#" * 40 + b"] 640/640 rows (100.0%)"
    assert written.endswith(b"\n")  # the line after the bar is the terminal's own again
    code, written = run_with_terminal_stderr(*RISE, "--quiet", "--server", server.address)
    assert (code, written) == (0, b"")
