"""The shared trainer: data streams, the loop, the schedule, progress, checkpoints and 3D evaluation.

Evaluation (protocol ``fsuda-v2``): each target test volume's slice scores are mapped back through the inverse of
the cache's preprocessing onto the volume's native grid and scored there (:mod:`benchmark.native`).

Determinism: the initialisation is seeded from the trial seed, and step ``t`` re-seeds torch from
``(seed, t)`` and draws its batch and augmentation from ``(seed, t)`` too. A run resumed from a checkpoint
therefore continues exactly as the uninterrupted run would have (on CPU; GPU kernels may add their own
non-determinism).
"""

from __future__ import annotations

import math
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import registry
from .cache import PreprocessSettings, SliceCache, prepare
from .data import BatchSampler, Prefetcher
from .errors import TrialDiverged
from .io import atomic_torch_save, load_tensors
from .method import Method, MethodContext
from .metrics import evaluate_volume, mean_over_structures
from .models import build_segmenter
from .native import InverseMap
from .precision import autocast, compute_settings, memory_format, to_memory_format
from .progress import HEARTBEAT
from .protocol import TrialSpec, derive_seed, parse_direction
from .streams import Batch, build_streams

CHECKPOINT = "checkpoint.pt"
#: The final weights of a trial (``{"method": state_dict, "step": steps}``), kept after it finishes for inspection.
FINAL_WEIGHTS = "model.pt"
Reporter = Callable[[dict[str, Any]], None]
#: Between logged steps, a trial reports its step at most this often (a heartbeat for the live display).
PROGRESS_EVERY_S = 2.0
#: On a GPU, each drawing process keeps this many batches drawn ahead of the step. None on CPU, where a trial is
#: given one core and a drawing process would only take time from the step (or from another trial's core).
PREFETCH_CUDA = 2


def input_pipeline(device: torch.device) -> dict[str, Any]:
    """How a trial on ``device`` draws its batches (:class:`benchmark.data.Prefetcher`): ``workers`` background
    processes (on a GPU one per CPU core the trial is given: torch's thread count, which the runner sets to the
    trial's CPUs), ``prefetch`` steps ahead, ``pin_memory`` for the copy; on a CPU in the loop's own thread."""
    if device.type != "cuda":
        return {"prefetch": 0, "pin_memory": False, "workers": 0}
    workers = max(1, torch.get_num_threads())
    return {"prefetch": PREFETCH_CUDA * workers, "pin_memory": True, "workers": workers}


def lr_lambda(warmup: int, total: int, start: int = 0) -> Callable[[int], float]:
    """Linear warm-up, then polynomial decay with power 0.9 (the DeepLab schedule common in this field).

    The schedule runs over steps ``start`` to ``start + total``; the factor is zero outside that span.
    """

    def f(step: int) -> float:
        step -= start
        if step < 0 or step >= total:
            return 0.0
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup)) ** 0.9

    return f


@torch.no_grad()
def predict_scores(method: Method, images: np.ndarray, device: torch.device, batch_size: int):
    """Class scores (batch, C, H, W) float32 of slices (N, H, W), predicted slice by slice, one batch at a time."""
    method.eval()
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[i:i + batch_size], dtype=np.float32))[:, None].to(device)
        yield method.infer(x).float().cpu().numpy()


def predict_native(method: Method, images: np.ndarray, inverse: InverseMap, device: torch.device,
                   batch_size: int) -> np.ndarray:
    """The canonical native-grid label volume of one case's cache slices (see :class:`benchmark.native.InverseMap`):
    each slice's scores are resampled to the crop's size before the arg-max and placed into the uncropped volume."""
    volume, done = inverse.empty(), 0
    for scores in predict_scores(method, images, device, batch_size):
        for s in scores:
            inverse.place(volume, done, s)
            done += 1
    return volume


def evaluate(method: Method, cache: SliceCache, adapter, modality: str, device: torch.device,
             batch_size: int) -> list[dict[str, Any]]:
    """3D metrics per target test volume on its native grid, in mm (protocol ``fsuda-v2``)."""
    results = []
    for case_id in adapter.cases(modality, "test"):
        images, _, _ = cache.volume(modality, case_id)
        inverse, reference, spacing = cache.native(modality, case_id)
        pred = predict_native(method, images, inverse, device, batch_size)
        results.append({"case": f"{modality}_{case_id}",
                        "metrics": evaluate_volume(pred, reference, spacing, adapter.classes)})
    return results


