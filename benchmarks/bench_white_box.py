#!/usr/bin/env python3
"""explaind's white-box methods against the hardware limit and against Captum, in one run on one machine.

    python benchmarks/bench_white_box.py      # the `shapes` demo CNN; prints a table and writes JSON

1. The limit: raw onnxruntime throughput (rows/s) of explaind's own gradient graph for the model (the
   plain-gradient variant, path "input": one job's example, R rows), at the best batch size, with the
   server's thread count, spinning threads on and off (the better).
2. explaind end to end through gRPC (a real server in its own process): Integrated Gradients with 50
   steps and SmoothGrad with 50 samples, rows/s (the rows the server reports in
   stats.model_evaluations) for 1 client and for 8 concurrent clients, each divided by the limit
   measured right before it (pairs alternate, so the machine's drifting speed cancels out; medians
   of the ratios), as benchmarks/bench.py does for RISE.
3. Captum on the same torch model (ShapesNet with the ONNX model's weights), in the configuration its
   documentation recommends for throughput, against explaind's single-client sequential loop:
   explanations/s and the speed-up explaind / Captum (alternating pairs, medians). One input's IG
   attribution is compared with Captum's first, so the comparison is like for like.
4. Diagnostics for the ratios: raw rows/s of the forward model and of the variants IG and SmoothGrad
   actually run (path "line", path "noise") at the batch shapes the server forms, and the share of
   each request's time the server spent in onnxruntime.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import MODEL_DIR, ROOT, start_server, stop_server  # noqa: E402  (bench.py's server launcher)

from explaind.demo.shapes_data import make_dataset  # noqa: E402
from explaind.demo.train_shapes import ShapesNet, preprocess  # noqa: E402
from explaind.onnxgraph.builder import NAMESPACE  # noqa: E402
from explaind.onnxgraph.signature import ModelSignature  # noqa: E402
from explaind.onnxgraph.variants.gradient import Gradient  # noqa: E402
from explaind_client import ExplaindClient  # noqa: E402

MODEL = MODEL_DIR / "shapes" / "model.onnx"
SIGNATURE = ModelSignature("input", "logits", (3, 64, 64), "NCHW", "logits")
METHODS = {  # name in the report -> (explaind method, params)
    "ig": ("integrated_gradients", "n_steps"),
    "sg": ("smooth_grad", "num_samples"),
}


# The limit -------------------------------------------------------------------------------------

class GraphRate:
    """onnxruntime sessions of one graph (spinning threads on and off), built once and measured often.

    `feed(rows)` makes the inputs of one batch of `rows` rows from one job."""

    def __init__(self, model: onnx.ModelProto, threads: int, feed) -> None:
        data = model.SerializeToString()
        self.sessions = {}
        for spin in ("1", "0"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            options.add_session_config_entry("session.intra_op.allow_spinning", spin)
            self.sessions[spin] = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        self.feed = feed
        self._feeds: dict[int, dict[str, np.ndarray]] = {}

    def rate(self, rows: int, seconds: float, repeats: int = 1, spins: tuple[str, ...] = ("1", "0")) -> dict[str, float]:
        """Rows/s per spin setting (median of `repeats` timed loops of `seconds` each)."""
        feed = self._feeds.setdefault(rows, self.feed(rows))
        result = {}
        for spin in spins:
            session = self.sessions[spin]
            session.run(None, feed)  # warm up (and let the threads settle)
            rates = []
            for _ in range(repeats):
                runs, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    session.run(None, feed)
                    runs += 1
                rates.append(runs * rows / (time.perf_counter() - start))
            result[spin] = statistics.median(rates)
        return result

    def best(self, rows: int, seconds: float, repeats: int = 1) -> float:
        return max(self.rate(rows, seconds, repeats).values())


def gradient_graph(path: str) -> onnx.ModelProto:
    """explaind's gradient variant of the shapes model (plain rule, logit score), as the server builds it."""
    return Gradient(score="logit", rule="plain", path=path).build(onnx.load(str(MODEL)), SIGNATURE)


