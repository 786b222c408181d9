"""`explaind serve` runs the server; `explaind explain` asks a server for one explanation."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import add_arguments, load_settings


def _serve(args: argparse.Namespace) -> int:
    """Exit 0 after a graceful stop, 2 for a bad setting, 1 when the server cannot start (one line)."""
    from . import logs
    from .api.server import StartupError, serve

    try:
        settings = load_settings(args)
    except ValueError as exc:
        print(f"explaind serve: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"explaind serve: {exc}", file=sys.stderr)
        return 1
    return 0


def parse_param(text: str) -> tuple[str, str]:
    """name=value, the value kept as text until the method's declaration gives its type."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    return name, raw


def typed_params(method: str, raw: list[tuple[str, str]]) -> dict[str, Any]:
    """The --param texts as the values the method's parameters take (its declaration in
    explaind.methods says each one's type: numbers, strings, booleans, comma-separated lists)."""
    from .methods.params import parse_text
    from .methods.registry import all_methods

    methods = all_methods()
    if method not in methods:
        raise ValueError(f"--method: expected one of {', '.join(methods)}, got {method!r}")
    declared = {p.name: p for p in methods[method].params}
    values: dict[str, Any] = {}
    for name, text in raw:
        if name not in declared:
            raise ValueError(f"--param {name}: {method} has no such parameter; it has {', '.join(declared) or 'none'}")
        values[name] = parse_text(declared[name], text)
    return values


def _progress_bar(done: int, total: int, width: int = 40) -> str:
    filled = int(width * done / max(total, 1))
    return f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} rows ({100 * done / max(total, 1):5.1f}%)"


def _explain(args: argparse.Namespace) -> int:
    import grpc
    from explaind_client import ExplaindClient, Explanation, Progress, RenderSpec

    try:
        params = typed_params(args.method, args.param or [])
    except ValueError as exc:
        print(f"explaind explain: {exc}", file=sys.stderr)
        return 2
    target: int | str | None = None
    if args.target is not None:
        target = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    render = RenderSpec(colormap=args.colormap, polarity=args.polarity, overlay=args.overlay) if args.out else None
    result: Explanation | None = None
    with ExplaindClient(args.server, timeout=args.timeout) as client:
        try:
            for update in client.explain_stream(
                    args.model, method=args.method, params=params, image=args.image,
                    tensor=_load_tensor(args.tensor) if args.tensor else None, target=target,
                    score=args.score, seed=args.seed, render=render):
                if isinstance(update, Progress):
                    if not args.quiet:
                        print(_progress_bar(update.rows_done, update.rows_total), end="", file=sys.stderr, flush=True)
                elif not update.partial:
                    result = update
        except grpc.RpcError as exc:
            print(f"\nexplaind explain: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except (ValueError, OSError) as exc:
            print(f"explaind explain: {exc}", file=sys.stderr)
            return 2
    if not args.quiet:
        print(file=sys.stderr)
    if result is None:
        print("explaind explain: the stream ended without a result", file=sys.stderr)
        return 1
    top = ", ".join(f"{c.label} {c.probability:.3f}" for c in result.top_classes)
    print(f"target: {result.target_label} (class {result.target_class}); top: {top}")
    print(f"{result.stats.get('model_evaluations')} model evaluations in {result.stats.get('batches')} batches, "
          f"{result.stats.get('total_seconds', 0):.3f} s, seed {result.stats.get('seed')}")
    if args.out:
        Path(args.out).write_bytes(result.heatmap_png)
        print(f"heatmap written to {args.out}")
    if args.save_attribution:
        import numpy as np

        np.save(args.save_attribution, result.attribution)
        print(f"attribution {list(result.attribution.shape)} written to {args.save_attribution}")
    return 0


def _load_tensor(path: str) -> Any:
    import numpy as np

    return np.load(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="explaind", description="Explanations of ONNX classifiers over gRPC")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server (the bundled demo models when no repository is given)")
    add_arguments(serve)
    serve.set_defaults(run=_serve)

    explain = commands.add_parser("explain", help="explain one input with a running server")
    explain.add_argument("--server", default="localhost:50051", help="host:port of the server")
    explain.add_argument("--model", required=True)
    explain.add_argument("--method", required=True, help="occlusion, rise, ... (explaind ListMethods)")
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="PNG or JPEG file")
    source.add_argument("--tensor", help=".npy file with one example in the model's input space")
    explain.add_argument("--param", action="append", type=parse_param, metavar="NAME=VALUE",
                         help="a method parameter, repeatable: --param num_masks=2000 --param window=8,8 "
                         "--param segmentation=slic --param jitter=false (docs/methods.md lists them)")
    explain.add_argument("--target", help="class index or label (default: the top prediction)")
    explain.add_argument("--score", default="", choices=["", "probability", "logit"])
    explain.add_argument("--seed", type=int, default=0)
    explain.add_argument("--out", help="write the heatmap PNG here")
    explain.add_argument("--colormap", default="")
    explain.add_argument("--polarity", default="")
    explain.add_argument("--overlay", default="")
    explain.add_argument("--save-attribution", help="write the attribution as .npy here")
    explain.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    explain.add_argument("--quiet", action="store_true", help="no progress bar")
    explain.set_defaults(run=_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
