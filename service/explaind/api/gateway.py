"""The HTTP/JSON gateway: the Explainer service over HTTP, in the server process (`http_port`).

Every call goes through the same ExplainerServicer as gRPC (one Explainer, engine, limits, metrics,
auth and error mapping): the gateway gives it an HTTP request as a servicer context
(:class:`HttpContext`), and turns the status the servicer aborts with into an HTTP status by
google.rpc's mapping (:data:`HTTP_STATUS`, google/rpc/code.proto) with the same message. Bodies are
the proto messages in protobuf's JSON mapping (google.protobuf.json_format), so the schemas stay one;
the OpenAPI document (GET /openapi.json, api/openapi.py) is derived from the same descriptors.

Routes (``{name}``: a model):
  GET  /v1/models, /v1/models/{name}, /v1/methods[?model=], /v1/metrics[?model=]
  POST /v1/models/{name}:explain        KServe v1 explainer protocol: ``{"instances": [...], ...}``
       -> ``{"explanations": [ExplainResponse...]}`` (one per instance, in order); a body without
       ``instances`` is one ExplainRequest -> one ExplainResponse.
  POST /v1/models/{name}:explainStream  ExplainRequest -> server-sent events (progress, partial, result)
  POST /v1/models/{name}:evaluate       EvaluateRequest -> EvaluateResponse
  POST /v1/models/{name}:evaluateStream EvaluateRequest -> server-sent events (progress, result)
  GET  /openapi.json, and / with the web page (api/web/; /static/ its assets, /examples/ the demo's
       example images).
Errors: ``{"error": {"code": HTTP status, "status": "INVALID_ARGUMENT", "message": "..."}}``; 413 for
a body over max_message_bytes (gRPC's transport refuses such a message before any servicer).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import socket
import ssl
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import grpc
import numpy as np
from explaind_client.v1 import explaind_pb2 as pb
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import Settings
from ..errors import ExplaindError, InvalidArgument, echo
from . import openapi
from .servicer import ExplainerServicer

log = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent / "web"
EXAMPLES = Path(__file__).resolve().parents[1] / "demo" / "examples"  # the page's example images
TIMEOUT_HEADER = "x-timeout-s"  # the call's deadline in seconds, as gRPC's grpc-timeout
MAX_TIMEOUT_S = 86400.0

# google.rpc.Code -> HTTP status, as google/rpc/code.proto documents each code's HTTP mapping.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
BODY_TOO_LARGE = 413


class HttpAbort(grpc.aio.AbortError):
    """What HttpContext.abort raises: the call's end with a gRPC code and message (and headers)."""

    def __init__(self, code: grpc.StatusCode, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


class HttpContext:
    """The part of grpc.aio.ServicerContext the servicer uses, for one HTTP request."""

    def __init__(self, request: Request, deadline: float | None) -> None:
        self._metadata = tuple((k, v) for k, v in request.headers.items() if k == "authorization")
        self._deadline = deadline
        self.trailing: dict[str, str] = {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing.update(dict(metadata))

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        headers = {}
        if "retry-after-ms" in self.trailing:  # RESOURCE_EXHAUSTED with a retry hint
            ms = int(self.trailing["retry-after-ms"])
            headers = {"retry-after": str(max(1, math.ceil(ms / 1000))), "retry-after-ms": str(ms)}
        raise HttpAbort(code, details, headers)


def error_response(code: grpc.StatusCode, message: str, headers: dict[str, str] | None = None,
                   status: int | None = None) -> JSONResponse:
    status = status or HTTP_STATUS.get(code, 500)
    return JSONResponse({"error": {"code": status, "status": code.name, "message": message}},
                        status_code=status, headers=headers)


def error_event(error: HttpAbort) -> dict[str, Any]:
    return {"error": {"code": HTTP_STATUS.get(error.code, 500), "status": error.code.name,
                      "message": error.message}}


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def parse(data: Any, message: Message, field: str) -> Message:
    """`data` (decoded JSON) into `message` by protobuf's JSON mapping; InvalidArgument naming `field`."""
    if not isinstance(data, dict):
        raise InvalidArgument(field, f"a JSON object ({message.DESCRIPTOR.name})", _json_kind(data))
    try:
        json_format.ParseDict(data, message)
    except (json_format.ParseError, RecursionError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(field, f"{message.DESCRIPTOR.full_name} in protobuf's JSON mapping",
                              str(exc) or type(exc).__name__) from None
    return message


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


class Gateway:
    """The Starlette app over one ExplainerServicer."""

    def __init__(self, servicer: ExplainerServicer, settings: Settings) -> None:
        self.servicer = servicer
        self.settings = settings
        self.document = openapi.document()
        routes = [
            Route("/", self.page, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=WEB), name="static"),
            Mount("/examples", app=StaticFiles(directory=EXAMPLES, check_dir=False), name="examples"),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{name}:explain", self.explain, methods=["POST"]),
            Route("/v1/models/{name}:explainStream", self.explain_stream, methods=["POST"]),
            Route("/v1/models/{name}:evaluate", self.evaluate, methods=["POST"]),
            Route("/v1/models/{name}:evaluateStream", self.evaluate_stream, methods=["POST"]),
            Route("/v1/models/{name}", self.get_model, methods=["GET"]),
            Route("/v1/methods", self.list_methods, methods=["GET"]),
            Route("/v1/metrics", self.list_metrics, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed})

    # Plumbing -------------------------------------------------------------------------------------

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return error_response(grpc.StatusCode.NOT_FOUND, f"path: no route {echo(request.url.path)}")

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return error_response(grpc.StatusCode.UNIMPLEMENTED, f"{request.method} {echo(request.url.path)}: "
                              "method not allowed", status=405)

    def _context(self, request: Request) -> HttpContext:
        raw = request.headers.get(TIMEOUT_HEADER)
        deadline = None
        if raw is not None:
            try:
                seconds = float(raw)
            except ValueError:
                seconds = math.nan
            if not 0 < seconds <= MAX_TIMEOUT_S:
                raise InvalidArgument(f"header {TIMEOUT_HEADER}", f"seconds in (0, {MAX_TIMEOUT_S:g}]", echo(raw))
            deadline = time.monotonic() + seconds
        context = HttpContext(request, deadline)
        self.servicer.identify(context)  # type: ignore[arg-type]  (UNAUTHENTICATED before reading a body)
        return context

    async def _body(self, request: Request) -> Any:
        limit = self.settings.max_message_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge(f"body: expected at most max_message_bytes={limit} bytes, got more")
            chunks.append(chunk)
        data = b"".join(chunks)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise InvalidArgument("body", "JSON (protobuf's JSON mapping of the request message)",
                                  f"{len(data)} bytes that do not parse ({type(exc).__name__}: "
                                  f"{str(exc)[:200]})") from None

    async def _unary(self, request: Request, call: Callable[[HttpContext], Awaitable[Any]]) -> Response:
        try:
            context = self._context(request)
            if request.method == "POST":
                request.state.body = await self._body(request)
            result = await _unless_disconnected(request, call(context))
        except _Disconnected:
            return Response(status_code=HTTP_STATUS[grpc.StatusCode.CANCELLED])  # nobody reads it
        except HttpAbort as exc:
            return error_response(exc.code, exc.message, exc.headers)
        except _TooLarge as exc:
            return error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), status=BODY_TOO_LARGE)
        except ExplaindError as exc:  # the gateway's own checks (header, body), mapped as the servicer does
            return error_response(exc.code, exc.message)
        return JSONResponse(result if isinstance(result, dict) else to_json(result))

    # Pages ----------------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return FileResponse(WEB / "index.html", media_type="text/html")

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.document)

    # Models, methods, metrics -------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        return await self._unary(request, lambda c: self.servicer.ListModels(pb.ListModelsRequest(), c))

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        return await self._unary(request, lambda c: self.servicer.GetModel(pb.GetModelRequest(name=name), c))

    async def list_methods(self, request: Request) -> Response:
        model = request.query_params.get("model", "")
        return await self._unary(request, lambda c: self.servicer.ListMethods(pb.ListMethodsRequest(model=model), c))

    async def list_metrics(self, request: Request) -> Response:
        model = request.query_params.get("model", "")
        return await self._unary(request, lambda c: self.servicer.ListMetrics(pb.ListMetricsRequest(model=model), c))

    # Explain and evaluate -------------------------------------------------------------------------

    async def explain(self, request: Request) -> Response:
        async def call(context: HttpContext) -> Any:
            body = request.state.body
            name = request.path_params["name"]
            if isinstance(body, dict) and "instances" in body:
                requests = kserve_requests(body, name, self.settings.http_max_instances)
                answers = await _all([self.servicer.Explain(r, context) for r in requests])  # type: ignore[arg-type]
                return {"explanations": [to_json(a) for a in answers]}
            return await self.servicer.Explain(explain_request(body, name, "body"), context)  # type: ignore[arg-type]
        return await self._unary(request, call)

    async def evaluate(self, request: Request) -> Response:
        async def call(context: HttpContext) -> Any:
            return await self.servicer.Evaluate(evaluate_request(request.state.body,  # type: ignore[arg-type]
                                                                 request.path_params["name"]), context)
        return await self._unary(request, call)

    async def explain_stream(self, request: Request) -> Response:
        return await self._stream(request, lambda body, name, c: self.servicer.ExplainStream(
            explain_request(body, name, "body"), c))  # type: ignore[arg-type]

    async def evaluate_stream(self, request: Request) -> Response:
        return await self._stream(request, lambda body, name, c: self.servicer.EvaluateStream(
            evaluate_request(body, name), c))  # type: ignore[arg-type]

    async def _stream(self, request: Request,
                      open_stream: Callable[[Any, str, HttpContext], AsyncIterator[Message]]) -> Response:
        """Server-sent events, one per update: ``event: progress|partial|result`` with the update's
        field as JSON; an error after the stream started is ``event: error`` with the error object.
        An error before the first update (a bad request, auth) is an HTTP error as for unary calls."""
        updates: AsyncIterator[Message] | None = None
        head: dict[str, Any] = {}

        async def first(context: HttpContext) -> dict[str, Any]:
            nonlocal updates
            updates = open_stream(request.state.body, request.path_params["name"], context)
            try:
                head.update(_event(await updates.__anext__()))
            except BaseException:
                await updates.aclose()
                raise
            return {}

        response = await self._unary(request, first)
        if response.status_code != 200 or updates is None:
            return response
        return StreamingResponse(_sse(head, updates), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


async def _unless_disconnected(request: Request, call: Awaitable[Any]) -> Any:
    """Await `call`, cancelling it when the client disconnects first (as gRPC cancels a call whose
    client went away: its rows leave the engine's queues). The body must have been read already."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(call), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, HttpAbort):
                await task
            raise _Disconnected()
    return task.result()


def _event(update: Message) -> dict[str, Any]:
    kind = update.WhichOneof("kind")
    return {"event": kind, "data": to_json(getattr(update, kind))}


def _format(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _sse(head: dict[str, Any], updates: AsyncIterator[Message]) -> AsyncIterator[bytes]:
    try:
        yield _format(head["event"], head["data"])
        try:
            async for update in updates:
                event = _event(update)
                yield _format(event["event"], event["data"])
        except HttpAbort as exc:
            yield _format("error", error_event(exc))
    finally:
        await updates.aclose()  # type: ignore[attr-defined]  (a client that left cancels the call)


async def _all(calls: list[Awaitable[Any]]) -> list[Any]:
    """Run the calls concurrently (their rows batch together); the first failure cancels the rest.

    With several instances the failure's message starts with the instance it was: ``instances[i]: ``."""
    async def one(i: int, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except HttpAbort as exc:
            if len(calls) > 1:
                raise HttpAbort(exc.code, f"instances[{i}]: {exc.message}", exc.headers) from None
            raise

    tasks = [asyncio.ensure_future(one(i, c)) for i, c in enumerate(calls)]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


# Request bodies ------------------------------------------------------------------------------------


def explain_request(body: Any, name: str, field: str) -> pb.ExplainRequest:
    """An ExplainRequest from its JSON, the model from the path (the body's, if any, must agree)."""
    request = parse(body, pb.ExplainRequest(), field)
    _set_model(request, name, f"{field}.model")
    return request


def evaluate_request(body: Any, name: str) -> pb.EvaluateRequest:
    request = parse(body, pb.EvaluateRequest(), "body")
    _set_model(request.explain, name, "body.explain.model")
    return request


def _set_model(request: pb.ExplainRequest, name: str, field: str) -> None:
    if request.model and request.model != name:
        raise InvalidArgument(field, f"the path's model {echo(name)} or unset", echo(request.model))
    request.model = name


def kserve_requests(body: dict[str, Any], name: str, max_instances: int) -> list[pb.ExplainRequest]:
    """One ExplainRequest per instance of a KServe v1 body ``{"instances": [...], ...fields}``.

    The other fields are ExplainRequest's (method, target, render...) and apply to every instance.
    An instance is ``{"b64": BASE64}`` (an encoded image, KServe's binary convention), a nested array
    of numbers (a float32 tensor without the batch dimension: a tabular row, an image in input space),
    or an object of ExplainRequest's input fields (``{"image": BASE64}`` or ``{"tensor": {...}}``)."""
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        got = "an empty array" if instances == [] else (
            _json_kind(instances) if isinstance(instances, dict) else echo(instances))
        raise InvalidArgument("instances", "a non-empty array", got)
    if len(instances) > max_instances:
        raise InvalidArgument("instances", f"at most http_max_instances={max_instances} instances",
                              f"{len(instances)}")
    common = {k: v for k, v in body.items() if k != "instances"}
    base = explain_request(common, name, "body")
    if base.WhichOneof("input"):
        raise InvalidArgument("body", "the input in `instances` only", f"also {base.WhichOneof('input')}")
    requests = []
    for i, instance in enumerate(instances):
        request = pb.ExplainRequest()
        request.CopyFrom(base)
        _set_instance(request, instance, f"instances[{i}]")
        requests.append(request)
    return requests


def _set_instance(request: pb.ExplainRequest, instance: Any, field: str) -> None:
    if isinstance(instance, dict) and set(instance) == {"b64"}:
        if not isinstance(instance["b64"], str):
            raise InvalidArgument(f"{field}.b64", "a base64 string", _json_kind(instance["b64"]))
        try:
            request.image = base64.b64decode(instance["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{field}.b64", "base64 (RFC 4648, standard alphabet)",
                                  f"{len(instance['b64'])} characters that do not decode") from None
    elif isinstance(instance, dict):
        if not set(instance) <= {"image", "tensor"} or len(instance) != 1:
            raise InvalidArgument(field, "{\"b64\": ...}, {\"image\": ...}, {\"tensor\": {...}} or an array "
                                  "of numbers", f"an object with keys {echo(sorted(instance))}")
        request.MergeFrom(parse(instance, pb.ExplainRequest(), field))
    elif isinstance(instance, list):
        try:
            values = np.asarray(instance, dtype=np.float32)
        except (ValueError, TypeError, OverflowError):
            raise InvalidArgument(field, "a rectangular nested array of numbers", "a ragged or non-numeric "
                                  "array") from None
        if values.ndim == 0 or values.size == 0:
            raise InvalidArgument(field, "a non-empty array of numbers", f"shape {list(values.shape)}")
        request.tensor.CopyFrom(pb.Tensor(dtype=pb.FLOAT32, shape=list(values.shape),
                                          data=values.astype("<f4").tobytes()))
    else:
        raise InvalidArgument(field, "an object ({\"b64\": ...}) or an array of numbers", _json_kind(instance))


# Serving -------------------------------------------------------------------------------------------


class Uvicorn:
    """uvicorn on the server's event loop, without its signal handlers (the server owns SIGTERM)."""

    def __init__(self, server: Any, task: asyncio.Task) -> None:
        self.server = server
        self.task = task

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: a free port); OSError when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(servicer: ExplainerServicer, settings: Settings, sock: socket.socket) -> Uvicorn:
    """Start the gateway on `sock` (TLS and mTLS as the gRPC port: tls_cert, tls_key, tls_client_ca)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start/stop lines: the server logs its own
    tls: dict[str, Any] = {}
    if settings.tls_cert:
        tls = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
        if settings.tls_client_ca:
            tls.update(ssl_ca_certs=settings.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(Gateway(servicer, settings).app, log_config=None, access_log=False,
                            lifespan="off", timeout_graceful_shutdown=max(1, int(settings.grace_period_s)),
                            h11_max_incomplete_event_size=64 * 1024, **tls)
    server = Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the HTTP gateway stopped at startup")
        await asyncio.sleep(0.01)
    return Uvicorn(server, task)
