"""Admission: the engine accepts only work it can finish by the requests' deadlines, within the queue
bounds and the tenants' quotas; everything else is refused at once with RESOURCE_EXHAUSTED and a retry
hint (`ResourceExhausted.retry_after_s`).

Cost. Each scheduler measures its variant's model seconds per row (a moving average over its batches).
A live job costs its rows not yet evaluated times that. A request admitted up front (a `Ticket`, with
its planned rows, before its first stage runs) costs its rows not yet submitted as jobs times the
seconds per row of the variant its method used last on that model. Before a variant has run a batch
its cost is unknown: the work is admitted, and once the first batch is measured the jobs that can no
longer finish in time (and have not started) are refused (`shed`), as they are whenever the figures
move (at most every SHED_INTERVAL_S).

Order, as the schedulers and the device run it: short jobs (a few batches of rows) first; then per priority
class earliest deadline first (jobs without a deadline after); the classes share the device by weight
(device.ClassShare). So a long job of class k with deadline d finishes, by estimate, after

    S + A + sum over the other classes c of min(B_c, A * w_c / w_k)

seconds of model time (times MARGIN when admitting): S the short jobs' work, A class k's work due by
d (its own included), B_c all of class c's work (class c keeps its share of the device while it has
work). A job is admitted when that is before d and when it does not push an admitted job of its class
with a later deadline past that one's deadline (a short job: any admitted long job, since it runs
before all). Requests without a deadline are admitted against the queue bounds and quotas only, and so
are requests that accept a partial answer at their deadline (allow_partial): their work counts until
their deadline at most. Cross-class effects are taken as they stand at admission (a class whose work
grows later slows the others by at most its share). Refusals for time carry a retry hint spread so
that refused clients come back one by one (`_spread`).

Tenants' quotas (tenants.TenantQuotas) count a ticket's planned rows when it is admitted, so a request
refused for its quota or its deadline is refused before its first stage spends anything.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from ..errors import ResourceExhausted
from ..metrics import Metrics
from ..tenants import QuotaExceeded, TenantPolicies, TenantQuotas
from .device import ClassShare
from .job import Job
from .scheduler import QueueAccount

# Admission stretches estimates by this much (and messages quote them stretched): batch seconds are
# measured on the device thread, the device idles a little between batches (forming, delivering), and
# the measured speed moves with the machine's other load. Shedding takes estimates as they are, so
# what was admitted is refused later only when the figures grew by more than the margin.
MARGIN = 1.25
SHED_INTERVAL_S = 0.5
MIN_RETRY_S = 0.01
# A variant's figure is stale when it ran no batch for this long; with nothing admitted on the device a
# request priced by a stale figure is admitted (the device would idle otherwise) and the figure relearnt,
# so a figure measured while the machine was slow cannot lock its variant out for good.
STALE_S = 5.0

log = logging.getLogger(__name__)


class Costed(Protocol):
    """What admission needs of a scheduler."""

    seconds_per_row: float | None
    short_rows: int     # jobs of at most this many rows are short: they run before long ones
    measured_at: float  # time.monotonic() of the last batch measured


class Ticket:
    """One request admitted as a whole: its planned rows, reserved until its stages submit them."""

    def __init__(self, admission: "Admission", model: str, method: str, tenant: str, priority: str,
                 deadline: float | None, rows: int, partial: bool = False) -> None:
        self.admission = admission
        self.partial = partial   # it accepts a partial answer at its deadline: no deadline check
        self.model = model
        self.method = method
        self.tenant = tenant
        self.priority = priority
        self.deadline = deadline
        self.reserved = rows     # planned rows not yet submitted as jobs
        self.largest = 0         # rows of its largest job so far (its variant prices the method)
        self.shed: str = ""      # why it can no longer be finished in time ("" while it can)
        self.shed_retry: float | None = None

    def close(self) -> None:
        self.admission.close(self)


@dataclass
class _Live:
    job: Job
    scheduler: Costed
    model: str
    drop: Callable[[Job], None]
    partial: bool = False  # its request accepts a partial answer at the deadline
    released: int = 0  # rows already released from the tenant's count in flight


@dataclass
class _Work:
    """One entry of the admitted work: a live job or a ticket's rows not yet submitted."""

    priority: str
    deadline: float | None
    cost: float
    short: bool
    owner: _Live | Ticket


