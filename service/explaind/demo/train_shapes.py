"""Train the demo "shapes" CNN and export it to the bundled model repository.

Dev-only: this is the one place torch is used. The network is deliberately
small (~13.6 M multiply-adds per image) so the service can be benchmarked on
a couple of CPU cores, while still classifying the synthetic shapes reliably.

    python -m explaind.demo.train_shapes
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from explaind.demo.shapes_data import CLASSES, make_dataset

REPO_DIR = Path(__file__).resolve().parent / "repository" / "shapes"
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, (pixel/255 - mean)/std: the exact model.yaml contract."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ShapesNet(nn.Module):
    """Four conv+BN+ReLU blocks, three max pools, global average pooling, linear head."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(3, 16), nn.MaxPool2d(2),
            *_block(16, 32), nn.MaxPool2d(2),
            *_block(32, 64), nn.MaxPool2d(2),
            *_block(64, 64),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree turns: every class is invariant to them."""
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(3)
    k = int(torch.randint(0, 4, (), generator=gen))
    return torch.rot90(x, k, (2, 3)) if k else x


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum(
        int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
        for i in range(0, len(x), batch)
    )
    return correct / len(x)


def train(n_train: int, n_val: int, epochs: int, batch: int, lr: float, seed: int) -> nn.Module:
    """Fit ShapesNet on make_dataset(n_train, seed=1), reporting accuracy on seed 2."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    xs, ys, _ = make_dataset(n_train, seed=1)
    xv, yv, _ = make_dataset(n_val, seed=2)
    x_train, y_train = torch.from_numpy(preprocess(xs)), torch.from_numpy(ys)
    x_val, y_val = torch.from_numpy(preprocess(xv)), torch.from_numpy(yv)
    print(f"data: {n_train} train / {n_val} val in {time.perf_counter() - t0:.1f}s", flush=True)

    # channels_last roughly halves the CPU cost of a training step here.
    model = ShapesNet().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * ((n_train + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n_train, generator=gen)
        total = 0.0
        for i in range(0, n_train, batch):
            idx = perm[i:i + batch]
            x = _augment(x_train[idx], gen).contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        acc = _accuracy(model, x_val, y_val)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / n_train:.4f}  val acc {acc:.4f}"
              f"  ({time.perf_counter() - t0:.0f}s)", flush=True)
    model.eval()
    return model.to(memory_format=torch.contiguous_format)


def _cam_tensor(model: onnx.ModelProto) -> str:
    """Name of the last ReLU output that feeds the global pooling node."""
    producers = {out: node for node in model.graph.node for out in node.output}
    pools = [n for n in model.graph.node if n.op_type in ("GlobalAveragePool", "ReduceMean")]
    if len(pools) != 1:
        raise RuntimeError(f"expected one global pooling node, found {len(pools)}")
    name = pools[0].input[0]
    while producers[name].op_type != "Relu":
        name = producers[name].input[0]
    return name


def export(model: nn.Module, out_dir: Path, seed: int) -> str:
    """Write model.onnx (opset 17, dynamic batch, weights inline) and return the CAM tensor."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    dummy = torch.zeros(2, 3, 64, 64)
    # The TorchScript exporter targets opset 17 directly (the torch.export one emits
    # opset 18 and fails to down-convert ReduceMean), and with constant folding off
    # it keeps BatchNormalization as graph nodes instead of fusing it into Conv:
    # gradient methods differentiate through those nodes.
    torch.onnx.export(
        model, (dummy,), str(path),
        input_names=["input"], output_names=["logits"], opset_version=17,
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        dynamo=False, do_constant_folding=False,
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    if any(p.name != path.name for p in out_dir.iterdir() if p.name.startswith("model.onnx")):
        raise RuntimeError("exporter wrote an external data file")
    ops = [n.op_type for n in proto.graph.node]
    print(f"exported {path} ({path.stat().st_size} bytes): "
          f"{ops.count('Conv')} Conv, {ops.count('BatchNormalization')} BatchNormalization, "
          f"{ops.count('Relu')} Relu")

    images, _, _ = make_dataset(64, seed=seed)
    x = preprocess(images)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x})[0]
    diff = float(np.abs(got - expected).max())
    print(f"onnxruntime vs torch logits: max abs diff {diff:.2e} on a batch of {len(x)}")
    if diff >= 1e-4:
        raise RuntimeError(f"ONNX export mismatch: {diff}")
    return _cam_tensor(proto)


def write_yaml(out_dir: Path, cam: str) -> None:
    """model.yaml for the image model; preprocess mirrors `preprocess` above."""
    labels = ", ".join(CLASSES)
    text = f"""kind: image
input: {{name: input, layout: NCHW}}
output: {{name: logits, scores: logits}}
labels: [{labels}]
preprocess: {{size: [64, 64], scale: 255, mean: {list(MEAN)}, std: {list(STD)}}}
layers: {{cam: "{cam}"}}
gradients: auto
batching: {{max_batch_rows: 64, max_delay_ms: 2}}
"""
    (out_dir / "model.yaml").write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=24000)
    parser.add_argument("--n-val", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_DIR)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = train(args.n_train, args.n_val, args.epochs, args.batch, args.lr, args.seed)
    cam = export(model, args.out, args.seed)
    write_yaml(args.out, cam)
    print(f"wrote {args.out / 'model.yaml'} (layers.cam = {cam!r})")


if __name__ == "__main__":
    main()
