"""What the method tests share: a tiny U-Net context, building a method as a trial does, small batches, weights.

The tests import it as ``from helpers import ...`` (pytest puts ``tests/`` on the import path).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import torch

from benchmark import registry
from benchmark.hparams import resolve
from benchmark.method import Method, MethodContext, Plugin
from benchmark.models import build_segmenter
from benchmark.protocol import parse_method_entry
from benchmark.streams import STREAMS, Batch

#: a three-level U-Net small enough for a CPU test
BACKBONE = {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}
SIZE, CLASSES, B = 32, 5, 4
CLASS_NAMES = ("A", "B", "C", "D")


def method_module(name: str) -> ModuleType:
    """The module of a registered method's file (method files are loaded by path, under private module names)."""
    registry.discover()
    return sys.modules[registry.METHODS.get(name).__module__]


def context(total_steps: int = 10, artifacts: Path | None = None,
            run_key: dict[str, Any] | None = None) -> MethodContext:
    """A CPU context for one-channel images of ``CLASSES`` classes and the tiny :data:`BACKBONE`."""
    return MethodContext(in_channels=1, num_classes=CLASSES, device=torch.device("cpu"), total_steps=total_steps,
                         class_names=CLASS_NAMES, artifacts=artifacts, run_key=run_key or {},
                         backbone=lambda classes=CLASSES: build_segmenter(BACKBONE, 1, classes))


def build(name: str, seed: int = 0, *, plugins: Sequence[tuple[type[Plugin], dict[str, Any]]] = (),
          total_steps: int = 10, artifacts: Path | None = None, run_key: dict[str, Any] | None = None,
          **overrides: Any) -> Method:
    """The method ``name`` (or a composition ``METHOD+PLUGIN``), in training mode, built under ``seed``.

    Its hyperparameters are sample 0 with ``overrides``; the plug-ins the name composes (with their defaults) and
    then ``plugins`` (``(class, resolved hyperparameters)``) are attached.
    """
    registry.discover()
    (base, _), composed = parse_method_entry(name)
    cls = registry.METHODS.get(base)
    ctx = context(total_steps, artifacts, run_key)
    torch.manual_seed(seed)
    method = cls(ctx, resolve(cls.declared_hparams(), 0, overrides))
    named = [(registry.PLUGINS.get(p), resolve(registry.PLUGINS.get(p).declared_hparams(), 0)) for p, _ in composed]
    method.attach_plugins(named + list(plugins))
    method.train()
    return method


