"""The engine's scheduling, bounds, deadlines and cancellation, on a real onnxruntime session."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from explaind.config import Settings
from explaind.engine.batch_tuning import KEEP_CONFIGURED, candidates
from explaind.engine.engine import Engine
from explaind.engine.job import Job
from explaind.engine.runner import ArenaRelease, Runner
from explaind.errors import Cancelled, DeadlineExceeded, ResourceExhausted
from explaind.metrics import Metrics
from explaind.onnxgraph.variants.predict import Predict

from _linear import run, served_linear, settings, softmax

PREDICT_SPEC = Predict()


def predict_job(x: np.ndarray, rows: int, seen: list, deadline: float | None = None, chunk: int = 10) -> Job:
    """`rows` copies of x through the predict variant; each delivery appends (job label, row ids, probs)."""

    def chunks():
        for start in range(0, rows, chunk):
            yield {"row": np.arange(start, min(start + chunk, rows))}

    def consume(codes, outputs, slot):
        seen.append((codes["row"].copy(), outputs["probabilities"].copy()))

    return Job(constants={"x0": x}, rows=chunks(), total_rows=rows, consume=consume, deadline=deadline)


def test_rows_of_different_jobs_share_a_batch_and_each_gets_its_own_results():
    async def main():
        metrics = Metrics()
        engine = Engine(settings(), metrics)
        served, weights = served_linear("lin", (2, 3, 3), 4, max_batch_rows=64, max_delay_ms=20)
        xs = [np.random.default_rng(i).normal(size=(2, 3, 3)).astype(np.float32) for i in range(3)]
        seen = [[] for _ in xs]
        jobs = [predict_job(x, 5, s) for x, s in zip(xs, seen)]
        await asyncio.gather(*(engine.run(served, PREDICT_SPEC, j) for j in jobs))
        await engine.close()
        return metrics, weights, xs, seen, jobs

    metrics, weights, xs, seen, jobs = run(main())
    for x, rows in zip(xs, seen):
        expected = softmax(x.reshape(-1).astype(np.float64) @ weights)
        got = np.concatenate([p for _, p in rows])
        np.testing.assert_allclose(got, np.tile(expected, (5, 1)), rtol=1e-5)
        assert np.concatenate([r for r, _ in rows]).tolist() == [0, 1, 2, 3, 4]
    labels = {"model": "lin", "variant": "predict"}
    assert metrics.registry.get_sample_value("explaind_batch_rows_count", labels) == 1
    assert metrics.registry.get_sample_value("explaind_batch_jobs_sum", labels) == 3
    assert metrics.registry.get_sample_value("explaind_rows_total", labels) == 15
    assert all(job.stats.batches == 1 for job in jobs)


def test_a_small_job_is_not_starved_by_a_large_one():
    async def main():
        engine = Engine(settings())
        served, _ = served_linear("lin", (1, 4, 4), 3, max_batch_rows=16, max_delay_ms=0)
        x = np.ones((1, 4, 4), np.float32)
        big_seen, small_seen = [], []
        big = predict_job(x, 2000, big_seen, chunk=100)
        small = predict_job(x, 6, small_seen)
        big_task = asyncio.ensure_future(engine.run(served, PREDICT_SPEC, big))
        for _ in range(1000):  # until the big job is running
            if big.done_rows > 0:
                break
            await asyncio.sleep(0.01)
        assert 0 < big.done_rows < 2000
        await engine.run(served, PREDICT_SPEC, small)
        rows_of_big_when_small_finished = big.done_rows
        await big_task
        await engine.close()
        return small, rows_of_big_when_small_finished

    small, big_rows_then = run(main())
    # A job within a fair share of the batch (16 / 2 jobs) goes in whole: one batch, not 125.
    assert small.stats.batches == 1
    assert big_rows_then < 2000


def test_long_jobs_take_whole_batches_in_turn():
    """Two long jobs submitted together: each batch holds one job's rows, and the jobs alternate."""
    async def main():
        metrics = Metrics()
        engine = Engine(settings(), metrics)
        served, _ = served_linear("lin", (1, 4, 4), 3, max_batch_rows=16, max_delay_ms=50)
        x = np.ones((1, 4, 4), np.float32)
        order: list[tuple[str, int]] = []

        def job(name: str) -> Job:
            def chunks():
                for start in range(0, 160, 7):
                    yield {"row": np.arange(start, min(start + 7, 160))}

            return Job(constants={"x0": x}, rows=chunks(), total_rows=160,
                       consume=lambda codes, outputs, slot: order.append((name, len(codes["row"]))))

        jobs = [job("a"), job("b")]
        await asyncio.gather(*(engine.run(served, PREDICT_SPEC, j) for j in jobs))
        await engine.close()
        return metrics, order, jobs

    metrics, order, jobs = run(main())
    labels = {"model": "lin", "variant": "predict"}
    assert metrics.registry.get_sample_value("explaind_batch_jobs_sum", labels) == 20  # 20 batches, 1 job each
    assert order == [("a", 16), ("b", 16)] * 10
    assert all(job.stats.batches == 10 and job.stats.rows == 160 for job in jobs)


