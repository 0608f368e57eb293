"""Speed of native-grid scoring of an MM-WHS-sized CT volume, inverse mapping included (pytest-benchmark).

Run with ``python -m pytest tests/test_native_speed.py -m perf --benchmark-enable`` (set ``OMP_NUM_THREADS=1``
for the one-core figure). No timed assertion: the figures are reported, not tested.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.cache import _resize_slices
from benchmark.metrics import evaluate_volume
from benchmark.native import InverseMap

pytestmark = pytest.mark.perf

SHAPE = (512, 512, 300)  # canonical RAS: left-right, posterior-anterior, inferior-superior
SPACING = (0.4, 0.4, 0.6)
AXIS = 1  # MM-WHS slices coronally
CROP = ((0, 512), (60, 460), (0, 300))  # the body's anterior-posterior extent; the 240 mm fields hold the rest
SIZE = 256  # the paper preset
CLASSES = {"MYO": 1, "LAC": 2, "LVC": 3, "AA": 4}


def _ellipsoid(centre, radii_mm) -> np.ndarray:
    x, y, z = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    return sum(((g - c) * s / r) ** 2 for g, c, s, r in zip((x, y, z), centre, SPACING, radii_mm)) <= 1.0


def _heart() -> np.ndarray:
    ref = np.zeros(SHAPE, np.uint8)
    ref[_ellipsoid((270, 250, 140), (48, 40, 42))] = CLASSES["MYO"]
    ref[_ellipsoid((270, 250, 140), (38, 30, 32))] = CLASSES["LVC"]
    ref[_ellipsoid((250, 320, 190), (25, 20, 22))] = CLASSES["LAC"]
    ref[_ellipsoid((230, 230, 220), (15, 15, 45))] = CLASSES["AA"]
    return ref


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, InverseMap, np.ndarray]:
    """Reference, inverse map, and cache-grid class scores of a prediction shifted by a few voxels."""
    ref = _heart()
    pred = np.roll(ref, (3, -2, 2), axis=(0, 1, 2))
    box = tuple(slice(lo, hi) for lo, hi in CROP)
    slices = _resize_slices(np.moveaxis(pred[box], AXIS, 0), SIZE, labels=5)
    scores = (slices[:, None] == np.arange(5)[None, :, None, None]).astype(np.float32)
    scores += np.random.default_rng(0).normal(0, 0.05, scores.shape).astype(np.float32)  # no ties
    return ref, InverseMap(shape=SHAPE, axis=AXIS, crop=CROP, size=SIZE), scores


def _score(inverse: InverseMap, scores: np.ndarray, ref: np.ndarray) -> dict:
    return evaluate_volume(inverse.labels(scores), ref, SPACING, CLASSES)


@pytest.mark.benchmark(group="native")
def test_speed_native_grid_scoring(benchmark, case):
    ref, inverse, scores = case
    result = benchmark.pedantic(_score, args=(inverse, scores, ref), rounds=3, iterations=1)
    assert all(result[s]["dice"] > 0.85 for s in CLASSES)  # a prediction a few voxels off


@pytest.mark.benchmark(group="native")
def test_speed_inverse_mapping_alone(benchmark, case):
    _, inverse, scores = case
    volume = benchmark.pedantic(inverse.labels, args=(scores,), rounds=3, iterations=1)
    assert volume.shape == SHAPE