def gradient_feed(path: str, x: np.ndarray):
    x0 = x[None].astype(np.float32)

    def feed(rows: int) -> dict[str, np.ndarray]:
        f = {"x0": x0, "job_index": np.zeros(rows, np.int64), "target": np.array([0], np.int64)}
        if path == "line":
            f.update(reference=np.zeros_like(x0), alpha=np.linspace(0, 1, rows, dtype=np.float32))
        elif path == "noise":
            f.update(sigma=np.array([0.15 * float(x.max() - x.min())], np.float32),
                     noise_seed=np.arange(1, rows + 1, dtype=np.int64))
        return {NAMESPACE + k: v for k, v in f.items()}
    return feed


def forward_feed(x: np.ndarray):
    return lambda rows: {"input": np.repeat(x[None], rows, axis=0).astype(np.float32)}


# explaind through gRPC -------------------------------------------------------------------------

def explaind_run(client: ExplaindClient, method: str, steps: int, x: np.ndarray, target: int | None,
                 clients: int, per_client: int) -> dict[str, float]:
    """`clients` concurrent clients, each sending `per_client` requests one after the other (target
    None: the server picks the predicted class, as the Captum loop does)."""
    name, param = METHODS[method]

    def one_client(i: int) -> list[dict]:
        return [client.explain("shapes", method=name, tensor=x, target=target, seed=1000 * i + k + 1,
                               params={param: steps}).stats for k in range(per_client)]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        stats = [s for per in pool.map(one_client, range(clients)) for s in per]
    seconds = time.perf_counter() - start
    rows = sum(int(s["model_evaluations"]) for s in stats)
    return {"rows_per_s": rows / seconds, "explanations_per_s": len(stats) / seconds,
            "rows_per_explanation": rows / len(stats),
            "compute_share": statistics.median(float(s.get("compute_seconds", 0.0)) / max(float(s.get("total_seconds", 0.0)), 1e-9)
                                               for s in stats),
            "batches_per_explanation": statistics.median(int(s["batches"]) for s in stats)}


def paired_ratios(client: ExplaindClient, limit: GraphRate, batch: int, x: np.ndarray, target: int,
                  steps: int, repeats: int, seconds: float, requests: int, per_client: int) -> dict:
    """Each explaind measurement right after a limit measurement; medians of the pairs' ratios."""
    pairs: dict[tuple[str, int], list[tuple[float, float, dict]]] = {(m, c): [] for m in METHODS for c in (1, 8)}
    for _ in range(repeats):
        for method in METHODS:
            for clients in (1, 8):
                raw = limit.best(batch, seconds)
                run = explaind_run(client, method, steps, x, target, clients, requests if clients == 1 else per_client)
                pairs[(method, clients)].append((run["rows_per_s"], raw, run))
    result: dict = {}
    for (method, clients), values in pairs.items():
        result[f"{method}_clients_{clients}"] = {
            "rows_per_s": statistics.median(v for v, _, _ in values),
            "limit_rows_per_s": statistics.median(l for _, l, _ in values),
            "ratio": statistics.median(v / l for v, l, _ in values),
            "ratios": [round(v / l, 3) for v, l, _ in values],
            "explanations_per_s": statistics.median(r["explanations_per_s"] for _, _, r in values),
            "rows_per_explanation": values[0][2]["rows_per_explanation"],
            "compute_share": statistics.median(r["compute_share"] for _, _, r in values),
            "batches_per_explanation": values[0][2]["batches_per_explanation"],
        }
    return result


# Captum ----------------------------------------------------------------------------------------

def torch_model() -> torch.nn.Module:
    """ShapesNet with the weights of the ONNX model (its initializers are named as the state_dict)."""
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(str(MODEL)).graph.initializer}
    net = ShapesNet()
    net.load_state_dict(weights, strict=False)
    return net.eval()


