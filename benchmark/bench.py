"""``python -m benchmark bench``: how fast each method trains on this machine's device, and what bounds it.

Per method: training steps per second through the suite's own loop (:func:`benchmark.trainer.train`: sampler,
augmentation, step and schedule, with the trial's precision and input pipeline), peak memory, and the sampler's
throughput alone (batches per second, drawn and augmented as in training). Beside them, two reference points
measured in the same process: a bare PyTorch loop on the same U-Net and batch shape (random tensors, Adam,
cross-entropy + Dice, nothing else), and on a CPU the single-matrix-multiply rate (float32 GEMM) of the threads in
use. ``source_only``'s step is one forward and backward pass of that U-Net, so two ratios say where the time goes:
its step over the bare loop's (the suite's overhead) and its arithmetic rate over the GEMM rate (how close the
convolutions run to the machine's peak). The trials use the synthetic heart, 1 shot, seed 0, direction mr2ct.
Every loop is timed over all its steps, the first (which allocates the optimizers' state) included; the GEMM and
the bare loop run first, so the device is warm before the methods are timed, and ``source_only`` is timed right
after them, whatever its place in ``--methods``.

Input pipeline: ``source_only``'s batches drawn ahead by ``--workers`` processes (:class:`benchmark.data.Prefetcher`,
as a GPU trial draws them; default one per CPU core a GPU trial gets, on a CPU this machine's cores), in batches
per second after the workers' start, and as a multiple of the batches ``source_only``'s step consumes: below 1
the step waits for its data.

Memory: on a GPU, the peak of ``torch.cuda.max_memory_allocated`` per method; on a CPU, the process's peak
resident set so far (``ru_maxrss``), which only grows, so read it as an upper bound per method.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from . import registry
from .errors import UsageError
from .io import atomic_write_text
from .losses import dice_ce_loss
from .models import build_segmenter
from .precision import autocast, compute_settings, memory_format, to_memory_format
from .runner import build_grid
from .data import Prefetcher
from .trainer import PREFETCH_CUDA, cpu_identity, cpu_model, input_pipeline, setup_trial, train

DATASET, DIRECTION = "synthetic-heart", "mr2ct"
#: Matrix side of the GEMM rate, large enough to reach a CPU's peak and small enough to take a fraction of a second.
GEMM_SIDE = 1024


def gemm_gflops(device: torch.device, repeats: int = 5) -> float:
    """The best rate of ``repeats`` float32 GEMMs of side :data:`GEMM_SIDE` on ``device``, in GFLOP/s."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(GEMM_SIDE, GEMM_SIDE, generator=g).to(device) for _ in range(2))
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * GEMM_SIDE ** 3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bare_loop(settings: dict[str, Any], device: torch.device, steps: int, compute: dict[str, Any]) -> dict[str, float]:
    """A plain PyTorch loop on the preset's U-Net and batch shape: seconds per step and GFLOP per step."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = to_memory_format(build_segmenter(settings["backbone"], 1, 5).to(device), compute)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    size, batch = settings["size"], settings["batch_size"]
    x = torch.randn(batch, 1, size, size).to(device, memory_format=memory_format(compute))
    y = torch.randint(0, 5, (batch, size, size)).to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=compute["loss_scaling"])

    def step() -> None:
        with autocast(device, compute):
            loss = dice_ce_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    with FlopCounterMode(display=False) as counter:
        with autocast(device, compute):
            loss = dice_ce_loss(model(x), y)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return {"step_s": (time.perf_counter() - t0) / steps, "gflop_per_step": counter.get_total_flops() / 1e9}


def _spec(entry: str, preset: str, **settings: Any):
    """The one trial of ``entry`` that bench times: the synthetic heart, 1 shot, seed 0, mr2ct."""
    (spec,) = build_grid(dataset=DATASET, methods=[entry], shots=[1], directions=[DIRECTION], seeds=[0],
                         preset=preset, **settings)
    return spec


def bench_method(entry: str, preset: str, steps: int, device: torch.device, requested: str = "auto",
                 log=lambda s: None, layout: str = "auto") -> dict[str, Any]:
    """Steps per second, peak memory and sampler throughput of one ``--methods`` entry (a trial of ``steps``)."""
    spec = _spec(entry, preset, precision=requested, memory_format=layout,
                 preset_overrides={"steps": steps, "log_every": 10 ** 9, "checkpoint_every": 10 ** 9})
    setup = setup_trial(spec, device, log)
    sampler, method, compute = setup.sampler, setup.method, setup.compute
    t0 = time.perf_counter()
    for step in range(steps):
        sampler.batch(step)
    sampler_s = (time.perf_counter() - t0) / steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="fsuda-bench-") as folder:
        _sync(device)
        t0 = time.perf_counter()
        train(spec, method, sampler, Path(folder), device, log=log, compute=compute)
        _sync(device)
        step_s = (time.perf_counter() - t0) / steps
    return {"method": spec.row_name, "precision": compute["precision"], "memory_format": compute["memory_format"],
            "steps": steps, "step_ms": 1e3 * step_s,
            "steps_per_s": 1 / step_s, "peak_memory_mib": _peak_memory_mib(device),
            "sampler_batches_per_s": 1 / sampler_s, "sampler_to_step": step_s / sampler_s}


def pipeline_throughput(preset: str, steps: int, workers: int, device: torch.device) -> dict[str, float]:
    """Batches per second of ``source_only``'s input pipeline drawn ahead by ``workers`` processes, over at least
    ``steps`` and eight batches per worker, timed after the first batch (which waits for the workers to start)."""
    total = 1 + max(steps, 8 * workers)
    sampler = setup_trial(_spec("source_only", preset, preset_overrides={"steps": total}), device,
                          lambda s: None).sampler
    t0 = time.perf_counter()
    with Prefetcher(sampler, 0, total, PREFETCH_CUDA * workers, pin_memory=device.type == "cuda",
                    workers=workers) as batches:
        batches.batch(0)
        t1 = time.perf_counter()
        for step in range(1, total):
            batches.batch(step)
        t2 = time.perf_counter()
    return {"workers": workers, "startup_s": t1 - t0, "batches_per_s": (total - 1) / (t2 - t1)}


def default_workers(device: torch.device) -> int:
    """A GPU trial's drawing processes (one per CPU core it gets); on a CPU, this machine's cores."""
    if device.type == "cuda":
        return input_pipeline(device)["workers"]
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_bench(methods: Sequence[str] | None = None, *, preset: str = "quick", steps: int = 20,
              threads: int | None = 1, precision: str = "auto", memory_format: str = "auto",
              workers: int | None = None, log=print) -> dict[str, Any]:
    """The benchmark's report (see the module docstring); ``methods`` default to every registered method."""
    if steps < 1:
        raise UsageError(f"--steps {steps} is impossible: time at least one step.")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers} is impossible: the input pipeline draws with at least one process.")
    registry.discover()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    methods = list(methods or registry.METHODS.names())
    spec = _spec("source_only", preset, precision=precision, memory_format=memory_format)
    compute = compute_settings(spec.precision, device, registry.METHODS.get("source_only"), spec.memory_format)
    gemm = gemm_gflops(device)
    bare = bare_loop(spec.preset_settings, device, steps, compute)
    timed = {}
    # source_only, the ratios' reference, is timed right after the bare loop, so both see the machine in one state
    for entry in sorted(methods, key=lambda e: e != "source_only"):
        r = timed[entry] = bench_method(entry, preset, steps, device, precision, layout=memory_format)
        log(f"  {r['method']:<28} {r['steps_per_s']:8.2f} steps/s  {r['peak_memory_mib']:8.0f} MiB  "
            f"sampler {r['sampler_batches_per_s']:8.1f} batches/s")
    rows = [timed[entry] for entry in methods]
    pipeline = pipeline_throughput(preset, steps, workers or default_workers(device), device)
    log(f"  input pipeline: {pipeline['batches_per_s']:.1f} batches/s with {pipeline['workers']} worker(s)")
    report: dict[str, Any] = {
        "machine": {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "processor": cpu_model(),
                    "cpu_id": cpu_identity(),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "gemm_gflops": gemm},
        "preset": preset, "steps": steps, "precision": precision, "memory_format": compute["memory_format"],
        "methods": rows, "input_pipeline": pipeline,
        "bare_loop": {"step_ms": 1e3 * bare["step_s"], "gflop_per_step": bare["gflop_per_step"],
                      "gflops": bare["gflop_per_step"] / bare["step_s"]}}
    suite = next((r for r in rows if r["method"] == "source_only"), None)
    if suite is not None:
        rate = bare["gflop_per_step"] / (suite["step_ms"] / 1e3)
        report["ratios"] = {"source_only_over_bare_loop": suite["step_ms"] / (1e3 * bare["step_s"]),
                            "source_only_gflops": rate, "source_only_of_gemm_rate": rate / gemm,
                            "pipeline_over_source_only_step": pipeline["batches_per_s"] * suite["step_ms"] / 1e3}
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a small table and the two ratios."""
    m = report["machine"]
    lines = [f"Device {m['device']}{' (' + m['gpu'] + ')' if m['gpu'] else ''}, {m['threads']} thread(s), "
             f"{m['cpu_capability']}, torch {m['torch']}; preset {report['preset']}, {report['steps']} steps, "
             f"precision {report['precision']}, memory format {report['memory_format']}; GEMM "
             f"{m['gemm_gflops']:.1f} GFLOP/s",
             f"{'method':<28} {'steps/s':>8} {'ms/step':>8} {'peak MiB':>9} {'sampler b/s':>12} {'sampler/step':>13}"]
    for r in report["methods"]:
        lines.append(f"{r['method']:<28} {r['steps_per_s']:8.2f} {r['step_ms']:8.1f} {r['peak_memory_mib']:9.0f} "
                     f"{r['sampler_batches_per_s']:12.1f} {r['sampler_to_step']:12.1f}x")
    b = report["bare_loop"]
    lines.append(f"bare PyTorch loop (same U-Net and batch): {b['step_ms']:.1f} ms/step, {b['gflop_per_step']:.2f} "
                 f"GFLOP/step, {b['gflops']:.1f} GFLOP/s")
    if "ratios" in report:
        q = report["ratios"]
        lines.append(f"source_only: {q['source_only_over_bare_loop']:.3f}x the bare loop's step time; "
                     f"{q['source_only_gflops']:.1f} GFLOP/s = {100 * q['source_only_of_gemm_rate']:.0f}% of the "
                     f"GEMM rate")
    p = report["input_pipeline"]
    lines.append(f"input pipeline (source_only's batches, {p['workers']} drawing process(es)): "
                 f"{p['batches_per_s']:.1f} batches/s after a {p['startup_s']:.1f} s start"
                 + (f", {report['ratios']['pipeline_over_source_only_step']:.1f}x what source_only's step consumes"
                    if "ratios" in report else ""))
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2, default=float) + "\n")
    return path


__all__ = ["bare_loop", "bench_method", "default_workers", "format_report", "gemm_gflops", "pipeline_throughput",
           "run_bench", "write_report"]