class Admission:
    def __init__(self, account: QueueAccount, policies: TenantPolicies, share: ClassShare,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic,
                 check_deadlines: bool = True) -> None:
        self.account = account
        self.check_deadlines = check_deadlines  # refuse and shed what cannot finish by its deadline
        self.policies = policies
        self.quotas = TenantQuotas(policies, clock)
        self.share = share
        self.metrics = metrics
        self._clock = clock
        self._live: dict[Job, _Live] = {}
        self._tickets: set[Ticket] = set()
        self._priced: dict[tuple[str, str], Costed] = {}  # (model, method) -> the variant it used last
        self._next_retry: dict[str, float] = {}  # per class: when the next refused request's turn comes
        self._last_shed = -math.inf

    # Requests -----------------------------------------------------------------------------------

    def open(self, model: str, method: str, tenant: str, deadline: float | None, rows: int | None,
             partial: bool = False) -> Ticket:
        """Admit a request with `rows` planned rows (None: unknown, its jobs are admitted one by one)
        or refuse it before anything runs. `partial`: it accepts a partial answer at its deadline."""
        priority = self.policies.policy(tenant).priority
        ticket = Ticket(self, model, method, tenant, priority, deadline, 0, partial)
        if not rows:
            return ticket
        priced = self._priced.get((model, method))
        per_row = priced.seconds_per_row if priced is not None else None
        account = self.account
        if account.rows + account.reserved + rows > account.max_rows:
            self._refuse(model, tenant, "queue", self._queue_full(rows, per_row))
        self._check_quotas(model, tenant, rows, per_row)
        if deadline is not None and not partial and per_row and priced is not None:
            self._check_deadline(model, tenant, priority, deadline, rows * per_row, rows <= priced.short_rows,
                                 priced.measured_at)
        self.quotas.charge(tenant, rows)
        account.reserved += rows
        ticket.reserved = rows
        self._tickets.add(ticket)
        self._report(tenant)
        return ticket

    def close(self, ticket: Ticket) -> None:
        """The request ended: rows it planned and never submitted are released."""
        if ticket in self._tickets:
            self._tickets.discard(ticket)
            self.account.reserved -= ticket.reserved
            self.quotas.release(ticket.tenant, ticket.reserved)
            ticket.reserved = 0
            self._report(ticket.tenant)

    # Jobs ---------------------------------------------------------------------------------------

    def admit(self, job: Job, scheduler: Costed, model: str, drop: Callable[[Job], None],
              ticket: Ticket | None = None) -> None:
        """Admit a job (rows its ticket reserved are not checked again) or raise ResourceExhausted."""
        tenant = job.tenant
        job.priority = self.policies.policy(tenant).priority
        if ticket is not None and ticket.shed:  # counted when it was shed
            raise ResourceExhausted(ticket.shed, ticket.shed_retry)
        covered = min(job.total_rows, ticket.reserved) if ticket is not None and ticket in self._tickets else 0
        extra = job.total_rows - covered
        partial = job.partial or (ticket is not None and ticket.partial)
        account = self.account
        per_row = scheduler.seconds_per_row
        if account.jobs + 1 > account.max_jobs or \
                account.rows + account.reserved - covered + job.total_rows > account.max_rows:
            self._refuse(model, tenant, "queue", self._queue_full(job.total_rows, per_row))
        if extra:
            self._check_quotas(model, tenant, extra, per_row)
            if job.deadline is not None and not partial and per_row:
                self._check_deadline(model, tenant, job.priority, job.deadline, extra * per_row,
                                     job.total_rows <= scheduler.short_rows, scheduler.measured_at)
        if ticket is not None and covered:
            ticket.reserved -= covered
            account.reserved -= covered
        if ticket is not None and job.total_rows > ticket.largest:
            ticket.largest = job.total_rows
            self._priced[(ticket.model, ticket.method)] = scheduler
        if extra:
            self.quotas.charge(tenant, extra)
        self._live[job] = _Live(job, scheduler, model, drop, partial)
        self.share.started(job.priority)
        job.done.add_done_callback(lambda _: self._ended(job))
        self._report(tenant)

    def rows_done(self, job: Job, rows: int) -> None:
        """`rows` of a job evaluated (called by its scheduler for every batch)."""
        live = self._live.get(job)
        if live is None:
            return
        live.released += rows
        self.quotas.release(job.tenant, rows)
        if self.metrics:
            self.metrics.tenant_rows.labels(self.policies.label(job.tenant)).inc(rows)
        self._report(job.tenant)

    def _ended(self, job: Job) -> None:
        live = self._live.pop(job, None)
        if live is None:
            return
        self.quotas.release(job.tenant, job.total_rows - live.released)
        self.share.ended(job.priority)
        self._report(job.tenant)

    # Deadlines ----------------------------------------------------------------------------------

    def measured(self, first: bool) -> None:
        """A scheduler measured a batch: after a variant's first batch, or every SHED_INTERVAL_S, the
        work admitted before its cost was known (or as the cost moves) is checked again."""
        now = self._clock()
        if first or now - self._last_shed >= SHED_INTERVAL_S:
            self._last_shed = now
            self.shed(now)

    def shed(self, now: float | None = None) -> int:
        """Refuse the admitted work that has not started and can no longer finish by its deadline (in
        each class, earliest deadline first, so what is refused makes room for what follows); returns
        how many jobs and requests were refused."""
        if not self.check_deadlines:
            return 0
        now = self._clock() if now is None else now
        work = self._work()
        short = sum(w.cost for w in work if w.short)
        backlog = self._backlog(work)
        refused = 0
        for priority in self.share.weights:
            ahead = 0.0
            for due, w in self._by_deadline(work, priority):
                ahead += w.cost
                finish = self._finish(now, priority, ahead, backlog, short, margin=1.0)
                if finish <= due or not self._sheddable(w):
                    continue
                ahead -= w.cost
                backlog[priority] -= w.cost
                retry = max(MIN_RETRY_S, finish - due)
                message = (f"the engine can no longer finish this request before its deadline: an estimated "
                           f"{finish - now:.2f} s of model time until it would be done (its own "
                           f"{w.cost:.2f} s included) and {due - now:.2f} s left; retry in {retry:.2f} s "
                           "or with a longer deadline")
                if isinstance(w.owner, Ticket):
                    w.owner.shed, w.owner.shed_retry = message, retry
                    tenant, model = w.owner.tenant, w.owner.model
                else:
                    w.owner.job.fail(ResourceExhausted(message, retry))
                    w.owner.drop(w.owner.job)
                    tenant, model = w.owner.job.tenant, w.owner.model
                self._count(tenant, "deadline", model)
                refused += 1
                log.info("admitted work shed", extra={"tenant": tenant, "model": model,
                                                      "estimated_s": round(finish - now, 3),
                                                      "left_s": round(due - now, 3),
                                                      "cost_s": round(w.cost, 3)})
        return refused

    @staticmethod
    def _sheddable(w: _Work) -> bool:
        if isinstance(w.owner, Ticket):
            return not w.owner.shed and not w.owner.partial
        return w.owner.job.taken == 0 and not w.owner.job.finished and not w.owner.partial

    def _check_deadline(self, model: str, tenant: str, priority: str, deadline: float, cost: float,
                        short: bool, measured_at: float) -> None:
        if not self.check_deadlines:
            return
        now = self._clock()
        work = self._work()
        if not work and now - measured_at > STALE_S:
            return  # nothing admitted and the figure is stale: admitted, and the figure relearnt
        short_work = sum(w.cost for w in work if w.short)
        left = deadline - now
        if cost * MARGIN > left:
            retry = max(MIN_RETRY_S, cost * MARGIN - left)  # only if the server gets that much faster
            self._refuse(model, tenant, "deadline", ResourceExhausted(
                f"the engine cannot finish this request before its deadline: it needs an estimated "
                f"{cost * MARGIN:.2f} s of model time and {max(left, 0.0):.2f} s are left, even with nothing "
                "queued: ask for fewer rows or a longer deadline", retry))
        backlog = self._backlog(work)
        if short:
            finish = now + MARGIN * (short_work + cost)
            if finish > deadline:
                self._refuse_late(model, tenant, cost, finish, now, deadline, work, priority)
            for klass in self.share.weights:  # it runs before every long job
                self._check_later(model, tenant, klass, -math.inf, cost, work, backlog, short_work, now)
            return
        ahead = sum(w.cost for due, w in self._by_deadline(work, priority) if due <= deadline)
        finish = self._finish(now, priority, ahead + cost, backlog, short_work)
        if finish > deadline:
            self._refuse_late(model, tenant, cost, finish, now, deadline, work, priority)
        self._check_later(model, tenant, priority, deadline, cost, work, backlog, short_work, now)

    @staticmethod
    def _by_deadline(work: list[_Work], priority: str) -> list[tuple[float, _Work]]:
        """The long work of one class that has a deadline, earliest first, with its deadline."""
        timed = [(w.deadline, w) for w in work if not w.short and w.priority == priority and w.deadline is not None]
        return sorted(timed, key=lambda item: item[0])

    def _check_later(self, model: str, tenant: str, priority: str, deadline: float, cost: float,
                     work: list[_Work], backlog: dict[str, float], short_work: float, now: float) -> None:
        """Refuse a candidate costing `cost` that runs before class `priority`'s admitted jobs with a
        deadline after `deadline` when it would push one of them from on time to late."""
        ahead = 0.0
        for due, w in self._by_deadline(work, priority):
            ahead += w.cost
            if due <= deadline:
                continue
            before = self._finish(now, priority, ahead, backlog, short_work)
            after = self._finish(now, priority, ahead + cost, backlog, short_work)
            if before <= due < after:
                retry = self._spread(priority, now, max(MIN_RETRY_S, after - due), cost, due - now)
                self._refuse(model, tenant, "deadline", ResourceExhausted(
                    f"the engine cannot fit this request before admitted work with later deadlines: it needs "
                    f"an estimated {cost * MARGIN:.2f} s of model time, which would make an admitted request miss "
                    f"its deadline ({len(work)} jobs and requests admitted); retry in {retry:.2f} s or with a "
                    "longer deadline", retry))

    def _refuse_late(self, model: str, tenant: str, cost: float, finish: float, now: float, deadline: float,
                     work: list[_Work], priority: str) -> None:
        retry = self._spread(priority, now, max(MIN_RETRY_S, finish - deadline), cost, deadline - now)
        rows = sum(w.owner.job.total_rows - w.owner.job.done_rows if isinstance(w.owner, _Live) else w.owner.reserved
                   for w in work)
        self._refuse(model, tenant, "deadline", ResourceExhausted(
            f"the engine cannot finish this request before its deadline: it needs an estimated {cost * MARGIN:.2f} s "
            f"of model time after {max(finish - now - cost * MARGIN, 0.0):.2f} s of admitted work that runs before "
            f"or beside it ({len(work)} jobs and requests, {rows} rows queued), and {deadline - now:.2f} s are "
            f"left; retry in {retry:.2f} s or with a longer deadline", retry))

    def _spread(self, priority: str, now: float, retry: float, cost: float, window: float) -> float:
        """The retry hint of a request refused for time: `retry` (when the admitted work will have
        drained enough for it), later by the work of the requests refused just before it (each of which
        would take its turn first), wrapping around within its deadline `window`, so refused clients
        come back one by one instead of all at once."""
        start = now + retry
        offset = max(0.0, self._next_retry.get(priority, -math.inf) - start)
        if window > 0:
            offset %= window
        self._next_retry[priority] = start + offset + cost * MARGIN
        return retry + offset

    def _finish(self, now: float, priority: str, due: float, backlog: dict[str, float], short: float,
                margin: float = MARGIN) -> float:
        """When work `due` of class `priority` would be done (see the module docstring), the other
        classes taking their share of the device while they have work (`backlog`)."""
        weights = self.share.weights
        others = sum(min(b, due * weights[c] / weights[priority]) for c, b in backlog.items() if c != priority)
        return now + margin * (short + due + others)

    def _backlog(self, work: list[_Work]) -> dict[str, float]:
        backlog = {priority: 0.0 for priority in self.share.weights}
        for w in work:
            if not w.short:
                backlog[w.priority] += w.cost
        return backlog

    def _work(self) -> list[_Work]:
        """Everything admitted and not yet done, costed (a partial request's until its deadline at most)."""
        now = self._clock()

        def capped(cost: float, partial: bool, deadline: float | None) -> float:
            return min(cost, max(0.0, deadline - now)) if partial and deadline is not None else cost

        work = []
        for live in self._live.values():
            job = live.job
            per_row = live.scheduler.seconds_per_row
            if job.finished or not per_row:
                continue
            cost = capped((job.total_rows - job.done_rows) * per_row, live.partial, job.deadline)
            work.append(_Work(job.priority, job.deadline, cost, job.total_rows <= live.scheduler.short_rows, live))
        for ticket in self._tickets:
            priced = self._priced.get((ticket.model, ticket.method))
            if ticket.reserved == 0 or ticket.shed or priced is None or not priced.seconds_per_row:
                continue
            cost = capped(ticket.reserved * priced.seconds_per_row, ticket.partial, ticket.deadline)
            work.append(_Work(ticket.priority, ticket.deadline, cost, ticket.reserved <= priced.short_rows, ticket))
        return work

    # Quotas and refusals ------------------------------------------------------------------------

    def _check_quotas(self, model: str, tenant: str, rows: int, per_row: float | None) -> None:
        try:
            self.quotas.check(tenant, rows, per_row)
        except QuotaExceeded as exc:
            self._refuse(model, tenant, exc.quota, exc)

    def _queue_full(self, rows: int, per_row: float | None) -> ResourceExhausted:
        account = self.account
        excess = account.rows + account.reserved + rows - account.max_rows
        retry = max(MIN_RETRY_S, excess * per_row) if per_row and excess > 0 else 1.0
        return ResourceExhausted(
            f"the engine queue is full ({account.jobs} jobs and {account.rows + account.reserved} rows queued; "
            f"limits {account.max_jobs} jobs and {account.max_rows} rows; this request needs {rows} rows): "
            f"retry in {retry:.2f} s", retry)

    def _refuse(self, model: str, tenant: str, reason: str, error: ResourceExhausted) -> None:
        self._count(tenant, reason, model)
        raise error

    def _count(self, tenant: str, reason: str, model: str) -> None:
        if self.metrics:
            self.metrics.tenant_refused.labels(self.policies.label(tenant), reason).inc()
            self.metrics.refused.labels(model).inc()

    def _report(self, tenant: str) -> None:
        if self.metrics:
            label = self.policies.label(tenant)
            self.metrics.tenant_rows_in_flight.labels(label).set(self.quotas.label_in_flight(label))
