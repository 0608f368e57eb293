"""The runner: builds the trial grid and schedules it as Ray Tune trials, with our results store as the truth.

Each trial is (dataset, direction, method, shots, seed, hyperparameter sample, preset). Finished trials (a ``DONE``
marker in the store) are skipped before Ray is even started, so re-running a finished command is fast. Every
trial runs inside :func:`execute_trial`, which records a failure (exception, diverged loss) in the store instead
of raising, so one bad trial never stops the others; a trial whose worker died without recording anything is
recorded as failed from Ray's error after the sweep. Every line a trial logs goes to its ``log.txt`` in the store,
written by the trial's own process; the driver shows the run through :class:`benchmark.progress.RunDisplay`, fed
by Tune callbacks, and Ray itself prints nothing (no banners, no configuration table, no worker output).

A local Ray is started for the run (its temporary files under the run's directory when the path is short
enough for Ray's sockets) and shut down afterwards; ``address`` (or ``RAY_ADDRESS``) connects to an existing
cluster instead, whose nodes must have this package installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import logging
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import registry
from .errors import UsageError
from .hparams import resolve
from .precision import parse_memory_format, parse_precision
from .presets import get_preset
from .progress import TRIAL_LOG, RunDisplay, TrialLog, append_log_line
from .protocol import (TrialSpec, format_variant, parse_direction, parse_method_entry,
                       parse_shots, row_name)
from .registry import REPO_ROOT
from .store import FINISHED, ResultsStore
from .tracking import RAY_RESULTS

#: Ray's unix socket paths must stay under ~107 bytes; its session folder adds about 70 characters.
MAX_RAY_TEMP_LEN = 36


def build_grid(*, dataset: str, methods: Sequence[str], shots: Sequence[int | str], directions: Sequence[str] | None,
               seeds: Sequence[int], preset: str, hparam_samples: Sequence[int] = (0,),
               data_root: str | None = None, preset_overrides: dict[str, Any] | None = None,
               hparam_overrides: dict[str, Any] | None = None, precision: str = "auto",
               memory_format: str = "auto", validation: dict[str, Any] | None = None) -> list[TrialSpec]:
    """Every trial of a run, validated: unknown names, impossible shot counts and unknown precisions or memory
    formats fail before anything runs. ``validation`` makes every trial a selection study
    (:mod:`benchmark.selection`)."""
    precision, memory_format = parse_precision(precision), parse_memory_format(memory_format)
    registry.discover()
    adapter = registry.get_dataset(dataset, data_root)
    modalities = adapter.modalities
    if directions is None:
        directions = [f"{a}2{b}" for a, b in itertools.permutations(modalities, 2)]
    settings = get_preset(preset, **(preset_overrides or {}))
    # (canonical method, variant, plug-ins with their variants) -> (method settings, plug-in settings), in order
    entries: dict[tuple, tuple[dict[str, Any], list[tuple[str, str, dict[str, Any]]]]] = {}
    for entry in methods:
        name, overrides, plugins = resolve_entry(entry)
        key = (name, format_variant(overrides), tuple((p, v) for p, v, _ in plugins))
        entries.setdefault(key, (overrides, plugins))
    shots = [parse_shots(s) for s in shots]
    if not seeds:
        raise UsageError("No seeds given: pass at least one, e.g. --seeds 0,1,2.")
    specs = []
    for direction in directions:
        source, target = parse_direction(direction, modalities)
        for (method, variant, _), (overrides, plugins) in entries.items():
            cls = registry.METHODS.get(method)
            labeled_modality = target if "target_labeled" in cls.streams else source
            n_train = len(adapter.cases(labeled_modality, "train"))
            for k in shots:
                if k != "all" and k > n_train:
                    raise UsageError(
                        f"Shot count {k} is impossible for {method} on {dataset} {direction}: the {labeled_modality} "
                        f"training split has only {n_train} volumes (use at most {n_train}, or 'all')."
                    )
                for seed, sample in itertools.product(seeds, hparam_samples):
                    hparams = resolve(cls.declared_hparams(), sample, {**(hparam_overrides or {}), **overrides},
                                      owner=f"Method {method!r}")
                    plugin_specs = [_plugin_spec(p, v, o, sample, adapter) for p, v, o in plugins]
                    specs.append(TrialSpec(
                        dataset=dataset, direction=direction, method=method, shots=k, seed=int(seed),
                        preset=preset, hparam_sample=int(sample), hparams=hparams, selection="last",
                        dataset_version=adapter.version, method_version=cls.version,
                        preset_settings=settings, data_root=str(Path(data_root).resolve()) if data_root else None,
                        variant=variant, plugins=plugin_specs, precision=precision, memory_format=memory_format,
                        validation=dict(validation or {})))
    return specs


def resolve_entry(entry: str) -> tuple[str, dict[str, Any], list[tuple[str, str, dict[str, Any]]]]:
    """A ``--methods`` entry as (canonical method, its settings, [(canonical plug-in, variant, settings)]), checked."""
    (name, given), plugin_parts = parse_method_entry(entry)
    name = registry.METHODS.canonical(name)
    values = resolve(registry.METHODS.get(name).declared_hparams(), 0, given, owner=f"Method {name!r}")
    return name, {k: values[k] for k in given}, _resolve_plugins(name, plugin_parts, entry)


def entry_row_name(entry: str) -> str:
    """The row name (:func:`benchmark.protocol.row_name`) that trials of a ``--methods`` entry carry."""
    name, overrides, plugins = resolve_entry(entry)
    return row_name(name, format_variant(overrides), [{"name": p, "variant": v} for p, v, _ in plugins])


def _resolve_plugins(method: str, parts: list[tuple[str, dict[str, str]]], entry: str
                     ) -> list[tuple[str, str, dict[str, Any]]]:
    """(canonical name, variant, settings) of each plug-in of a ``--methods`` entry, checked against its host."""
    from .method import plugin_host_error

    out: list[tuple[str, str, dict[str, Any]]] = []
    for name, given in parts:
        name = registry.PLUGINS.canonical(name)
        if any(name == p for p, _, _ in out):
            raise UsageError(f"Method entry {entry!r} composes plug-in {name!r} twice.")
        values = resolve(registry.PLUGINS.get(name).declared_hparams(), 0, given, owner=f"Plug-in {name!r}",
                         namespace=f"{name}.")
        overrides = {k: values[k] for k in given}
        out.append((name, format_variant(overrides), overrides))
    problem = registry.METHODS.get(method).hosting_problem() if out else None
    if problem is not None:
        raise plugin_host_error(method, [p for p, _, _ in out], problem)
    return out


def _plugin_spec(name: str, variant: str, overrides: dict[str, Any], sample: int, adapter) -> dict[str, Any]:
    """A plug-in's entry in a :class:`TrialSpec`: name, version, hyperparameters, and variant/provenance if any."""
    cls = registry.PLUGINS.get(name)
    spec: dict[str, Any] = {"name": name, "version": cls.version,
                            "hparams": resolve(cls.declared_hparams(), sample, overrides, owner=f"Plug-in {name!r}",
                                               namespace=f"{name}.")}
    cls.check_hparams(spec["hparams"])
    if variant:
        spec["variant"] = variant
    provenance = cls.provenance(adapter, spec["hparams"])
    if provenance:
        spec["provenance"] = provenance
    return spec


