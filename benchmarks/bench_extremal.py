"""Extremal perturbation: explaind against TorchRay on the same model, image sizes and settings.

The `shapes` demo CNN, its torch twin built from the same ONNX weights, TorchRay's
`extremal_perturbation` with explaind's 64-pixel sizes (step 2, sigma 6, max_blur 20 * 64/224) so both
do the same work per iteration, `--iterations` steps (TorchRay's 800 by default), one area. Reported:
seconds per explanation for one request at a time and for `--concurrent` requests at once (TorchRay
runs them one after another; explaind's steps share engine batches), median over `--repeats`, both on
the same 2 threads. Run: python benchmarks/bench_extremal.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import onnx
import torch
from onnx import numpy_helper

from explaind.config import Settings
from explaind.demo.shapes_data import make_dataset
from explaind.demo.train_shapes import ShapesNet, preprocess
from explaind.engine.engine import Engine
from explaind.explainer import Explainer, ExplainQuery
from explaind.models.repository import ModelRepository

SIZES = {"step": 2, "sigma": 6.0, "max_blur": 20.0 * 64 / 224}


def torch_twin(path) -> torch.nn.Module:
    net = ShapesNet()
    state = {t.name: torch.tensor(numpy_helper.to_array(t)) for t in onnx.load(str(path)).graph.initializer}
    net.load_state_dict(state, strict=False)
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from torchray.attribution.extremal_perturbation import extremal_perturbation

    torch.set_num_threads(2)
    settings = Settings(intra_op_threads=2)
    net = torch_twin(settings.repository_path / "shapes" / "model.onnx")
    images, labels, _ = make_dataset(args.concurrent, seed=99)
    xs = preprocess(images)

    def torchray(count: int) -> float:
        start = time.perf_counter()
        for x, label in zip(xs[:count], labels[:count]):
            extremal_perturbation(net, torch.tensor(x[None]), int(label), areas=[0.1], max_iter=args.iterations,
                                  step=SIZES["step"], sigma=SIZES["sigma"])
        return (time.perf_counter() - start) / count

    async def explaind(count: int) -> float:
        repository = ModelRepository(settings.repository_path)
        repository.scan()
        engine = Engine(settings)
        explainer = Explainer(settings, repository, engine)
        params = {"areas": [0.1], "iterations": args.iterations, **SIZES}
        await explainer.explain(ExplainQuery(model="shapes", method="extremal_perturbation", tensor=xs[0],
                                             params={**params, "iterations": 2}))  # build the session
        start = time.perf_counter()
        await asyncio.gather(*[explainer.explain(ExplainQuery(model="shapes", method="extremal_perturbation",
                                                              tensor=x, target_index=int(label), params=params))
                               for x, label in zip(xs[:count], labels[:count])])
        seconds = (time.perf_counter() - start) / count
        await engine.close()
        return seconds

    for count in (1, args.concurrent):
        ours, theirs = [], []
        for _ in range(args.repeats):  # alternate, so drifts in machine speed hit both
            ours.append(asyncio.run(explaind(count)))
            theirs.append(torchray(count))
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"{count} request(s) at once, {args.iterations} iterations: explaind {o:.2f} s/explanation, "
              f"TorchRay {t:.2f} s/explanation, speed-up {t / o:.2f}x")


if __name__ == "__main__":
    main()
