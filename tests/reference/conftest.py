"""Fixtures for the reference tests: the zoo exported once per session, gradient graphs built once
per (model, rule), onnxruntime sessions reused, explaind in process on one engine for the whole run
(`xp`), the inputs of the library comparisons (`case`), and logs of the relative errors observed
(printed in the terminal summary)."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import zoo  # noqa: E402
from _methods import GRAD, SEED, TARGET, Summary, stub_torchvision_if_broken  # noqa: E402

stub_torchvision_if_broken()  # before any test module imports Quantus (which imports Zennit, then torchvision)

from explaind.config import Settings  # noqa: E402
from explaind.onnxgraph.autodiff import differentiate  # noqa: E402
from inprocess import InProcess, served_onnx  # noqa: E402

_ERRORS = pytest.StashKey[dict]()


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@dataclass
class Exported:
    entry: zoo.ZooEntry
    torch_model: torch.nn.Module
    onnx_model: onnx.ModelProto
    layer: str  # the ONNX name of the layer tensor
    _sessions: dict = field(default_factory=dict)
    _in_process: tuple | None = None

    @property
    def in_process(self) -> tuple:
        """(ServedModel, ModelView) of the exported model as explaind serves it (inprocess.served_onnx),
        the `model` of InProcess.explain."""
        if self._in_process is None:
            served, view = served_onnx(self.entry.name, self.onnx_model, self.torch_model.input_shape)
            if view.kind == "image":
                # The zoo's layer; for VGG (MaxPool then Flatten, no global pooling) explaind has no
                # default layer of its own, so the tests always pass `layer` explicitly.
                assert self.layer in view.white_box.layers, (self.layer, view.white_box.layers)
            self._in_process = (served, view)
        return self._in_process

    def forward_session(self) -> ort.InferenceSession:
        """The exported model with the layer tensor as a second output."""
        if "forward" not in self._sessions:
            model = onnx.ModelProto()
            model.CopyFrom(self.onnx_model)
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(self.layer))
            self._sessions["forward"] = _session(model)
        return self._sessions["forward"]

    def gradient_session(self, rule: str) -> ort.InferenceSession:
        if rule not in self._sessions:
            derived = differentiate(self.onnx_model, "logits", ["input", self.layer], rule=rule, seed_name=SEED, grad_prefix=GRAD)
            onnx.checker.check_model(derived)
            self._sessions[rule] = _session(derived)
        return self._sessions[rule]


@pytest.fixture(scope="session")
def exported():
    """exported(name) -> Exported, built on first use."""
    torch.set_num_threads(2)
    cache: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in cache:
            entry = zoo.ZOO[name]
            model = entry.build()
            proto = zoo.export(model, None)
            cache[name] = Exported(entry, model, proto, entry.find_layer(proto))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def xp():
    """explaind's methods in process on one Engine and one event loop for the whole run, so each variant
    graph (plain, guided, deconvnet, with or without a layer; input, line or noise path) is built and
    compiled once per model, as the server would. Score: the logit unless a call says otherwise."""
    e = InProcess(Settings(intra_op_threads=2, providers="cpu"), score="logit")
    yield e
    e.close()


@pytest.fixture(scope="session")
def summary(request):
    """The largest relative error per (check, model) of the library comparisons, printed at the end."""
    s = Summary()
    request.config.pluginmanager.register(s, "explaind-library-comparison-summary")
    return s


@pytest.fixture(scope="module")
def _module_time(summary):
    started = time.perf_counter()
    yield
    summary.elapsed += time.perf_counter() - started


@pytest.fixture
def case(exported, xp, summary, _module_time):
    """case(name) -> (Exported, x [no batch dim], x as a [1, ...] tensor, target)."""

    def get(name: str):
        ex = exported(name)
        x = np.random.default_rng(100 + list(TARGET).index(name)).standard_normal(
            ex.torch_model.input_shape).astype(np.float32)
        return ex, x, torch.from_numpy(x[None].copy()), TARGET[name]

    return get


@pytest.fixture(scope="session")
def error_log(request):
    """error_log(model, check, value): keep the largest relative error per (model, check)."""
    log = request.config.stash.setdefault(_ERRORS, defaultdict(dict))

    def record(model: str, check: str, value: float) -> None:
        log[model][check] = max(value, log[model].get(check, 0.0))

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    log = config.stash.get(_ERRORS, None)
    if not log:
        return
    terminalreporter.section("explaind autodiff vs torch autograd: max relative error")
    for model in sorted(log):
        groups: dict[str, dict[str, float]] = defaultdict(dict)  # "plain/random:input" -> plain, input
        for check, value in log[model].items():
            head, key = check.split(":")
            group = groups[head.split("/")[0]]
            group[key] = max(value, group.get(key, 0.0))
        worst = max(log[model].values())
        detail = " | ".join(
            f"{g}: " + " ".join(f"{k}={v:.1e}" for k, v in sorted(keys.items())) for g, keys in sorted(groups.items())
        )
        terminalreporter.write_line(f"{model:12s} max={worst:.1e}  {detail}")
