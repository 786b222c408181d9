"""Fixtures for the reference tests: the zoo exported once per session, gradient graphs built once
per (model, rule), onnxruntime sessions reused, and a log of the relative errors observed (printed
in the terminal summary)."""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import zoo  # noqa: E402

from explaind.onnxgraph.autodiff import differentiate  # noqa: E402

SEED = "explaind::seed"
GRAD = "explaind::grad::"

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