def test_queue_bounds_refuse_at_once_and_are_released():
    async def main():
        engine = Engine(settings(max_queued_rows=100, max_queued_jobs=2))
        served, _ = served_linear("lin", (1, 2, 2), 2, max_batch_rows=8)
        x = np.zeros((1, 2, 2), np.float32)
        first = predict_job(x, 80, [])
        engine.submit(served, PREDICT_SPEC, first)
        with pytest.raises(ResourceExhausted, match="queue is full"):
            engine.submit(served, PREDICT_SPEC, predict_job(x, 50, []))
        assert not first.done.done()  # refused at once, not after the queue drained
        engine.submit(served, PREDICT_SPEC, predict_job(x, 10, []))
        with pytest.raises(ResourceExhausted):
            engine.submit(served, PREDICT_SPEC, predict_job(x, 1, []))  # third job over max_queued_jobs
        await first.done
        await asyncio.sleep(0.05)
        assert (engine.account.rows, engine.account.jobs) == (0, 0)
        engine.submit(served, PREDICT_SPEC, predict_job(x, 50, []))  # room again
        await engine.close()

    run(main())


def test_an_expired_job_is_failed_and_its_rows_dropped():
    async def main():
        engine = Engine(settings())
        served, _ = served_linear("lin", (1, 4, 4), 2, max_batch_rows=4)
        x = np.zeros((1, 4, 4), np.float32)
        seen = []
        job = predict_job(x, 100_000, seen, deadline=time.monotonic() + 0.2, chunk=4)
        with pytest.raises(DeadlineExceeded, match="deadline"):
            await engine.run(served, PREDICT_SPEC, job)
        await asyncio.sleep(0.05)
        assert job.taken < 100_000
        assert (engine.account.rows, engine.account.jobs) == (0, 0)
        await engine.close()

    run(main())


def test_a_cancelled_request_drops_its_pending_rows():
    async def main():
        engine = Engine(settings())
        served, _ = served_linear("lin", (1, 4, 4), 2, max_batch_rows=4)
        x = np.zeros((1, 4, 4), np.float32)
        job = predict_job(x, 100_000, [], chunk=4)
        task = asyncio.ensure_future(engine.run(served, PREDICT_SPEC, job))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        taken = job.taken
        await asyncio.sleep(0.1)
        assert job.taken == taken < 100_000  # nothing more was run for it
        assert isinstance(job.failed, Cancelled)
        assert (engine.account.rows, engine.account.jobs) == (0, 0)
        await engine.close()

    run(main())


def test_batch_size_is_picked_from_measurement_and_results_do_not_change():
    """batch_tuning_s > 0: the variant's batch size is one of the measured candidates (max_batch_rows
    and its halvings), the fastest unless max_batch_rows is within 5% of it, and the rows' results
    are those of the untuned engine."""
    x = np.random.default_rng(3).normal(size=(2, 3, 3)).astype(np.float32)

    async def main(tuning: float):
        engine = Engine(settings(batch_tuning_s=tuning))
        served, _ = served_linear("lin", (2, 3, 3), 4, max_batch_rows=64, max_delay_ms=1)
        seen: list = []
        await engine.run(served, PREDICT_SPEC, predict_job(x, 150, seen))
        scheduler = next(iter(engine._schedulers.values()))
        await engine.close()
        rows = np.concatenate([r for r, _ in seen])
        return scheduler.max_batch_rows, scheduler.measured_batch_rows, np.concatenate([p for _, p in seen])[np.argsort(rows)]

    chosen, measured, tuned = run(main(0.02))
    assert sorted(measured) == candidates(64) == [8, 16, 32, 64]
    best = max(measured.values())
    assert chosen in measured and (measured[chosen] == best or (chosen == 64 and measured[64] >= KEEP_CONFIGURED * best))
    if chosen != 64:
        assert measured[64] < KEEP_CONFIGURED * best
    assert all(rate > 0 for rate in measured.values())
    untuned_rows, untuned_measured, untuned = run(main(0.0))
    assert (untuned_rows, untuned_measured) == (64, {})
    np.testing.assert_array_equal(tuned, untuned)