def check_logits(net: torch.nn.Module, x: np.ndarray, threads: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(MODEL), sess_options=options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    return float(np.abs(session.run(None, {"input": x})[0] - expected).max())


class CaptumLoop:
    """One explanation at a time, as a user of Captum would: predict the class, then attribute."""

    def __init__(self, net: torch.nn.Module, steps: int) -> None:
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

        self.net, self.steps = net, steps
        self.ig = IntegratedGradients(net)
        self.sg = NoiseTunnel(Saliency(net))

    def explain(self, method: str, x: torch.Tensor, target: int | None = None) -> torch.Tensor:
        if target is None:
            with torch.no_grad():
                target = int(self.net(x).argmax(1))
        if method == "ig":
            return self.ig.attribute(x, target=target, n_steps=self.steps, method="gausslegendre",
                                     internal_batch_size=self.steps)
        return self.sg.attribute(x, nt_type="smoothgrad", nt_samples=self.steps, nt_samples_batch_size=self.steps,
                                 stdevs=float(0.15 * (x.max() - x.min())), target=target)

    def rate(self, method: str, x: torch.Tensor, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            self.explain(method, x)
        return count / (time.perf_counter() - start)


def torch_gradient_rate(net: torch.nn.Module, x: np.ndarray, rows: int, seconds: float) -> float:
    """Rows/s of torch's own input gradient of one logit (forward + backward), a batch of `rows`."""
    batch = torch.from_numpy(x[None]).repeat(rows, 1, 1, 1)

    def step() -> None:
        inputs = batch.clone().requires_grad_(True)
        torch.autograd.grad(net(inputs)[:, 0].sum(), inputs)

    step()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        runs += 1
    return runs * rows / (time.perf_counter() - start)


def ig_agreement(client: ExplaindClient, captum: CaptumLoop, x: np.ndarray, target: int, steps: int) -> dict:
    """max |explaind - Captum| / max |Captum|, per channel, for Integrated Gradients on one input."""
    ours = client.explain("shapes", method="integrated_gradients", tensor=x, target=target,
                          params={"n_steps": steps}).attribution.astype(np.float64)
    theirs = captum.explain("ig", torch.from_numpy(x[None]), target)[0].detach().numpy().astype(np.float64)
    if ours.shape != theirs.shape:
        raise RuntimeError(f"attribution shapes differ: explaind {ours.shape}, Captum {theirs.shape}")
    per_channel = [float(np.abs(ours[c] - theirs[c]).max() / np.abs(theirs[c]).max()) for c in range(len(theirs))]
    return {"per_channel_relative_error": per_channel, "max_relative_error": max(per_channel),
            "ok": max(per_channel) <= 1e-3}


def captum_pairs(client: ExplaindClient, captum: CaptumLoop, x: np.ndarray, steps: int, repeats: int,
                 count: int) -> dict:
    """Captum and explaind (1 client, sequential, same count) in alternation; medians of the speed-ups."""
    xt = torch.from_numpy(x[None])
    result = {}
    for method in METHODS:
        captum.rate(method, xt, 2)  # warm up
        pairs = []
        for _ in range(repeats):
            theirs = captum.rate(method, xt, count)
            ours = explaind_run(client, method, steps, x, None, 1, count)["explanations_per_s"]
            pairs.append((ours, theirs))
        result[method] = {"explaind_explanations_per_s": statistics.median(o for o, _ in pairs),
                          "captum_explanations_per_s": statistics.median(t for _, t in pairs),
                          "speedup": statistics.median(o / t for o, t in pairs),
                          "speedups": [round(o / t, 3) for o, t in pairs]}
    return result


# Other load ------------------------------------------------------------------------------------

def cpu_snapshot(server_pid: int | None = None) -> tuple[float, float, float, float]:
    """(wall, busy CPU seconds of the whole machine, steal seconds, CPU seconds of this process, its
    reaped children (the server, once stopped) and the running server `server_pid`)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    own = os.times()
    server = 0.0
    if server_pid is not None:
        stat = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        server = (int(stat[11]) + int(stat[12])) / tick  # utime, stime
    return (time.perf_counter(), (user + nice + system + irq + softirq) / tick, steal / tick,
            own.user + own.system + own.children_user + own.children_system + server)


def other_load(start: tuple[float, float, float, float], cores: int, server_pid: int | None = None) -> dict[str, float]:
    """Share of the machine's cores that other processes (and the hypervisor: steal) used meanwhile."""
    end = cpu_snapshot(server_pid)
    capacity = (end[0] - start[0]) * cores
    return {"other_processes": max(0.0, (end[1] - start[1]) - (end[3] - start[3])) / capacity,
            "steal": (end[2] - start[2]) / capacity}


# Main ------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--seconds", type=float, default=0.75, help="per raw measurement")
    parser.add_argument("--repeats", type=int, default=4, help="alternating raw/explaind pairs")
    parser.add_argument("--steps", type=int, default=50, help="IG n_steps and SmoothGrad num_samples")
    parser.add_argument("--requests", type=int, default=12, help="sequential requests of 1 client per measurement")
    parser.add_argument("--per-client", type=int, default=2, help="requests of each of the 8 clients")
    parser.add_argument("--captum-repeats", type=int, default=3, help="alternating Captum/explaind pairs")
    parser.add_argument("--batch-tuning-s", type=float, default=0.2,
                        help="the server's batch_tuning_s (each variant's batch size measured; 0: max_batch_rows)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                               f"{platform.processor() or platform.platform()}",
                    "onnxruntime": ort.__version__, "torch": torch.__version__, "threads": args.threads,
                    "steps": args.steps, "batch_tuning_s": args.batch_tuning_s}
    began = time.perf_counter()
    cpu_start = cpu_snapshot()

    images, labels, _ = make_dataset(16, seed=7)
    inputs = preprocess(images)
    net = torch_model()
    diff = check_logits(net, inputs, args.threads)
    report["torch_vs_onnxruntime_logits_max_abs_diff"] = diff
    print(f"torch ShapesNet vs onnxruntime logits: max abs diff {diff:.2e} on {len(inputs)} images (must be < 1e-4)")
    if diff >= 1e-4:
        raise SystemExit("the torch model does not reproduce the ONNX model; no comparison is possible")
    x = inputs[0]
    with torch.no_grad():
        target = int(net(torch.from_numpy(x[None])).argmax(1))

    phases = {}
    phase_start = cpu_snapshot()
    print(f"limit: explaind's plain-gradient graph (path input), raw onnxruntime, {args.threads} threads")
    limit = GraphRate(gradient_graph("input"), args.threads, gradient_feed("input", x))
    by_batch = {}
    for batch in args.batch_sizes:
        rates = limit.rate(batch, args.seconds, repeats=3)
        by_batch[batch] = max(rates.values())
        print(f"  batch {batch:4d}: {by_batch[batch]:8.1f} rows/s  (spinning {rates['1']:.1f}, not {rates['0']:.1f})")
    best_batch = max(by_batch, key=by_batch.get)
    phases["limit_sweep"] = other_load(phase_start, os.cpu_count() or 1)
    report["limit"] = {"by_batch": by_batch, "best_batch": best_batch, "rows_per_s": by_batch[best_batch]}

    server = start_server(MODEL_DIR, args.out / "white-box-server.log", metrics_port=-1,
                          intra_op_threads=args.threads, batch_tuning_s=args.batch_tuning_s)
    try:
        with ExplaindClient(server.address) as client:
            for method in METHODS:  # sessions built, first-call costs paid
                explaind_run(client, method, args.steps, x, target, 2, 1)
            captum = CaptumLoop(net, args.steps)
            agreement = ig_agreement(client, captum, x, target, args.steps)
            report["ig_agreement"] = agreement
            print(f"IG agreement with Captum on one input (target {target}): max relative error "
                  f"{agreement['max_relative_error']:.2e} per channel "
                  f"{[f'{e:.1e}' for e in agreement['per_channel_relative_error']]} (must be <= 1e-3)")

            pid = server.process.pid
            phase_start = cpu_snapshot(pid)
            ratios = paired_ratios(client, limit, best_batch, x, target, args.steps, args.repeats, args.seconds,
                                   args.requests, args.per_client)
            report["explaind_vs_limit"] = ratios
            phases["explaind_vs_limit"] = other_load(phase_start, os.cpu_count() or 1, pid)
            phase_start = cpu_snapshot(pid)
            speed = captum_pairs(client, captum, x, args.steps, args.captum_repeats, args.requests)
            report["explaind_vs_captum"] = speed
            phases["explaind_vs_captum"] = other_load(phase_start, os.cpu_count() or 1, pid)
    finally:
        stop_server(server)

    # Diagnostics: what each ratio is made of (the graph each method runs, at the server's batch shapes).
    diag: dict = {}
    forward = GraphRate(onnx.load(str(MODEL)), args.threads, forward_feed(x))
    diag["forward_model_rows_per_s"] = forward.best(best_batch, args.seconds)
    for method, path in (("ig", "line"), ("sg", "noise")):
        graph = GraphRate(gradient_graph(path), args.threads, gradient_feed(path, x))
        rows_1 = args.steps + (2 if method == "ig" else 0)  # one request's gradient rows: one batch (max 64)
        diag[f"{method}_variant_{path}"] = {
            "rows_per_s_best_batch": graph.best(best_batch, args.seconds),
            f"rows_per_s_batch_{rows_1}": graph.best(rows_1, args.seconds),
            "rows_per_s_batch_64": graph.best(64, args.seconds),
        }
    diag["plain_gradient_rows_per_s_best_batch"] = limit.best(best_batch, args.seconds)
    diag[f"torch_gradient_rows_per_s_batch_{args.steps}"] = torch_gradient_rate(net, x, args.steps, 2 * args.seconds)
    diag["gradient_cost_vs_forward"] = diag["forward_model_rows_per_s"] / diag["plain_gradient_rows_per_s_best_batch"]
    report["diagnostics"] = diag
    report["seconds"] = time.perf_counter() - began
    report["other_load"] = load = other_load(cpu_start, os.cpu_count() or 1)
    load["by_phase"] = phases

    print()
    print(f"{'':24s} {'rows/s':>9s} {'limit':>9s} {'ratio':>6s}  {'expl/s':>7s}  {'in ORT':>6s}  pairs")
    for method, title in (("ig", f"IG {args.steps} steps"), ("sg", f"SmoothGrad {args.steps}")):
        for clients in (1, 8):
            r = ratios[f"{method}_clients_{clients}"]
            print(f"{title + f', {clients} client' + ('s' if clients > 1 else ''):24s} {r['rows_per_s']:9.1f} "
                  f"{r['limit_rows_per_s']:9.1f} {r['ratio']:6.3f}  {r['explanations_per_s']:7.2f}  "
                  f"{r['compute_share']:6.2f}  {r['ratios']}")
    print(f"(rows: stats.model_evaluations, {ratios['ig_clients_1']['rows_per_explanation']:.0f} per IG and "
          f"{ratios['sg_clients_1']['rows_per_explanation']:.0f} per SmoothGrad request; limit: best batch "
          f"{best_batch}; 'in ORT': median share of a request's time its rows spent in onnxruntime; target ratio >= 0.85)")
    print()
    print(f"{'1 client, sequential':24s} {'explaind/s':>10s} {'Captum/s':>9s} {'speed-up':>8s}  pairs")
    for method, title in (("ig", "Integrated Gradients"), ("sg", "SmoothGrad")):
        s = speed[method]
        print(f"{title:24s} {s['explaind_explanations_per_s']:10.2f} {s['captum_explanations_per_s']:9.2f} "
              f"{s['speedup']:8.3f}  {s['speedups']}")
    print()
    print(f"diagnostics (raw rows/s): forward model {diag['forward_model_rows_per_s']:.0f}, plain gradient "
          f"{diag['plain_gradient_rows_per_s_best_batch']:.0f} (x{diag['gradient_cost_vs_forward']:.1f} the forward "
          f"cost), IG line variant {diag['ig_variant_line']['rows_per_s_best_batch']:.0f}, SmoothGrad noise variant "
          f"{diag['sg_variant_noise']['rows_per_s_best_batch']:.0f} (batch {best_batch}); torch's gradient "
          f"{diag[f'torch_gradient_rows_per_s_batch_{args.steps}']:.0f} (batch {args.steps})")
    print(f"other load during the run: {100 * load['other_processes']:.1f}% of the cores used by other processes, "
          f"{100 * load['steal']:.1f}% stolen by the hypervisor (by phase: "
          + ", ".join(f"{k} {100 * v['other_processes']:.1f}%" for k, v in phases.items()) + ")"
          + ("  -- WARNING: the machine was not quiet; figures (Captum's most) are unreliable"
             if load["other_processes"] + load["steal"] > 0.05 else ""))
    path = args.out / f"white-box-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"written {shown} in {report['seconds']:.0f} s")
    return 0 if agreement["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
