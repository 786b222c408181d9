#!/usr/bin/env python3
"""explaind's black-box methods against lime, shap and Captum, in one run on one machine.

    python benchmarks/bench_black_box.py      # prints a table and writes JSON to benchmarks/results/

explaind runs end to end through gRPC (a real server in its own process, started as bench.py does,
intra-op threads = cores); each peer runs in this process on the same model, with the same sample
counts, in the configuration its documentation recommends for speed. For each comparison: 3
alternating pairs (peer, then explaind; each a loop of `count` sequential explanations of one
input), explanations/s, medians; speed-up = explaind / peer (median of the pairs' ratios).

1. lime `LimeImageExplainer.explain_instance(image, classifier_fn, num_samples=1000,
   batch_size=1000, hide_color=None, top_labels=1)`, classifier_fn = onnxruntime on the shapes model
   (intra-op threads = cores, as the server), vs explaind lime (PNG, 1000 samples, quickshift). quickshift
   finds 3 superpixels on this 64x64 image, so explaind evaluates each of the <= 8 distinct perturbed
   images once (counted; the same surrogate); `lime_image_slic` is the same with slic (~107
   superpixels, no repeats: both sides evaluate 1000 images). Both explain the logit (lime's
   classifier_fn returns logits), and the table gives the Pearson correlation of the two sides'
   superpixel weights (independent draws, 1000 samples each).
2. lime `LimeTabularExplainer` (quartile discretizer, the model's background rows as training data)
   `explain_instance(row, predict_proba, num_samples=5000, top_labels=1)` vs explaind tabular lime.
3. shap `KernelExplainer(predict, background).shap_values(row, nsamples=2*13+2048, l1_reg=False)` vs
   explaind tabular kernel_shap (same nsamples, l1_reg none). shap fits all 3 outputs from the same
   model evaluations; explaind fits the predicted class (the regression is a negligible share).
4. Captum 0.9 on the torch ShapesNet with the ONNX weights (logits checked within 1e-4):
   `Occlusion` (window (3,8,8), strides (3,4,4), perturbations_per_eval=256, baseline 0) vs explaind
   occlusion (window 8, stride 4, baseline 0); `Lime` and `KernelShap` (n_samples=1000,
   perturbations_per_eval=256, feature_mask = the superpixels explaind uses (lime_core.segment),
   computed per explanation as explaind does) vs explaind lime / kernel_shap with 1000 samples.
   Captum replaces an absent superpixel by the baseline 0, so explaind runs with the same semantics:
   lime hide_value 0, kernel_shap fill "value", fill_value 0, l1_reg none. Lime uses quickshift;
   KernelShap uses slic (~107 superpixels), because lime's quickshift finds only 3-5 superpixels in
   the 64x64 demo images and Kernel SHAP then enumerates the 2^M - 2 coalitions exactly (8 rows)
   where Captum still evaluates 1000: not the same work.
The table also gives each side's model rows per explanation (the peer's counted at its model
function, explaind's from stats.model_evaluations), to show the work is the same.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # lime's image explainer shows a progress bar per call

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import MODEL_DIR, ROOT, start_server, stop_server  # noqa: E402
from bench_white_box import check_logits, cpu_snapshot, other_load, torch_model  # noqa: E402

from explaind.methods.lime_core import segment  # noqa: E402
from explaind_client import ExplaindClient  # noqa: E402

EXAMPLE = ROOT / "service" / "explaind" / "demo" / "examples" / "star_0.png"
TABULAR = MODEL_DIR / "tabular"
SHAPES = MODEL_DIR / "shapes" / "model.onnx"


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def preprocess_hwc(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] pixels (0..255) -> the model's NCHW input."""
    return ((np.asarray(images, np.float32) / 255.0 - 0.5) / 0.25).transpose(0, 3, 1, 2).copy()


def rate(fn, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - start)


ROWS = {"peer": 0}  # model rows the peers evaluated (their model functions count)


def lime_pearson(explanation, result) -> float:
    """Pearson correlation of lime's superpixel weights (its top label) and explaind's segment_weights."""
    label = explanation.top_labels[0]
    theirs = np.zeros(len(result.arrays["segment_weights"]))
    for index, weight in explanation.local_exp[label]:
        theirs[index] = weight
    return float(np.corrcoef(theirs, result.arrays["segment_weights"])[0, 1])