def summarise(volumes: list[dict[str, Any]], structures: list[str]) -> dict[str, dict[str, float]]:
    """Mean over volumes of each metric per structure, plus the mean over structures."""
    summary: dict[str, dict[str, float]] = {}
    for metric in ("dice", "assd_mm", "hd95_mm"):
        per = {s: float(np.mean([v["metrics"][s][metric] for v in volumes])) for s in structures}
        per["mean"] = float(np.mean([mean_over_structures(v["metrics"])[metric] for v in volumes]))
        summary[metric] = per
    return summary


def method_context(spec: TrialSpec, adapter, cache: SliceCache, device: torch.device) -> MethodContext:
    """The context a trial's method is built with (also used to rebuild a finished trial's method)."""
    settings = spec.preset_settings
    num_classes = max(adapter.classes.values()) + 1
    return MethodContext(in_channels=1, num_classes=num_classes, device=device, total_steps=int(settings["steps"]),
                         class_names=tuple(adapter.classes),
                         backbone=lambda classes=num_classes: build_segmenter(settings["backbone"], 1, classes),
                         artifacts=cache.path / "artifacts",
                         run_key={"dataset": spec.dataset, "dataset_version": spec.dataset_version,
                                  "direction": spec.direction, "seed": spec.seed, "preset": settings},
                         describe=adapter.class_descriptions)


def build_method(spec: TrialSpec, ctx: MethodContext) -> Method:
    """The trial's method with its plug-ins attached (seed torch first for a reproducible initialisation)."""
    method = registry.METHODS.get(spec.method)(ctx, spec.hparams)
    method.attach_plugins([(registry.PLUGINS.get(p["name"]), p["hparams"]) for p in spec.plugins])
    return method


def build_schedulers(method: Method, warmup: int) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """One warm-up + decay schedule per optimizer of ``method``, over its span of steps."""
    total = int(method.total_steps)
    spans = method.optimizer_spans or [(0, total)] * len(method.optimizers)
    if len(spans) != len(method.optimizers):
        raise ValueError(f"Method {method.name!r} gives {len(spans)} optimizer spans for "
                         f"{len(method.optimizers)} optimizers.")
    return [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(warmup, end - begin, begin))
            for o, (begin, end) in zip(method.optimizers, spans)]


def _save_checkpoint(path: Path, method: Method, schedulers: list, step: int, train_s: float) -> None:
    atomic_torch_save({"method": method.state_dict(), "step": step,
                        "optimizers": [o.state_dict() for o in method.optimizers],
                        "schedulers": [s.state_dict() for s in schedulers], "train_s": train_s,
                        **method.loss_scaler.state_dict()}, path)


def _resume(path: Path, method: Method, schedulers: list, device: torch.device) -> tuple[int, float]:
    """Load the trial's own checkpoint into ``method`` and its schedules; (step, training seconds) to go on from."""
    if not path.exists():
        return 0, 0.0
    state = load_tensors(path, "the training checkpoint", map_location=device)
    method.load_state_dict(state["method"])
    for opt, s in zip(method.optimizers, state["optimizers"]):
        opt.load_state_dict(s)
    for sch, s in zip(schedulers, state["schedulers"]):
        sch.load_state_dict(s)
    method.loss_scaler.load_state_dict(state)
    return state["step"], state["train_s"]


