"""The engine: schedulers per (model, variant), the device they run on, and the queue bounds.

Methods hand it jobs; it builds each variant's graph and onnxruntime session the first time that
variant is used (then caches them), batches rows of all concurrent jobs, and resolves each job's
future when its last row is reduced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from ..config import Settings
from ..errors import Cancelled, ResourceExhausted
from ..metrics import Metrics
from ..onnxgraph.signature import ModelSignature
from ..onnxgraph.variants import Variant, VariantSpec, build_variant, max_batch_rows, variant_interface
from .job import Job
from .runner import Runner, choose_device
from .scheduler import QueueAccount, Scheduler

log = logging.getLogger(__name__)


class ServedModel:
    """What the engine needs of a repository entry to build its variants."""

    def __init__(self, name: str, model: object, signature: ModelSignature,
                 max_batch_rows: int, max_delay_ms: float, spin: str | None = None) -> None:
        self.name = name
        self.model = model
        self.signature = signature
        self.max_batch_rows = max_batch_rows
        self.max_delay_ms = max_delay_ms
        self.spin = spin  # the model's onnxruntime spinning (model.yaml batching.spin); None: the server's


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = choose_device(settings)
        self.account = QueueAccount(settings.max_queued_rows, settings.max_queued_jobs)
        self._schedulers: dict[tuple[str, VariantSpec], Scheduler] = {}
        self._variants: dict[tuple[str, VariantSpec], Variant] = {}

    def scheduler(self, served: ServedModel, spec: VariantSpec) -> Scheduler:
        key = (served.name, spec)
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            interface = variant_interface(spec)

            def build() -> Runner:
                data = self.variant(served, spec).model.SerializeToString()
                settings = self.settings if served.spin is None else dataclasses.replace(self.settings, spin=served.spin)
                return Runner(data, interface.row_outputs + interface.slot_outputs, interface.constants,
                              self.device, settings)

            async def make_runner() -> Runner:
                # Graph construction (autodiff included) and session creation can take seconds on a
                # large model: off the event loop.
                runner = await asyncio.get_running_loop().run_in_executor(None, build)
                log.info("session ready", extra={"model": served.name, "variant": spec.describe(),
                                                 "device": self.device.kind})
                return runner

            scheduler = Scheduler(
                model=served.name, variant=spec.describe(), interface=interface, runner_factory=make_runner,
                device=self.device, max_batch_rows=max_batch_rows(spec, served.signature, served.max_batch_rows),
                max_delay_s=served.max_delay_ms / 1000.0, account=self.account,
                on_batch=self.metrics.record_batch if self.metrics else None,
                on_queue=self._report_queue if self.metrics else None)
            self._schedulers[key] = scheduler
        return scheduler

    def variant(self, served: ServedModel, spec: VariantSpec) -> Variant:
        """The variant graph (built once per model and spec)."""
        key = (served.name, spec)
        if key not in self._variants:
            self._variants[key] = build_variant(served.model, served.signature, spec)  # type: ignore[arg-type]
        return self._variants[key]

    def submit(self, served: ServedModel, spec: VariantSpec, job: Job) -> None:
        """Queue a job or refuse it at once when the bounds would be exceeded."""
        account = self.account
        if account.jobs + 1 > account.max_jobs or account.rows + job.total_rows > account.max_rows:
            if self.metrics:
                self.metrics.refused.labels(served.name).inc()
            raise ResourceExhausted(
                f"the engine queue is full ({account.jobs} jobs and {account.rows} rows queued; limits "
                f"{account.max_jobs} jobs and {account.max_rows} rows; this request needs "
                f"{job.total_rows} rows): retry later")
        scheduler = self.scheduler(served, spec)
        account.jobs += 1
        account.rows += job.total_rows
        scheduler.add(job)

    async def run(self, served: ServedModel, spec: VariantSpec, job: Job) -> None:
        """Submit a job and wait for it; if the caller is cancelled, its pending rows are dropped."""
        self.submit(served, spec, job)
        try:
            await asyncio.shield(job.done)
        except asyncio.CancelledError:
            job.fail(Cancelled("the request was cancelled"))
            self._schedulers[(served.name, spec)].drop(job)
            raise

    def _report_queue(self, model: str, variant: str, rows: int, jobs: int) -> None:
        if self.metrics:
            self.metrics.queue_rows.labels(model, variant).set(rows)
            self.metrics.queue_jobs.labels(model, variant).set(jobs)

    async def close(self) -> None:
        for scheduler in self._schedulers.values():
            await scheduler.close()
        self.device.queue.shutdown()
