"""The Explainer gRPC service: a thin layer over explaind.explainer.

Every error becomes a gRPC status here and only here: an ExplaindError maps to its code with its
message; anything else is a bug, logged with its traceback and answered INTERNAL. Nothing a request
does can take the server down, and no call ends with UNKNOWN.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import AsyncIterator, Callable

import grpc
from explaind_client.v1 import explaind_pb2 as pb
from explaind_client.v1 import explaind_pb2_grpc as pb_grpc

from ..errors import ExplaindError, PermissionDenied, Unavailable
from ..evaluation.registry import all_metrics
from ..evaluation.run import applicable
from ..explainer import Explainer, Explanation
from ..logs import BurstLog
from ..metrics import Metrics
from ..models.repository import LoadedModel, ModelEntry
from . import convert

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
# A cancellation this close to the call's deadline is the deadline's (the client's clock started first).
DEADLINE_SLACK_S = 0.05
# Who is calling: the tenant name for a call's metadata, or an ExplaindError (UNAUTHENTICATED).
Identify = Callable[[grpc.aio.ServicerContext], str]


class ExplainerServicer(pb_grpc.ExplainerServicer):
    def __init__(self, explainer: Explainer, metrics: Metrics, identify: Identify | None = None,
                 may_control_models: Callable[[str], bool] | None = None) -> None:
        self.explainer = explainer
        self.metrics = metrics
        self.identify: Identify = identify or (lambda context: ANONYMOUS)
        # Whether a tenant may call LoadModel / UnloadModel (api/auth.py: admin tenants; anyone
        # without token auth).
        self.may_control_models: Callable[[str], bool] = may_control_models or (lambda tenant: True)
        # Refusals under overload come in floods (a client ignoring retry-after-ms loops them): one
        # access-log line per burst with the count, not one each (a line cost ~0.18 ms of the event
        # loop per refusal, ~16% of a refusal's cost, measured with cProfile under 128 such clients).
        self.refusal_log = BurstLog(log, level=logging.INFO)
        self.accepting = True
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no Explain call is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def call_started(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def call_ended(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    # Explain ------------------------------------------------------------------------------------

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        async with self._call(request, context) as call:
            query = convert.explain_query(request)
            result = await self.explainer.explain(query, deadline=_deadline(context), tenant=call.tenant)
            call.complete = result.complete
            return convert.explain_response(result)

    async def ExplainStream(self, request: pb.ExplainRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExplainUpdate]:
        updates: asyncio.Queue[pb.ExplainUpdate | None] = asyncio.Queue()

        def progress(done: int, total: int) -> None:
            updates.put_nowait(pb.ExplainUpdate(progress=pb.Progress(
                rows_done=done, rows_total=total, fraction=done / max(total, 1), stage="explaining")))

        def partial(result: Explanation) -> None:
            updates.put_nowait(pb.ExplainUpdate(partial=convert.explain_response(result)))

        async with self._call(request, context) as call:
            query = convert.explain_query(request)
            prepared = self.explainer.prepare(query)  # refuse bad requests before the stream starts
            task = asyncio.ensure_future(self.explainer.explain(
                query, prepared=prepared, deadline=_deadline(context), tenant=call.tenant,
                on_progress=progress, on_partial=partial))
            task.add_done_callback(lambda _: updates.put_nowait(None))
            try:
                while (update := await updates.get()) is not None:
                    yield update
                call.complete = task.result().complete
                yield pb.ExplainUpdate(result=convert.explain_response(task.result()))
            finally:
                task.cancel()

    # Evaluate -----------------------------------------------------------------------------------

    async def Evaluate(self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext) -> pb.EvaluateResponse:
        async with self._call(request.explain, context, evaluate=True) as call:
            query = convert.evaluate_query(request)
            result = await self.explainer.explain(query, deadline=_deadline(context), tenant=call.tenant)
            return convert.evaluate_response(result)

    async def EvaluateStream(self, request: pb.EvaluateRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.EvaluateUpdate]:
        updates: asyncio.Queue[pb.EvaluateUpdate | None] = asyncio.Queue()

        def progress(stage: str) -> Callable[[int, int], None]:
            def report(done: int, total: int) -> None:
                updates.put_nowait(pb.EvaluateUpdate(progress=pb.Progress(
                    rows_done=done, rows_total=total, fraction=done / max(total, 1), stage=stage)))
            return report

        async with self._call(request.explain, context, evaluate=True) as call:
            query = convert.evaluate_query(request)
            prepared = self.explainer.prepare(query)  # refuse bad requests before the stream starts
            task = asyncio.ensure_future(self.explainer.explain(
                query, prepared=prepared, deadline=_deadline(context), tenant=call.tenant,
                on_progress=progress("explaining"), on_metrics_progress=progress("evaluating")))
            task.add_done_callback(lambda _: updates.put_nowait(None))
            try:
                while (update := await updates.get()) is not None:
                    yield update
                yield pb.EvaluateUpdate(result=convert.evaluate_response(task.result()))
            finally:
                task.cancel()

    async def ListMetrics(self, request: pb.ListMetricsRequest, context: grpc.aio.ServicerContext) -> pb.ListMetricsResponse:
        async with self._guard(context):
            if request.model:
                selected = applicable(self.explainer.view(self.explainer.ready_entry(request.model)))
            else:
                selected = list(all_metrics().values())
            return pb.ListMetricsResponse(metrics=[convert.metric_info(m) for m in selected])

    # Models and methods -------------------------------------------------------------------------

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        async with self._guard(context):
            return pb.ListModelsResponse(models=[self._model_info(e) for e in self.explainer.repository.list()])

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        async with self._guard(context):
            return self._model_info(self.explainer.repository.get(request.name))

    async def ListMethods(self, request: pb.ListMethodsRequest, context: grpc.aio.ServicerContext) -> pb.ListMethodsResponse:
        async with self._guard(context):
            methods = self.explainer.methods
            if request.model:
                names = self.explainer.methods_for(self.explainer.ready_entry(request.model))
                selected = [methods[n] for n in names]
            else:
                selected = list(methods.values())
            return pb.ListMethodsResponse(methods=[convert.method_info(m) for m in selected])

    # Model control (Triton's explicit mode) -------------------------------------------------------

    async def LoadModel(self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        async with self._guard(context) as call:
            self._may_control(call.tenant, "LoadModel")
            return self._model_info(await self.explainer.control.load(request.name))

    async def UnloadModel(self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        async with self._guard(context) as call:
            self._may_control(call.tenant, "UnloadModel")
            return self._model_info(await self.explainer.control.unload(request.name))

    def _may_control(self, tenant: str, rpc: str) -> None:
        if not self.may_control_models(tenant):
            raise PermissionDenied(f"{rpc}: tenant {tenant!r} may not control models (admin tenants only)")

    def _model_info(self, entry: ModelEntry) -> pb.ModelInfo:
        note = self.explainer.repository.note(entry.name)
        if isinstance(entry, LoadedModel):
            served = self.explainer.served(entry)
            return convert.model_info(entry, self.explainer.methods_for(entry), served.max_batch_rows,
                                      served.max_delay_ms, self.explainer.white_box(entry), note=note,
                                      health=self.explainer.engine.health.of(entry.name))
        return convert.model_info(entry, [], 0, 0.0, note=note)

    # Error mapping ------------------------------------------------------------------------------

    def _guard(self, context: grpc.aio.ServicerContext) -> "_ErrorMapper":
        return _ErrorMapper(self, context, None)

    def _call(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext,
              evaluate: bool = False) -> "_ErrorMapper":
        return _ErrorMapper(self, context, request, evaluate)


class _ErrorMapper:
    """Async context manager: refuses calls while shutting down, maps errors, records metrics."""

    def __init__(self, servicer: ExplainerServicer, context: grpc.aio.ServicerContext,
                 request: pb.ExplainRequest | None, evaluate: bool = False) -> None:
        self.servicer = servicer
        self.evaluate = evaluate  # Evaluate / EvaluateStream: counted under method "evaluate/<method>"
        self.context = context
        self.request = request
        self.started = time.monotonic()
        self.tenant = ANONYMOUS
        self.complete = True  # False: the answer was partial (allow_partial at the deadline), logged

    async def __aenter__(self) -> "_ErrorMapper":
        try:
            self.tenant = self.servicer.identify(self.context)
        except ExplaindError as exc:
            self._record(exc.code)
            await self._abort(exc)
        if self.request is not None and not self.servicer.accepting:
            self._record(grpc.StatusCode.UNAVAILABLE)
            await self._abort(Unavailable("the server is shutting down; retry on another instance"))
        if self.request is not None:
            self.servicer.call_started()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:  # type: ignore[no-untyped-def]
        if self.request is not None:
            self.servicer.call_ended()
        code = grpc.StatusCode.OK
        if exc is None:
            pass
        elif isinstance(exc, ExplaindError):
            code = exc.code
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            # grpc cancels the handler both when the client cancels and when the deadline passes.
            code = grpc.StatusCode.DEADLINE_EXCEEDED if _deadline_passed(self.context) else grpc.StatusCode.CANCELLED
        elif isinstance(exc, grpc.aio.AbortError):
            return False
        else:
            code = grpc.StatusCode.INTERNAL
            log.exception("internal error", exc_info=exc)
        self._record(code)
        if exc is None or isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            return False
        if isinstance(exc, ExplaindError):
            await self._abort(exc)
        await self.context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}: {exc}); "
                                 "this is a bug in explaind, please report it")
        return False

    async def _abort(self, error: ExplaindError) -> None:
        retry = getattr(error, "retry_after_s", None)  # ResourceExhausted: when a retry may be admitted
        if retry is not None:
            # retry-after-ms for explaind's clients; the same as grpc-retry-pushback-ms, which gRPC's own
            # retry policy honours (a client with retryableStatusCodes RESOURCE_EXHAUSTED waits that long).
            ms = str(max(1, math.ceil(retry * 1000)))
            self.context.set_trailing_metadata((("retry-after-ms", ms), ("grpc-retry-pushback-ms", ms)))
        await self.context.abort(error.code, error.message)

    def _record(self, code: grpc.StatusCode) -> None:
        if self.request is None:
            return
        model = self.request.model if self.servicer.explainer.is_model(self.request.model) else "(unknown)"
        method = self.request.WhichOneof("method") or ("attribution" if self.evaluate else "(none)")
        if self.evaluate:
            method = f"evaluate/{method}"
        seconds = time.monotonic() - self.started
        self.servicer.metrics.requests.labels(model, method, code.name).inc()
        if code == grpc.StatusCode.OK:
            self.servicer.metrics.request_seconds.labels(model, method).observe(seconds)
        extra = {"model": model, "method": method, "code": code.name, "seconds": round(seconds, 4)}
        if code == grpc.StatusCode.OK and not self.complete:
            extra["complete"] = False
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.servicer.refusal_log.event("explain", **extra)
        else:
            log.info("explain", extra=extra)


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    """The call has a deadline and it has come, or nearly: the client's deadline starts when it sends,
    before the server's, so its expiry can cancel the call a network latency before the server's own
    (measured on loopback: the stream's cancellation came first in some runs)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= DEADLINE_SLACK_S


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