def test_batch_tuning_setting_is_checked():
    with pytest.raises(ValueError, match="batch_tuning_s must be in"):
        Settings(batch_tuning_s=-1).validate()


def test_io_binding_path_gives_the_same_results_as_plain_run():
    served, _ = served_linear("lin", (2, 3, 3), 4)

    async def main():
        engine = Engine(settings())
        await engine.close()
        return engine

    engine = run(main())
    data = PREDICT_SPEC.build(served.model, served.signature).SerializeToString()
    interface = PREDICT_SPEC.interface()
    outputs = interface.row_outputs
    plain = Runner(data, outputs, interface.constants, engine.device, engine.settings, io_binding=False)
    bound = Runner(data, outputs, interface.constants, engine.device, engine.settings, io_binding=True)
    rng = np.random.default_rng(0)
    per_job = {job: rng.normal(size=(2, 3, 3)).astype(np.float32) for job in (1, 2, 3)}
    # A job's constants never change, so the same jobs reuse the resident copy; another set uploads anew.
    for jobs in ((1, 2), (1, 2), (3,), (2, 3)):
        feed = {"x0": np.stack([per_job[j] for j in jobs]),
                "job_index": np.array([0] * 3 + [len(jobs) - 1] * 2, np.int64)}
        for a, b in zip(plain.run(feed, jobs), bound.run(feed, jobs)):
            np.testing.assert_array_equal(a, b)


def test_the_device_runs_the_smallest_request_first():
    import threading

    from explaind.engine.device import DeviceQueue

    queue = DeviceQueue("test")
    gate = threading.Event()
    order = []
    blocker = queue.submit(100, gate.wait)  # occupies the device while the others queue up
    futures = [queue.submit(p, order.append, p) for p in (50_000, 20, 50_000, 3)]
    gate.set()
    for f in [blocker, *futures]:
        f.result(5)
    queue.shutdown()
    assert order == [3, 20, 50_000, 50_000]


def _thread_nice(tid: int) -> int:
    """The niceness of one of this process's threads (field 19 of /proc/self/task/TID/stat)."""
    stat = open(f"/proc/self/task/{tid}/stat").read()
    return int(stat[stat.rindex(")") + 2:].split()[16])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_compute_threads_yield_to_the_event_loop():
    """The device thread and every onnxruntime pool thread run compute_nice above the server's niceness;
    the calling (event loop) thread keeps its own."""
    import os
    import threading

    from explaind.engine.device import DeviceQueue

    served, _ = served_linear("lin", (2, 3, 3), 4)
    base = _thread_nice(threading.get_native_id())
    queue = DeviceQueue("nice-test", nice=3)
    device_nice = queue.submit(0, lambda: _thread_nice(threading.get_native_id())).result(5)
    queue.shutdown()
    assert device_nice == min(19, base + 3)

    async def main():
        engine = Engine(Settings(intra_op_threads=3, compute_nice=4))
        await engine.close()
        return engine

    engine = run(main())
    interface = PREDICT_SPEC.interface()
    data = PREDICT_SPEC.build(served.model, served.signature).SerializeToString()
    before = set(os.listdir("/proc/self/task"))
    runner = Runner(data, interface.row_outputs, interface.constants,
                    engine.device, engine.settings)
    time.sleep(0.2)  # the throwaway thread that created the session has exited by now
    pool = set(os.listdir("/proc/self/task")) - before
    assert len(pool) == 2, pool  # intra_op_threads 3: the caller and two pool threads
    assert [_thread_nice(int(tid)) for tid in pool] == [min(19, base + 4)] * 2
    assert _thread_nice(threading.get_native_id()) == base
    outputs = runner.run({"x0": np.ones((1, 2, 3, 3), np.float32), "job_index": np.zeros(2, np.int64)}, (1,))
    assert outputs[0].shape[0] == 2


BLAS_PROBE = """
import asyncio, json, sys, threadpoolctl
from explaind.api.server import start
from explaind.config import Settings

def blas():
    return sorted({p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"})

before = blas()
async def main():
    running = await start(Settings(port=0, metrics_port=-1, blas_threads=int(sys.argv[1])))
    await running.stop()
asyncio.run(main())
print(json.dumps({"before": before, "after": blas()}))
"""


