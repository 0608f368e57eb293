"""Label-free volume preprocessing shared by the real datasets: the body crop and per-volume normalisation.

Nothing here looks at labels: a crop chosen from the labelled structures would tell the model where the answer
is on test volumes. The crop is defined from the image alone: the body is the largest connected component above
a threshold (computed on a subsampled copy for speed), and along each axis the crop keeps either the body's
extent or a fixed physical field of view centred on the body's extent. The threshold is the more inclusive of
Otsu's threshold and the midpoint between the 0.5th and 75th percentiles: when the body fills the field of view
(no dark background, as in many cardiac scans) Otsu alone would separate its brightest organs from the rest and
crop to them; the midpoint then keeps the whole body, so a failure errs towards cropping nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Subsample so that the body mask is computed on at most about this many voxels.
_MASK_VOXELS = 4_000_000


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a set of values (maximises the between-class variance of a 256-bin histogram)."""
    values = values[np.isfinite(values)]
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))])


def body_extent(image: np.ndarray) -> list[tuple[int, int]]:
    """Per axis, the ``[start, stop)`` extent of the largest connected region above the body threshold."""
    from scipy import ndimage

    step = max(1, int(np.ceil((image.size / _MASK_VOXELS) ** (1 / 3))))
    small = np.asarray(image[::step, ::step, ::step], dtype=np.float32)
    low, high = np.percentile(small, [0.5, 75])
    mask = small > min(otsu_threshold(small), (low + high) / 2)
    if not mask.any():
        return [(0, n) for n in image.shape]
    components, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == int(np.argmax(sizes))
    extent = []
    for axis, n_full in enumerate(image.shape):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        extent.append((int(idx[0]) * step, min(n_full, (int(idx[-1]) + 1) * step)))
    return extent


def body_crop(image: np.ndarray, spacing: Sequence[float],
              fov_mm: Sequence[float | None] | None = None) -> tuple[slice, slice, slice]:
    """The crop box of a volume: per axis the body's extent, or ``fov_mm[axis]`` mm centred on it.

    A field of view larger than the volume keeps the whole axis; one that would leave the volume is shifted back
    inside it, so the box always has ``min(fov, axis length)`` voxels on the axes where a field of view is given.
    """
    fov_mm = list(fov_mm) if fov_mm is not None else [None, None, None]
    box = []
    for axis, (lo, hi) in enumerate(body_extent(image)):
        n = image.shape[axis]
        fov = fov_mm[axis]
        if fov is None:
            box.append(slice(lo, hi))
            continue
        width = min(n, max(1, round(float(fov) / float(spacing[axis]))))
        start = round((lo + hi) / 2 - width / 2)
        start = min(max(start, 0), n - width)
        box.append(slice(start, start + width))
    return tuple(box)  # type: ignore[return-value]


def code_fingerprint(*files: str | Path) -> str:
    """A short hash of source files: adapters key their cache with the code that reads and preprocesses their data,
    so editing a reader or the crop never reuses slices made by the old code."""
    digest = hashlib.sha256()
    for path in (__file__, *files):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def normalise_volume(image: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the whole volume (float32); a constant volume becomes zeros."""
    mean = float(image.mean(dtype=np.float64))
    std = float(image.std(dtype=np.float64))
    return ((image - mean) / (std if std > 0 else 1.0)).astype(np.float32)
