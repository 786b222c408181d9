"""Extremal perturbation's achieved areas and single-mask pointing, explaind beside TorchRay.

    python benchmarks/extremal_areas.py [--images 20] [--seed 4242] [--at-224]

1. TorchRay's area penalty alone: minimise mean (sort(m) - r_a)^2 over TorchRay's own MaskGenerator (no
   score at all, Adam from a disc of the right area) and print how far the minimiser's mean lies above a,
   at 64 px (step 2, sigma 6: explaind's defaults there) and, with --at-224, at 224 px (TorchRay's
   step 7, sigma 21; measured: +0.005, +0.002, +0.009, +0.018 for a = 0.025, 0.05, 0.1, 0.2).
   The masks of a full run cannot be expected closer to their area than this.
2. Held-out shapes images: explaind's default run (area 0.1, exact gradients; its masks projected onto
   their area, and without the projection, TorchRay's last iterate) and TorchRay's
   `extremal_perturbation` on the torch twin of the same CNN with the same sizes (its area on the padded
   canvas set so that it is 0.1 of the image): each mask's mean minus 0.1, and whether its maximum lies
   strictly inside the object's box, for the mask itself (np.argmax: the first pixel of its plateau at 1)
   and for the mask blurred as TorchRay's pointing benchmark does (`smooth` 0.09: explaind's attribution).

A diagnosis script, not part of the test suite (the held-out test in tests/reference asserts the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # inprocess.py, which the test imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference"))
from test_extremal_perturbation_vs_torchray import maximum_inside, shapes_torch  # noqa: E402  (the CNN's torch twin)
from torchray.attribution import extremal_perturbation as torchray  # noqa: E402

from explaind.config import Settings  # noqa: E402
from explaind.demo.shapes_data import make_dataset  # noqa: E402
from explaind.demo.train_shapes import preprocess  # noqa: E402
from explaind.engine.engine import Engine  # noqa: E402
from explaind.explainer import Explainer, ExplainQuery  # noqa: E402
from explaind.methods.extremal_perturbation import SMOOTH, gaussian_smooth  # noqa: E402
from explaind.models.repository import ModelRepository  # noqa: E402

AREA = 0.1


def penalty_only_excess(size: int, step: int, sigma: float, area: float, iterations: int = 1500) -> float:
    generator = torchray.MaskGenerator((size, size), step, sigma)
    h, w = generator.shape_in
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    radius = math.sqrt(area * h * w / math.pi)
    p = (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < radius**2).float()[None, None].requires_grad_(True)
    n = size * size
    reference = torch.ones(n)
    reference[: int(n * (1 - area))] = 0
    optimiser = torch.optim.Adam([p], lr=0.01)
    for _ in range(iterations):
        first, second = generator.generate(p)
        mask = first if first.numel() == n else second  # the image-sized one
        loss = ((mask.reshape(-1).sort()[0] - reference) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            p.clamp_(0, 1)
    return float(mask.detach().mean()) - area


def explaind_masks(images: np.ndarray, labels: np.ndarray, projection: bool) -> list[np.ndarray]:
    async def main():
        repository = ModelRepository(Settings().repository_path)
        repository.scan()
        engine = Engine(Settings(intra_op_threads=2))
        explainer = Explainer(engine.settings, repository, engine)
        try:
            return await asyncio.gather(*[
                explainer.explain(ExplainQuery(model="shapes", method="extremal_perturbation", tensor=x,
                                               target_index=int(label), seed=1,
                                               params={"areas": [AREA], "area_projection": projection}))
                for x, label in zip(images, labels)])
        finally:
            await engine.close()

    return [result.arrays["masks"][0] for result in asyncio.run(main())]


def torchray_masks(images: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    size = images.shape[-1]
    scale = size / 224
    step, sigma, max_blur = max(1, round(7 * scale)), 21 * scale, 20 * scale
    canvas = torchray.MaskGenerator((size, size), step, sigma).shape_out
    padded_area = AREA * size * size / (canvas[0] * canvas[1])
    original = torchray.Perturbation.__init__

    def scaled_blur(self, input, num_levels=8, max_blur_=20, type=torchray.BLUR_PERTURBATION):
        original(self, input, num_levels=num_levels, max_blur=max_blur, type=type)

    torchray.Perturbation.__init__ = scaled_blur  # TorchRay's function fixes max_blur at 20 (224 px)
    try:
        net = shapes_torch()
        out = []
        for x, label in zip(images, labels):
            masks, _ = torchray.extremal_perturbation(net, torch.tensor(x[None]), int(label), areas=[padded_area],
                                                      step=step, sigma=sigma)
            out.append(masks[0, 0].numpy())
        return out
    finally:
        torchray.Perturbation.__init__ = original


def summary(name: str, masks: list[np.ndarray], boxes: list[tuple[int, int, int, int]]) -> None:
    excess = np.array([m.mean() - AREA for m in masks])
    inside = sum(maximum_inside(m, box) for m, box in zip(masks, boxes))
    blurred_inside = sum(maximum_inside(gaussian_smooth(m, SMOOTH * min(m.shape), (0, 1)), box)
                         for m, box in zip(masks, boxes))
    print(f"{name} area - {AREA}: mean {excess.mean():+.4f}, max {excess.max():+.4f}; maximum inside the box: "
          f"mask {inside} of {len(masks)}, blurred (smooth {SMOOTH}) {blurred_inside} of {len(masks)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--at-224", action="store_true", help="also the penalty alone at 224 px (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("TorchRay's area penalty alone, its minimiser's mean minus the area:")
    for size, step, sigma in ((64, 2, 6.0), (224, 7, 21.0)) if args.at_224 else ((64, 2, 6.0),):
        row = ", ".join(f"a={a}: {penalty_only_excess(size, step, sigma, a):+.4f}" for a in (0.025, 0.05, 0.1, 0.2))
        print(f"  {size} px (step {step}, sigma {sigma:g}): {row}")
    images, labels, boxes = make_dataset(args.images, seed=args.seed)
    x = preprocess(images)
    print(f"{args.images} held-out shapes images (seed {args.seed}), area {AREA}, 800 iterations:")
    summary("explaind", explaind_masks(x, labels, projection=True), boxes)
    summary("  last iterate (area_projection false)", explaind_masks(x, labels, projection=False), boxes)
    summary("TorchRay", torchray_masks(x, labels), boxes)


if __name__ == "__main__":
    main()
