"""Runners: onnxruntime sessions that execute one batch at a time, off the event loop.

Each device has one worker thread (`Device.queue`, smallest requests first); every scheduler on that
device submits its batches there, so batches of different variants take turns instead of fighting
over cores, and onnxruntime (which releases the GIL) leaves the event loop free to form the next batch.
With CUDA the runner binds inputs and outputs through IOBinding and keeps per-job constants
resident on the device while the same jobs keep sharing batches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ..config import Settings
from ..onnxgraph.builder import NAMESPACE
from .device import DeviceQueue, in_lowered_thread

log = logging.getLogger(__name__)


@dataclass
class Device:
    """Where sessions run: "cpu" or "cuda", with the single thread that feeds it."""

    kind: str
    queue: DeviceQueue
    device_id: int = 0

    @property
    def providers(self) -> list[str | tuple[str, dict[str, object]]]:
        if self.kind == "cuda":
            return [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]


def choose_device(settings: Settings) -> Device:
    available = ort.get_available_providers()
    if settings.providers == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"providers=cuda but onnxruntime offers only {available}; install the gpu extra")
    kind = "cuda" if settings.providers != "cpu" and "CUDAExecutionProvider" in available else "cpu"
    return Device(kind, DeviceQueue(f"explaind-{kind}", settings.compute_nice))


_SHARED_ARENA: list[bool] = []  # onnxruntime's environment is per process: register its arena once


def share_cpu_arena() -> None:
    """Register one CPU arena in onnxruntime's (process-wide) environment for sessions to share.

    Each session otherwise keeps its own arena at the peak of its largest batch: with dozens of cached
    variants (distinct RISE grids, extremal geometries...) that is hundreds of MB held by idle sessions.
    Batches run one at a time on the device thread, so one arena sized by the largest batch serves all.
    """
    if not _SHARED_ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # defaults: no cap, grow by powers
        _SHARED_ARENA.append(True)


class ArenaRelease:
    """Gives the shared CPU arena's free regions back to the system on the run after an eviction.

    onnxruntime's arena keeps every region it ever grew to, so with variants built and evicted all
    day (each geometry its own activation sizes) the shared arena ratchets up: 800 requests with
    distinct parameter values took a server from 412 to 879 MB. Shrinking after every run bounds
    that (412 -> 550 MB) but re-allocates each batch's buffers (RISE 1.57x slower); shrinking once
    after an eviction costs one re-allocation per evicted session and keeps the bound.
    """

    def __init__(self) -> None:
        self._pending = False  # set on the event loop, read on the device thread: a lost race only delays it

    def request(self) -> None:
        self._pending = True

    def run_options(self) -> ort.RunOptions | None:
        if not self._pending:
            return None
        self._pending = False
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return options


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if settings.shared_arena:
        share_cpu_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # "run" by default: threads spin between a run's operators (~5% faster for a small CNN on 2 cores) and
    # stop when it returns. Spinning threads at the server's own priority took the cores the event loop
    # needs between batches (no gain through gRPC); at compute_nice 5 they yield to it: bench.py,
    # 2026-11-26, 1-client RISE ratio median 0.873 over 10 pairs (0.848 sleeping at equal priority).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if settings.spin == "off" else "1")
    if settings.spin == "run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class Runner:
    """One variant's session. `run` is called from the device thread only.

    Feeds and outputs are named as the variant's interface names them; in the graph they carry
    explaind's namespace so they cannot collide with the model's own tensor names.
    """

    def __init__(self, model_bytes: bytes, outputs: tuple[str, ...], constants: tuple[str, ...],
                 device: Device, settings: Settings, io_binding: bool | None = None,
                 arena: ArenaRelease | None = None) -> None:
        # Created in a thread of lowered priority, so the session's intra-op pool inherits it.
        self.session = in_lowered_thread(lambda: ort.InferenceSession(
            model_bytes, sess_options=session_options(settings), providers=device.providers), settings.compute_nice)
        self.size_bytes = len(model_bytes)  # the graph's serialized size: the cache's measure of a session
        self.outputs = list(outputs)
        self._graph_outputs = [NAMESPACE + name for name in outputs]
        self.constants = constants
        self.device = device
        self.io_binding = device.kind == "cuda" if io_binding is None else io_binding
        # (name, job ids) -> OrtValue already on the device, for constants reused batch after batch.
        self._resident: dict[str, tuple[tuple[int, ...], ort.OrtValue]] = {}
        self.arena = arena

    def run(self, feed: dict[str, np.ndarray], slot_ids: tuple[int, ...]) -> list[np.ndarray]:
        if not self.io_binding:
            options = self.arena.run_options() if self.arena else None
            return self.session.run(self._graph_outputs, {NAMESPACE + k: v for k, v in feed.items()}, options)
        binding = self.session.io_binding()
        for name, array in feed.items():
            if name in self.constants:
                binding.bind_ortvalue_input(NAMESPACE + name, self._resident_value(name, slot_ids, array))
            else:
                binding.bind_cpu_input(NAMESPACE + name, np.ascontiguousarray(array))
        for name in self._graph_outputs:
            binding.bind_output(name, self.device.kind, self.device.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def timed_run(self, feed: dict[str, np.ndarray], slot_ids: tuple[int, ...]) -> tuple[list[np.ndarray], float]:
        """`run` and the seconds it took (measured where it runs, so queueing is not counted)."""
        started = time.perf_counter()
        outputs = self.run(feed, slot_ids)
        return outputs, time.perf_counter() - started

    def _resident_value(self, name: str, slot_ids: tuple[int, ...], array: np.ndarray) -> ort.OrtValue:
        cached = self._resident.get(name)
        if cached is not None and cached[0] == slot_ids:
            return cached[1]
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device.kind, self.device.device_id)
        self._resident[name] = (slot_ids, value)
        return value