@pytest.mark.parametrize("blas_threads", [1, 0])
def test_the_server_limits_numpy_blas_threads(blas_threads):
    """OpenBLAS's idle workers busy-wait, taking cores from onnxruntime: the server keeps blas_threads (0:
    the library's own count, untouched). In a fresh process, since the limit is process-wide."""
    done = subprocess.run([sys.executable, "-c", BLAS_PROBE, str(blas_threads)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["before"], "numpy has no BLAS that threadpoolctl sees"
    assert counts["after"] == ([1] if blas_threads == 1 else counts["before"])


def test_session_cache_evicts_the_least_recently_used_idle_session_and_releases_the_arena():
    async def main():
        metrics = Metrics()
        engine = Engine(settings(max_sessions=2), metrics)
        models = {name: served_linear(name, (2, 3, 3), 4, seed=i) for i, name in enumerate("abc")}
        x = np.random.default_rng(7).normal(size=(2, 3, 3)).astype(np.float32)
        answers = {}

        async def use(name):
            seen = []
            await engine.run(models[name][0], PREDICT_SPEC, predict_job(x, 3, seen))
            answers[name] = np.concatenate([p for _, p in seen])

        release, shrinks = engine.arena.run_options, []

        def recorded():  # which runs were asked to shrink the shared arena
            options = release()
            shrinks.append(options is not None)
            return options

        engine.arena.run_options = recorded
        await use("a")
        await use("b")
        await use("a")  # a is now the most recently used: b goes first
        before = list(shrinks)
        await use("c")
        cached = [key[0] for key in engine._schedulers]
        await use("b")  # rebuilt, evicting a
        after = [key[0] for key in engine._schedulers]
        await engine.close()
        return metrics, models, x, answers, before, shrinks, cached, after

    metrics, models, x, answers, before, shrinks, cached, after = run(main())
    assert before == [False, False, False]  # nothing evicted, nothing released
    assert shrinks == [False, False, False, True, True]  # the run after each eviction releases
    assert cached == ["a", "c"]
    assert after == ["c", "b"]
    assert metrics.registry.get_sample_value("explaind_session_evictions_total") == 2
    assert metrics.registry.get_sample_value("explaind_sessions") == 2
    for name, (_, weights) in models.items():  # an evicted and rebuilt session answers as before
        expected = softmax(x.reshape(-1).astype(np.float64) @ weights)
        np.testing.assert_allclose(answers[name], np.tile(expected, (3, 1)), rtol=1e-5)


def test_session_cache_bounded_by_bytes_keeps_only_the_session_in_use():
    async def main():
        metrics = Metrics()
        engine = Engine(settings(max_session_bytes=1), metrics)  # every session is over the byte bound
        for i, name in enumerate("ab"):
            await engine.run(served_linear(name, (2, 3, 3), 4, seed=i)[0], PREDICT_SPEC,
                             predict_job(np.zeros((2, 3, 3), np.float32), 2, []))
        kept = [key[0] for key in engine._schedulers]
        await engine.close()
        return metrics, kept

    metrics, kept = run(main())
    assert kept == ["b"]  # never the one just used, even over the bound
    assert metrics.registry.get_sample_value("explaind_session_evictions_total") == 1
    assert metrics.registry.get_sample_value("explaind_session_bytes") > 1


def test_shared_arena_off_builds_no_release():
    assert Engine(settings(shared_arena=False)).arena is None


def test_arena_release_after_eviction_and_after_interval():
    now = [100.0]
    release = ArenaRelease(10.0, clock=lambda: now[0])
    assert release.run_options() is None  # nothing evicted, interval not over
    release.request()
    assert release.run_options() is not None  # the run after an eviction shrinks, once
    assert release.run_options() is None
    now[0] += 9.9
    assert release.run_options() is None
    now[0] += 0.2
    options = release.run_options()
    assert options is not None and options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    assert release.run_options() is None  # the interval counts from that release


def test_arena_release_interval_zero_releases_only_after_evictions():
    now = [0.0]
    release = ArenaRelease(0.0, clock=lambda: now[0])
    now[0] += 1e6
    assert release.run_options() is None
    release.request()
    assert release.run_options() is not None


def test_arena_release_interval_is_a_setting():
    assert Engine(settings(arena_release_s=3.5)).arena._interval_s == 3.5
    with pytest.raises(ValueError, match="arena_release_s must be 0"):
        settings(arena_release_s=-1).validate()
