"""Train the shapes demo's image generator, the learned prior of activation maximisation (DGN-AM).

Nguyen et al. 2016 ("Synthesizing the preferred inputs for neurons in neural networks via deep
generator networks") maximise a class score over the code of an image generator G, image = G(code),
the ascent moving the code and clipping it to the range the training codes take, so that the
images stay ones G can make. Their G inverts a network's fc6 features (Dosovitskiy & Brox 2016, with
image, feature and adversarial losses). The demo's G is smaller and simpler: the decoder of an
autoencoder trained on the shapes data (make_dataset(n, seed=1)), |G(E(x)) - x|^2 + 1e-3 |E(x)|^2,
a 32-value code; a decoder of the classifier's own pooled features was tried first and learns nothing
(those 64 values say which class, not where the object is or what the clutter looks like: its loss
stayed at the data's variance). G: Gemm to 32 x 4 x 4, then nearest 2x upsampling, conv3x3, ReLU
twice, upsampling and conv3x3 to 3 channels at 32 x 32, a last nearest 2x upsampling, sigmoid to
pixels, the model's normalisation. G outputs the model's input space, so explaind composes it in
front of the model unchanged (onnxgraph/compose.py: chain). No adversarial term.

Upsampling is a reshape-expand-reshape (no Resize or ConvTranspose: explaind's autodiff has rules for
Expand, Reshape, Conv, Gemm, Relu, Sigmoid). The file records in its metadata the code's size
(`explaind.latent_size`), the clip bounds (`explaind.latent_min` and `explaind.latent_max`: the
smallest and largest value of the training codes; their 1st and 99th percentiles, [-2.1, 2.5], kept
the star class below 0.4 in the ascent) and the codes' mean (`explaind.latent_mean`, comma-separated:
where a DGN-AM ascent starts).

Dev-only (torch):
    python -m explaind.demo.train_generator      # ~6 min on 2 busy CPU cores; writes repository/shapes/generator.onnx
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

from explaind.demo.shapes_data import make_dataset
from explaind.demo.train_shapes import MEAN, REPO_DIR, STD, preprocess

LATENT = 32
BASE = 4  # the decoder's first feature map is BASE x BASE
FILE = "generator.onnx"
CODE_PENALTY = 1e-3  # keeps the codes near the origin (a weak prior on the latent space)


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
    """code [N, 32] -> the model's input [N, 3, 64, 64]: (sigmoid(decoder(code)) - mean) / std; the
    decoder works at 32 x 32 and its last upsampling is nearest (2 x 2 blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(LATENT, 32 * BASE * BASE)
        self.relu0 = nn.ReLU()
        self.up1, self.conv1, self.relu1 = Upsample2(32, 4), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()
        self.up2, self.conv2, self.relu2 = Upsample2(32, 8), nn.Conv2d(32, 16, 3, padding=1), nn.ReLU()
        self.up3, self.conv3 = Upsample2(16, 16), nn.Conv2d(16, 3, 3, padding=1)
        self.up4 = Upsample2(3, 32)
        self.register_buffer("mean", torch.tensor(MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).reshape(1, 3, 1, 1))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = self.relu0(self.fc(code)).reshape(-1, 32, BASE, BASE)
        x = self.relu1(self.conv1(self.up1(x)))
        x = self.relu2(self.conv2(self.up2(x)))
        pixels = torch.sigmoid(self.up4(self.conv3(self.up3(x))))
        return (pixels - self.mean) / self.std


class Encoder(nn.Module):
    """image [N, 3, 64, 64] -> code [N, 32] (training only): 2x2 average pooling, three stride-2 convs, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1),
                                 nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(32 * 4 * 4, LATENT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train(n_train: int, epochs: int, batch: int, lr: float, seed: int) -> tuple[Generator, torch.Tensor]:
    """An autoencoder on make_dataset(n_train, seed=1): |G(E(x)) - x|^2 + CODE_PENALTY |E(x)|^2; returns G
    and the training images' codes."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    images, _, _ = make_dataset(n_train, seed=1)
    x = torch.from_numpy(preprocess(images))
    print(f"data: {n_train} images in {time.perf_counter() - t0:.1f}s", flush=True)
    gen, enc = Generator(), Encoder()
    opt = torch.optim.Adam([*gen.parameters(), *enc.parameters()], lr=lr)
    steps = epochs * ((n_train + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(n_train, generator=order)
        total = 0.0
        for i in range(0, n_train, batch):
            idx = perm[i:i + batch]
            code = enc(x[idx])
            loss = ((gen(code) - x[idx]) ** 2).mean() + CODE_PENALTY * (code ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / n_train:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    with torch.no_grad():
        codes = torch.cat([enc(x[i:i + 500]) for i in range(0, n_train, 500)])
    return gen.eval(), codes


def export(gen: Generator, codes: torch.Tensor, out: Path) -> None:
    """Write the generator (opset 17, dynamic batch, input "code", output "image") with its metadata,
    checked against torch (1e-4)."""
    path = out / FILE
    torch.onnx.export(gen, (codes[:2],), str(path), input_names=["code"], output_names=["image"], opset_version=17,
                      dynamic_axes={"code": {0: "N"}, "image": {0: "N"}}, dynamo=False, do_constant_folding=True)
    proto = onnx.load(str(path))
    latent_min, latent_max = float(codes.min()), float(codes.max())
    mean = codes.numpy().mean(axis=0)
    for key, value in (("explaind.latent_size", str(LATENT)), ("explaind.latent_min", f"{latent_min:.6g}"),
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
          f"latent range [{latent_min:.4g}, {latent_max:.4g}]")
    if diff >= 1e-4:
        raise RuntimeError(f"ONNX export mismatch: {diff}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen, codes = train(args.n_train, args.epochs, args.batch, args.lr, args.seed)
    export(gen, codes, args.out)
    name_in_yaml(args.out / "model.yaml")


def name_in_yaml(path: Path) -> None:
    """model.yaml's `generator: generator.onnx` line, added when it is missing (train_shapes writes the file)."""
    if path.exists() and not any(line.startswith("generator:") for line in path.read_text().splitlines()):
        path.write_text(path.read_text() + f"generator: {FILE}\n")


if __name__ == "__main__":
    main()
