"""Activation maximisation: explaind against the same ascent written in torch, on the shapes demo.

explaind: one request of `--steps` steps (one engine job of one row per step, the gradient from the
ONNX graph by onnxruntime) and `--concurrent` requests at once (their steps share engine batches).
torch: the same Adam ascent on the demo CNN's torch twin (built from the same ONNX weights), one
request after another. Pixel parameterisation, the class logit, no regularisers beyond L2; both on
the same `--threads` threads. Reported: median seconds per request over `--repeats`, the ratio, and
the load average beside them. Run: python benchmarks/bench_activation_maximization.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from explaind.config import Settings
from explaind.demo.train_shapes import ShapesNet
from explaind.engine.engine import Engine
from explaind.explainer import Explainer, ExplainQuery
from explaind.models.repository import ModelRepository


def torch_twin(path) -> torch.nn.Module:
    net = ShapesNet()
    state = {t.name: torch.tensor(numpy_helper.to_array(t)) for t in onnx.load(str(path)).graph.initializer}
    net.load_state_dict(state, strict=False)
    return net.eval()


def torch_ascent(net: torch.nn.Module, steps: int, target: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    p = torch.tensor(0.01 * rng.standard_normal((1, 3, 64, 64), dtype=np.float32), requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.05)
    for _ in range(steps):
        (grad,) = torch.autograd.grad(net(p)[0, target], p)
        p.grad = -(grad - 2e-4 * p.detach())
        opt.step()
        with torch.no_grad():
            p.clamp_(-2.0, 2.0)
    return p.detach()


async def explaind_runs(settings: Settings, steps: int, concurrent: int, repeats: int) -> tuple[float, float]:
    repo = ModelRepository(settings.repository_path)
    repo.scan()
    engine = Engine(settings)
    explainer = Explainer(settings, repo, engine)
    x = np.zeros((3, 64, 64), np.float32)

    def query(i: int) -> ExplainQuery:
        return ExplainQuery(model="shapes", method="activation_maximization", tensor=x, target_index=i % 5,
                            seed=i + 1, params={"steps": steps})

    try:
        await explainer.explain(query(0))  # warm: the variant's session is built once
        one, many = [], []
        for _ in range(repeats):
            began = time.perf_counter()
            await explainer.explain(query(1))
            one.append(time.perf_counter() - began)
            began = time.perf_counter()
            await asyncio.gather(*(explainer.explain(query(i)) for i in range(concurrent)))
            many.append((time.perf_counter() - began) / concurrent)
        return statistics.median(one), statistics.median(many)
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings(intra_op_threads=args.threads)
    load_before = os.getloadavg()[0]
    one, per_request = asyncio.run(explaind_runs(settings, args.steps, args.concurrent, args.repeats))
    net = torch_twin(settings.repository_path / "shapes" / "model.onnx")
    torch_ascent(net, 5, 0, 0)  # warm
    times = []
    for r in range(args.repeats):
        began = time.perf_counter()
        torch_ascent(net, args.steps, r % 5, r)
        times.append(time.perf_counter() - began)
    theirs = statistics.median(times)
    load_after = os.getloadavg()[0]
    print(f"{args.steps} steps, {args.threads} threads, load average {load_before:.2f} -> {load_after:.2f}")
    print(f"explaind, one request:                {one:.3f} s ({one / args.steps * 1000:.2f} ms/step)")
    print(f"explaind, {args.concurrent} concurrent, per request: {per_request:.3f} s")
    print(f"torch, one request:                   {theirs:.3f} s ({theirs / args.steps * 1000:.2f} ms/step)")
    print(f"ratio explaind / torch: {one / theirs:.2f} (one), {per_request / theirs:.2f} (concurrent)")


if __name__ == "__main__":
    main()
