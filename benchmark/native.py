"""A volume's native grid, and the inverse of the slice cache's preprocessing (protocol ``fsuda-v2``).

Under ``fsuda-v2`` a test volume is scored on the grid of its own label file, not on the cache's resized slices.
Two pieces make that possible:

* :class:`Grid` is what a file adapter read: the voxel-to-world affine and shape of the array *as stored* and
  the orientation transform (nibabel's ``ornt``) that took it to the canonical array the adapter returned. Axis
  permutations and flips are exact, so :meth:`Grid.to_file` gives back the stored voxel order.
* :class:`InverseMap` undoes the cache's geometry for one case: each cache slice's class scores are resampled to
  the crop's in-plane size (bilinear interpolation of the scores, then the arg-max; the same half-pixel
  convention as ``cv2.resize`` and ``torch.nn.functional.interpolate(align_corners=False)``), placed at their
  slice of the crop box inside the uncropped canonical volume (background outside the crop), and the slicing
  axis is moved back. Intensity clipping and normalisation need no inverse.

Metrics are computed on the canonical array with the canonical spacing: Dice, ASSD and HD95 do not change when
the axes of both volumes are permuted and flipped together (with the spacing permuted alike), so the numbers are
those of the label file's own grid. ``python -m benchmark evaluate`` scores files in their stored order.

Bilinear interpolation is a convex combination of the four nearest scores, so where one class wins at all four it
wins at the interpolated point too. Only the output pixels between differently labelled input pixels are
therefore interpolated, within the bounding box of each slice's foreground, and the result equals resampling the
scores of the whole slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: nibabel's orientation of an array already in RAS+ order.
RAS = ((0.0, 1.0), (1.0, 1.0), (2.0, 1.0))


@dataclass(frozen=True)
class Grid:
    """The stored grid of a case: ``affine`` (voxel to RAS+ mm) and ``shape`` of the array as stored in its file,
    and ``ornt``, the orientation transform (per stored axis: target axis, flip) from the stored array to the
    canonical array the adapter returns."""

    affine: tuple[tuple[float, ...], ...]
    shape: tuple[int, int, int]
    ornt: tuple[tuple[float, float], ...] = RAS

    @classmethod
    def of(cls, affine: np.ndarray, shape: Sequence[int], ornt: np.ndarray | Sequence | None = None) -> Grid:
        o = RAS if ornt is None else tuple((float(a), float(f)) for a, f in np.asarray(ornt))
        return cls(affine=tuple(tuple(float(v) for v in row) for row in np.asarray(affine, dtype=np.float64)),
                   shape=tuple(int(n) for n in shape), ornt=o)  # type: ignore[arg-type]

    @classmethod
    def from_spacing(cls, spacing: Sequence[float], shape: Sequence[int]) -> Grid:
        """A stored grid that is already canonical: diagonal affine with ``spacing``, origin at voxel 0."""
        return cls.of(np.diag([*map(float, spacing), 1.0]), shape)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grid:
        return cls.of(np.asarray(data["affine"]), data["shape"], data["ornt"])

    def to_dict(self) -> dict[str, Any]:
        return {"affine": [list(r) for r in self.affine], "shape": list(self.shape),
                "ornt": [list(o) for o in self.ornt]}

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=np.float64)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """mm per stored axis."""
        return tuple(float(s) for s in np.sqrt((self.matrix[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def canonical_spacing(self) -> tuple[float, float, float]:
        """mm per canonical axis (the stored spacing, permuted as :meth:`to_canonical` permutes the axes)."""
        order = np.argsort([int(a) for a, _ in self.ornt])
        return tuple(self.spacing[i] for i in order)  # type: ignore[return-value]

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """A stored-order array in the canonical order (a view)."""
        import nibabel as nib

        return nib.orientations.apply_orientation(array, np.asarray(self.ornt))

    def to_file(self, array: np.ndarray) -> np.ndarray:
        """A canonical array back in the stored order (a view), the exact inverse of :meth:`to_canonical`."""
        import nibabel as nib

        back = nib.orientations.ornt_transform(np.asarray(RAS), np.asarray(self.ornt))
        # ornt_transform(RAS, ornt) maps canonical axes to the stored ones: axis permutation inverted, flips kept
        return nib.orientations.apply_orientation(array, back)


def _sources(n_out: int, n_in: int, lo: int, hi: int) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling (half-pixel centres, edges clamped) of the output rows that can see input rows
    ``[lo, hi)``: ``(start, stop, i0, i1, frac)``, output row ``start + k`` blending rows ``i0[k]`` and ``i1[k]``
    with weights ``1 - frac[k]`` and ``frac[k]``."""
    scale = n_in / n_out
    # output rows with a neighbour in [lo, hi) have a source coordinate in [lo - 1, hi); one row of slack each side
    start = max(0, int(math.floor((lo - 0.5) / scale - 0.5)))
    stop = min(n_out, int(math.ceil((hi + 0.5) / scale - 0.5)) + 1)
    src = np.clip((np.arange(start, stop) + 0.5) * scale - 0.5, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    return start, stop, i0, np.minimum(i0 + 1, n_in - 1), src - i0


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(axis=0)`` as uint8 (the first class wins a tie), by one comparison per class: several times
    faster than numpy's strided reduction over the leading axis."""
    best = scores[0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    for c in range(1, len(scores)):
        better = scores[c] > best
        labels[better] = c
        np.maximum(best, scores[c], out=best)
    return labels


def upsample_labels(scores: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """The arg-max of ``scores`` (C, H, W) resampled bilinearly to ``shape``, on the box where it can be foreground.

    Returns ``(labels, (rows, cols))`` with ``labels`` uint8 for the output box ``rows x cols`` (background
    elsewhere), or None when class 0 wins everywhere. Where the four input pixels around an output pixel share
    one arg-max, the interpolated scores have that arg-max too (a convex combination keeps a strict maximum), so
    only the pixels between different labels are interpolated; the result equals interpolating every score.
    """
    labels = argmax_classes(scores)
    fg = labels != 0
    if not fg.any():
        return None
    r = np.flatnonzero(fg.any(axis=1))
    c = np.flatnonzero(fg.any(axis=0))
    _, h, w = scores.shape
    y0, y1, i0, i1, fy = _sources(shape[0], h, max(0, int(r[0]) - 1), min(h, int(r[-1]) + 2))
    x0, x1, j0, j1, fx = _sources(shape[1], w, max(0, int(c[0]) - 1), min(w, int(c[-1]) + 2))
    out = labels[np.ix_(i0, j0)]
    mixed = ((out != labels[np.ix_(i0, j1)]) | (out != labels[np.ix_(i1, j0)])
             | (out != labels[np.ix_(i1, j1)]))
    yy, xx = np.nonzero(mixed)
    if yy.size:
        a, b, wy, wx = i0[yy], i1[yy], fy[yy], fx[xx]
        p, q = j0[xx], j1[xx]
        s = scores.astype(np.float64, copy=False)
        blend = ((1 - wy) * ((1 - wx) * s[:, a, p] + wx * s[:, a, q])
                 + wy * ((1 - wx) * s[:, b, p] + wx * s[:, b, q]))
        out[yy, xx] = blend.argmax(axis=0)
    return out.astype(np.uint8), (slice(y0, y1), slice(x0, x1))


@dataclass(frozen=True)
class InverseMap:
    """The inverse of one case's cache geometry: canonical ``shape``, slicing ``axis``, ``crop`` box (canonical
    ``[start, stop)`` per axis) and the cache's slice ``size``."""

    shape: tuple[int, int, int]
    axis: int
    crop: tuple[tuple[int, int], ...]
    size: int

    @classmethod
    def from_index(cls, info: dict[str, Any], axis: int, size: int) -> InverseMap:
        shape = tuple(int(n) for n in info["native"]["shape"])
        crop = tuple(tuple(int(v) for v in b) for b in info.get("crop") or [[0, n] for n in shape])
        return cls(shape=shape, axis=int(axis), crop=crop, size=int(size))  # type: ignore[arg-type]

    @property
    def in_plane(self) -> tuple[int, int]:
        """The crop's size along the two in-plane axes (in canonical order), i.e. before the resize."""
        sizes = [hi - lo for lo, hi in self.crop]
        return tuple(sizes[a] for a in range(3) if a != self.axis)  # type: ignore[return-value]

    @property
    def slices(self) -> int:
        lo, hi = self.crop[self.axis]
        return hi - lo

    def empty(self) -> np.ndarray:
        """An all-background canonical label volume."""
        return np.zeros(self.shape, dtype=np.uint8)

    def place(self, volume: np.ndarray, index: int, scores: np.ndarray) -> None:
        """Write cache slice ``index``'s labels, from its class ``scores`` (C, size, size), into ``volume``."""
        found = upsample_labels(scores, self.in_plane)
        if found is None:
            return
        labels, (rows, cols) = found
        moved = np.moveaxis(volume, self.axis, 0)  # a view: writes land in ``volume``
        (a_lo, _), (b_lo, _) = [self.crop[a] for a in range(3) if a != self.axis]
        moved[self.crop[self.axis][0] + index, a_lo + rows.start:a_lo + rows.stop,
              b_lo + cols.start:b_lo + cols.stop] = labels

    def labels(self, scores: np.ndarray) -> np.ndarray:
        """The canonical label volume of a whole case's slice scores (slices, C, size, size)."""
        if len(scores) != self.slices:
            raise ValueError(f"{len(scores)} slices of scores for a case of {self.slices} cache slices")
        volume = self.empty()
        for i, s in enumerate(scores):
            self.place(volume, i, s)
        return volume
