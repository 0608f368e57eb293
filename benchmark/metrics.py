"""Segmentation metrics: Dice, ASSD and HD95 for binary masks and label volumes.

Conventions
-----------
Dice
    ``2 |P & R| / (|P| + |R|)`` (Dice 1945, "Measures of the amount of
    ecologic association between species", Ecology 26(3)).

Boundary ("surface") voxels
    The voxels of a mask that one binary erosion with the face-connected
    structuring element (``scipy.ndimage.generate_binary_structure(ndim, 1)``)
    removes. Everything outside the image counts as background, so a mask
    touching the image edge has boundary voxels on that edge.

Directed surface distances
    For every boundary voxel of one mask, the Euclidean distance in mm
    (voxel offsets scaled by ``spacing``) to the nearest boundary voxel of the
    other mask.

ASSD and HD95
    Both directed distance arrays are concatenated ("pooled"); ASSD is the
    mean and HD95 the 95th percentile (``numpy.percentile``, linear
    interpolation) of the pooled array. These are the definitions of
    ``medpy.metric.binary.assd`` and ``medpy.metric.binary.hd95`` in MedPy
    0.5.2; the values agree with MedPy whenever both masks are non-empty.
    MONAI's ``compute_average_surface_distance(symmetric=True)`` pools the
    two directions the same way in current releases. Older MedPy (0.4) and
    MONAI releases averaged the two directed means instead, which weights
    the two surfaces equally regardless of their size and gives different
    numbers.

Empty masks (convention of this suite; MedPy raises instead)
    * Dice: both empty -> 1.0, exactly one empty -> 0.0.
    * ASSD and HD95: both empty -> 0.0, exactly one empty -> the image
      diagonal in mm, ``sqrt(sum((shape_i * spacing_i) ** 2))``, i.e. a
      finite worst case for the volume, so that means over cases never
      become NaN or infinite.

Implementation
    Each structure is cropped to the bounding box of ``pred | ref`` plus one
    voxel before the erosion and the distance transforms (see
    ``_crop_to_union``); both directed distance arrays are computed once per
    structure (two Euclidean feature transforms) and ASSD and HD95 are
    derived from the same pooled array. The transforms are those of
    ``scipy.ndimage.distance_transform_edt`` in double precision, which
    MedPy uses too, so the results match MedPy to rounding. The faster
    ``edt`` package computes in single precision: with non-dyadic spacings
    (e.g. 0.7 mm) its distances are off by about 1e-7 relative, which moved
    HD95 by up to 3e-6 mm on random test shapes, more than the 1e-6
    agreement this module guarantees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["dice", "assd", "hd95", "evaluate_volume", "mean_over_structures"]

METRIC_KEYS: tuple[str, str, str] = ("dice", "assd_mm", "hd95_mm")


# ---------------------------------------------------------------- validation
def _as_bool(mask: np.ndarray) -> np.ndarray:
    """Return ``mask`` as a boolean array (nonzero -> True), copying only if needed."""
    return np.asarray(mask).astype(bool, copy=False)


def _check_same_shape(pred: np.ndarray, ref: np.ndarray, what: str = "pred and ref") -> None:
    if pred.shape != ref.shape:
        raise ValueError(
            f"{what} must have the same shape, got {tuple(pred.shape)} and {tuple(ref.shape)}"
        )


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Validate ``spacing`` (mm per axis) against an ``ndim``-D image."""
    if ndim < 1:
        raise ValueError("surface distances need masks with at least one dimension")
    values = np.asarray(spacing, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(
            f"spacing must be a sequence of mm per axis, one value for each of the "
            f"{ndim} axes; got {spacing!r}"
        )
    if values.size != ndim:
        raise ValueError(
            f"spacing must give one value per axis: got {values.size} value(s) "
            f"{tuple(values.tolist())} for a {ndim}-D image"
        )
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise ValueError(
            f"spacing must be finite and greater than 0 mm on every axis, "
            f"got {tuple(values.tolist())}"
        )
    return tuple(float(v) for v in values)


def _image_diagonal(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """Length in mm of the image diagonal: the distance assigned when one mask is empty."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


# ------------------------------------------------------------------- overlap
def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two masks of equal shape (any dimension, nonzero = foreground).

    Both masks empty gives 1.0 (perfect agreement on absence); exactly one
    empty gives 0.0.
    """
    p = _as_bool(pred)
    r = _as_bool(ref)
    _check_same_shape(p, r)
    return _dice_bool(p, r)


def _dice_bool(p: np.ndarray, r: np.ndarray) -> float:
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & r)) / total


