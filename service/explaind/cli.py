"""`explaind serve` runs the server; `explaind explain` asks a server for one explanation;
`explaind models`, `methods` and `model NAME` show what a server offers."""

from __future__ import annotations

import argparse
import json
import asyncio
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

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


class ProgressBar:
    """Frames (carriage return, then the bar) only on a terminal: a pipe or a log file would collect
    every frame. The stream's isatty() is asked once."""

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        isatty = getattr(stream, "isatty", None)
        self.stream = stream
        self.enabled = enabled and callable(isatty) and bool(isatty())
        self.drawn = ""

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        frame = _progress_bar(done, total)
        if frame != self.drawn:
            self.stream.write(frame)
            self.stream.flush()
            self.drawn = frame

    def end(self) -> None:
        """The line after the last frame, so what follows starts on its own line."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = ""


# Connecting ------------------------------------------------------------------------------------

MAX_CREDENTIAL_BYTES = 1 << 20  # a token or a PEM chain is kilobytes; /dev/zero by mistake must not hang


def _read_file(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CREDENTIAL_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_CREDENTIAL_BYTES:
        raise ValueError(f"{flag} {path}: expected at most {MAX_CREDENTIAL_BYTES} bytes, the file holds more")
    return data


def connection_options(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ExplaindClient keyword arguments the user asked for, and only those: without token or TLS
    flags the client is built exactly as a plaintext one. A token comes from --token, --token-file
    (one of them) or else EXPLAIND_TOKEN; any TLS file implies --tls."""
    env = os.environ if env is None else env
    options: dict[str, Any] = {}
    if args.token_file and args.token is not None:
        raise ValueError("--token and --token-file: give one of them, not both")
    if args.token_file:
        token = _read_file("--token-file", args.token_file).decode("utf-8", "replace").strip()
        if not token:
            raise ValueError(f"--token-file {args.token_file}: the file holds no token")
        options["token"] = token
    elif args.token is not None:
        if not args.token.strip():
            raise ValueError("--token: expected a token, got an empty string")
        options["token"] = args.token.strip()
    elif env.get("EXPLAIND_TOKEN", "").strip():
        options["token"] = env["EXPLAIND_TOKEN"].strip()
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together (the client's certificate and its key, for mTLS); "
                         f"got only {'--tls-cert' if args.tls_cert else '--tls-key'}")
    if args.tls_ca:
        options["root_certificates"] = _read_file("--tls-ca", args.tls_ca)
    if args.tls_cert:
        options["certificate_chain"] = _read_file("--tls-cert", args.tls_cert)
        options["private_key"] = _read_file("--tls-key", args.tls_key)
    if args.tls or args.tls_ca or args.tls_cert:
        options["tls"] = True
    if args.server_name:
        options["server_name"] = args.server_name
    return options


def _client(args: argparse.Namespace) -> Any:
    from explaind_client import ExplaindClient

    return ExplaindClient(args.server, timeout=args.timeout, **connection_options(args))