def choose_device(gpu_ids: Sequence[Any], cuda_available: bool) -> str:
    """CUDA when Ray assigned this trial a GPU and CUDA works here, else the CPU.

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the assigned GPUs, so the first visible device is the trial's.
    """
    return "cuda:0" if gpu_ids and cuda_available else "cpu"


def execute_trial(spec: TrialSpec, store: ResultsStore, *, device: str = "cpu", report=None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one trial and record its outcome in the store; failures are recorded, never raised.

    Every line the trial logs is appended to its ``log.txt`` (a failure with its traceback) and passed to ``log``.
    """
    from .trainer import run_trial

    status = store.status(spec)
    if status in FINISHED:
        return store.read(spec)
    trial_dir = store.start(spec)
    with TrialLog(trial_dir / TRIAL_LOG, echo=log) as trial_log:
        trial_log.header(f"{spec.label} ({spec.trial_id}) starts on {device}")
        t0 = time.perf_counter()
        try:
            result = run_trial(spec, trial_dir, device=device, report=report, log=trial_log)
        except Exception as exc:  # noqa: BLE001 - any failure of a trial is recorded, not propagated
            trial_log(f"[{spec.label}] FAILED: {type(exc).__name__}: {exc}")
            trial_log.write(traceback.format_exc())
            return store.write_failure(spec, exc, timing={"total_s": round(time.perf_counter() - t0, 3)})
        return store.write_result(spec, result)


def _tune_trainable(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: one trial, recorded in our store, metrics reported to Ray."""
    import ray
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(config["cpus"])))
    spec = TrialSpec.from_dict(config["spec"])
    store = ResultsStore(config["store"])
    device = choose_device(ray.get_gpu_ids(), torch.cuda.is_available())
    record = execute_trial(spec, store, device=device, report=tune.report)
    final = {"done": 1, "status": record["status"], "device": device}
    if record.get("summary"):
        final["dice_mean"] = record["summary"]["dice"]["mean"]
    tune.report(final)


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """One run at a time per output directory."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".run.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"Another run is writing to {out}; wait for it or choose another --out.") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def ray_session(out: Path, *, address: str | None, num_cpus: int | None = None, num_gpus: float | None = None
                ) -> Iterator[dict[str, Any]]:
    """Start (or connect to) Ray for the duration of a run; a local Ray is stopped afterwards.

    Trials' output stays out of the driver's console (``log_to_driver=False``): each trial writes its ``log.txt``.
    What Ray still prints itself (a message that a worker died) comes without colour codes.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # Ray's own messages (a worker died) without colour codes
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    env_vars = {k: os.environ[k] for k in ("FSUDA_CACHE", "FSUDA_PLUGIN_PATH") if k in os.environ}
    env_vars.update({"NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
                     "PYTHONPATH": os.pathsep.join(p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH")] if p)})
    temp_owned = None
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "include_dashboard": False,
                              "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        temp = (out / ".ray").resolve()
        if len(str(temp)) > MAX_RAY_TEMP_LEN:
            temp = Path(tempfile.mkdtemp(prefix="fsuda-ray-"))
            temp_owned = temp
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, _temp_dir=str(temp),
                 **kwargs)
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
        if temp_owned is not None:
            shutil.rmtree(temp_owned, ignore_errors=True)


def make_tuner(trainable: Callable[[dict[str, Any]], None], param_space: dict[str, Any], out: Path,
               cpus_per_trial: float, gpus_per_trial: float, *, callbacks: Sequence[Any] = (),
               tracker: str | None = None, search: Search | None = None):
    """A Tuner running ``trainable`` once per entry of ``param_space["spec"]`` with per-trial resources; with
    ``search``, under its scheduler (:mod:`benchmark.tune`), at most ``search.concurrent`` trials at once.

    Ray packs trials onto the cluster by these resources: with ``gpus_per_trial=0.5`` two trials share a GPU.
    Tune prints nothing itself: its legacy output engine at verbosity 0 is silent (the default one always prints
    a configuration table and result paths), a failed trial's traceback is left to the run's own report, and only
    the loggers given here run (Ray's CSV and JSON files, and ``tracker``'s logger if one is asked for), never an
    automatic TensorBoard one.
    """
    from ray import tune

    from .tune_callbacks import logger_callbacks

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    if search is not None:  # a trial's step reports carry no score; only its candidates' reports do
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    space = dict(param_space, spec=tune.grid_search(list(param_space["spec"])))
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}), param_space=space,
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=search is None,
                                    scheduler=None if search is None else search.scheduler,
                                    max_concurrent_trials=None if search is None else search.concurrent),
        run_config=tune.RunConfig(name=RAY_RESULTS.name, storage_path=str((out / RAY_RESULTS.parent).resolve()),
                                  verbose=0,
                                  callbacks=[*callbacks, *logger_callbacks(tracker, out)],
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
    )


