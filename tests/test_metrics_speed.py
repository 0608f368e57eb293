"""Speed comparison of evaluate_volume against MedPy 0.5.2 (pytest-benchmark, no timed assertion).

Run with ``python -m pytest tests/test_metrics_speed.py -m perf --benchmark-enable``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from benchmark.metrics import evaluate_volume

pytestmark = pytest.mark.perf

SHAPE = (256, 256, 160)
SPACING = (1.0, 1.0, 1.25)
CLASSES = {"LV": 1, "MYO": 2, "RV": 3, "LA": 4}


def _ellipsoid(center, radii) -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return (
        ((z - center[0]) / radii[0]) ** 2
        + ((y - center[1]) / radii[1]) ** 2
        + ((x - center[2]) / radii[2]) ** 2
    ) <= 1.0


def _heart_like_volumes() -> tuple[np.ndarray, np.ndarray]:
    """Deterministic reference and perturbed prediction with four heart-sized structures."""
    rng = np.random.default_rng(20240601)
    ref = np.zeros(SHAPE, np.uint8)
    lv = _ellipsoid((128, 118, 80), (30, 24, 22))
    lv_outer = _ellipsoid((128, 118, 80), (38, 32, 29))
    rv = _ellipsoid((132, 160, 76), (36, 20, 26))
    la = _ellipsoid((88, 112, 86), (20, 18, 16))
    ref[rv] = CLASSES["RV"]
    ref[la] = CLASSES["LA"]
    ref[lv_outer] = CLASSES["MYO"]  # myocardium: shell around the LV cavity
    ref[lv] = CLASSES["LV"]

    # Prediction: shifted volume, some labels dilated or eroded, noise blobs.
    pred = np.roll(ref, shift=(2, -1, 1), axis=(0, 1, 2))
    ball = ndimage.generate_binary_structure(3, 1)
    lv_pred = ndimage.binary_dilation(pred == CLASSES["LV"], ball, iterations=2)
    pred[lv_pred & (pred != CLASSES["RV"])] = CLASSES["LV"]
    la_pred = pred == CLASSES["LA"]
    pred[la_pred & ~ndimage.binary_erosion(la_pred, ball, iterations=2)] = 0
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE).astype(np.float32), 2.0)
    blobs = (noise > np.quantile(noise, 0.999)) & _ellipsoid((125, 130, 80), (75, 70, 55))
    labelled, count = ndimage.label(blobs)
    blob_labels = rng.integers(1, len(CLASSES) + 1, size=count + 1).astype(np.uint8)
    pred[blobs] = blob_labels[labelled[blobs]]
    return pred, ref


@pytest.fixture(scope="module")
def volumes() -> tuple[np.ndarray, np.ndarray]:
    return _heart_like_volumes()


def _medpy_per_structure(mb, pred: np.ndarray, ref: np.ndarray) -> dict[str, dict[str, float]]:
    result = {}
    for name, label in CLASSES.items():
        p = pred == label
        r = ref == label
        result[name] = {
            "dice": mb.dc(p, r),
            "assd_mm": mb.assd(p, r, voxelspacing=SPACING),
            "hd95_mm": mb.hd95(p, r, voxelspacing=SPACING),
        }
    return result


@pytest.mark.benchmark(group="evaluate_volume")
def test_speed_evaluate_volume(benchmark, volumes):
    pred, ref = volumes
    result = benchmark.pedantic(
        evaluate_volume, args=(pred, ref, SPACING, CLASSES), rounds=3, iterations=1
    )
    assert set(result) == set(CLASSES)


@pytest.mark.benchmark(group="evaluate_volume")
def test_speed_medpy_per_structure(benchmark, volumes):
    mb = pytest.importorskip("medpy.metric.binary")
    pred, ref = volumes
    expected = benchmark.pedantic(
        _medpy_per_structure, args=(mb, pred, ref), rounds=1, iterations=1
    )
    # Same numbers as ours on this volume (not timed).
    ours = evaluate_volume(pred, ref, SPACING, CLASSES)
    for name in CLASSES:
        for key, value in expected[name].items():
            assert ours[name][key] == pytest.approx(value, abs=1e-6), (name, key)
