"""A live model repository: polling for changed folders, and the LoadModel / UnloadModel control.

:class:`ModelControl` keeps the catalogue (``models.repository``) in step with the disk, as
Triton's poll and explicit model-control modes do:

- every ``repository_poll_s`` seconds a survey (directory listings and stat calls, in a worker
  thread) finds added, changed and removed model folders; a changed one is hashed, and loaded only
  when its bytes changed;
- loading runs in a worker thread, so a big model never stalls the event loop, and one load at a
  time, so two versions of a large model are the most memory a reload needs;
- a new version is loaded beside the one in service and swapped in when ready: requests already
  running hold the old version and finish on it; the old version is handed to ``retire`` (the
  explainer drops its caches, the engine closes its sessions once idle);
- a folder that fails to reload keeps its old version serving, and the failure is logged and
  reported as the model's reason; a removed folder's model is no longer listed (NOT_FOUND);
- UnloadModel takes a model out of service (listed UNLOADED) and the poller leaves it alone until
  LoadModel names it again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from explaind.errors import FailedPrecondition
from explaind.models.repository import FailedModel, Loaded, LoadedModel, ModelEntry, ModelRepository

log = logging.getLogger(__name__)

# Called with a version taken out of service (replaced, unloaded or its folder removed), on the loop.
Retire = Callable[[LoadedModel], None]
# Called in the worker thread with a freshly loaded version before it serves (warm its caches).
Prepare = Callable[[LoadedModel], None]


class ModelControl:
    """Polls the repository and serves LoadModel / UnloadModel; everything on one event loop."""

    def __init__(self, repository: ModelRepository, poll_s: float, *, retire: Retire | None = None,
                 prepare: Prepare | None = None) -> None:
        self.repository = repository
        self.poll_s = poll_s
        self._retire = retire or (lambda entry: None)
        self._prepare = prepare
        self._lock: asyncio.Lock | None = None  # created on the loop that uses it
        self._task: asyncio.Task[None] | None = None

    # Lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start polling on the running loop (nothing when ``poll_s`` is 0)."""
        if self.poll_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll_forever(), name="repository poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # the poller must outlive any one bad survey
                log.exception("repository poll failed; retrying at the next interval")

    # Polling ------------------------------------------------------------------------------------

    async def poll(self) -> list[str]:
        """One survey of the repository and the loads it calls for; returns the names whose entry changed."""
        loop = asyncio.get_running_loop()
        try:
            survey = await loop.run_in_executor(None, self.repository.survey)
        except NotADirectoryError as exc:
            # An unmounted volume must not unload every model: keep serving, say so.
            log.warning("repository poll skipped: %s; the models loaded keep serving", exc)
            return []
        if not survey:
            return []
        touched: list[str] = []
        async with self._locked():
            for name, folder in survey.reappeared.items():
                self.repository.list_unloaded(name, folder)
                touched.append(name)
            for name in survey.removed:
                previous = self.repository.remove(name)  # an unloaded name stays unloaded if it comes back
                log.warning("model folder removed; the model is no longer listed", extra={"model": name})
                if previous is not None:
                    self._retire(previous)
                touched.append(name)
        for name, folder in {**survey.added, **survey.changed}.items():
            async with self._locked():
                if self.repository.is_unloaded(name):  # UnloadModel came first
                    continue
                outcome = await loop.run_in_executor(None, self.repository.refresh, name, folder)
                if not isinstance(outcome, Loaded):
                    self.repository.keep(name, outcome)
                    continue
                await self._install(outcome, why="added" if name in survey.added else "changed")
                touched.append(name)
        return touched

    # Model control ------------------------------------------------------------------------------

    async def load(self, name: str) -> ModelEntry:
        """LoadModel: load ``name``'s folder now, beside the version in service; returns the entry then
        served. NotFound without such a folder; FailedPrecondition with the reason when it fails to load
        (an earlier version keeps serving). Finishes even when the caller goes away."""
        return await asyncio.shield(asyncio.ensure_future(self._load(name)))

    async def _load(self, name: str) -> ModelEntry:
        folder = self.repository.model_folder(name)
        async with self._locked():
            loop = asyncio.get_running_loop()
            loaded = await loop.run_in_executor(None, self.repository.load, name, folder)
            await self._install(loaded, why="LoadModel")
        if isinstance(loaded.entry, FailedModel):
            serving = self.repository.get(name)
            kept = (f"; the version loaded before (sha256 {serving.sha256[:12]}) keeps serving"
                    if isinstance(serving, LoadedModel) else "")
            raise FailedPrecondition(f"model {name!r} failed to load: {loaded.entry.reason}{kept}")
        return self.repository.get(name)

    async def unload(self, name: str) -> ModelEntry:
        """UnloadModel: stop serving ``name`` (requests running finish); NotFound for an unknown name."""
        async with self._locked():
            previous = self.repository.unload(name)
            if previous is not None:
                log.info("model unloaded", extra={"model": name, "sha256": previous.sha256})
                self._retire(previous)
            return self.repository.get(name)

    # Helpers ------------------------------------------------------------------------------------

    async def _install(self, loaded: Loaded, why: str) -> None:
        """Warm a new version off the loop, then swap it in and retire the one it replaces."""
        entry = loaded.entry
        if isinstance(entry, LoadedModel) and self._prepare is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._prepare, entry)
            except Exception:  # warming is an optimisation: requests compute what it did not
                log.exception("warming model caches failed", extra={"model": entry.name})
        previous = self.repository.install(loaded)
        if isinstance(entry, LoadedModel):
            log.info("model loaded", extra={"model": entry.name, "sha256": entry.sha256, "version": entry.version,
                                            "why": why})
        elif previous is None and isinstance(self.repository.get(entry.name), LoadedModel):
            log.warning("model reload FAILED; the old version keeps serving",
                        extra={"model": entry.name, "reason": entry.reason, "why": why})
        else:
            log.warning("model FAILED", extra={"model": entry.name, "reason": entry.reason, "why": why})
        if previous is not None:
            self._retire(previous)

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock


__all__ = ["ModelControl"]
