"""The live set of loaded model versions, kept in step with the repository by polling.

Each live version gets one ONNX Runtime session (warmed up) and one dynamic batcher. A poll loads new
versions the config's version policy makes live and unloads versions that left it; a new version that
fails to load is reported (state UNAVAILABLE with the reason) while the versions already loaded keep
serving; a model whose config is corrupt is unavailable with the reason and every other model serves.
Loading runs in a worker thread so the event loop keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from cnnserve.serving.batching.batcher import BatchObserver, BatchSettings, DynamicBatcher
from cnnserve.serving.errors import (
    ModelNotFoundError,
    ModelUnavailableError,
    RepositoryError,
    ServingError,
    shown,
    without_root,
)
from cnnserve.serving.model import repository
from cnnserve.serving.model.preprocessing import PreprocessSpec
from cnnserve.serving.model.repository import ModelVersion
from cnnserve.serving.model.runtime import CPU, ModelRuntime, SessionOptions
from cnnserve.serving.settings import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    DEFAULT_QUEUE_BATCHES,
)

LOG = logging.getLogger(__name__)

AVAILABLE = "AVAILABLE"
LOADING = "LOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class BatchOverrides:
    """Server-wide overrides of each config's batching settings (None = the config's value)."""

    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    max_queue_size: int | None = None
    enabled: bool = True
    adaptive: bool = True
    inline_compute_s: float = 0.0  # server-wide, not in configs: see BatchSettings.inline_compute_s


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    reason: str = ""


@dataclass(frozen=True)
class LoadedModel:
    """One serving model version: its repository record, session, batcher and preprocessing."""

    model: ModelVersion
    runtime: ModelRuntime
    batcher: DynamicBatcher
    spec: PreprocessSpec
    fingerprint: tuple[object, ...] = field(compare=False, default=())

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.labels


def batch_settings(model: ModelVersion, overrides: BatchOverrides) -> BatchSettings:
    config = model.config
    max_batch = overrides.max_batch_size or config.max_batch_size or DEFAULT_MAX_BATCH_SIZE
    delay_us = overrides.max_queue_delay_us
    if delay_us is None:
        delay_us = config.dynamic_batching.max_queue_delay_microseconds or DEFAULT_MAX_QUEUE_DELAY_US
    queue = overrides.max_queue_size or config.dynamic_batching.max_queue_size
    return BatchSettings(
        max_batch_size=max_batch,
        max_queue_delay_s=delay_us / 1e6,
        max_queue_images=queue or DEFAULT_QUEUE_BATCHES * max_batch,
        enabled=overrides.enabled,
        adaptive=overrides.adaptive,
        inline_compute_s=overrides.inline_compute_s,
    )


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, -1)
    return (st.st_mtime_ns, st.st_size)


@dataclass
class _ModelState:
    loaded: dict[int, LoadedModel] = field(default_factory=dict)
    failed: dict[int, tuple[tuple[object, ...], str]] = field(default_factory=dict)  # fingerprint, reason
    error: str = ""  # why the whole model is unavailable (bad config, no version)
    unloaded: bool = False  # unloaded on request: polling leaves it unloaded until a load request


class ModelRegistry:
    """Loads, serves and hot-swaps the repository's models. Use `get(name, version)` to serve.

    Polling keeps the loaded set in step with the repository; `load_model` and `unload_model` do it for one
    model on request (the model repository extension of the Open Inference Protocol). A model unloaded on
    request stays unloaded, whatever polling finds, until it is loaded again on request.
    """

    def __init__(
        self,
        repo: Path,
        executor: Executor,
        session_options: SessionOptions | None = None,
        overrides: BatchOverrides | None = None,
        observer_for: Callable[[str, int], BatchObserver] | None = None,
        on_change: Callable[[], None] | None = None,
        on_event: Callable[[str, int, str], None] | None = None,
    ) -> None:
        """`observer_for(name, version)` gives a version's batch observer (metrics); `on_event(name, version,
        event)` hears of every version loaded, failed to load and unloaded (events "load", "load_failure",
        "unload")."""
        self.repo = Path(repo)
        self.executor = executor
        self.session_options = session_options or SessionOptions()
        self.overrides = overrides or BatchOverrides()
        self.observer_for = observer_for
        self.on_change = on_change
        self.on_event = on_event
        # The serving loop's busy share (see loop_load), handed to each batcher; set by the server.
        self.load: Callable[[], float] | None = None
        self._models: dict[str, _ModelState] = {}
        self._repo_error = ""
        self._lock = asyncio.Lock()

    # -- serving ---------------------------------------------------------------------------------

    def get(self, name: str, version: int = 0) -> LoadedModel:
        """The loaded model version (0 = the newest live one); NOT_FOUND / UNAVAILABLE errors say why."""
        state = self._models.get(name)
        if state is None:
            raise ModelNotFoundError(
                f"unknown model {shown(name)}; available models: "
                f"{', '.join(self.available_models()) or 'none'}"
            )
        if version == 0:
            if state.loaded:
                return state.loaded[max(state.loaded)]
            raise ModelUnavailableError(f"model {name!r} is unavailable: {self._model_reason(name, state)}")
        if state.unloaded:
            raise ModelUnavailableError(f"model {name!r} is unavailable: {self._model_reason(name, state)}")
        loaded = state.loaded.get(version)
        if loaded is not None:
            return loaded
        if version in state.failed:
            raise ModelUnavailableError(
                f"model {name!r} version {version} is unavailable: {state.failed[version][1]}"
            )
        raise ModelNotFoundError(
            f"model {name!r} has no version {version}; available versions: "
            f"{', '.join(map(str, sorted(state.loaded))) or 'none'}"
        )

    @property
    def known(self) -> Mapping[str, object]:
        """The model names in the repository (loaded or not), for cheap membership tests."""
        return self._models

    def available_models(self) -> list[str]:
        return sorted(name for name, state in self._models.items() if state.loaded)

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def statuses(self) -> dict[str, list[VersionStatus]]:
        """Every known model's versions: loaded ones AVAILABLE, failed ones UNAVAILABLE with the reason."""
        result: dict[str, list[VersionStatus]] = {}
        for name in sorted(self._models):
            state = self._models[name]
            versions = {v: VersionStatus(v, AVAILABLE) for v in state.loaded}
            for version, (_, reason) in state.failed.items():
                if version in versions:  # its files changed on disk and no longer load
                    reason = f"serving the copy loaded earlier; the files on disk do not load: {reason}"
                    versions[version] = VersionStatus(version, AVAILABLE, reason)
                else:
                    versions[version] = VersionStatus(version, UNAVAILABLE, reason)
            if not versions and (state.error or state.unloaded):
                versions[0] = VersionStatus(0, UNAVAILABLE, self._model_reason(name, state))
            result[name] = [versions[v] for v in sorted(versions)]
        return result

    @property
    def repository_error(self) -> str:
        return self._repo_error

    def _model_reason(self, name: str, state: _ModelState) -> str:
        if state.unloaded:
            return "unloaded on request; a repository load request brings it back"
        if state.error:
            return state.error
        if state.failed:
            return "; ".join(f"version {v}: {reason}" for v, (_, reason) in sorted(state.failed.items()))
        return "no version is loaded"

    # -- polling ---------------------------------------------------------------------------------

    async def poll(self) -> None:
        """Bring the loaded set in step with the repository once."""
        async with self._lock:
            try:
                names = repository.list_models(self.repo)
                if self._repo_error:
                    LOG.info("model repository %s is readable again", self.repo)
                self._repo_error = ""
            except RepositoryError as error:
                if str(error) != self._repo_error:
                    LOG.error("%s; serving nothing until it appears (polling)", error)
                self._repo_error = str(error)
                names = []
            if not names and not self._repo_error and self._models:
                LOG.warning("model repository %s is empty", self.repo)
            elif not names and not self._repo_error and not self._models:
                LOG.debug("model repository %s is empty", self.repo)
            for name in [n for n in self._models if n not in names]:
                LOG.info("model %s left the repository; unloading it", name)
                state = self._models.pop(name)
                await self._unload_all(state.loaded.values())
                self._changed()
            for name in names:
                known = self._models.get(name)
                if known is None or not known.unloaded:
                    await self._poll_model(name)

    async def load_model(self, name: str) -> None:
        """Load (or reload) one model from the repository now, also one unloaded on request; raises
        ModelNotFoundError if the repository has no such model, ModelUnavailableError if nothing loads."""
        async with self._lock:
            names = repository.list_models(self.repo)
            if name not in names:
                raise ModelNotFoundError(
                    f"the repository has no model {name!r}; models: {', '.join(names) or 'none'}"
                )
            state = self._models.setdefault(name, _ModelState())
            state.unloaded = False
            await self._poll_model(name)
            if not state.loaded:
                raise ModelUnavailableError(f"model {name!r} did not load: {self._model_reason(name, state)}")
            LOG.info("model %s loaded on request", name)

    async def unload_model(self, name: str) -> None:
        """Unload one model on request: new requests get UNAVAILABLE at once, requests already queued for
        its batchers are still answered, then the sessions close. Polling leaves it unloaded."""
        async with self._lock:
            state = self._models.get(name)
            if state is None:
                raise ModelNotFoundError(
                    f"unknown model {name!r}; models: {', '.join(self.model_names()) or 'none'}"
                )
            state.unloaded = True
            retiring, state.loaded, state.failed = list(state.loaded.values()), {}, {}
            self._changed()
            await self._unload_all(retiring)
            LOG.info("model %s unloaded on request", name)

    async def _poll_model(self, name: str) -> None:
        state = self._models.setdefault(name, _ModelState())
        model_dir = self.repo / name
        try:
            config = repository.read_model_config(model_dir)
            labels = repository.read_labels(model_dir, config)
        except RepositoryError as error:
            if str(error) != state.error:
                LOG.error("model %s is unavailable: %s%s", name, error, self._keeping(state))
                state.error = without_root(str(error), self.repo)
                self._changed()
            return
        if state.error:
            LOG.info("model %s: configuration readable again", name)
            state.error = ""
        versions = repository.list_versions(model_dir)
        wanted = repository.live_versions(config, versions)
        if not wanted:
            if state.error != f"no version folder in {name}/":
                state.error = f"no version folder in {name}/"
                LOG.warning("model %s has no version folder in %s%s", name, model_dir, self._keeping(state))
            return
        config_print = (_stat(model_dir / repository.CONFIG_FILENAME), labels)
        all_loaded = True
        for version in wanted:
            fingerprint = (*config_print, *self._version_files(model_dir / str(version)))
            current = state.loaded.get(version)
            if current is not None and current.fingerprint == fingerprint:
                continue
            failed = state.failed.get(version)
            if failed is not None and failed[0] == fingerprint:
                all_loaded = False
                continue
            loaded = await self._load(name, version, fingerprint, state)
            if loaded is None:
                all_loaded = False
                if current is not None and not current.model.model_file.is_file():
                    # Its model file was deleted: the version is gone, not served from memory.
                    LOG.warning(
                        "model %s version %d: %s was removed; unloading it",
                        name,
                        version,
                        current.model.model_file,
                    )
                    state.loaded = {v: m for v, m in state.loaded.items() if v != version}
                    await self._unload_all([current])
                    self._changed()
                continue
            old = state.loaded.get(version)
            state.loaded = {**state.loaded, version: loaded}
            state.failed.pop(version, None)
            if old is not None:
                await self._unload_all([old])
            self._changed()
        for version in list(state.failed):
            if version not in wanted:
                state.failed.pop(version)
        if all_loaded:
            retired = [v for v in state.loaded if v not in wanted]
            if retired:
                LOG.info("model %s: retiring version(s) %s (version policy)", name, retired)
                retiring = [state.loaded[v] for v in retired]
                state.loaded = {v: m for v, m in state.loaded.items() if v in wanted}
                await self._unload_all(retiring)
                self._changed()

    @staticmethod
    def _keeping(state: _ModelState) -> str:
        if state.loaded:
            return f"; still serving version(s) {sorted(state.loaded)}"
        return ""

    @staticmethod
    def _version_files(version_dir: Path) -> tuple[object, ...]:
        return tuple(_stat(p) for p in sorted(version_dir.glob("*")) if p.is_file())

    async def _load(
        self, name: str, version: int, fingerprint: tuple[object, ...], state: _ModelState
    ) -> LoadedModel | None:
        LOG.info("loading model %s version %d", name, version)
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._load_blocking, name, version, fingerprint
            )
        except (ServingError, OSError) as error:
            LOG.error("model %s version %d failed to load: %s%s", name, version, error, self._keeping(state))
            state.failed[version] = (fingerprint, without_root(str(error), self.repo))
            self._event(name, version, "load_failure")
            self._changed()
            return None
        LOG.info(
            "model %s version %d is AVAILABLE on %s (max batch %d, queue delay %.0f us)",
            name,
            version,
            ", ".join(loaded.runtime.providers),
            loaded.batcher.settings.max_batch_size,
            loaded.batcher.settings.max_queue_delay_s * 1e6,
        )
        self._event(name, version, "load")
        return loaded

    def _load_blocking(self, name: str, version: int, fingerprint: tuple[object, ...]) -> LoadedModel:
        model = repository.open_model_version(self.repo, name, version)
        spec = PreprocessSpec.from_model_config(model.config)
        runtime = ModelRuntime(model, self.session_options)
        seconds = runtime.warm_up()
        LOG.debug("warmed up %s version %d in %.3f s", name, version, seconds)
        observer = self.observer_for(name, version) if self.observer_for is not None else None
        settings = batch_settings(model, self.overrides)
        if runtime.providers[0] != CPU:  # GPU time does not show in the CPU time inline runs are judged by
            settings = dataclasses.replace(settings, inline_compute_s=0.0)
        batcher = DynamicBatcher(
            runtime.classify,
            settings,
            self.executor,
            observer=observer,
            name=f"{name}:{version}",
            load=self.load,
        )
        return LoadedModel(model, runtime, batcher, spec, fingerprint)

    async def _unload_all(self, models: Iterable[LoadedModel]) -> None:
        for loaded in list(models):
            await loaded.batcher.close()
            LOG.info("unloaded model %s version %d", loaded.name, loaded.version)
            self._event(loaded.name, loaded.version, "unload")

    def _event(self, name: str, version: int, event: str) -> None:
        if self.on_event is not None:
            self.on_event(name, version, event)

    def loaded_models(self) -> list[LoadedModel]:
        """Every loaded model version."""
        return [loaded for state in self._models.values() for loaded in state.loaded.values()]

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def close(self) -> None:
        """Unload everything (waiting requests are still answered first)."""
        async with self._lock:
            for state in self._models.values():
                await self._unload_all(state.loaded.values())
            self._models = {}