#: After the first Ctrl-C, the run has this long to stop on its own before it is ended by force.
INTERRUPT_GRACE_S = 20.0
INTERRUPTED = "Interrupted; finished trials are recorded and a new run resumes the others."


def _force_exit() -> None:
    """End the process now with exit code 130, killing the local Ray processes first (no trial is recorded)."""
    import sys

    print(INTERRUPTED, file=sys.stderr, flush=True)
    try:
        import ray

        node = ray._private.worker._global_node
        if node is not None:
            node.kill_all_processes(check_alive=False, allow_graceful=False)
    except Exception:  # noqa: BLE001 - the process ends either way
        pass
    os._exit(130)


@contextlib.contextmanager
def bounded_interrupt(grace_s: float = INTERRUPT_GRACE_S) -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt as usual, and the process ends by force ``grace_s`` seconds later if it
    has not stopped by then (exit code 130, the same message).

    The interrupt normally unwinds Tune's loop and Ray's shutdown within seconds; on an overloaded machine both
    have been seen to take minutes while trials keep training. The countdown starts from the signal itself (the
    interpreter's wakeup file descriptor, written as the signal arrives) as well as from the Python handler, so a
    main thread blocked in native code cannot delay it. Only the main thread can install either; elsewhere this
    does nothing.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    timers: list[threading.Timer] = []
    lock = threading.Lock()

    def start_countdown() -> None:
        with lock:
            if not timers:
                timers.append(threading.Timer(grace_s, _force_exit))
                timers[0].daemon = True
                timers[0].start()

    def on_sigint(signum, frame):
        start_countdown()
        raise KeyboardInterrupt

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def watch() -> None:
        while True:
            data = os.read(read_fd, 64)
            if not data:
                return
            if signal.SIGINT in data:
                start_countdown()

    watcher = threading.Thread(target=watch, name="fsuda-sigint-watch", daemon=True)
    watcher.start()
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # ends the watcher
        watcher.join(timeout=5)
        os.close(read_fd)
        for timer in timers:  # the run stopped in time
            timer.cancel()


@dataclass(frozen=True)
class Search:
    """How ``tune`` (:mod:`benchmark.tune`) runs its trials: under Ray Tune's ``scheduler``, ``concurrent`` at a
    time (one by default, so that the scheduler's decisions do not depend on which trial finishes first)."""

    scheduler: Any
    concurrent: int = 1


@dataclass
class RunSummary:
    total: int
    skipped: int
    ran: int
    ok: int
    failed: int
    stopped: int = 0


def _precision_line(specs: Sequence[TrialSpec], device: str) -> str:
    """The plan's word on the training precision (every trial of a run asks for the same)."""
    asked = sorted({s.precision for s in specs}) or ["auto"]
    if asked == ["auto"]:
        line = (" Precision auto: float32." if device == "cpu" else
                " Precision auto: bfloat16 autocast where the GPU supports it, else float16 with loss scaling.")
    else:
        line = f" Precision {', '.join(asked)} (methods with second-order gradients train in float32)."
    layouts = sorted({s.memory_format for s in specs} - {"auto"})
    return line + (f" Memory format {', '.join(layouts)}." if layouts else "")


def run_grid(specs: list[TrialSpec], out: Path, *, cpus_per_trial: float | str = 1, gpus_per_trial: float | str = 0,
             address: str | None = None, retry_failed: bool = False, num_cpus: int | None = None,
             num_gpus: float | None = None, log: Callable[[str], None] = print, display: RunDisplay | None = None,
             tracker: str | None = None, announce: Callable[[str], None] = print,
             search: Search | None = None) -> RunSummary:
    """Run every unfinished trial of ``specs`` on Ray Tune, recording each in ``out``'s results store.

    ``cpus_per_trial`` and ``gpus_per_trial`` may be ``"auto"`` (:func:`benchmark.resources.resolve_placement`); the
    request is checked against the cluster's nodes before any cache is prepared or trial started, and ``announce``
    gets the line that names the device and how many trials run at once. ``display`` shows the run as it goes
    (default: the standard display on stdout); ``tracker`` names an experiment tracker of
    :data:`benchmark.tracking.TRACKERS` that the trials' losses are logged to. ``search`` runs the trials as a
    hyperparameter search under its scheduler; a trial the scheduler stops is recorded as ``stopped``.
    """
    store = ResultsStore(out)
    todo = []
    for spec in specs:
        status = store.status(spec)
        if status in FINISHED and not (status == "failed" and retry_failed):
            continue
        if status == "failed":
            store.start(spec, fresh=True)
        todo.append(spec)
    if not todo:
        return RunSummary(len(specs), len(specs), 0, 0, 0)

    from .resources import alive_nodes, resolve_placement
    from .tune_callbacks import ProgressCallback

    # Ctrl-C must stop the run, not end it: Tune's own handler would stop every trial gracefully and report the
    # unfinished ones as errors, which this function would then record as failed. Without it the interrupt
    # reaches the caller, Ray shuts down, finished trials stay recorded and unfinished ones resume next time.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    display = display or RunDisplay()
    # a resumed trial's log already holds its earlier attempts; a verbose display shows only what comes now
    offsets = {s.trial_id: _size(store.trial_dir(s) / TRIAL_LOG) for s in todo}
    progress = ProgressCallback(display, store, log_offsets=offsets)
    with bounded_interrupt(), ray_session(out, address=address, num_cpus=num_cpus, num_gpus=num_gpus):
        placement = resolve_placement(cpus_per_trial, gpus_per_trial, alive_nodes())
        if search is not None:
            placement = dataclasses.replace(placement, concurrent=min(placement.concurrent, search.concurrent))
        announce(placement.describe() + _precision_line(todo, placement.device))
        param_space = {"spec": [s.to_dict() for s in todo], "store": str(store.root.resolve()), "cpus": placement.cpus}
        _prepare_caches(todo, log)
        display.begin(len(todo), skipped=len(specs) - len(todo))
        try:
            tuner = make_tuner(_tune_trainable, param_space, out, placement.cpus, placement.gpus,
                               callbacks=[progress], tracker=tracker, search=search)
            grid = tuner.fit()
        finally:
            display.close()
        errors = {}
        for result in grid:
            if result.error is not None and result.config:
                errors[TrialSpec.from_dict(result.config["spec"]).trial_id] = result.error
    return _count_outcomes(specs, todo, store, errors, stopped=set() if search is None else progress.stopped)


def _count_outcomes(specs: list[TrialSpec], todo: list[TrialSpec], store: ResultsStore,
                    errors: dict[str, Any], stopped: set[str] = frozenset()) -> RunSummary:
    """The run's summary; a trial whose worker died unrecorded is recorded as failed with Ray's error, one that a
    search's scheduler stopped (its id in ``stopped``) as stopped."""
    ok = failed = n_stopped = 0
    for spec in todo:
        status = store.status(spec)
        if status not in FINISHED and spec.trial_id in stopped and spec.trial_id not in errors:
            store.write_stopped(spec, "stopped early by the search's scheduler")
            status = "stopped"
        if status not in FINISHED:
            err = errors.get(spec.trial_id, "the trial's worker stopped without recording a result")
            store.write_failure(spec, f"Ray reported: {err}")
            append_log_line(store.trial_dir(spec) / TRIAL_LOG, f"[{spec.label}] FAILED: Ray reported: {err}")
            status = "failed"
        ok += status == "ok"
        failed += status == "failed"
        n_stopped += status == "stopped"
    return RunSummary(len(specs), len(specs) - len(todo), len(todo), ok, failed, n_stopped)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _prepare_caches(specs: list[TrialSpec], log: Callable[[str], None]) -> None:
    """Build each needed slice cache once in the driver, before trials start reading it."""
    from .cache import PreprocessSettings, prepare

    needed = {(s.dataset, s.data_root, s.preset_settings["size"]) for s in specs}
    for dataset, root, size in sorted(needed, key=str):
        prepare(registry.get_dataset(dataset, root), PreprocessSettings(size=size), log=log)


__all__ = ["build_grid", "run_grid", "execute_trial", "choose_device", "run_lock", "RunSummary"]
