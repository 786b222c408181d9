"""The gRPC server: Explainer, health checking, reflection, metrics, and graceful shutdown.

On SIGTERM (or SIGINT) health turns NOT_SERVING, new Explain calls are answered UNAVAILABLE, calls
in flight get `grace_period_s` to finish, then the engine stops and `serve` returns (exit code 0).
The server keeps answering during the grace period, so health checks see NOT_SERVING and clients
get a clear UNAVAILABLE rather than a refused connection.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from explaind_client.v1 import explaind_pb2 as pb
from explaind_client.v1 import explaind_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..config import Settings
from ..engine.device import limit_blas_threads
from ..engine.engine import Engine
from ..explainer import Explainer
from ..metrics import Metrics
from ..models.repository import ModelRepository, RepositoryLimits
from .decoding import add_explainer_to_server
from .servicer import ExplainerServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    servicer: ExplainerServicer
    health: health.aio.HealthServicer
    engine: Engine
    metrics: Metrics
    metrics_http: object | None
    settings: Settings

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, let calls in flight finish, stop the engine."""
        log.info("shutting down", extra={"grace_seconds": self.settings.grace_period_s})
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.servicer.accepting = False
        finished = await self.servicer.wait_idle(self.settings.grace_period_s)
        if not finished:
            log.warning("grace period over; cancelling calls in flight", extra={"calls": self.servicer.in_flight})
        await self.server.stop(0 if not finished else 1.0)
        await self.engine.close()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()  # type: ignore[attr-defined]
        log.info("stopped")


async def start(settings: Settings) -> RunningServer:
    """Load the repository, start the engine and the server; returns once it accepts calls."""
    limit_blas_threads(settings.blas_threads)
    metrics = Metrics()
    repository = ModelRepository(settings.repository_path, RepositoryLimits(max_model_bytes=settings.max_model_bytes))
    repository.scan()
    for entry in repository.list():
        log.info("model", extra={"model": entry.name, "status": entry.status, "reason": entry.reason,
                                 "sha256": entry.sha256})
    engine = Engine(settings, metrics)
    explainer = Explainer(settings, repository, engine)
    servicer = ExplainerServicer(explainer, metrics)
    options = [("grpc.max_receive_message_length", settings.max_message_bytes),
               ("grpc.max_send_message_length", settings.max_message_bytes)]
    server = grpc.aio.server(options=options)
    add_explainer_to_server(servicer, server, metrics)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise RuntimeError(f"cannot listen on {settings.host}:{settings.port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    metrics_http = metrics.serve(settings.metrics_port, settings.host) if settings.metrics_port >= 0 else None
    log.info("serving", extra={"port": port, "metrics_port": settings.metrics_port, "device": engine.device.kind,
                               "repository": str(settings.repository_path),
                               "models": [e.name for e in repository.list()]})
    return RunningServer(server, port, servicer, health_servicer, engine, metrics, metrics_http, settings)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    running = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()
