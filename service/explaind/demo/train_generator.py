"""Train the shapes demo's image generator, the learned prior of activation maximisation (DGN-AM).

Nguyen et al. 2016 ("Synthesizing the preferred inputs for neurons in neural networks via deep
generator networks") maximise a class score over the code h of a generator G trained to invert a
network's features: image = G(h), h in the space of a feature layer (they use CaffeNet's fc6), and
the ascent moves h, clipped to [0, the codes' 99th percentile]. Here the features are the demo CNN's
own: h = its global-average-pooled last activation (64 values, non-negative: after a ReLU), fixed;
G is a small decoder (Gemm to 32 x 4 x 4, then four times: nearest 2x upsampling, conv3x3, ReLU;
sigmoid to pixels, the model's normalisation) trained on the shapes data to minimise
|G(h(x)) - x|^2 + feature_weight |h(G(h(x))) - h(x)|^2 (pixel and feature reconstruction; no
adversarial term: the demo's images are simple enough). G outputs the model's input space directly,
so explaind composes it in front of the model unchanged (onnxgraph/compose.py: chain).

Upsampling is a reshape-expand-reshape (no Resize or ConvTranspose: explaind's autodiff has rules for
Expand, Reshape, Conv, Gemm, Relu, Sigmoid). The file records in its metadata the code's size
(`explaind.latent_size`), the clip bounds (`explaind.latent_min` 0, `explaind.latent_max` the 99th
percentile of the codes of the training images) and the codes' mean (`explaind.latent_mean`, the start of a DGN-AM ascent,
comma-separated).

Dev-only (torch):
    python -m explaind.demo.train_generator      # ~3 min on 2 CPU cores; writes repository/shapes/generator.onnx
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from explaind.demo.shapes_data import make_dataset
from explaind.demo.train_shapes import MEAN, REPO_DIR, STD, ShapesNet, preprocess

LATENT = 64
BASE = 4  # the decoder's first feature map is BASE x BASE
FILE = "generator.onnx"


class Upsample2(nn.Module):
    """Nearest 2x upsampling as reshape, expand, reshape (exports to ops explaind differentiates)."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.channels, self.size = channels, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, s = self.channels, self.size
        x = x.reshape(-1, c, s, 1, s, 1).expand(-1, c, s, 2, s, 2)
        return x.reshape(-1, c, 2 * s, 2 * s)


class Generator(nn.Module):
    """h [N, 64] -> the model's input [N, 3, 64, 64]: (sigmoid(decoder(h)) - mean) / std."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(LATENT, 32 * BASE * BASE)
        self.relu0 = nn.ReLU()
        self.up1, self.conv1, self.relu1 = Upsample2(32, 4), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()
        self.up2, self.conv2, self.relu2 = Upsample2(32, 8), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()
        self.up3, self.conv3, self.relu3 = Upsample2(32, 16), nn.Conv2d(32, 16, 3, padding=1), nn.ReLU()
        self.up4, self.conv4 = Upsample2(16, 32), nn.Conv2d(16, 3, 3, padding=1)
        self.register_buffer("mean", torch.tensor(MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).reshape(1, 3, 1, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.relu0(self.fc(h)).reshape(-1, 32, BASE, BASE)
        x = self.relu1(self.conv1(self.up1(x)))
        x = self.relu2(self.conv2(self.up2(x)))
        x = self.relu3(self.conv3(self.up3(x)))
        pixels = torch.sigmoid(self.conv4(self.up4(x)))
        return (pixels - self.mean) / self.std


def classifier(repo: Path) -> ShapesNet:
    """The demo CNN, its weights read from the bundled ONNX file."""
    net = ShapesNet()
    state = {t.name: torch.tensor(numpy_helper.to_array(t)) for t in onnx.load(str(repo / "model.onnx")).graph.initializer}
    net.load_state_dict(state, strict=False)
    return net.eval()


def features(net: ShapesNet, x: torch.Tensor) -> torch.Tensor:
    """The code h: the pooled last activation [N, 64]."""
    return torch.flatten(net.pool(net.features(x)), 1)


def train(net: ShapesNet, n_train: int, epochs: int, batch: int, lr: float, feature_weight: float,
          seed: int) -> tuple[Generator, torch.Tensor]:
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    images, _, _ = make_dataset(n_train, seed=1)
    x = torch.from_numpy(preprocess(images))
    with torch.no_grad():
        codes = torch.cat([features(net, x[i:i + 500]) for i in range(0, len(x), 500)])
    print(f"data and codes: {n_train} images in {time.perf_counter() - t0:.1f}s", flush=True)
    for p in net.parameters():
        p.requires_grad_(False)
    gen = Generator()
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    steps = epochs * ((n_train + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(n_train, generator=order)
        total = 0.0
        for i in range(0, n_train, batch):
            idx = perm[i:i + batch]
            made = gen(codes[idx])
            loss = ((made - x[idx]) ** 2).mean()
            if feature_weight:
                loss = loss + feature_weight * ((features(net, made) - codes[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / n_train:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return gen.eval(), codes


def export(gen: Generator, codes: torch.Tensor, out: Path) -> None:
    """Write the generator (opset 17, dynamic batch, input "code", output "image") with its metadata,
    checked against torch (1e-4)."""
    path = out / FILE
    torch.onnx.export(gen, (codes[:2],), str(path), input_names=["code"], output_names=["image"], opset_version=17,
                      dynamic_axes={"code": {0: "N"}, "image": {0: "N"}}, dynamo=False, do_constant_folding=True)
    proto = onnx.load(str(path))
    latent_max = float(np.percentile(codes.numpy(), 99))
    mean = codes.numpy().mean(axis=0)
    for key, value in (("explaind.latent_size", str(LATENT)), ("explaind.latent_min", "0"),
                       ("explaind.latent_max", f"{latent_max:.6g}"),
                       ("explaind.latent_mean", ",".join(f"{v:.6g}" for v in mean))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sample = codes[:16].numpy()
    with torch.no_grad():
        expected = gen(codes[:16]).numpy()
    diff = float(np.abs(session.run(["image"], {"code": sample})[0] - expected).max())
    print(f"wrote {path} ({path.stat().st_size} bytes); onnxruntime vs torch: max abs diff {diff:.2e}; "
          f"latent_max {latent_max:.4g}")
    if diff >= 1e-4:
        raise RuntimeError(f"ONNX export mismatch: {diff}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--feature-weight", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = classifier(args.out)
    gen, codes = train(net, args.n_train, args.epochs, args.batch, args.lr, args.feature_weight, args.seed)
    export(gen, codes, args.out)


if __name__ == "__main__":
    main()
