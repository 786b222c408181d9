"""Helpers for test_captum_agreement.py: explaind's methods run through the real engine in-process
on the zoo's exported ONNX models, the relative error, and pytorch-grad-cam's import.

One Engine and one event loop serve every call of a test module, so each variant graph (plain,
guided, deconvnet, with or without a layer; input, line or noise path) is built and compiled once
per model, as the server would.
"""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any

import numpy as np

from explaind.config import Settings
from explaind.engine.engine import Engine, ServedModel
from explaind.methods.base import Method, ModelView
from explaind.models.white_box import WhiteBox
from explaind.models.white_box import four_d_activations, last_pooled_activation
from explaind.onnxgraph.signature import ModelSignature
from inprocess import Outcome, run_method


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """max|actual - expected| / max|expected| (one scale for the whole map; `expected` is the
    library's result)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-12))


class Explaind:
    """explaind's methods on exported zoo models, through one Engine on one private event loop."""

    def __init__(self, threads: int = 2) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = Engine(Settings(intra_op_threads=threads, providers="cpu"))
        self._models: dict[str, tuple[ServedModel, ModelView]] = {}

    def model(self, ex: Any) -> tuple[ServedModel, ModelView]:
        """The ServedModel and ModelView (with its WhiteBox) of a conftest `Exported` entry."""
        name = ex.entry.name
        if name not in self._models:
            shape = tuple(ex.torch_model.input_shape)
            image = len(shape) == 3
            signature = ModelSignature("input", "logits", shape, "NCHW" if image else "tabular", "logits")
            served = ServedModel(name, ex.onnx_model, signature, 64, 1.0)
            if image:
                layers = four_d_activations(ex.onnx_model)
                # The zoo's layer; for VGG (MaxPool then Flatten, no global pooling) explaind has no
                # default layer of its own, so the tests always pass `layer` explicitly.
                assert ex.layer in layers, (ex.layer, layers)
                white_box = WhiteBox(True, "", tuple(layers), last_pooled_activation(ex.onnx_model, set(layers)))
            else:
                white_box = WhiteBox(True, "", (), "")
            self._models[name] = (served, ModelView("image" if image else "tabular", signature, None, white_box,
                                                    None, ex.onnx_model))
        return self._models[name]

    def explain(self, method: Method, given: dict[str, Any], ex: Any, x: np.ndarray, target: int,
                score: str = "logit", seed: int = 1) -> tuple[Outcome, dict[str, Any]]:
        served, view = self.model(ex)
        return self.loop.run_until_complete(run_method(self.engine, served, method, given, x, target, score, seed,
                                                       view=view))

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.close())
        self.loop.close()


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
    tv.transforms, tv.ops = transforms, ops
    tv.__version__ = "0+stub"
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional, "torchvision.ops": ops})


def import_pytorch_grad_cam() -> types.SimpleNamespace:
    """GradCAMPlusPlus, ScoreCAM, ClassifierOutputTarget and scale_cam_image from pytorch-grad-cam (the
    real package); torchvision is stubbed only when it cannot be imported (see _torchvision_stub)."""
    global TORCHVISION_STUBBED
    if "pytorch_grad_cam" not in sys.modules and not TORCHVISION_STUBBED:
        try:
            import torchvision  # noqa: F401
        except Exception as exc:  # noqa: BLE001  (a broken binary raises RuntimeError/OSError)
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]
            TORCHVISION_STUBBED = f"torchvision cannot be imported here: {type(exc).__name__}: {exc}"
            _torchvision_stub(TORCHVISION_STUBBED)
    from pytorch_grad_cam import GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return types.SimpleNamespace(GradCAMPlusPlus=GradCAMPlusPlus, ScoreCAM=ScoreCAM,
                                 ClassifierOutputTarget=ClassifierOutputTarget, scale_cam_image=scale_cam_image)