def _rpc_failed(command: str, exc: Any) -> int:
    print(f"explaind {command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 1


def _usage_failed(command: str, exc: Exception) -> int:
    print(f"explaind {command}: {exc}", file=sys.stderr)
    return 2


def _json(message: Any) -> str:
    """protobuf's JSON of a response, every field shown (zeros and empty lists too), proto names."""
    from google.protobuf import json_format

    return json_format.MessageToJson(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True, indent=2)


# Commands --------------------------------------------------------------------------------------

def _ask(command: str, args: argparse.Namespace, show: Callable[[Any], str]) -> int:
    """Connect, call show(client) and print its text; server errors exit 1, usage errors 2."""
    import grpc

    try:
        client = _client(args)
    except ValueError as exc:
        return _usage_failed(command, exc)
    with client:
        try:
            text = show(client)
        except grpc.RpcError as exc:
            return _rpc_failed(command, exc)
    print(text)
    return 0


def _models(args: argparse.Namespace) -> int:
    from explaind_client.v1 import explaind_pb2 as pb

    from . import cli_text

    def show(client: Any) -> str:
        models = client.list_models()
        return _json(pb.ListModelsResponse(models=models)) if args.json else cli_text.models_table(models)

    return _ask("models", args, show)


def _methods(args: argparse.Namespace) -> int:
    from explaind_client.v1 import explaind_pb2 as pb

    from . import cli_text

    def show(client: Any) -> str:
        methods = client.list_methods(args.model or "")
        return _json(pb.ListMethodsResponse(methods=methods)) if args.json else cli_text.methods_text(methods)

    return _ask("methods", args, show)


def _model(args: argparse.Namespace) -> int:
    from . import cli_text

    def show(client: Any) -> str:
        info = client.get_model(args.name)
        return _json(info) if args.json else cli_text.model_text(info)

    return _ask("model", args, show)


def _control(args: argparse.Namespace) -> int:
    """load / unload: LoadModel or UnloadModel, then the model as GetModel shows it."""
    from . import cli_text

    def show(client: Any) -> str:
        info = (client.load_model if args.command == "load" else client.unload_model)(args.name)
        return _json(info) if args.json else cli_text.model_text(info)

    return _ask(args.command, args, show)


def _explain(args: argparse.Namespace) -> int:
    import grpc
    from explaind_client import Explanation, Progress, RenderSpec
    from explaind_client.v1 import explaind_pb2 as pb

    from . import cli_text

    try:
        params = typed_params(args.method, args.param or [])
        if args.top is not None and args.top < 1:
            raise ValueError(f"--top: expected a number of features >= 1, got {args.top}")
        tensor = _load_tensor(args.tensor) if args.tensor else None
        client = _client(args)
    except (ValueError, OSError) as exc:
        return _usage_failed("explain", exc)
    target: int | str | None = None
    if args.target is not None:
        target = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    render = RenderSpec(colormap=args.colormap, polarity=args.polarity, overlay=args.overlay) if args.out else None
    result: Explanation | None = None
    bar = ProgressBar(sys.stderr, enabled=not args.quiet)
    with client:
        try:
            for update in client.explain_stream(
                    args.model, method=args.method, params=params, image=args.image, tensor=tensor, target=target,
                    score=args.score, seed=args.seed, render=render, allow_partial=args.allow_partial):
                if isinstance(update, Progress):
                    bar.update(update.rows_done, update.rows_total)
                elif not update.partial:
                    result = update
            bar.end()
            info = client.get_model(args.model) if result is not None and tensor is not None else None
        except grpc.RpcError as exc:
            bar.end()
            return _rpc_failed("explain", exc)
        except (ValueError, OSError) as exc:
            bar.end()
            return _usage_failed("explain", exc)
    if result is None:
        print("explaind explain: the stream ended without a result", file=sys.stderr)
        return 1
    top = ", ".join(f"{c.label} {c.probability:.3f}" for c in result.top_classes)
    print(f"target: {result.target_label} (class {result.target_class}); top: {top}")
    if not result.complete:
        print("partial answer: the deadline came first; the map is formed from the rows evaluated so far")
    print(f"{result.stats.get('model_evaluations')} model evaluations in {result.stats.get('batches')} batches, "
          f"{result.stats.get('total_seconds', 0):.3f} s, seed {result.stats.get('seed')}")
    if info is not None and info.kind == pb.TABULAR and result.attribution.size == tensor.size:
        names = cli_text.feature_names(info, int(result.attribution.size))
        print(cli_text.feature_table(names, tensor, result.attribution, args.top))
    if args.out:
        Path(args.out).write_bytes(result.heatmap_png)
        print(f"heatmap written to {args.out}")
    if args.save_attribution:
        import numpy as np

        np.save(args.save_attribution, result.attribution)
        print(f"attribution {list(result.attribution.shape)} written to {args.save_attribution}")
    return 0


def typed_metrics(names: list[str], raw: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    """--metric names with their --metric-param METRIC.NAME=VALUE texts typed by the declarations."""
    from .evaluation.registry import all_metrics
    from .methods.params import parse_text

    metrics = all_metrics()
    chosen: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in metrics:
            raise ValueError(f"--metric: expected one of {', '.join(metrics)}, got {name!r}")
        chosen.setdefault(name, {})
    for key, text in raw:
        metric, dot, name = key.partition(".")
        if not dot or metric not in chosen:
            raise ValueError(f"--metric-param {key}: expected METRIC.NAME=VALUE for a metric given with --metric")
        declared = {p.name: p for p in metrics[metric].params}
        if name not in declared:
            raise ValueError(f"--metric-param {key}: {metric} has no such parameter; it has "
                             f"{', '.join(declared) or 'none'}")
        chosen[metric][name] = parse_text(declared[name], text)
    return list(chosen.items())


def _box(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 (integers), got {text!r}") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected 4 integers x0,y0,x1,y1, got {text!r}")
    return values


def _evaluate(args: argparse.Namespace) -> int:
    import grpc
    from explaind_client import Evaluation, Progress

    from . import cli_text

    try:
        if not args.method and not args.attribution:
            raise ValueError("--method or --attribution: give the method to evaluate, or an attribution .npy")
        params = typed_params(args.method, args.param or []) if args.method else {}
        metrics = typed_metrics(args.metric, args.metric_param or [])
        tensor = _load_tensor(args.tensor) if args.tensor else None
        attribution = _load_tensor(args.attribution) if args.attribution else None
        mask = _load_tensor(args.mask) if args.mask else None
        client = _client(args)
    except (ValueError, OSError) as exc:
        return _usage_failed("evaluate", exc)
    target: int | str | None = None
    if args.target is not None:
        target = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    result: Evaluation | None = None
    bar = ProgressBar(sys.stderr, enabled=not args.quiet)
    with client:
        try:
            for update in client.evaluate_stream(
                    args.model, metrics=metrics, method=args.method or "", params=params, image=args.image,
                    tensor=tensor, target=target, score=args.score, seed=args.seed, attribution=attribution,
                    box=args.box, mask=mask):
                if isinstance(update, Progress):
                    bar.update(update.rows_done, update.rows_total)
                else:
                    result = update
            bar.end()
            infos = {m.name: m for m in client.list_metrics()} if result is not None and not args.json else {}
        except grpc.RpcError as exc:
            bar.end()
            return _rpc_failed("evaluate", exc)
    if result is None:
        print("explaind evaluate: the stream ended without a result", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(cli_text.evaluation_json(result), indent=2))
        return 0
    e = result.explanation
    print(f"target: {e.target_label} (class {e.target_class}); explanation: {e.stats.get('method')}, "
          f"{e.stats.get('model_evaluations')} model evaluations, seed {e.stats.get('seed')}")
    print(cli_text.evaluation_table(result, infos))
    return 0


def _load_tensor(path: str) -> Any:
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except OSError as exc:
        raise ValueError(f"--tensor {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"--tensor {path}: expected a .npy file of numbers ({exc})") from None


def _connection_parent() -> argparse.ArgumentParser:
    """The flags every client subcommand takes to reach a server."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--server", default="localhost:50051", metavar="HOST:PORT", help="host:port of the server")
    group.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="deadline of each call in seconds")
    group.add_argument("--token", help="bearer token sent as 'authorization: Bearer TOKEN' (default: env "
                       "EXPLAIND_TOKEN; a flag is visible to other users in the process list, the file and "
                       "the variable are not)")
    group.add_argument("--token-file", metavar="FILE", help="read the bearer token from FILE")
    group.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs "
                       "unless --tls-ca is given")
    group.add_argument("--tls-ca", metavar="FILE", help="PEM CA certificates to verify the server with (implies --tls)")
    group.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate chain for mTLS (with --tls-key)")
    group.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    group.add_argument("--server-name", metavar="NAME", help="the name the server's certificate must carry, when it differs "
                       "from --server's host (e.g. connecting by IP address)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="explaind", description="Explanations of ONNX classifiers over gRPC")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server (the bundled demo models when no repository is given)")
    add_arguments(serve)
    serve.set_defaults(run=_serve)

    connection = _connection_parent()
    explain = commands.add_parser("explain", parents=[connection], help="explain one input with a running server")
    explain.add_argument("--model", required=True)
    explain.add_argument("--method", required=True, help="occlusion, rise, ... (explaind methods)")
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
    explain.add_argument("--top", type=int, default=None, metavar="N",
                         help="tabular models: list the N features of largest |attribution| (default: all up "
                         "to 30 features, else the top 30)")
    explain.add_argument("--allow-partial", action="store_true",
                         help="at the deadline (--timeout), answer from the rows evaluated so far (sampling methods)")
    explain.add_argument("--quiet", action="store_true", help="no progress bar (it is drawn only on a terminal)")
    explain.set_defaults(run=_explain)

    evaluate = commands.add_parser("evaluate", parents=[connection],
                                   help="evaluate an explanation with quality metrics (Evaluate)")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--method", default="", help="the method whose explanation is evaluated")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="PNG or JPEG file")
    source.add_argument("--tensor", help=".npy file with one example in the model's input space")
    evaluate.add_argument("--param", action="append", type=parse_param, metavar="NAME=VALUE",
                          help="a parameter of --method (repeatable)")
    evaluate.add_argument("--metric", action="append", required=True, metavar="NAME",
                          help="a metric (repeatable): deletion, insertion, pointing_game, ... (explaind metrics)")
    evaluate.add_argument("--metric-param", action="append", type=parse_param, metavar="METRIC.NAME=VALUE",
                          help="a parameter of one --metric, e.g. deletion.steps=50 (repeatable)")
    evaluate.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1",
                          help="the object's box in model input pixels (x1, y1 exclusive), for localisation metrics")
    evaluate.add_argument("--mask", help=".npy [H, W] mask of the object (nonzero), instead of --box")
    evaluate.add_argument("--attribution", help=".npy attribution to evaluate instead of computing one")
    evaluate.add_argument("--target", help="class index or label (default: the top prediction)")
    evaluate.add_argument("--score", default="", choices=["", "probability", "logit"])
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", action="store_true", help="the results as JSON (value, curves, figures, stats)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar (it is drawn only on a terminal)")
    evaluate.set_defaults(run=_evaluate)

    models = commands.add_parser("models", parents=[connection], help="list the server's models (ListModels)")
    models.add_argument("--json", action="store_true", help="the ListModels response as JSON")
    models.set_defaults(run=_models)

    methods = commands.add_parser("methods", parents=[connection],
                                  help="list the methods and their parameters (ListMethods)")
    methods.add_argument("--model", help="only the methods this model supports")
    methods.add_argument("--json", action="store_true", help="the ListMethods response as JSON")
    methods.set_defaults(run=_methods)

    model = commands.add_parser("model", parents=[connection], help="everything the server says about one model "
                                "(GetModel)")
    model.add_argument("name")
    model.add_argument("--json", action="store_true", help="the GetModel response as JSON")
    model.set_defaults(run=_model)

    for name, rpc, what in (("load", "LoadModel", "(re)load a repository folder and serve it"),
                            ("unload", "UnloadModel", "take a model out of service (listed UNLOADED)")):
        control = commands.add_parser(name, parents=[connection], help=f"{what} ({rpc}; with tokens, admin "
                                      "tenants only)")
        control.add_argument("name")
        control.add_argument("--json", action="store_true", help=f"the {rpc} response as JSON")
        control.set_defaults(run=_control)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return args.run(args)
    try:
        return args.run(args)
    except KeyboardInterrupt:  # Ctrl-C while waiting on a server: one line, not a traceback
        print(f"\nexplaind {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
