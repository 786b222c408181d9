"""Measure the exported shapes model on fresh data and write the bundled example images.

Uses only onnxruntime and numpy (no torch), i.e. exactly what the service
runs, so the accuracy printed here is the accuracy the service delivers.

    python -m explaind.demo.evaluate_shapes [--examples]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from explaind.demo.shapes_data import CLASSES, make_dataset, make_example

DEMO_DIR = Path(__file__).resolve().parent
MODEL_PATH = DEMO_DIR / "repository" / "shapes" / "model.onnx"
EXAMPLES_DIR = DEMO_DIR / "examples"
MEAN = np.array([0.5, 0.5, 0.5], dtype=np.float32)
STD = np.array([0.25, 0.25, 0.25], dtype=np.float32)


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW as declared in model.yaml: (pixel/255 - mean)/std."""
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def accuracy(sess: ort.InferenceSession, n: int, seed: int, batch: int = 256) -> float:
    """Fraction of `n` fresh images (from `seed`) whose arg-max logit is the true class."""
    images, labels, _ = make_dataset(n, seed)
    preds = np.concatenate([
        sess.run(["logits"], {"input": preprocess(images[i:i + batch])})[0].argmax(1)
        for i in range(0, n, batch)
    ])
    return float((preds == labels).mean())


def throughput(sess: ort.InferenceSession, batch: int = 64, repeats: int = 30) -> float:
    """Images per second for back-to-back batches of `batch` random-content images."""
    x = preprocess(make_dataset(batch, seed=0)[0])
    sess.run(["logits"], {"input": x})  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        sess.run(["logits"], {"input": x})
    return batch * repeats / (time.perf_counter() - t0)


def write_examples(out_dir: Path, seed: int, count: int) -> dict[str, dict[str, object]]:
    """Write `count` PNGs (at least one per class, first come first served) and boxes.json."""
    if count < len(CLASSES):
        raise ValueError(f"need at least {len(CLASSES)} examples to cover every class")
    rng = np.random.default_rng(seed)
    per_class = [0] * len(CLASSES)
    meta: dict[str, dict[str, object]] = {}
    while len(meta) < count:
        image, cls, box = make_example(rng)
        missing = sum(1 for c in per_class if c == 0)
        if per_class[cls] and count - len(meta) <= missing:
            continue  # keep room for the classes not seen yet
        name = f"{CLASSES[cls]}_{per_class[cls]}.png"
        per_class[cls] += 1
        out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out_dir / name)
        meta[name] = {"label": CLASSES[cls], "class_index": cls, "box": list(box)}
    (out_dir / "boxes.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_PATH)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--examples", action="store_true", help="also write example PNGs")
    parser.add_argument("--examples-seed", type=int, default=777)
    parser.add_argument("--examples-count", type=int, default=6)
    parser.add_argument("--examples-dir", type=Path, default=EXAMPLES_DIR)
    args = parser.parse_args(argv)

    sess = _session(args.model, args.threads)
    acc = accuracy(sess, args.n, args.seed)
    print(f"shapes held-out accuracy: {acc:.4f} ({args.n} images, seed {args.seed})")
    rate = throughput(sess)
    print(f"onnxruntime CPU throughput at batch 64: {rate:.0f} images/s "
          f"(intra_op_num_threads={args.threads})")
    if args.examples:
        meta = write_examples(args.examples_dir, args.examples_seed, args.examples_count)
        print(f"wrote {len(meta)} examples and boxes.json to {args.examples_dir}")


if __name__ == "__main__":
    main()
