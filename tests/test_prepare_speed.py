"""Throughput of ``prepare`` on an MM-WHS-format folder at scanner-like sizes (pytest-benchmark, no timed assertion).

Run with ``python -m pytest tests/test_prepare_speed.py -m perf --benchmark-enable -s``; it prints volumes per second
and the slice cache's size per volume. ``FSUDA_PREPARE_BENCH_SCALE`` (default 1.0) scales every volume's in-plane
and through-plane size, e.g. 0.25 for a quick look. At scale 1 it needs about 12 GB of free disk (the NIfTI files
and two 5 GB caches of 256x256 coronal slices, 512 per CT volume) and peaks near 12 GB of memory, because
``prepare`` gathers a modality's slices before writing them.

The volumes follow the MM-WHS 2017 training release's geometry: CT 512x512 axial slices (0.4 mm in plane, 0.6 mm
apart, 220 slices), MR 288x288x140 at 1.0 x 1.0 x 1.2 mm stored in a permuted (sagittal-like) orientation, int16
images and the release's raw label values (205 MYO, 420 LAC, 500 LVC, 820 AA, plus structures the suite maps to
background), a heart-sized labelled region in each.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from realdata_files import permuted_affine, save_nifti, scanner_affine

import benchmark as fsuda  # the fixture called ``benchmark`` is pytest-benchmark's
from benchmark.cache import PreprocessSettings, prepare

pytestmark = pytest.mark.perf

SCALE = float(os.environ.get("FSUDA_PREPARE_BENCH_SCALE", "1.0"))
GEOMETRY = {  # modality: (shape, spacing in mm, affine builder)
    "ct": ((512, 512, 220), (0.4, 0.4, 0.6), scanner_affine),
    "mr": ((288, 288, 140), (1.0, 1.0, 1.2), permuted_affine),
}
# raw value and the centre and radii (mm) of an ellipsoid, in the order they are painted
STRUCTURES = ((550, (0, 10, 0), (50, 45, 55)), (205, (0, 0, 0), (35, 30, 38)), (500, (0, 0, 0), (27, 22, 30)),
              (420, (-25, 30, 10), (20, 18, 18)), (820, (30, 25, -30), (12, 12, 25)))


def _subject(modality: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape, spacing, affine_of = GEOMETRY[modality]
    shape = tuple(max(24, int(round(n * SCALE))) for n in shape)
    spacing = tuple(s / SCALE for s in spacing)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    mm = [(g - n / 2) * s for g, n, s in zip(grids, shape, spacing)]
    label = np.zeros(shape, np.int16)
    image = rng.normal(0.0, 20.0, shape).astype(np.float32)
    image += 300.0 * ((mm[0] / 150) ** 2 + (mm[1] / 110) ** 2 <= 1.0)  # the body
    for value, centre, radii in STRUCTURES:
        inside = sum(((m - c) / r) ** 2 for m, c, r in zip(mm, centre, radii)) <= 1.0
        label[inside] = value
        image[inside] += value / 2
    return image.astype(np.int16), label, affine_of(spacing=spacing)


@pytest.fixture(scope="module")
def mmwhs_release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mmwhs_release")
    rng = np.random.default_rng(0)
    for modality in GEOMETRY:
        for case in range(1001, 1021):
            image, label, affine = _subject(modality, rng)
            folder = root / f"{modality}_train"
            save_nifti(folder / f"{modality}_train_{case}_image.nii.gz", image, affine)
            save_nifti(folder / f"{modality}_train_{case}_label.nii.gz", label, affine)
    return root


def test_prepare_throughput(benchmark, mmwhs_release, tmp_path):
    adapter = fsuda.get_dataset("mmwhs", mmwhs_release)
    settings = PreprocessSettings(size=256)
    rounds = itertools.count()

    def fresh_root():
        return (), {"root": tmp_path / f"cache{next(rounds)}"}

    def run(root):
        return prepare(adapter, settings, root=root, log=lambda _msg: None)

    cache = benchmark.pedantic(run, setup=fresh_root, rounds=2, iterations=1)
    volumes = sum(len(cases) for cases in cache.index["cases"].values())
    size = sum(f.stat().st_size for f in cache.path.rglob("*") if f.is_file())
    seconds = benchmark.stats.stats.median
    report = (f"prepare mmwhs (scale {SCALE}): {volumes} volumes in {seconds:.1f} s = {volumes / seconds:.2f} "
              f"volumes/s with {os.cpu_count()} processes; cache {size / 2**20:.1f} MiB = "
              f"{size / volumes / 2**20:.2f} MiB per volume")
    benchmark.extra_info.update({"volumes_per_s": volumes / seconds, "cache_mib_per_volume": size / volumes / 2**20})
    print("\n" + report)
    assert volumes == 40
    assert all(cache.index["has_labels"].values())