# ----------------------------------------------------------- surface distance
def _crop_to_union(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Crop both masks to the bounding box of ``p | r`` plus one voxel, clipped to the image.

    Returns ``None`` when both masks are empty.

    Why the crop changes neither the boundaries nor the distances:

    * Erosion of a voxel depends only on the voxel and its face neighbours.
      Every foreground voxel lies inside the bounding box, so each of its
      face neighbours lies either inside the box grown by one voxel (and is
      kept with its value) or outside the image. The crop is clipped to the
      image, so a side of the crop is either the real image edge, where
      outside counts as background in both cases (``border_value=0``), or a
      margin layer, which is background by construction and therefore holds
      no foreground voxel whose neighbourhood could be cut. Margin voxels
      are background, so they are never boundary voxels either. (With
      ``border_value=0`` the crop would stay exact even without the margin,
      because the voxels just outside the box are background as well; the
      margin keeps that independent of how the erosion treats the edge.)
    * All boundary voxels of both masks lie inside the crop, and a distance
      between two voxels depends only on their offset, so the nearest
      boundary voxel found in the crop is the nearest one in the full image.
    """
    ndim = p.ndim
    for axis in range(ndim):
        others = tuple(a for a in range(ndim) if a != axis)
        hit = np.flatnonzero(p.any(axis=others) | r.any(axis=others))
        if hit.size == 0:
            return None
        start = max(int(hit[0]) - 1, 0)
        stop = min(int(hit[-1]) + 2, p.shape[axis])
        # Crop this axis now so the projections for later axes read less data;
        # all foreground voxels lie inside [start, stop) anyway.
        index = (slice(None),) * axis + (slice(start, stop),)
        p = p[index]
        r = r[index]
    return np.ascontiguousarray(p), np.ascontiguousarray(r)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` removed by one face-connected erosion (outside = background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, iterations=1, border_value=0)
    return mask & ~eroded


def _distances_to(
    target: np.ndarray, query: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Distance in mm from each True voxel of ``query`` to the nearest True voxel of ``target``."""
    # The feature transform of ~target gives, for every voxel, the index of
    # the nearest zero voxel of ~target, i.e. the nearest target voxel, under
    # the spacing-weighted Euclidean metric (the transform behind
    # distance_transform_edt, which MedPy uses). Distances are then needed
    # only at the query voxels, not over the whole crop.
    nearest = ndimage.distance_transform_edt(
        ~target, sampling=spacing, return_distances=False, return_indices=True
    )
    coords = np.nonzero(query)
    offsets = np.stack([nearest[axis][coords] - coords[axis] for axis in range(target.ndim)])
    offsets = offsets.astype(np.float64) * np.asarray(spacing, dtype=np.float64)[:, None]
    return np.sqrt(np.add.reduce(offsets * offsets, axis=0))


def _pooled_surface_distances(
    p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Concatenated directed boundary distances in mm: pred -> ref, then ref -> pred.

    ``p`` and ``r`` are non-empty boolean masks of equal shape (callers pass
    them cropped by ``_crop_to_union``, which leaves the result unchanged).
    Uses two distance transforms; ASSD and HD95 are both derived from it.
    """
    p_border = _boundary(p)
    r_border = _boundary(r)
    pred_to_ref = _distances_to(r_border, p_border, spacing)
    ref_to_pred = _distances_to(p_border, r_border, spacing)
    return np.concatenate([pred_to_ref, ref_to_pred])


def _structure_metrics(
    p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...]
) -> tuple[float, float, float]:
    """(Dice, ASSD, HD95) of validated boolean masks, with the empty-mask convention."""
    cropped = _crop_to_union(p, r)
    if cropped is None:  # both empty
        return 1.0, 0.0, 0.0
    pc, rc = cropped
    dice_value = _dice_bool(pc, rc)
    if not (pc.any() and rc.any()):  # exactly one empty
        worst = _image_diagonal(p.shape, spacing)
        return dice_value, worst, worst
    pooled = _pooled_surface_distances(pc, rc, spacing)
    # A non-empty finite mask always has boundary voxels, so pooled is non-empty.
    return dice_value, float(pooled.mean()), float(np.percentile(pooled, 95))


def _prepare_pair(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    p = _as_bool(pred)
    r = _as_bool(ref)
    _check_same_shape(p, r)
    return p, r, _check_spacing(spacing, p.ndim)


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm (pooled mean, MedPy 0.5.2 definition).

    ``spacing`` gives mm per axis. Empty masks follow the module convention
    (both empty -> 0.0, one empty -> image diagonal in mm).
    """
    p, r, sp = _prepare_pair(pred, ref, spacing)
    return _structure_metrics(p, r, sp)[1]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile Hausdorff distance in mm (pooled, MedPy 0.5.2 definition).

    ``spacing`` gives mm per axis. Empty masks follow the module convention
    (both empty -> 0.0, one empty -> image diagonal in mm).
    """
    p, r, sp = _prepare_pair(pred, ref, spacing)
    return _structure_metrics(p, r, sp)[2]


# ------------------------------------------------------------------- volumes
def _check_label_volume(volume: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(volume)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise TypeError(
            f"{name} must be an integer label volume, got dtype {arr.dtype}; "
            f"convert it explicitly, e.g. np.rint(x).astype(np.int16)"
        )
    return arr


def _check_classes(classes: Mapping[str, int]) -> None:
    if not classes:
        raise ValueError("classes must map at least one structure name to a label value")
    for name, label in classes.items():
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise ValueError(f"label of structure {name!r} must be an integer, got {label!r}")
        if label == 0:
            raise ValueError(f"label of structure {name!r} must be nonzero (0 is background)")


def evaluate_volume(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    spacing: Sequence[float],
    classes: Mapping[str, int],
) -> dict[str, dict[str, float]]:
    """Dice, ASSD and HD95 of every structure of two integer label volumes.

    ``classes`` maps a structure name to its (nonzero) label value. Returns
    ``{name: {"dice": ..., "assd_mm": ..., "hd95_mm": ...}}`` with python
    floats; the values equal ``dice``, ``assd`` and ``hd95`` on the binary
    masks ``pred_labels == label`` and ``ref_labels == label``.
    """
    pred = _check_label_volume(pred_labels, "pred_labels")
    ref = _check_label_volume(ref_labels, "ref_labels")
    _check_same_shape(pred, ref, "pred_labels and ref_labels")
    sp = _check_spacing(spacing, pred.ndim)
    _check_classes(classes)

    result: dict[str, dict[str, float]] = {}
    for name, label in classes.items():
        p = pred == label
        r = ref == label
        dice_value, assd_mm, hd95_mm = _structure_metrics(p, r, sp)
        result[name] = {"dice": dice_value, "assd_mm": assd_mm, "hd95_mm": hd95_mm}
    return result


def mean_over_structures(result: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Unweighted mean of each metric over the structures of an ``evaluate_volume`` result."""
    if not result:
        raise ValueError("result holds no structures to average")
    return {
        key: float(np.mean([float(metrics[key]) for metrics in result.values()]))
        for key in METRIC_KEYS
    }