def train(spec: TrialSpec, method: Method, sampler: BatchSampler, trial_dir: Path, device: torch.device, *,
          report: Reporter | None = None, log: Callable[[str], None] = print,
          pipeline: dict[str, Any] | None = None,
          compute: dict[str, Any] | None = None,
          on_step: Callable[[int], None] | None = None) -> tuple[dict[str, float], float]:
    """Run (or resume) the training loop of a trial; returns the last step's losses and the training seconds.

    Step ``t`` re-seeds torch from ``(seed, t)`` and draws its batch from the sampler's step ``t`` (``pipeline``,
    default :func:`input_pipeline`: drawn ahead by background processes on a GPU, the same batches) and trains it
    under ``compute`` (:func:`benchmark.precision.compute_settings`, default float32, contiguous); a checkpoint is
    written atomically every ``checkpoint_every`` steps, so an interrupted trial resumes exactly where it stopped.
    Every ``log_every`` steps it logs a step line and reports ``{"step", "total_steps", "timesteps_total", losses}``;
    in between (and once before the first step) it reports its step alone, flagged as a heartbeat, at most every
    :data:`PROGRESS_EVERY_S` seconds. ``on_step(done)`` runs after every step (a selection study's candidates).
    Reporting reads no random state, so it never changes a trial's numbers.
    """
    settings = spec.preset_settings
    total = int(method.total_steps)
    schedulers = build_schedulers(method, settings["warmup_steps"])
    ckpt_path = Path(trial_dir) / CHECKPOINT
    start, train_s = _resume(ckpt_path, method, schedulers, device)
    if start:
        log(f"[{spec.label}] resuming from step {start}")
    t_train = time.perf_counter()
    losses: dict[str, float] = {}
    last_report = _report_step(report, start, total, None)
    pipeline = input_pipeline(device) if pipeline is None else pipeline
    compute = compute or {"precision": "fp32", "memory_format": "contiguous"}
    layout = memory_format(compute)
    with Prefetcher(sampler, start, total, pipeline["prefetch"], pipeline["pin_memory"],
                    pipeline["workers"]) as batches:
        for step in range(start, total):
            torch.manual_seed(derive_seed("step", spec.seed, step))
            batch: Batch = batches.batch(step).to(device, layout)
            method.train()
            with autocast(device, compute):
                losses = method.train_step(batch, step)
            bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
            if bad:
                hint = (" Under --precision fp16 a forward pass can also overflow float16; try bf16 or fp32."
                        if compute["precision"] == "fp16" else "")
                raise TrialDiverged(
                    f"Trial {spec.label} diverged: loss {', '.join(f'{k}={v}' for k, v in bad.items())} at step "
                    f"{step}. Lower the learning rate or check the method's losses.{hint}")
            with warnings.catch_warnings():
                # multi-stage methods leave some optimizers idle for a while; every schedule follows the global step
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                for sch in schedulers:
                    sch.step()
            done = step + 1
            elapsed = train_s + time.perf_counter() - t_train
            if on_step is not None:
                on_step(done)
            if done % settings["checkpoint_every"] == 0 and done < total:
                _save_checkpoint(ckpt_path, method, schedulers, done, elapsed)
            if done % settings["log_every"] == 0 or done == total:
                log(f"[{spec.label}] step {done}/{total} " + " ".join(f"{k}={v:.4f}" for k, v in losses.items())
                    + f" ({elapsed:.0f}s)")
                last_report = _report_step(report, done, total, losses)
            elif time.monotonic() - last_report >= PROGRESS_EVERY_S:
                last_report = _report_step(report, done, total, None)
    return losses, train_s + time.perf_counter() - t_train


def _report_step(report: Reporter | None, step: int, total: int, losses: dict[str, float] | None) -> float:
    """Report a logged step with its losses, or (``losses=None``) a heartbeat; returns when it reported."""
    if report is not None:
        extra = losses if losses is not None else {HEARTBEAT: 1}
        report({"step": step, "total_steps": total, "timesteps_total": step, **extra})
    return time.monotonic()


def _first_cpu() -> dict[str, str]:
    """The fields of the first processor in ``/proc/cpuinfo`` (empty where there is none, e.g. off Linux)."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows: two CPUs with the same
    vector instructions can still give different float results, so a record names the model too."""
    return _first_cpu().get("model name") or platform.processor() or platform.machine()


def cpu_identity() -> str | None:
    """The first CPU's vendor, family, model and stepping (``/proc/cpuinfo`` on x86 Linux), e.g. ``AuthenticAMD
    family 26 model 2 stepping 1``; ``None`` where the kernel does not report them. A virtual machine may report a
    bare model name (``AMD EPYC``) for CPUs of several generations, which these numbers tell apart."""
    fields = _first_cpu()
    if not all(fields.get(k) for k in ("vendor_id", "cpu family", "model", "stepping")):
        return None
    return f"{fields['vendor_id']} family {fields['cpu family']} model {fields['model']} stepping {fields['stepping']}"