def tiny_batch(seed: int, streams: Sequence[str] = tuple(STREAMS), batch_size: int = 2) -> Batch:
    """Noise images, and random labels where a stream is labeled, drawn stream by stream from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    batch = Batch()
    for name in streams:
        setattr(batch, f"{name}_x", torch.randn(batch_size, 1, SIZE, SIZE, generator=g))
        if STREAMS[name]:
            setattr(batch, f"{name}_y", torch.randint(0, CLASSES, (batch_size, SIZE, SIZE), generator=g))
    return batch


def blob_labels(n: int, generator: torch.Generator) -> torch.Tensor:
    """Label maps of nested squares (a plausible layout with every class present), randomly placed."""
    y = torch.zeros(n, SIZE, SIZE, dtype=torch.int64)
    for i in range(n):
        cy, cx = (int(v) for v in torch.randint(10, SIZE - 10, (2,), generator=generator))
        for k, r in zip(range(1, CLASSES), (9, 6, 4, 2)):
            y[i, cy - r:cy + r, cx - r:cx + r] = k
    return y


def make_batch(seed: int, *, blobs: bool = False, source_all: bool = False,
               inverted_target: bool = False) -> Batch:
    """``B`` labeled source images that show their labels (intensity ``label / CLASSES`` plus noise), and targets.

    Labels are random per pixel, or nested squares with ``blobs``; ``source_all`` adds noise images of the source
    modality; the target images are noise, or with ``inverted_target`` the source images in reverse order and
    contrast, plus noise.
    """
    g = torch.Generator().manual_seed(seed)
    y = blob_labels(B, g) if blobs else torch.randint(0, CLASSES, (B, SIZE, SIZE), generator=g)
    x = y.float()[:, None] / CLASSES + 0.1 * torch.randn(B, 1, SIZE, SIZE, generator=g)
    batch = Batch(source_x=x, source_y=y)
    if source_all:
        batch.source_all_x = torch.randn(B, 1, SIZE, SIZE, generator=g)
    noise = torch.randn(B, 1, SIZE, SIZE, generator=g)
    batch.target_x = -x.flip(0) + 0.1 * noise if inverted_target else noise
    return batch


def params_of(module: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of ``module``'s parameters, to compare before and after."""
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Whether two lists of tensors are equal, element for element."""
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def step_with_target(method: Method, batch: Batch, target_seed: int, step: int = 0,
                     torch_seed: int | None = None) -> tuple[dict[str, float], list[torch.Tensor]]:
    """One ``update`` on ``batch`` with its target images replaced by noise from ``target_seed`` (after
    ``torch.manual_seed(torch_seed)`` if given): the losses and the segmenter's weights after it."""
    batch.target_x = torch.randn(batch.target_x.shape, generator=torch.Generator().manual_seed(target_seed))
    if torch_seed is not None:
        torch.manual_seed(torch_seed)
    losses = method.update(batch, step)
    return losses, params_of(method.segmenter)


def finished_run(out: Path, cache_dir: str, methods: Sequence[str], **grid: Any) -> list[tuple[Any, dict]]:
    """(spec, record) of 2-step quick-preset trials run into the results store at ``out``; each must finish ok.

    ``grid`` gives :func:`benchmark.runner.build_grid`'s ``shots``, ``directions`` and ``seeds``.
    """
    import pytest

    from benchmark.runner import build_grid, execute_trial
    from benchmark.store import ResultsStore

    store = ResultsStore(out)
    done = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FSUDA_CACHE", cache_dir)
        for spec in build_grid(dataset="synthetic-heart", methods=list(methods), preset="quick",
                               preset_overrides={"steps": 2}, **grid):
            record = execute_trial(spec, store, log=lambda s: None)
            assert record["status"] == "ok", record.get("error")
            done.append((spec, record))
    return done



def prepare_then_run(dataset: str, root: Path, direction: str, volumes: int, cache_dir: str, out: Path,
                     capsys, workers: int | None = None) -> dict:
    """``prepare`` a real-format dataset in a separate process, then a 2-step 1-shot ``source_only`` run that must
    read that cache (and build none); returns the run's one record, which must be ok.

    ``volumes`` is the number of volumes ``prepare`` must report; ``workers`` its ``--workers`` (default: all cores).
    """
    import os
    import subprocess
    import sys

    from benchmark.cli import main
    from benchmark.store import ResultsStore

    env = {**os.environ, "FSUDA_CACHE": cache_dir}
    extra = [] if workers is None else ["--workers", str(workers)]
    res = subprocess.run([sys.executable, "-m", "benchmark", "prepare", dataset, "--root", str(root), *extra],
                         cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, env=env,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Slice cache ready" in res.stdout and f"({volumes} volumes" in res.stdout
    caches = sorted((Path(cache_dir) / dataset).iterdir())
    assert len(caches) == 1
    args = ["run", "--dataset", dataset, "--data-root", str(root), "--methods", "source_only", "--shots", "1",
            "--directions", direction, "--seeds", "0", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    assert "Preparing" not in capsys.readouterr().out  # the run read the cache that prepare built
    assert sorted((Path(cache_dir) / dataset).iterdir()) == caches
    (record,) = list(ResultsStore(out).records())
    assert record["status"] == "ok" and record["config"]["dataset"] == dataset
    assert (out / "leaderboards" / dataset / f"{direction}.csv").exists()
    return record
