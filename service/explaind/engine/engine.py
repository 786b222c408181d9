"""The engine: schedulers per (model, variant), the device they run on, and the queue bounds.

Methods hand it jobs; it builds a variant's graph and onnxruntime session the first time that
variant is used, batches rows of all concurrent jobs, and resolves each job's future when its last
row is reduced. Sessions live in a cache bounded by count and by bytes (`max_sessions`,
`max_session_bytes`): when a new one would exceed either, the least recently used idle ones (no
job queued or running) are closed. The graph itself is not kept once its session exists, so a
model's weights are held by the repository's ModelProto and by the sessions, nothing else.
Schedulers are per version of a model (a reloaded model gets new ones while jobs of the old one
finish); a retired version's sessions close as soon as they are idle. A temporary copy of a model
with other weights (`temporary`, MPRT's randomised models) has a negative version of its own and its
sessions close when its block ends. Metrics are labelled by the
model's name and the variant's kind, never by version or parameters.

Admission (engine/admission.py) costs what is asked against what is already admitted and the
deadlines, the queue bounds and the tenants' quotas, and refuses at once what cannot be done in time.
A request is admitted as a whole by `admit` before its first stage (its planned rows, where its method
knows them); its stages' jobs reach that admission through a context variable (every stage runs in a
task of the request's context), so they are not checked again. Jobs outside an admitted request, or
beyond its plan, are admitted one by one at `submit`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import logging
import time
from typing import Iterator

from ..config import Settings
from ..errors import Cancelled
from ..metrics import Metrics
from ..onnxgraph.signature import ModelSignature
from ..onnxgraph.variants import VariantSpec
from ..tenants import BATCH, INTERACTIVE, TenantPolicies, load_policies
from .admission import Admission, Ticket
from .batch_tuning import tune_batch_rows
from .device import ClassShare
from .health import ModelHealth
from .job import Job
from .runner import ArenaRelease, Runner, choose_device
from .scheduler import QueueAccount, Scheduler

log = logging.getLogger(__name__)


class ServedModel:
    """What the engine needs of a repository entry to build its variants."""

    def __init__(self, name: str, model: object, signature: ModelSignature,
                 max_batch_rows: int, max_delay_ms: float, spin: str | None = None, version: int = 0) -> None:
        self.name = name
        self.version = version  # the repository's load of the model (LoadedModel.version)
        self.model = model
        self.signature = signature
        self.max_batch_rows = max_batch_rows
        self.max_delay_ms = max_delay_ms
        self.spin = spin  # the model's onnxruntime spinning (model.yaml batching.spin); None: the server's


Key = tuple[str, int, VariantSpec]  # (model name, version, variant)

# A retired version's session closes once idle this long: long enough not to close it between two
# stages of a request still running on that version (which would rebuild it), short enough to free
# a replaced model's memory within seconds. Checked every RETIRED_SWEEP_S.
RETIRED_IDLE_S = 2.0
RETIRED_SWEEP_S = 0.25


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 tenants: TenantPolicies | None = None) -> None:
        """`tenants`: the tenants' policies (default: read from settings.tenants)."""
        self.settings = settings
        self.metrics = metrics
        self.device = choose_device(settings)
        self.account = QueueAccount(settings.max_queued_rows, settings.max_queued_jobs)
        self.share = ClassShare({INTERACTIVE: settings.interactive_weight, BATCH: settings.batch_weight})
        self.device.queue.share = self.share
        self.admission = Admission(self.account, tenants if tenants is not None else load_policies(settings.tenants),
                                   self.share, metrics, check_deadlines=settings.admit_by_deadline)
        # The admitted request whose stages are running in this context (see the module docstring).
        self._ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("explaind_ticket", default=None)
        # Least recently used first.
        self._schedulers: collections.OrderedDict[Key, Scheduler] = collections.OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self._retired: dict[str, int] = {}  # model name -> versions below this are out of service
        self._last_busy: dict[Key, float] = {}  # retired versions' schedulers: when last seen in use
        self._sweep: asyncio.TimerHandle | None = None
        self._temporaries = 0  # temporary model copies made (their versions: -1, -2, ...)
        self.arena = ArenaRelease(settings.arena_release_s) if settings.shared_arena and self.device.kind == "cpu" else None
        self.health = ModelHealth()  # fed by the runners, read by GetModel

    # Sessions -----------------------------------------------------------------------------------

    def scheduler(self, served: ServedModel, spec: VariantSpec) -> Scheduler:
        key = (served.name, served.version, spec)
        if self._is_retired(key):  # a request still running on a replaced version
            self._last_busy[key] = time.monotonic()
            self._sweep_later()
        scheduler = self._schedulers.get(key)
        if scheduler is not None:
            self._schedulers.move_to_end(key)
            return scheduler
        interface = spec.interface()

        def build() -> Runner:
            data = spec.build(served.model, served.signature).SerializeToString()  # type: ignore[arg-type]
            settings = self.settings if served.spin is None else dataclasses.replace(self.settings, spin=served.spin)
            return Runner(data, interface.row_outputs + interface.slot_outputs, interface.constants,
                          self.device, settings, arena=self.arena, model=served.name, variant=spec.kind,
                          health=self.health)

        async def make_runner() -> Runner:
            # Graph construction (autodiff included) and session creation can take seconds on a
            # large model: off the event loop.
            runner = await asyncio.get_running_loop().run_in_executor(None, build)
            if self.settings.batch_tuning_s > 0:
                await self._tune(scheduler, runner, served, spec)
            log.info("session ready", extra={"model": served.name, "version": served.version, "variant": spec.describe(),
                                             "device": self.device.kind, "bytes": runner.size_bytes})
            self._evict(building=runner.size_bytes)  # counted before the scheduler holds it
            return runner

        scheduler = Scheduler(
            model=served.name, variant=spec.kind, interface=interface, runner_factory=make_runner,
            device=self.device, max_batch_rows=spec.max_batch_rows(served.signature, served.max_batch_rows),
            max_delay_s=served.max_delay_ms / 1000.0, account=self.account,
            on_batch=self.metrics.record_batch if self.metrics else None,
            on_queue=self._report_queue if self.metrics else None,
            share=self.share, on_rows=self.admission.rows_done, on_measured=self.admission.measured)
        self._schedulers[key] = scheduler
        self._evict()
        return scheduler

    async def _tune(self, scheduler: Scheduler, runner: Runner, served: ServedModel, spec: VariantSpec) -> None:
        """The scheduler's batch size from measurement (engine.batch_tuning), timed on the device's
        thread so that it does not share the cores with other variants' batches."""
        configured = scheduler.max_batch_rows
        chosen, measured = await asyncio.wrap_future(self.device.queue.submit(
            0, tune_batch_rows, runner.session, configured, self.settings.batch_tuning_s))
        scheduler.max_batch_rows = chosen
        scheduler.measured_batch_rows = measured
        log.info("batch size measured", extra={"model": served.name, "variant": spec.describe(), "batch_rows": chosen,
                                               "rows_per_s": {k: round(v, 1) for k, v in measured.items()}})

    @contextlib.contextmanager
    def temporary(self, served: ServedModel, model: object) -> Iterator[ServedModel]:
        """`served` with another graph of the same signature (MPRT's randomised copies), for one block:
        its sessions are keyed by a version of its own (negative, never a repository's) and closed when
        the block ends, so copies never accumulate in the session cache."""
        self._temporaries += 1
        copy = ServedModel(served.name, model, served.signature, served.max_batch_rows, served.max_delay_ms,
                           served.spin, version=-self._temporaries)
        try:
            yield copy
        finally:
            for key in [k for k in self._schedulers if k[0] == copy.name and k[1] == copy.version]:
                self._close(key, "session of a temporary model copy closed")
            if self.metrics:
                self.metrics.sessions.set(len(self._schedulers))
                self.metrics.session_bytes.set(self.session_bytes())

    def session_bytes(self) -> int:
        return sum(s.runner_bytes for s in self._schedulers.values())

    def sessions(self) -> int:
        return len(self._schedulers)

    def _evict(self, building: int = 0) -> None:
        """Close least recently used idle schedulers while over max_sessions or max_session_bytes.

        `building`: the bytes of a session just built and not yet handed to its scheduler.
        """
        limit_count, limit_bytes = self.settings.max_sessions, self.settings.max_session_bytes
        for key in list(self._schedulers)[:-1]:  # never the one just used
            if len(self._schedulers) <= limit_count and self.session_bytes() + building <= limit_bytes:
                break
            if not self._schedulers[key].idle:
                continue
            self._close(key, "session evicted")
            if self.metrics:
                self.metrics.evictions.inc()
        if self.metrics:
            self.metrics.sessions.set(len(self._schedulers))
            self.metrics.session_bytes.set(self.session_bytes() + building)

    def _close(self, key: Key, why: str) -> None:
        scheduler = self._schedulers.pop(key)
        self._last_busy.pop(key, None)
        log.info(why, extra={"model": key[0], "version": key[1], "variant": key[2].describe()})
        if self.arena:
            self.arena.request()
        task = asyncio.get_running_loop().create_task(scheduler.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # Versions -----------------------------------------------------------------------------------

    def retire(self, name: str, below: int) -> None:
        """Versions of `name` below `below` are out of service: close their sessions once no job of
        theirs has been queued or running for RETIRED_IDLE_S, so a replaced model's memory goes."""
        self._retired[name] = max(self._retired.get(name, 0), below)
        now = time.monotonic()
        for key in self._schedulers:
            if self._is_retired(key):
                self._last_busy.setdefault(key, now)
        self._close_retired()

    def _is_retired(self, key: Key) -> bool:
        # Temporary copies (negative versions) are closed by their own block, not by retirement.
        return 0 <= key[1] < self._retired.get(key[0], 0)

    def _close_retired(self) -> None:
        self._sweep = None
        now = time.monotonic()
        waiting = False
        for key in [k for k in self._schedulers if self._is_retired(k)]:
            if not self._schedulers[key].idle:
                self._last_busy[key] = now
            if now - self._last_busy.setdefault(key, now) >= RETIRED_IDLE_S:
                self._close(key, "session of a retired model version closed")
            else:
                waiting = True
        if waiting:
            self._sweep_later()
        if self.metrics:
            self.metrics.sessions.set(len(self._schedulers))
            self.metrics.session_bytes.set(self.session_bytes())

    def _sweep_later(self) -> None:
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(RETIRED_SWEEP_S, self._close_retired)

    # Jobs ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def admit(self, served: ServedModel, method: str, tenant: str, deadline: float | None,
              rows: int | None, partial: bool = False) -> Iterator[Ticket]:
        """Admit a whole request (`rows`: its planned rows, None when its method cannot say) before
        its first stage, or refuse it at once (ResourceExhausted); its stages run inside the block.
        `partial`: the request accepts a partial answer at its deadline (not refused for lack of time)."""
        ticket = self.admission.open(served.name, method, tenant, deadline, rows, partial)
        token = self._ticket.set(ticket)
        try:
            yield ticket
        finally:
            self._ticket.reset(token)
            ticket.close()

    def submit(self, served: ServedModel, spec: VariantSpec, job: Job) -> Scheduler:
        """Queue a job or refuse it at once (ResourceExhausted) when the bounds, the tenant's quotas or
        its deadline do not allow it."""
        scheduler = self.scheduler(served, spec)
        self.admission.admit(job, scheduler, served.name, scheduler.drop, self._ticket.get())
        self.account.jobs += 1
        self.account.rows += job.total_rows
        scheduler.add(job)
        return scheduler

    async def run(self, served: ServedModel, spec: VariantSpec, job: Job) -> None:
        """Submit a job and wait for it; if the caller is cancelled, its pending rows are dropped."""
        scheduler = self.submit(served, spec, job)
        try:
            await asyncio.shield(job.done)
        except asyncio.CancelledError:
            job.fail(Cancelled("the request was cancelled"))
            scheduler.drop(job)
            raise

    def _report_queue(self, model: str, kind: str, rows: int, jobs: int) -> None:
        """Queue gauges per (model, variant kind): the sums over that kind's schedulers."""
        if not self.metrics:
            return
        same = [s for (name, _, spec), s in self._schedulers.items() if name == model and spec.kind == kind]
        self.metrics.queue_rows.labels(model, kind).set(sum(s.queued_rows() for s in same))
        self.metrics.queue_jobs.labels(model, kind).set(sum(s.queued_jobs() for s in same))

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        for scheduler in self._schedulers.values():
            await scheduler.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        self.device.queue.shutdown()