def determinism_settings(device: torch.device) -> dict[str, Any]:
    """The settings that decide whether a trial repeats bit for bit, as recorded in its ``result.json``."""
    cuda = device.type == "cuda"
    return {"seeding": "initialisation from (seed); step t re-seeds torch from (seed, t); batches and augmentation "
                       "from (seed, t, stream)",
            "torch_threads": torch.get_num_threads(),
            # the vector instructions torch's CPU kernels use (e.g. AVX2, AVX512): they can change float results
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_model": cpu_model(),
            "cpu_id": cpu_identity(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None}


@dataclass
class TrialSetup:
    """What a trial trains with: its dataset, slice cache, streams, batch sampler, compute settings and method."""

    adapter: Any
    cache: SliceCache
    streams: dict[str, Any]
    sampler: BatchSampler
    compute: dict[str, Any]
    method: Method
    #: A selection study's held-out labeled slices: (modality, cache indices); None for an ordinary trial.
    held_out: tuple[str, np.ndarray] | None = None


def setup_trial(spec: TrialSpec, device: torch.device, log: Callable[[str], None] = print) -> TrialSetup:
    """Build a trial's data and its seeded method, in the order that fixes the random state (shared by
    :func:`run_trial` and :mod:`benchmark.bench`, so that the benchmark times what a trial runs)."""
    settings = spec.preset_settings
    registry.discover()
    adapter = registry.get_dataset(spec.dataset, spec.data_root)
    cache = prepare(adapter, PreprocessSettings(size=settings["size"]), workers=1, log=log)
    method_cls = registry.METHODS.get(spec.method)
    streams = build_streams(adapter, spec, method_cls.streams)
    held_out = None
    if spec.validation:
        from .validators import holdout_slices

        labeled = next(s for s in streams.values() if s.labeled)
        held_out = (labeled.modality, holdout_slices(cache, labeled.modality, labeled.cases,
                                                     float(spec.validation["source_val"]), spec.seed, adapter.name))
    sampler = BatchSampler(cache, streams, settings["batch_size"], spec.seed, settings.get("augment", "standard"),
                           exclude={held_out[0]: held_out[1]} if held_out else None)
    torch.manual_seed(derive_seed("init", spec.seed))
    compute = compute_settings(spec.precision, device, method_cls, spec.memory_format)
    method = to_memory_format(build_method(spec, method_context(spec, adapter, cache, device)).to(device), compute)
    if compute["loss_scaling"]:
        method.scale_losses()
    return TrialSetup(adapter, cache, streams, sampler, compute, method, held_out)


def run_trial(spec: TrialSpec, trial_dir: Path, *, device: torch.device | str = "cpu",
              report: Reporter | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and evaluate one trial; returns the result fields of its record (summary, volumes, timing)."""
    t0 = time.perf_counter()
    device = torch.device(device)
    settings = spec.preset_settings
    setup = setup_trial(spec, device, log)
    adapter, cache, streams, compute, method = setup.adapter, setup.cache, setup.streams, setup.compute, setup.method
    _, target = parse_direction(spec.direction, adapter.modalities)
    if compute["note"]:
        log(f"[{spec.label}] {compute['note']}")

    pipeline = input_pipeline(device)
    study = None
    if spec.validation:
        from .study import StudyRecorder

        def evaluate_test() -> dict[str, Any]:
            vols = evaluate(method, cache, adapter, target, device, settings["eval_batch_size"])
            return {"volumes": vols, "summary": summarise(vols, list(adapter.classes))}

        study = StudyRecorder(spec, setup, trial_dir, target, device, evaluate_test, report=report)
    losses, train_s = train(spec, method, setup.sampler, trial_dir, device, report=report, log=log, pipeline=pipeline,
                            compute=compute, on_step=None if study is None else study.on_step)
    atomic_torch_save({"method": method.state_dict(), "step": int(method.total_steps)},
                       Path(trial_dir) / FINAL_WEIGHTS)

    t_eval = time.perf_counter()
    volumes = evaluate(method, cache, adapter, target, device, settings["eval_batch_size"])
    structures = list(adapter.classes)
    summary = summarise(volumes, structures)
    eval_s = time.perf_counter() - t_eval
    log(f"[{spec.label}] target Dice {summary['dice']['mean']:.4f} ASSD {summary['assd_mm']['mean']:.2f} mm")
    extra = {} if study is None else study.finish(volumes, summary)
    return {**extra, "structures": structures, "volumes": volumes, "summary": summary, "final_losses": losses,
            "timing": {"train_s": round(train_s, 3), "eval_s": round(eval_s, 3),
                       "total_s": round(time.perf_counter() - t0, 3)},
            "device": str(device), "determinism": determinism_settings(device), "input_pipeline": pipeline,
            "compute": {**compute, **method.loss_scaler.summary()},
            "labeled_volumes": {name: {"modality": s.modality, "cases": list(s.cases)}
                                for name, s in streams.items() if s.labeled}}
