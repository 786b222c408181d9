"""Admission and deadline-aware scheduling: what the engine admits given the work ahead and the
deadlines, the order it runs admitted work in, the priority classes' shares and the tenants' quotas.

Two kinds of test: the admission arithmetic on a fake clock with variants whose seconds per row the
test sets (so every estimate is known exactly), and the real engine on a real onnxruntime session,
where the figures come from its own measured batches.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from explaind.engine.admission import MARGIN, Admission
from explaind.engine.device import ClassShare, DeviceQueue
from explaind.engine.engine import Engine
from explaind.engine.job import Job
from explaind.engine.scheduler import QueueAccount
from explaind.errors import ResourceExhausted
from explaind.metrics import Metrics
from explaind.onnxgraph.variants.predict import Predict
from explaind.tenants import TenantPolicies, TenantPolicy

from _linear import run, served_linear, settings

PREDICT = Predict()
WEIGHTS = {"interactive": 4.0, "batch": 1.0}


@dataclass
class Variant:
    """What admission reads of a scheduler, with a cost per row the test sets."""

    seconds_per_row: float | None
    short_rows: int = 256
    measured_at: float = 1000.0  # the fake clock's start: a fresh figure


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job(rows: int, deadline: float | None = None, tenant: str = "anonymous", seen: list | None = None,
        name: str = "", x: np.ndarray | None = None, chunk: int = 16) -> Job:
    def chunks():
        for start in range(0, rows, chunk):
            yield {"row": np.arange(start, min(start + chunk, rows))}

    def consume(codes, outputs, slot):
        if seen is not None:
            seen.append((name, len(codes["row"])))

    constants = {"x0": x if x is not None else np.zeros((1, 4, 4), np.float32)}
    return Job(constants=constants, rows=chunks(), total_rows=rows, consume=consume, deadline=deadline,
               tenant=tenant)


def admission(policies: TenantPolicies | None = None, clock: Clock | None = None, metrics: Metrics | None = None,
              max_rows: int = 10_000_000, max_jobs: int = 512,
              check_deadlines: bool = True) -> tuple[Admission, Clock]:
    clock = clock or Clock()
    return Admission(QueueAccount(max_rows, max_jobs), policies or TenantPolicies(), ClassShare(WEIGHTS),
                     metrics, clock, check_deadlines=check_deadlines), clock


def admit(a: Admission, j: Job, variant: Variant, ticket=None) -> None:
    a.admit(j, variant, "m", lambda _: None, ticket)


# The arithmetic, on a fake clock ----------------------------------------------------------------

def test_a_job_that_cannot_finish_before_its_deadline_behind_admitted_work_is_refused_with_a_retry_hint():
    async def main():
        a, clock = admission()
        variant = Variant(0.001)  # 1 ms per row
        admit(a, job(10_000, deadline=clock.now + 30), variant)            # 10 s of work
        admit(a, job(10_000, deadline=clock.now + 30), variant)            # 20 s: fits (25 s with the margin)
        with pytest.raises(ResourceExhausted) as refused:
            admit(a, job(10_000, deadline=clock.now + 30), variant)        # 30 s * 1.25 = 37.5 s > 30 s
        return refused.value

    error = run(main())
    assert MARGIN == 1.25  # the figures below
    assert "needs an estimated 12.50 s of model time after 25.00 s of admitted work" in error.message
    assert "30.00 s are left" in error.message
    assert error.retry_after_s == pytest.approx(30 * MARGIN - 30)


def test_with_deadline_checks_off_late_work_is_admitted_and_never_shed():
    async def main():
        a, clock = admission(check_deadlines=False)
        variant = Variant(0.001)
        for _ in range(3):  # the third is refused with the checks on (the test above)
            admit(a, job(10_000, deadline=clock.now + 30), variant)
        return a.shed(), len(a._live)

    assert run(main()) == (0, 3)


def test_requests_refused_together_are_told_to_come_back_one_after_the_other():
    async def main():
        a, clock = admission()
        variant = Variant(0.001)
        admit(a, job(20_000, deadline=clock.now + 30), variant)   # 25 s of 30
        hints = []
        for _ in range(4):
            with pytest.raises(ResourceExhausted) as refused:
                admit(a, job(5_000, deadline=clock.now + 30), variant)  # 1.25 * 25 = 31.25 s > 30
            hints.append(refused.value.retry_after_s)
        return hints

    hints = run(main())
    # The first when enough admitted work has drained (1.25 s), each next one turn (5 s * 1.25) later.
    assert hints == pytest.approx([1.25, 7.5, 13.75, 20.0])


def test_a_job_too_large_for_its_deadline_even_alone_is_refused_unless_the_figure_is_stale_and_nothing_runs():
    async def main():
        a, clock = admission()
        variant = Variant(0.001)
        with pytest.raises(ResourceExhausted) as refused:
            admit(a, job(5_000, deadline=clock.now + 4), variant)   # 5 s > 4 s
        clock.now += 6  # no batch for 6 s: the figure may be from a slow moment; nothing else is admitted
        probe = job(5_000, deadline=clock.now + 4)
        admit(a, probe, variant)
        with pytest.raises(ResourceExhausted, match="even with nothing queued"):  # not while the probe runs
            admit(a, job(5_000, deadline=clock.now + 4), variant)
        return refused.value

    error = run(main())
    assert "needs an estimated 6.25 s of model time and 4.00 s are left, even with nothing queued" in error.message
    assert error.retry_after_s == pytest.approx(6.25 - 4)


def test_without_a_deadline_only_the_queue_bounds_apply():
    async def main():
        a, clock = admission(max_rows=25_000)
        variant = Variant(0.001)
        for _ in range(2):
            admit(a, job(10_000), variant)   # 20 s of work, no deadline: admitted
            a.account.rows += 10_000          # as the engine counts them
            a.account.jobs += 1
        with pytest.raises(ResourceExhausted, match="queue is full") as refused:
            admit(a, job(10_000), variant)
        return refused.value

    error = run(main())
    assert error.retry_after_s == pytest.approx(5_000 * 0.001)  # the rows over the bound, at 1 ms each


def test_jobs_without_a_deadline_are_not_ahead_of_jobs_with_one():
    async def main():
        a, clock = admission()
        variant = Variant(0.001)
        admit(a, job(100_000), variant)                           # 100 s, no deadline: runs after
        admit(a, job(20_000, deadline=clock.now + 30), variant)   # 22 s with margin: admitted

    run(main())


def test_an_earlier_deadline_may_not_push_admitted_work_past_its_deadline():
    async def main():
        a, clock = admission()
        variant = Variant(0.001)
        admit(a, job(20_000, deadline=clock.now + 28), variant)        # 25 s of 28
        admit(a, job(1_000, deadline=clock.now + 10), variant)         # goes first; the other then 26.25 s
        with pytest.raises(ResourceExhausted, match="would make an admitted request miss its deadline") as refused:
            admit(a, job(2_000, deadline=clock.now + 12), variant)     # itself fine (3.75 s), the first 28.75 s
        return refused.value

    assert run(main()).retry_after_s == pytest.approx(MARGIN * 23 - 28)


def test_a_short_job_runs_before_long_ones_so_it_may_not_make_them_late():
    async def main():
        a, clock = admission()
        variant = Variant(0.001)
        admit(a, job(20_000, deadline=clock.now + 25.4), variant)      # 25 s of 25.4
        admit(a, job(200, deadline=clock.now + 100), variant)          # short, first: the long one 25.25 s
        with pytest.raises(ResourceExhausted, match="would make an admitted request miss its deadline"):
            admit(a, job(200, deadline=clock.now + 100), variant)      # the long one 25.5 s > 25.4
        admit(a, job(200), variant)                                    # no deadline: no check

    run(main())


def test_work_of_the_other_class_counts_by_its_share():
    """An interactive job waits behind batch work for at most a quarter of its own work (4 : 1), and a
    batch job behind interactive work for four times its own."""
    async def main():
        policies = TenantPolicies(tenants={"reports": TenantPolicy(priority="batch")})
        a, clock = admission(policies)
        variant = Variant(0.001)
        admit(a, job(100_000, tenant="reports"), variant)              # 100 s of batch work
        admit(a, job(20_000, deadline=clock.now + 31), variant)        # 1.25 * (20 + 5) = 31.25 s > 31
        return a, clock, variant

    with pytest.raises(ResourceExhausted, match="after 6.25 s of admitted work"):
        run(main())

    async def batch_side():
        policies = TenantPolicies(tenants={"reports": TenantPolicy(priority="batch")})
        a, clock = admission(policies)
        variant = Variant(0.001)
        admit(a, job(20_000, deadline=clock.now + 28), variant)                     # interactive: 25 s
        admit(a, job(4_000, deadline=clock.now + 26.5, tenant="reports"), variant)  # 1.25 * (4 + 16) = 25 s
        with pytest.raises(ResourceExhausted):
            admit(a, job(5_000, deadline=clock.now + 26.5, tenant="reports"), variant)  # 1.25 * (9 + 20) = 36.25

    run(batch_side())


def test_a_request_is_refused_before_its_first_stage_and_its_planned_jobs_are_not_checked_again():
    async def main():
        a, clock = admission()
        variant = Variant(0.001)
        ticket = a.open("m", "rise", "anonymous", clock.now + 30, 20_001)     # unpriced: admitted, learnt
        admit(a, job(1, deadline=clock.now + 30), Variant(0.002), ticket)  # the prediction row
        admit(a, job(20_000, deadline=clock.now + 30), variant, ticket)       # prices the method
        assert ticket.reserved == 0 and a.account.reserved == 0
        with pytest.raises(ResourceExhausted, match="25.00 s of model time after 25.00 s") as refused:
            a.open("m", "rise", "anonymous", clock.now + 30, 20_001)           # before anything runs
        second = a.open("m", "rise", "anonymous", clock.now + 60, 20_001)     # a later deadline fits
        assert a.account.reserved == 20_001
        clock.now += 5  # time passes and the estimate moves; the planned jobs are admitted all the same
        admit(a, job(20_000, deadline=second.deadline), variant, second)
        second.close()
        ticket.close()
        assert a.account.reserved == 0
        return refused.value

    assert run(main()).retry_after_s == pytest.approx(MARGIN * (0.002 + 20 + 20.001) - 30)


def test_work_admitted_before_its_cost_was_known_is_shed_once_measured_earliest_deadline_kept():
    async def main():
        a, clock = admission()
        variant = Variant(None)   # no batch measured yet: everything is admitted
        jobs = [job(11_000, deadline=clock.now + 30) for _ in range(4)]
        for i, j in enumerate(jobs):
            clock.now += 0.01
            admit(a, j, variant)
        variant.seconds_per_row = 0.001  # the first batch: 11 s per job, so two fit in 30 s
        jobs[3].taken = 16               # the last has started: never shed, even late
        shed = a.shed()
        await asyncio.sleep(0)
        return shed, jobs

    shed, jobs = run(main())
    assert shed == 1
    assert [j.finished for j in jobs] == [False, False, True, False]
    assert isinstance(jobs[2].failed, ResourceExhausted)
    assert "can no longer finish this request before its deadline" in jobs[2].failed.message
    assert jobs[2].failed.retry_after_s > 0


def test_a_partial_request_is_not_refused_for_time_and_counts_until_its_deadline():
    async def main():
        a, clock = admission()
        variant = Variant(0.001)
        pricing = a.open("m", "rise", "anonymous", None, 10)
        admit(a, job(10), variant, pricing)  # the method's cost: 1 ms per row
        pricing.close()
        with pytest.raises(ResourceExhausted, match="even with nothing queued"):
            a.open("m", "rise", "anonymous", clock.now + 5, 100_001)
        ticket = a.open("m", "rise", "anonymous", clock.now + 5, 100_001, partial=True)
        admit(a, job(100_000, deadline=clock.now + 5), variant, ticket)  # 100 s of work, a 5 s deadline
        admit(a, job(16_000, deadline=clock.now + 30), variant)         # behind it 5 s at most: 26.25 s
        ticket.close()

    run(main())


# Quotas ----------------------------------------------------------------------------------------

def test_a_tenant_over_its_rows_in_flight_quota_is_refused_naming_it():
    async def main():
        policies = TenantPolicies(tenants={"reports": TenantPolicy(rows_in_flight=30_000)})
        a, clock = admission(policies, metrics=Metrics())
        variant = Variant(0.001)
        first = job(20_000, tenant="reports")
        admit(a, first, variant)
        with pytest.raises(ResourceExhausted) as refused:
            admit(a, job(20_000, tenant="reports"), variant)
        admit(a, job(20_000, tenant="someone-else"), variant)  # quotas are per tenant
        a.rows_done(first, 15_000)                              # evaluated rows leave the count
        admit(a, job(20_000, tenant="reports"), variant)
        with pytest.raises(ResourceExhausted, match="more than the quota of 30000 rows in flight allows at all"):
            admit(a, job(30_001, tenant="reports"), variant)
        return refused.value, a

    error, a = run(main())
    assert error.message.startswith("tenant 'reports' is over its rows_in_flight quota: 20000 of 30000 rows in "
                                    "flight; this request needs 20000")
    assert error.retry_after_s == pytest.approx(10_000 * 0.001)
    registry = a.metrics.registry
    assert registry.get_sample_value("explaind_tenant_refused_total",
                                     {"tenant": "reports", "reason": "rows_in_flight"}) == 2
    assert registry.get_sample_value("explaind_tenant_rows_total", {"tenant": "reports"}) == 15_000
    assert registry.get_sample_value("explaind_tenant_rows_in_flight", {"tenant": "reports"}) == 25_000
    assert registry.get_sample_value("explaind_tenant_rows_in_flight", {"tenant": "default"}) == 20_000


def test_a_tenant_over_its_rows_per_second_quota_is_refused_until_the_bucket_refills():
    async def main():
        policies = TenantPolicies(tenants={"reports": TenantPolicy(rows_per_second=1_000)})
        a, clock = admission(policies)
        variant = Variant(0.001)
        admit(a, job(600, tenant="reports"), variant)
        with pytest.raises(ResourceExhausted) as refused:
            admit(a, job(600, tenant="reports"), variant)       # 400 left of 1000
        clock.now += 0.2                                        # 600 again
        admit(a, job(600, tenant="reports"), variant)
        clock.now += 1.0                                        # full
        admit(a, job(5_000, tenant="reports"), variant)         # larger than a second's worth: a full bucket
        with pytest.raises(ResourceExhausted) as in_debt:
            admit(a, job(1, tenant="reports"), variant)         # -4000: 4.001 s to refill one row
        return refused.value, in_debt.value

    refused, in_debt = run(main())
    assert refused.message == ("tenant 'reports' is over its rows_per_second quota of 1000 rows per second: this "
                               "request needs 600 rows and 400 are available now: retry in 0.20 s")
    assert refused.retry_after_s == pytest.approx(0.2)
    assert in_debt.retry_after_s == pytest.approx(4.001)


# Order ------------------------------------------------------------------------------------------

def run_in_order(make_jobs: Callable[[float, list], Sequence[Job]]) -> list[tuple[str, int]]:
    """(job name, rows) of each batch part, in the order a real engine ran them, for the jobs that
    ``make_jobs(now, seen)`` returns (batches of 16 rows on a tiny linear model)."""
    async def main():
        engine = Engine(settings())
        served, _ = served_linear("lin", (1, 4, 4), 3, max_batch_rows=16, max_delay_ms=50)
        order: list[tuple[str, int]] = []
        await asyncio.gather(*(engine.run(served, PREDICT, j) for j in make_jobs(time.monotonic(), order)))
        await engine.close()
        return order

    return run(main())


def test_admitted_jobs_run_earliest_deadline_first_and_short_jobs_still_go_in_whole():
    order = run_in_order(lambda now, seen: (
        job(160, seen=seen, name="none"),   # no deadline: after both
        job(160, deadline=now + 600, seen=seen, name="late"),
        job(160, deadline=now + 300, seen=seen, name="early"),
        job(3, deadline=now + 900, seen=seen, name="small"),
    ))
    # The first batch: the short job whole (3 rows, within 16 / 4 jobs), the earliest deadline the rest.
    assert order[:2] == [("small", 3), ("early", 13)]
    names = [name for name, _ in order]
    last = {name: max(i for i, n in enumerate(names) if n == name) for name in ("early", "late")}
    first = {name: names.index(name) for name in ("late", "none")}
    assert last["early"] < first["late"] and last["late"] < first["none"]
    assert {name: sum(n for m, n in order if m == name) for name in ("early", "late", "none")} == \
        {"early": 160, "late": 160, "none": 160}


def test_a_short_job_goes_before_a_long_one_with_an_earlier_deadline():
    names = [name for name, _ in run_in_order(lambda now, seen: (
        job(320, deadline=now + 300, seen=seen, name="long"),
        job(60, deadline=now + 600, seen=seen, name="short"),  # 4 batches at most: short
    ))]
    assert max(i for i, n in enumerate(names) if n == "short") < names.index("long")


def test_the_classes_share_the_device_four_to_one_in_rows():
    """Two long jobs on one variant, one interactive and one batch tenant: over the window in which
    both have rows left, the rows go 4 : 1."""
    async def main():
        policies = TenantPolicies(tenants={"reports": TenantPolicy(priority="batch")})
        engine = Engine(settings(), tenants=policies)
        served, _ = served_linear("lin", (1, 4, 4), 3, max_batch_rows=16, max_delay_ms=50)
        order: list[tuple[str, int]] = []
        jobs = [job(1600, seen=order, name="interactive"), job(1600, tenant="reports", seen=order, name="batch")]
        await asyncio.gather(*(engine.run(served, PREDICT, j) for j in jobs))
        await engine.close()
        return order

    order = run(main())
    done, window = 0, []
    for name, n in order:  # up to the interactive job's last rows: both had rows left
        window.append((name, n))
        done += n if name == "interactive" else 0
        if done == 1600:
            break
    rows = {name: sum(n for m, n in window if m == name) for name in ("interactive", "batch")}
    assert rows["interactive"] == 1600
    assert 3.5 <= rows["interactive"] / rows["batch"] <= 4.5, rows


def test_the_device_queue_serves_the_classes_by_weight():
    """Batches of two variants (two schedulers) wait on the device: each class's batches are charged
    as they run, and the queue serves four interactive batches for each batch one."""
    share = ClassShare(WEIGHTS)
    queue = DeviceQueue("share-test")
    queue.share = share
    gate = threading.Event()
    order: list[str] = []

    def run_batch(klass: str) -> None:
        order.append(klass)
        share.charge(klass, 1.0)

    from explaind.engine.device import BatchPriority

    blocker = queue.submit(BatchPriority(100), gate.wait)
    classes = ["batch"] * 10 + ["interactive"] * 20
    futures = [queue.submit(BatchPriority(50_000, klass=k), run_batch, k) for k in classes]
    gate.set()
    for f in [blocker, *futures]:
        f.result(5)
    queue.shutdown()
    assert order[:15] == ["interactive", "batch"] + (["interactive"] * 4 + ["batch"]) * 2 + ["interactive"] * 3


def test_a_class_back_from_idle_banks_no_credit():
    share = ClassShare(WEIGHTS)
    share.started("batch")
    share.charge("batch", 100.0)   # batch ran alone for 100 s
    share.started("interactive")   # interactive arrives: lifted to batch's charge, not 100 s of credit
    assert share.pick({"interactive", "batch"}) == "interactive"
    share.charge("interactive", 4.0)  # one second of weight-4 charge
    assert share.pick({"interactive", "batch"}) == "batch"


# The real engine ---------------------------------------------------------------------------------

def test_the_engine_refuses_at_once_what_its_measured_cost_cannot_finish_in_time():
    async def main():
        metrics = Metrics()
        engine = Engine(settings(), metrics)
        served, _ = served_linear("lin", (1, 8, 8), 3, max_batch_rows=64, max_delay_ms=1)
        x = np.ones((1, 8, 8), np.float32)
        await engine.run(served, PREDICT, job(640, x=x, chunk=64))   # measures the variant
        per_row = engine.scheduler(served, PREDICT).seconds_per_row
        assert per_row and per_row > 0
        now = time.monotonic()
        deadline = now + MARGIN * 40_000 * per_row
        first = job(20_000, deadline=deadline, x=x, chunk=64)
        engine.submit(served, PREDICT, first)                     # 20,000 rows of 40,000 rows' time
        with pytest.raises(ResourceExhausted) as refused:
            engine.submit(served, PREDICT, job(30_000, deadline=deadline, x=x))  # 50,000 rows' time
        assert not first.finished                                 # refused at once
        first.fail(ResourceExhausted("test over"))
        engine.scheduler(served, PREDICT).drop(first)
        await asyncio.sleep(0.05)
        await engine.close()
        return refused.value, metrics

    error, metrics = run(main())
    assert "cannot finish this request before its deadline" in error.message
    assert error.retry_after_s > 0
    assert metrics.registry.get_sample_value("explaind_tenant_refused_total",
                                             {"tenant": "anonymous", "reason": "deadline"}) == 1
    assert metrics.registry.get_sample_value("explaind_refused_total", {"model": "lin"}) == 1
    assert metrics.registry.get_sample_value("explaind_tenant_rows_in_flight", {"tenant": "anonymous"}) == 0
    assert metrics.registry.get_sample_value("explaind_tenant_rows_total", {"tenant": "anonymous"}) >= 640


def test_engine_admit_refuses_a_whole_request_before_its_first_stage():
    async def main():
        engine = Engine(settings(), tenants=TenantPolicies(tenants={"anonymous": TenantPolicy(rows_in_flight=1000)}))
        served, _ = served_linear("lin", (1, 4, 4), 3)
        with engine.admit(served, "rise", "anonymous", None, 800):
            with pytest.raises(ResourceExhausted, match="rows_in_flight quota: 800 of 1000"):
                with engine.admit(served, "rise", "anonymous", None, 800):
                    pass
            await engine.run(served, PREDICT, job(1))     # covered by the request's 800 rows
            await engine.run(served, PREDICT, job(799))
        with engine.admit(served, "rise", "anonymous", None, 800):  # released with the first request
            pass
        await engine.close()
        return engine

    engine = run(main())
    assert engine.admission.quotas.in_flight("anonymous") == 0
    assert engine.account.reserved == 0
