"""SmoothGrad through the real engine, on a quadratic model whose gradient is 2x: the mean over the
noisy copies the graph makes (tests/oracles/noise.py reproduces the noise)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from explaind.engine.engine import ServedModel
from explaind.methods.smooth_grad import SmoothGrad
from explaind.models.white_box import WhiteBox
from explaind.onnxgraph.signature import ModelSignature
from oracles.noise import gaussian_noise_reference

from inprocess import explain

SHAPE = (3, 6, 5)
X = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


def quadratic_model() -> onnx.ModelProto:
    """logits = [sum(x^2), sum(x)]: the gradient of logit 0 is 2x, so SmoothGrad's mean is 2 * mean(noisy x)."""
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Mul", ["flat", "flat"], ["sq"]),
             helper.make_node("MatMul", ["sq", "ones"], ["a"]), helper.make_node("MatMul", ["flat", "ones"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["logits"], axis=1)]
    size = int(np.prod(SHAPE))
    graph = helper.make_graph(nodes, "quadratic", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(np.ones((size, 1), np.float32), "ones")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_smooth_grad_averages_gradients_at_noisy_copies_made_in_the_graph():
    served = ServedModel("quad", quadratic_model(), ModelSignature("input", "logits", SHAPE, "NCHW", "logits"), 16, 1.0)
    result, params = explain(SmoothGrad(), {"num_samples": 20, "noise_level": 0.2}, served, X, 0, "logit", seed=9,
                             white_box=WhiteBox(True))
    sigma = 0.2 * float(X.max() - X.min())
    seeds = np.random.default_rng(9).integers(0, 2**31 - 1, size=20, dtype=np.int64)
    noise = gaussian_noise_reference(seeds, X.size).reshape(20, *SHAPE)
    expected = (2 * (X[None] + np.float32(sigma) * noise)).mean(axis=0)
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(result.attribution, 2 * X, atol=1e-3)  # the noise was really there
    assert result.model_evaluations == 1 + 20


def test_smooth_grad_cut_by_the_deadline_is_the_mean_over_the_samples_used():
    import asyncio
    import time

    from explaind.config import Settings
    from explaind.engine.engine import Engine
    from inprocess import run_method, slowed

    served = ServedModel("quad", quadratic_model(), ModelSignature("input", "logits", SHAPE, "NCHW", "logits"), 16, 1.0)
    params = {"num_samples": 5000, "noise_level": 0.2}

    async def main():
        engine = Engine(Settings(intra_op_threads=1))
        try:
            await run_method(engine, served, SmoothGrad(), {**params, "num_samples": 2}, X, 0, "logit",
                             white_box=WhiteBox(True))  # session built
            return await run_method(engine, served, slowed(SmoothGrad(), 0.02), params, X, 0, "logit", seed=9,
                                    deadline=time.monotonic() + 1.0, allow_partial=True, white_box=WhiteBox(True))
        finally:
            await engine.close()

    result, _ = asyncio.run(main())
    used = result.model_evaluations - 1
    assert not result.complete and 16 <= used < 5000 and result.planned_evaluations == 5001
    sigma = 0.2 * float(X.max() - X.min())
    seeds = np.random.default_rng(9).integers(0, 2**31 - 1, size=5000, dtype=np.int64)[:used]
    noise = gaussian_noise_reference(seeds, X.size).reshape(used, *SHAPE)
    expected = (2 * (X[None] + np.float32(sigma) * noise)).mean(axis=0)  # the mean over those used, not / 5000
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-5)