def pairs(peer, ours, repeats: int, count: int, agree=None) -> dict:
    ROWS["peer"] = 0
    theirs = peer()  # warm up (sessions, graph variants, first-call costs), and count each side's model rows
    peer_rows = ROWS["peer"]
    mine = ours()
    ours_rows = int(mine.stats["model_evaluations"])
    agreement = {} if agree is None else {"pearson_vs_peer": agree(theirs, mine)}
    measured = []
    for _ in range(repeats):
        theirs = rate(peer, count)
        mine = rate(ours, count)
        measured.append((mine, theirs))
    return {"count": count, "peer_rows_per_explanation": peer_rows, "explaind_rows_per_explanation": ours_rows,
            "peer_explanations_per_s": statistics.median(t for _, t in measured),
            "explaind_explanations_per_s": statistics.median(m for m, _ in measured),
            "speedup": statistics.median(m / t for m, t in measured),
            "speedups": [round(m / t, 3) for m, t in measured], **agreement}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="alternating peer/explaind pairs")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies each loop's explanation count")
    parser.add_argument("--only", nargs="*", help="run only these comparisons")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging
    logging.getLogger("shap").setLevel(logging.ERROR)

    from captum.attr import KernelShap, Lime, Occlusion
    from lime.lime_image import LimeImageExplainer
    from lime.lime_tabular import LimeTabularExplainer
    from PIL import Image
    import shap

    cores = os.cpu_count() or 1
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "machine": f"{platform.machine()}, {cores} cores, {platform.processor() or platform.platform()}",
                    "onnxruntime": ort.__version__, "torch": torch.__version__, "threads": args.threads,
                    "versions": {}}
    for name in ("lime", "shap", "captum"):
        try:
            from importlib.metadata import version
            report["versions"][name] = version(name)
        except Exception:  # pragma: no cover
            pass
    began = time.perf_counter()
    cpu_start = cpu_snapshot()

    png = EXAMPLE.read_bytes()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    x = preprocess_hwc(pixels[None])[0]
    shapes_session = session(SHAPES, args.threads)
    background = np.load(TABULAR / "background.npy").astype(np.float32)
    row = background[0].copy()
    tabular_session = session(TABULAR / "model.onnx", args.threads)
    nsamples_tabular = 2 * background.shape[1] + 2048

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        ROWS["peer"] += len(images)
        return shapes_session.run(["logits"], {"input": preprocess_hwc(images)})[0]

    def predict_proba(rows: np.ndarray) -> np.ndarray:
        ROWS["peer"] += len(rows)
        return tabular_session.run(["probabilities"], {"input": np.asarray(rows, np.float32)})[0]

    class Counted(torch.nn.Module):  # the torch model, counting the rows Captum evaluates
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            ROWS["peer"] += len(batch)
            return self.inner(batch)

    net = Counted(torch_model()).eval()
    diff = check_logits(net, x[None], args.threads)
    report["torch_vs_onnxruntime_logits_max_abs_diff"] = diff
    if diff >= 1e-4:
        raise SystemExit(f"the torch model does not reproduce the ONNX model (max abs diff {diff:.2e})")
    xt = torch.from_numpy(x[None])
    labels = segment(pixels, "quickshift")
    report["superpixels"] = {"quickshift": int(labels.max()) + 1, "slic": int(segment(pixels, "slic").max()) + 1}

    lime_image = LimeImageExplainer(random_state=0)
    lime_tabular = LimeTabularExplainer(background, mode="classification", discretize_continuous=True,
                                        discretizer="quartile", random_state=0)
    kernel = shap.KernelExplainer(predict_proba, background)
    occlusion, captum_lime, captum_shap = Occlusion(net), Lime(net), KernelShap(net)

    def captum_target() -> int:
        with torch.no_grad():
            return int(net(xt).argmax(1))

    def captum_mask(algorithm: str) -> torch.Tensor:
        return torch.from_numpy(segment(pixels, algorithm)).reshape(1, 1, *labels.shape)

    server = start_server(MODEL_DIR, args.out / "black-box-server.log", metrics_port=-1,
                          intra_op_threads=args.threads)
    results: dict = {}
    phases: dict = {}
    try:
        with ExplaindClient(server.address) as client:
            def ex(model: str, method: str, params: dict, **kw):
                return lambda: client.explain(model, method=method, params=params, **kw)

            comparisons = {  # name -> (title, peer, explaind, count)
                "lime_image": (
                    "lime image, 1000 samples",
                    lambda: lime_image.explain_instance(pixels, classifier_fn, top_labels=1, hide_color=None,
                                                        num_samples=1000, batch_size=1000),
                    ex("shapes", "lime", {"num_samples": 1000, "segmentation": "quickshift"}, image=png, score="logit"), 5),
                "lime_image_slic": (
                    "lime image slic, 1000 samples",
                    lambda: lime_image.explain_instance(pixels, classifier_fn, top_labels=1, hide_color=None,
                                                        num_samples=1000, batch_size=1000,
                                                        segmentation_fn=lambda image: segment(image, "slic")),
                    ex("shapes", "lime", {"num_samples": 1000, "segmentation": "slic"}, image=png, score="logit"), 3),
                "lime_tabular": (
                    "lime tabular, 5000 samples",
                    lambda: lime_tabular.explain_instance(row, predict_proba, top_labels=1, num_samples=5000),
                    ex("tabular", "lime", {"num_samples": 5000}, tensor=row), 20),
                "shap_kernel_tabular": (
                    f"shap Kernel, {nsamples_tabular} x 100 bg",
                    lambda: kernel.shap_values(row[None], nsamples=nsamples_tabular, l1_reg=False, silent=True),
                    ex("tabular", "kernel_shap", {"nsamples": nsamples_tabular, "l1_reg": "none"}, tensor=row), 4),
                "captum_occlusion": (
                    "Captum Occlusion 8/4",
                    lambda: occlusion.attribute(xt, target=captum_target(), sliding_window_shapes=(3, 8, 8),
                                                strides=(3, 4, 4), baselines=0, perturbations_per_eval=256),
                    ex("shapes", "occlusion", {"window": [8, 8], "stride": [4, 4], "baseline": 0.0}, tensor=x), 10),
                "captum_lime": (
                    "Captum Lime, 1000 samples",
                    lambda: captum_lime.attribute(xt, target=captum_target(), baselines=0, feature_mask=captum_mask("quickshift"),
                                                  n_samples=1000, perturbations_per_eval=256),
                    ex("shapes", "lime", {"num_samples": 1000, "segmentation": "quickshift", "hide_value": 0.0},
                       tensor=x), 4),
                "captum_kernel_shap": (
                    "Captum KernelShap, 1000, slic",
                    lambda: captum_shap.attribute(xt, target=captum_target(), baselines=0, feature_mask=captum_mask("slic"),
                                                  n_samples=1000, perturbations_per_eval=256),
                    ex("shapes", "kernel_shap", {"nsamples": 1000, "segmentation": "slic", "fill": "value",
                                                 "fill_value": 0.0, "l1_reg": "none"}, tensor=x), 4),
            }
            pid = server.process.pid
            for name, (title, peer, ours, count) in comparisons.items():
                if args.only and name not in args.only:
                    continue
                start = cpu_snapshot(pid)
                count = max(1, round(count * args.scale))
                agree = lime_pearson if name.startswith("lime_image") else None
                results[name] = {"title": title, **pairs(peer, ours, args.repeats, count, agree)}
                phases[name] = other_load(start, cores, pid)
                r = results[name]
                pearson = f"  Pearson vs peer {r['pearson_vs_peer']:.4f}" if "pearson_vs_peer" in r else ""
                print(f"{title:30s} peer {r['peer_explanations_per_s']:8.2f}/s  explaind "
                      f"{r['explaind_explanations_per_s']:8.2f}/s  x{r['speedup']:.2f}  {r['speedups']}{pearson}",
                      flush=True)
    finally:
        stop_server(server)

    report["comparisons"] = results
    report["seconds"] = time.perf_counter() - began
    report["other_load"] = load = other_load(cpu_start, cores)
    load["by_phase"] = phases
    print()
    print(f"{'peer':32s} {'peer/s':>9s} {'explaind/s':>10s} {'speed-up':>8s}  {'rows peer/ours':>15s}  pairs")
    for r in results.values():
        print(f"{r['title']:32s} {r['peer_explanations_per_s']:9.2f} {r['explaind_explanations_per_s']:10.2f} "
              f"{r['speedup']:8.2f}  {r['peer_rows_per_explanation']:7d}/{r['explaind_rows_per_explanation']:<7d}  "
              f"{r['speedups']}")
    print(f"(superpixels of the image: {report['superpixels']}; rows: model rows per explanation, the peer's "
          f"counted at its model function, explaind's from stats.model_evaluations; explaind: 1 client, "
          f"sequential, through gRPC)")
    print(f"other load during the run: {100 * load['other_processes']:.1f}% of the cores used by other processes, "
          f"{100 * load['steal']:.1f}% stolen by the hypervisor (by phase: "
          + ", ".join(f"{k} {100 * v['other_processes']:.1f}%" for k, v in phases.items()) + ")"
          + ("  -- WARNING: the machine was not quiet; figures are unreliable"
             if load["other_processes"] + load["steal"] > 0.05 else ""))
    path = args.out / f"black-box-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"written {shown} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
