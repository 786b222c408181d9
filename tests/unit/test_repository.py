"""Model repository: good models load, every bad one fails alone with a reason that says why."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from _onnx_builders import (
    custom_domain_model,
    image_model,
    ort_rejects_model,
    set_external_location,
    subgraph_constant_model,
    tabular_model,
    write_model_folder,
)
from explaind.errors import ModelConfigError, NotFound
from explaind.models import (
    FailedModel,
    LoadedModel,
    ModelRepository,
    RepositoryLimits,
    parse_model_config,
)

IMAGE_YAML = {
    "kind": "image",
    "input": {"name": "input", "layout": "NCHW"},
    "output": {"name": "logits", "scores": "logits"},
    "labels": ["circle", "square", "triangle"],
    "preprocess": {"scale": 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "layers": {"pool": "pooled"},
}
TABULAR_YAML = {"kind": "tabular", "labels": ["no", "yes"], "feature_names": ["a", "b", "c", "d"]}


def _with(base: dict, **changes: object) -> dict:
    out = dict(base)
    out.update(changes)
    return out


def _scan(root: Path, **limits: object) -> ModelRepository:
    repo = ModelRepository(root, RepositoryLimits(**limits))
    repo.scan()
    return repo


def _good_pair(root: Path) -> None:
    write_model_folder(root, "good-image", image_model(), IMAGE_YAML)
    write_model_folder(root, "good-tabular", tabular_model(), TABULAR_YAML)


def _assert_failed(repo: ModelRepository, name: str, *words: str) -> str:
    entry = repo.get(name)
    assert entry.status == "FAILED", f"{name} should have failed"
    assert not entry.ready
    assert isinstance(entry, FailedModel)
    for word in words:
        assert word in entry.reason, f"{word!r} not in reason {entry.reason!r}"
    # the good models in the same repository keep serving
    assert repo.get("good-image").ready, repo.get("good-image").reason
    assert repo.get("good-tabular").ready, repo.get("good-tabular").reason
    return entry.reason


# --- good models --------------------------------------------------------------------------------


def test_good_models_are_ready(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    (tmp_path / "not-a-model").mkdir()  # no model.onnx: ignored
    repo = _scan(tmp_path)

    assert [e.name for e in repo.list()] == ["good-image", "good-tabular"]

    image = repo.get("good-image")
    assert image.ready and image.status == "READY" and image.reason == ""
    assert image.example_shape == (3, 4, 4)
    assert image.num_classes == 3
    assert image.labels == ("circle", "square", "triangle")
    assert image.sha256 == hashlib.sha256((tmp_path / "good-image" / "model.onnx").read_bytes()).hexdigest()
    assert image.input_spec is not None
    assert image.input_spec.name == "input"
    assert image.input_spec.dtype == np.float32
    assert image.input_spec.shape == (-1, 3, 4, 4)
    assert [o.name for o in image.outputs] == ["logits"]
    assert image.preprocess is not None and image.preprocess.size == (4, 4)
    assert image.preprocess.std == (0.25, 0.25, 0.25)
    assert isinstance(image, LoadedModel) and isinstance(image.model, onnx.ModelProto)
    assert not hasattr(image, "model_bytes")  # the weights are held once, in the ModelProto
    assert image.config is not None and image.config.layers == {"pool": "pooled"}

    tab = repo.get("good-tabular")
    assert tab.ready, tab.reason
    assert tab.example_shape == (4,)
    assert tab.num_classes == 2
    assert tab.labels == ("no", "yes")
    assert tab.feature_names == ("a", "b", "c", "d")
    assert tab.background is None
    assert tab.kind == "tabular" and image.kind == "image" and image.feature_names == ()
    assert tab.sha256 == hashlib.sha256((tmp_path / "good-tabular" / "model.onnx").read_bytes()).hexdigest()


def test_defaults_labels_features_and_nhwc(tmp_path: Path) -> None:
    write_model_folder(tmp_path, "tab", tabular_model(features=3, classes=4), {"kind": "tabular"})
    write_model_folder(
        tmp_path,
        "nhwc",
        image_model(channels=1, size=5, classes=2, nhwc=True),
        {"kind": "image", "input": {"layout": "NHWC"}},
    )
    repo = _scan(tmp_path)
    tab = repo.get("tab")
    assert tab.ready, tab.reason
    assert tab.labels == ("0", "1", "2", "3")
    assert tab.feature_names == ("f0", "f1", "f2")
    image = repo.get("nhwc")
    assert image.ready, image.reason
    assert image.example_shape == (5, 5, 1)
    assert image.preprocess is not None
    assert image.preprocess.mean == (0.0,) and image.preprocess.std == (1.0,)
    assert image.preprocess.scale == 255.0


def test_dynamic_hw_takes_preprocess_size_and_labels_file(tmp_path: Path) -> None:
    folder = write_model_folder(
        tmp_path,
        "dyn",
        image_model(dynamic_hw=True),
        {"kind": "image", "labels_file": "labels.txt", "preprocess": {"size": [8, 6]}},
    )
    (folder / "labels.txt").write_text("circle\nsquare\ntriangle\n\n")
    # the folder is scanned after labels.txt exists
    repo = _scan(tmp_path)
    entry = repo.get("dyn")
    assert entry.ready, entry.reason
    assert entry.example_shape == (3, 8, 6)
    assert entry.labels == ("circle", "square", "triangle")


def test_background_is_loaded_as_float32(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path, "tab", tabular_model(), _with(TABULAR_YAML, background="bg.npy"))
    np.save(folder / "bg.npy", np.arange(20, dtype=np.float64).reshape(5, 4))
    entry = _scan(tmp_path).get("tab")
    assert entry.ready, entry.reason
    assert entry.background is not None
    assert entry.background.dtype == np.float32 and entry.background.shape == (5, 4)


def test_external_data_inside_folder_loads(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path, "ext", image_model(), IMAGE_YAML, external_data=True)
    assert (folder / "weights.bin").is_file()
    entry = _scan(tmp_path).get("ext")
    assert entry.ready, entry.reason
    assert entry.model is not None
    assert all(not t.external_data for t in entry.model.graph.initializer)
    assert entry.sha256 == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()


def test_label_index(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    entry = _scan(tmp_path).get("good-image")
    assert entry.label_index("square") == 1
    with pytest.raises(NotFound, match="'hexagon'.*circle, square, triangle"):
        entry.label_index("hexagon")


def test_get_unknown_or_unsafe_names(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    repo = _scan(tmp_path)
    for name in ("../etc", "nope", "", "good-image\n", "/good-image", "a" * 200):
        with pytest.raises(NotFound):
            repo.get(name)


# --- bad models ---------------------------------------------------------------------------------


def _bad(tmp_path: Path, config: dict | str | None, model=None) -> ModelRepository:
    _good_pair(tmp_path)
    write_model_folder(tmp_path, "bad", model if model is not None else image_model(), config)
    return _scan(tmp_path)


def test_missing_model_yaml(tmp_path: Path) -> None:
    repo = _bad(tmp_path, None)
    _assert_failed(repo, "bad", "model.yaml is missing")
    assert repo.get("bad").kind == ""
    # learned before the failure
    assert repo.get("bad").sha256 == hashlib.sha256((tmp_path / "bad" / "model.onnx").read_bytes()).hexdigest()


def test_unknown_yaml_key(tmp_path: Path) -> None:
    repo = _bad(tmp_path, _with(IMAGE_YAML, colour="red"))
    _assert_failed(repo, "bad", "model.yaml: colour: unknown key", "allowed keys", "preprocess")


def test_unknown_nested_key(tmp_path: Path) -> None:
    repo = _bad(tmp_path, _with(IMAGE_YAML, preprocess={"sise": [4, 4]}))
    _assert_failed(repo, "bad", "preprocess.sise: unknown key", "size, scale, mean, std")


def test_wrong_enum(tmp_path: Path) -> None:
    repo = _bad(tmp_path, _with(IMAGE_YAML, gradients="sometimes"))
    _assert_failed(repo, "bad", "gradients: expected one of auto, exported, none, got 'sometimes'")


def test_labels_count_mismatch(tmp_path: Path) -> None:
    repo = _bad(tmp_path, _with(IMAGE_YAML, labels=["a", "b", "c", "d", "e"]))
    _assert_failed(repo, "bad", "model.yaml: labels: 5 labels but the output has 3 classes")
    assert repo.get("bad").kind == "image"  # learned from model.yaml before the failure


def test_std_zero(tmp_path: Path) -> None:
    repo = _bad(tmp_path, _with(IMAGE_YAML, preprocess={"mean": [0, 0, 0], "std": [1, 0, 1]}))
    _assert_failed(repo, "bad", "model.yaml: preprocess.std[1]: expected a positive number, got 0")


def test_mean_length_vs_channels(tmp_path: Path) -> None:
    repo = _bad(tmp_path, _with(IMAGE_YAML, preprocess={"mean": [0.5], "std": [0.5]}))
    _assert_failed(repo, "bad", "preprocess.mean: 1 values but the input has 3 channels")


def test_size_mismatch_with_static_graph(tmp_path: Path) -> None:
    repo = _bad(tmp_path, _with(IMAGE_YAML, preprocess={"size": [64, 64]}))
    _assert_failed(repo, "bad", "preprocess.size", "does not match")


def test_external_data_dotdot(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    folder = write_model_folder(tmp_path, "bad", image_model(), IMAGE_YAML, external_data=True)
    (folder / "weights.bin").rename(tmp_path / "weights.bin")
    set_external_location(folder, "../weights.bin")
    _assert_failed(_scan(tmp_path), "bad", "external data '../weights.bin'", "..")


def test_external_data_absolute(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    folder = write_model_folder(tmp_path, "bad", image_model(), IMAGE_YAML, external_data=True)
    outside = tmp_path.parent / f"{tmp_path.name}-weights.bin"
    (folder / "weights.bin").rename(outside)
    set_external_location(folder, str(outside))
    _assert_failed(_scan(tmp_path), "bad", "external data", "absolute path")


def test_external_data_symlink_outside(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    folder = write_model_folder(tmp_path, "bad", image_model(), IMAGE_YAML, external_data=True)
    (folder / "weights.bin").rename(tmp_path / "real-weights.bin")
    (folder / "weights.bin").symlink_to(tmp_path / "real-weights.bin")
    _assert_failed(_scan(tmp_path), "bad", "external data 'weights.bin' resolves outside the model folder")


def test_subgraph_external_data_inside_loads_and_outside_fails(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    write_model_folder(
        tmp_path, "sub-ok", subgraph_constant_model(), TABULAR_YAML, external_data=True, convert_attribute=True
    )
    folder = write_model_folder(
        tmp_path, "bad", subgraph_constant_model(), TABULAR_YAML, external_data=True, convert_attribute=True
    )
    (folder / "weights.bin").rename(tmp_path / "weights.bin")
    assert set_external_location(folder, "../weights.bin") >= 1
    repo = _scan(tmp_path)
    assert repo.get("sub-ok").ready, repo.get("sub-ok").reason
    _assert_failed(repo, "bad", "external data '../weights.bin'", "contains '..'", "attribute tensor")


def test_onnxruntime_rejection_is_the_reason(tmp_path: Path) -> None:
    repo = _bad(tmp_path, TABULAR_YAML, model=ort_rejects_model())
    reason = _assert_failed(repo, "bad", "onnxruntime cannot load the model", "tensor(string)")
    assert "ONNXRuntimeError" not in reason


def test_model_onnx_symlink_outside(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    outside = write_model_folder(tmp_path / "elsewhere", "real", image_model(), IMAGE_YAML)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(outside / "model.onnx")
    (folder / "model.yaml").write_text((outside / "model.yaml").read_text())
    reason = _assert_failed(_scan(tmp_path), "bad", "model.onnx is a symlink", "outside the model folder")
    assert "elsewhere" not in reason  # the target path is not echoed


def test_model_over_size_limit(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    # the good models are a few hundred bytes; a padded copy of the same model is not
    big = image_model()
    big.doc_string = "x" * 5000
    write_model_folder(tmp_path, "bad", big, IMAGE_YAML)
    repo = _scan(tmp_path, max_model_bytes=3000)
    _assert_failed(repo, "bad", "model.onnx is 5.", "KB, over the limit of 2.9 KB")
    assert repo.get("bad").sha256 == ""  # never read


def test_external_data_counts_toward_limit(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    labels = [str(i) for i in range(50)]
    write_model_folder(tmp_path, "bad", image_model(classes=50), _with(IMAGE_YAML, labels=labels), external_data=True)
    assert (tmp_path / "bad" / "model.onnx").stat().st_size < 1000
    repo = _scan(tmp_path, max_model_bytes=1000)
    _assert_failed(repo, "bad", "with its external data", "over the limit")


def test_custom_domain_node(tmp_path: Path) -> None:
    repo = _bad(tmp_path, TABULAR_YAML, model=custom_domain_model())
    _assert_failed(repo, "bad", "node 'Foo' (op MyOp) uses domain 'custom.x' which is not allowed")


def test_output_missing(tmp_path: Path) -> None:
    repo = _bad(tmp_path, _with(IMAGE_YAML, output={"name": "probs"}))
    _assert_failed(repo, "bad", "output.name", "no output 'probs'", "'logits'")


def test_nan_in_background(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    folder = write_model_folder(tmp_path, "bad", tabular_model(), _with(TABULAR_YAML, background="bg.npy"))
    bg = np.zeros((3, 4), dtype=np.float32)
    bg[2, 1] = np.nan
    np.save(folder / "bg.npy", bg)
    _assert_failed(_scan(tmp_path), "bad", "background", "non-finite", "row 2")


def test_background_wrong_width(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    folder = write_model_folder(tmp_path, "bad", tabular_model(), _with(TABULAR_YAML, background="bg.npy"))
    np.save(folder / "bg.npy", np.zeros((3, 5), dtype=np.float32))
    _assert_failed(_scan(tmp_path), "bad", "background", "shape [3, 5]", "expected [K, 4]")


def test_background_outside_folder(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    np.save(tmp_path / "bg.npy", np.zeros((3, 4), dtype=np.float32))
    write_model_folder(tmp_path, "bad", tabular_model(), _with(TABULAR_YAML, background="../bg.npy"))
    _assert_failed(_scan(tmp_path), "bad", "model.yaml: background: '../bg.npy'", "..")


def test_layer_not_in_graph(tmp_path: Path) -> None:
    repo = _bad(tmp_path, _with(IMAGE_YAML, layers={"cam": "poled"}))
    _assert_failed(repo, "bad", "layers.cam", "'poled' is not produced by any node", "'pooled'")


def test_input_not_float32(tmp_path: Path) -> None:
    model = tabular_model()
    model.graph.input[0].type.tensor_type.elem_type = 7  # int64
    repo = _bad(tmp_path, TABULAR_YAML, model=model)
    _assert_failed(repo, "bad", "input 'x' has dtype int64", "float32")


def test_not_an_onnx_file(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    folder = write_model_folder(tmp_path, "bad", None, IMAGE_YAML)
    (folder / "model.onnx").write_bytes(b"\xff\xfe not protobuf at all")
    _assert_failed(_scan(tmp_path), "bad", "not a valid ONNX model")


def test_invalid_yaml(tmp_path: Path) -> None:
    repo = _bad(tmp_path, "kind: [image\n")
    _assert_failed(repo, "bad", "model.yaml is not valid YAML")


@pytest.mark.parametrize("name, why", [("bad name", "it contains ' '"), ("modèle", "it contains 'è'"),
                                       ("-lead", "it starts with '-'"), ("x" * 129, "129 characters")])
def test_invalid_folder_name_is_listed_failed(tmp_path: Path, name: str, why: str) -> None:
    _good_pair(tmp_path)
    write_model_folder(tmp_path, name, image_model(), IMAGE_YAML)
    repo = _scan(tmp_path)
    assert [e.name for e in repo.list()] == sorted(["good-image", "good-tabular", name])
    entry = repo.get(name)
    assert not entry.ready
    assert why in entry.reason and "A-Z, a-z, 0-9, '.', '_' and '-'" in entry.reason and "rename" in entry.reason


def test_without_session_check(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    repo = _scan(tmp_path, check_with_session=False)
    assert all(e.ready for e in repo.list())


# --- parse_model_config directly ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "model.yaml: expected a mapping at the top level, got null"),
        ({}, "model.yaml: kind: required key is missing"),
        ({"kind": "video"}, "model.yaml: kind: expected one of image, tabular, got 'video'"),
        ({"kind": "image", "input": {"layout": "CHW"}}, "input.layout: expected one of NCHW, NHWC"),
        ({"kind": "image", "output": {"scores": "softmax"}}, "output.scores: expected one of logits, probabilities"),
        ({"kind": "image", "labels": "a,b"}, "labels: expected a non-empty list of strings, got 'a,b'"),
        ({"kind": "image", "labels": ["a", True]}, "labels[1]: expected a non-empty string, got true (quote it"),
        ({"kind": "image", "labels": ["a"], "labels_file": "l.txt"}, "either labels or labels_file"),
        ({"kind": "image", "preprocess": {"size": [64]}}, "preprocess.size: expected a list of two positive integers"),
        ({"kind": "image", "preprocess": {"size": [64, 0]}}, "preprocess.size[1]: expected a positive integer, got 0"),
        ({"kind": "image", "preprocess": {"size": [64, 6.5]}}, "preprocess.size[1]: expected a positive integer, got 6.5"),
        ({"kind": "image", "preprocess": {"scale": -1}}, "preprocess.scale: expected a positive number, got -1"),
        ({"kind": "image", "preprocess": {"mean": [0, float("nan")]}}, "preprocess.mean[1]: expected a finite number"),
        ({"kind": "image", "preprocess": {"mean": [0, 0], "std": [1]}}, "mean has 2 values but std has 1"),
        ({"kind": "tabular", "preprocess": {"scale": 1}}, "preprocess: only allowed for kind image"),
        ({"kind": "image", "feature_names": ["a"]}, "feature_names: only allowed for kind tabular"),
        ({"kind": "tabular", "feature_names": ["a", "a"]}, "feature_names[1]: duplicate name 'a'"),
        ({"kind": "image", "background": "bg.npy"}, "background: only allowed for kind tabular"),
        ({"kind": "image", "layers": ["x"]}, "layers: expected a mapping, got ['x']"),
        ({"kind": "image", "layers": {"cam": 3}}, "layers.cam: expected a non-empty string, got 3"),
        ({"kind": "image", "batching": {"max_batch_rows": 0}}, "batching.max_batch_rows: expected a positive integer, got 0"),
        ({"kind": "image", "batching": {"max_batch_rows": True}}, "batching.max_batch_rows: expected a positive integer, got true"),
        ({"kind": "image", "batching": {"max_delay_ms": "2"}}, "batching.max_delay_ms: expected a positive number, got '2'"),
        ({"kind": "image", "batching": {"max_rows": 2}}, "batching.max_rows: unknown key; allowed keys: max_batch_rows, max_delay_ms, spin"),
        ({"kind": "image", "batching": {"spin": "sometimes"}}, "batching.spin: off, run or always, got 'sometimes'"),
        ({"kind": "tabular", "background": "/etc/passwd"}, "background: '/etc/passwd' is an absolute path"),
        ({"kind": "tabular", "background": "missing.npy"}, "background: 'missing.npy' does not exist"),
        ({"kind": "image", "labels_file": "a/../../x"}, "labels_file: 'a/../../x' contains '..'"),
        ({"kind": "tabular", "generator": "g.onnx"}, "generator: only allowed for kind image"),
        ({"kind": "image", "generator": "../g.onnx"}, "generator: '../g.onnx' contains '..'"),
        ({"kind": "image", "generator": "missing.onnx"}, "generator: 'missing.onnx' does not exist"),
    ],
)
def test_parse_errors(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(ModelConfigError) as info:
        parse_model_config(data, tmp_path)
    assert message in str(info.value)


def test_parse_full_config(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("a\nb\n")
    config = parse_model_config(
        {
            "kind": "image",
            "input": {"name": "input", "layout": "NHWC"},
            "output": {"name": "probs", "scores": "probabilities"},
            "labels_file": "labels.txt",
            "preprocess": {"size": [64, 32], "scale": 1, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            "layers": {"cam": "/layer4/relu/Relu_output_0"},
            "gradients": "exported",
            "exported_gradients": {"seed": "seed", "input_gradient": "grad"},
            "batching": {"max_batch_rows": 64, "max_delay_ms": 2, "spin": "run"},
        },
        tmp_path,
    )
    assert config.layout == "NHWC" and config.scores == "probabilities"
    assert config.labels is None and config.labels_file == "labels.txt"
    assert config.preprocess is not None
    assert config.preprocess.size == (64, 32) and config.preprocess.scale == 1.0
    assert config.preprocess.mean == (0.5, 0.5, 0.5)
    assert config.gradients == "exported" and config.exported_gradients == ("seed", "grad")
    assert config.max_batch_rows == 64 and config.max_delay_ms == 2.0 and config.spin == "run"
    # YAML 1.1 reads an unquoted `off` as false; it means off.
    assert parse_model_config({"kind": "image", "batching": {"spin": False}}, tmp_path).spin == "off"


def test_symlinked_file_reference_outside_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (tmp_path / "secret.txt").write_text("x\n")
    (folder / "labels.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ModelConfigError, match="labels_file: 'labels.txt' resolves outside the model folder"):
        parse_model_config({"kind": "image", "labels_file": "labels.txt"}, folder)


def test_a_model_below_opset_11_is_failed_with_the_reason(tmp_path):
    """explaind's graph prefixes need opset 11; older models are refused at load, not at first use."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["input", "W"], ["logits"])], "old",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(np.ones((4, 2), np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 5
    folder = tmp_path / "old"
    folder.mkdir()
    onnx.save_model(model, str(folder / "model.onnx"))
    (folder / "model.yaml").write_text("kind: tabular\n")
    repo = ModelRepository(tmp_path)
    repo.scan()
    entry = repo.get("old")
    assert entry.status == "FAILED" and "opset 10" in entry.reason and "opset 11" in entry.reason


@pytest.mark.parametrize("data, message", [
    ({"kind": "tabular", "gradients": "exported"}, "exported_gradients: required with gradients: exported"),
    ({"kind": "tabular", "gradients": "exported", "exported_gradients": {"seed": "s"}},
     "exported_gradients.input_gradient: required"),
    ({"kind": "tabular", "exported_gradients": {"seed": "s", "input_gradient": "g"}},
     "only allowed with gradients: exported"),
])
def test_exported_gradients_config_is_checked(tmp_path: Path, data, message) -> None:
    with pytest.raises(ModelConfigError, match=message):
        parse_model_config(data, tmp_path)
