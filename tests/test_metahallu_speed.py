"""A ``metahallu`` training step against a ``source_only`` step at the quick preset (pytest-benchmark, not timed).

Run with ``OMP_NUM_THREADS=1 python -m pytest tests/test_metahallu_speed.py -m perf --benchmark-enable -s``; it
prints each variant's mean step time and its ratio to ``source_only``'s. The setting is the quick preset's: 64x64
slices, batches of 8 source and 8 target slices, its U-Net.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmark import registry
from benchmark.hparams import resolve
from benchmark.method import MethodContext
from benchmark.models import build_segmenter
from benchmark.presets import PRESETS
from benchmark.streams import Batch

pytestmark = pytest.mark.perf

QUICK = PRESETS["quick"]
VARIANTS = {"source_only": ("source_only", {}), "metahallu": ("metahallu", {}),
            "metahallu:psi_seg_hessian=false": ("metahallu", {"psi_seg_hessian": False}),
            "metahallu:first_order=true": ("metahallu", {"first_order": True}),
            "metahallu:psi_pixels=false": ("metahallu", {"psi_pixels": False}),
            "metahallu:class_appearance=true": ("metahallu", {"class_appearance": True}),
            "metahallu:hallucinator=random": ("metahallu", {"hallucinator": "random"})}
MEANS: dict[str, float] = {}


def _method(name: str, overrides: dict):
    registry.discover()
    cls = registry.METHODS.get(name)
    ctx = MethodContext(in_channels=1, num_classes=5, device=torch.device("cpu"), total_steps=QUICK["steps"],
                        class_names=("MYO", "LAC", "LVC", "AA"),
                        backbone=lambda classes=5: build_segmenter(QUICK["backbone"], 1, classes))
    torch.manual_seed(0)
    method = cls(ctx, resolve(cls.declared_hparams(), 0, overrides))
    method.train()
    return method


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    n, size = QUICK["batch_size"], QUICK["size"]
    return Batch(source_x=torch.randn(n, 1, size, size, generator=g),
                 source_y=torch.randint(0, 5, (n, size, size), generator=g),
                 target_x=torch.randn(n, 1, size, size, generator=g))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_step_cost(benchmark, variant):
    name, overrides = VARIANTS[variant]
    method, batch = _method(name, overrides), _batch()
    method.train_step(batch, 50)  # warm-up
    steps, losses = iter(range(100, 10_000)), []
    benchmark.pedantic(lambda: losses.append(method.train_step(batch, next(steps))), rounds=8, iterations=1)
    MEANS[variant] = benchmark.stats.stats.mean
    base = MEANS.get("source_only")
    ratio = f", {MEANS[variant] / base:.2f}x source_only" if base else ""
    print(f"\n{variant}: {MEANS[variant] * 1000:.0f} ms a step{ratio}")
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses[-1].values())
