"""Helpers shared by the reference tests that compare explaind's methods with the libraries users
trust (test_<method>_vs_captum.py, test_grad_cam_plus_plus_vs_pytorch_grad_cam.py, test_score_cam.py,
test_cam.py; rel_err and the pytorch-grad-cam import also tests/integration/test_cam_methods.py), on
the same torch models.

explaind runs through the real engine in process (inprocess.InProcess: Engine, ServedModel, ModelView
with a WhiteBox, method.parameters + method.explain; the `xp` fixture of conftest.py) on the zoo's
exported ONNX model (float32, onnxruntime CPU, its gradients derived from the ONNX graph); the
references run on the torch model the ONNX was exported from. Score: the logit of a fixed target class
per model (TARGET). Inputs: standard normal (the `case` fixture). Relative error = max|explaind -
reference| / max|reference|, tolerance TOL = 1e-3 (rel_err, check); `summary` prints the largest per
(check, model) at the end of the run.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections import defaultdict
from typing import Any

import numpy as np
import torch

TOL = 1e-3
IMAGE = ["resnet", "vgg"]
ALL = ["resnet", "vgg", "mlp"]
TARGET = {"resnet": 3, "vgg": 2, "mlp": 1}  # a fixed class per model (hence per input)
# The names differentiate() gives the seed input and the gradient outputs of the graphs built here.
SEED = "explaind::seed"
GRAD = "explaind::grad::"


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """max|actual - expected| / max|expected| (one scale for the whole map; `expected` is the
    library's result)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-12))


def check(summary: Summary, name: str, model: str, actual: np.ndarray, expected: np.ndarray,
          tol: float = TOL) -> float:
    err = rel_err(actual, expected)
    summary.record(name, model, err)
    assert np.max(np.abs(expected)) > 0, f"{name}/{model}: the reference is all zeros (a vacuous comparison)"
    assert err <= tol, f"{name}/{model}: relative error {err:.2e} > {tol:.0e}"
    return err


def logits(ex, xs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ex.torch_model(torch.from_numpy(np.ascontiguousarray(xs, np.float32))).double().numpy()


class Summary:
    """Prints the largest relative error per (check, model) at the end of the run, and the time spent
    in the modules that compared (`elapsed`, summed by conftest's module timer)."""

    def __init__(self) -> None:
        self.errors: dict[str, dict[str, float]] = defaultdict(dict)
        self.elapsed = 0.0

    def record(self, check: str, model: str, value: float) -> None:
        self.errors[check][model] = max(value, self.errors[check].get(model, 0.0))

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.errors:
            return
        terminalreporter.section("explaind vs Captum / pytorch-grad-cam / torch: max relative error")
        for check in self.errors:
            detail = "  ".join(f"{m}={v:.1e}" for m, v in self.errors[check].items())
            terminalreporter.write_line(f"{check:34s} {detail}")
        terminalreporter.write_line(f"(time in these modules {self.elapsed:.1f} s)")


def relu_mask_flips(ex: Any, xs: np.ndarray, threads: int = 2) -> list[tuple[int, str, float, float]]:
    """Where torch and onnxruntime disagree on a ReLU's mask for the rows of `xs`.

    A pre-activation within float32 rounding of 0 (|z| ~ 1e-7 of the layer's scale) can be positive
    in torch and <= 0 in onnxruntime (other summation orders, fused Conv+BatchNormalization): the
    gradient of that row then differs by that unit's whole contribution, a disagreement about
    rounding, not about the method. Returns (row, ONNX node, z in torch, z in onnxruntime) for the
    first unit of each disagreeing (row, node). onnxruntime runs as explaind's sessions do
    (ORT_ENABLE_ALL); every ONNX Relu comes from one nn.ReLU module (zoo.py)."""
    import onnx
    import onnxruntime as ort
    import torch
    from torch import nn

    import zoo

    relus = [n for n in ex.onnx_model.graph.node if n.op_type == "Relu"]
    model = onnx.ModelProto()
    model.CopyFrom(ex.onnx_model)
    for node in relus:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.input[0]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ort_z = session.run(None, {"input": np.ascontiguousarray(xs, np.float32)})[1:]

    torch_z: dict[str, np.ndarray] = {}
    modules = {name: m for name, m in ex.torch_model.named_modules() if isinstance(m, nn.ReLU)}
    handles = [m.register_forward_hook(lambda m, args, out, name=name: torch_z.__setitem__(name, args[0].numpy()))
               for name, m in modules.items()]
    try:
        with torch.no_grad():
            ex.torch_model(torch.from_numpy(np.ascontiguousarray(xs, np.float32)))
    finally:
        for h in handles:
            h.remove()
    flips = []
    for node, o in zip(relus, ort_z):
        t = torch_z[zoo.module_of_node(node)]
        for row in range(len(xs)):
            differ = np.argwhere((t[row] > 0) != (o[row] > 0))
            if len(differ):
                at = (row, *differ[0])
                flips.append((row, node.name, float(t[at]), float(o[at])))
    return flips


# pytorch-grad-cam -----------------------------------------------------------------------------

TORCHVISION_STUBBED = ""  # why, when the stub below was installed


def _torchvision_stub(reason: str) -> None:
    """A stand-in for torchvision holding only the names pytorch-grad-cam imports at module level.

    pytorch-grad-cam (package `grad-cam`) requires torchvision, but the torchvision wheels the
    registries offer for torch 2.13.0 are CUDA builds: their `_C.so` needs libc10_cuda.so, and
    `import torchvision` then fails against the CPU torch ("operator torchvision::nms does not
    exist"). GradCAMPlusPlus itself never calls torchvision: it is imported by
    utils/image.py (Compose, Normalize, ToTensor: preprocessing helpers), utils/model_targets.py
    (torchvision.ops.box_iou: detection targets) and sess.py (resize: the SESS method). Those names
    are given stubs that raise if called, so that the library's own GradCAMPlusPlus code runs as is.
    """

    def unavailable(name: str):
        def call(*args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(f"torchvision.{name} is a test stub ({reason})")
        return call

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    for name in ("Compose", "Normalize", "ToTensor", "Resize"):
        setattr(transforms, name, unavailable(f"transforms.{name}"))
    functional.resize = unavailable("transforms.functional.resize")
    ops.box_iou = unavailable("ops.box_iou")
    transforms.functional = functional
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    for name in ("ResNet", "Bottleneck", "BasicBlock"):  # zennit's canonizers match these; TorchRay imports them
        setattr(resnet, name, type(name, (torch.nn.Module,), {"__init__": unavailable(f"models.resnet.{name}")}))
    models.resnet = resnet
    tv.transforms, tv.ops, tv.models = transforms, ops, models
    tv.__version__ = "0+stub"
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional, "torchvision.ops": ops,
                        "torchvision.models": models, "torchvision.models.resnet": resnet})


def stub_torchvision_if_broken() -> None:
    """Install the torchvision stub when the real one cannot be imported: pytorch-grad-cam needs it, and
    Quantus imports Zennit when it is installed, which imports torchvision.models.resnet."""
    global TORCHVISION_STUBBED
    if TORCHVISION_STUBBED or "torchvision" in sys.modules:
        return
    try:
        importlib.import_module("torchvision")
    except Exception as exc:  # noqa: BLE001  (a broken binary raises RuntimeError/OSError)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        TORCHVISION_STUBBED = f"torchvision cannot be imported here: {type(exc).__name__}: {exc}"
        _torchvision_stub(TORCHVISION_STUBBED)


def import_zennit() -> types.ModuleType:
    """The zennit package (the real one; torchvision stubbed only when it cannot be imported)."""
    stub_torchvision_if_broken()
    return importlib.import_module("zennit")


def import_pytorch_grad_cam() -> types.SimpleNamespace:
    """The CAM classes (GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM, ...), ClassifierOutputTarget and scale_cam_image from pytorch-grad-cam (the
    real package); torchvision is stubbed only when it cannot be imported (see _torchvision_stub)."""
    stub_torchvision_if_broken()
    import pytorch_grad_cam as library
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cams = ("GradCAM", "GradCAMPlusPlus", "ScoreCAM", "XGradCAM", "LayerCAM", "HiResCAM", "GradCAMElementWise",
            "EigenCAM", "EigenGradCAM", "AblationCAM")
    return types.SimpleNamespace(**{name: getattr(library, name) for name in cams},
                                 ClassifierOutputTarget=ClassifierOutputTarget, scale_cam_image=scale_cam_image)
