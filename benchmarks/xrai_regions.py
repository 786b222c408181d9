#!/usr/bin/env python3
"""XRAI's region search (explaind's xrai_regions) against the PAIR saliency package's XRAI._xrai on
the same attributions and segments: median seconds of each over a few random attributions on a
224 x 224 image's felzenszwalb masks (saliency's six scales), their ratio in the same run, and
whether the region maps and rankings are identical. Needs the dev extra (saliency).

    python benchmarks/xrai_regions.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from saliency.core import xrai as saliency_xrai
from skimage import data

from explaind.methods.xrai import SCALES, segment_masks, xrai_regions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    image = data.astronaut()[::2, ::2][:224, :224].astype(np.float32) / 255
    masks = segment_masks(image, 224, SCALES, 0.8, 150, 5)
    ours, theirs, same = [], [], True
    for seed in range(args.repeats):
        attr = np.random.default_rng(seed).normal(size=(224, 224)) + np.linspace(0, 2, 224)[None]
        started = time.perf_counter()
        gains, ranks, _ = xrai_regions(attr, masks, 1.0, 50)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        ref_gains, ref_ranks = saliency_xrai.XRAI._xrai(attr, list(masks), min_pixel_diff=50)
        theirs.append(time.perf_counter() - started)
        same = same and np.array_equal(ranks, ref_ranks) and np.array_equal(gains, ref_gains)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{len(masks)} masks, 224 x 224: explaind {a:.3f} s, saliency {b:.3f} s (median of {args.repeats}); "
          f"saliency / explaind = {b / a:.1f}; identical maps and ranks: {same}; load {load}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
