"""Tests for benchmark.metrics: analytic values, MedPy 0.5.2 agreement, empty masks, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from benchmark.metrics import assd, dice, evaluate_volume, hd95, mean_over_structures

TOL = 1e-6


@pytest.fixture(scope="module")
def medpy_binary():
    return pytest.importorskip("medpy.metric.binary")


# ------------------------------------------------------------------ helpers
def _blob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random smooth blob(s): thresholded Gaussian-smoothed noise (may touch edges, have holes)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.0, 3.0))
    mask = noise > np.quantile(noise, rng.uniform(0.55, 0.95))
    if not mask.any():
        mask.flat[rng.integers(mask.size)] = True
    return mask


def _random_shape(rng: np.random.Generator, ndim: int) -> tuple[int, ...]:
    low, high = {1: (8, 80), 2: (12, 64), 3: (8, 32)}[ndim]
    return tuple(int(n) for n in rng.integers(low, high, size=ndim))


def _random_spacing(rng: np.random.Generator, ndim: int) -> tuple[float, ...]:
    return tuple(float(s) for s in rng.uniform(0.25, 3.0, size=ndim))


def _ball(shape: tuple[int, ...], center, radius: float) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, center))
    return dist2 <= radius**2


def _assert_matches_medpy(mb, pred: np.ndarray, ref: np.ndarray, spacing) -> None:
    assert dice(pred, ref) == pytest.approx(mb.dc(pred, ref), abs=TOL)
    assert assd(pred, ref, spacing) == pytest.approx(
        mb.assd(pred, ref, voxelspacing=spacing), abs=TOL
    )
    assert hd95(pred, ref, spacing) == pytest.approx(
        mb.hd95(pred, ref, voxelspacing=spacing), abs=TOL
    )


# ----------------------------------------------------------------- analytic
def test_segments_1d_shifted():
    # Segments [2..6] and [5..9] in a 20-voxel line, 1.5 mm per voxel.
    # Boundary voxels are the end points: pred {2, 6}, ref {5, 9}.
    # pred -> ref: 2->5 = 3 vox, 6->5 = 1 vox; ref -> pred: 5->6 = 1, 9->6 = 3.
    # Pooled (mm): [4.5, 1.5, 1.5, 4.5] -> mean 3.0; sorted [1.5, 1.5, 4.5, 4.5],
    # 95th percentile at position 0.95 * 3 = 2.85, between two 4.5 -> 4.5.
    # Overlap {5, 6}: Dice = 2 * 2 / (5 + 5) = 0.4.
    pred = np.zeros(20, bool)
    ref = np.zeros(20, bool)
    pred[2:7] = True
    ref[5:10] = True
    assert dice(pred, ref) == pytest.approx(0.4, abs=1e-12)
    assert assd(pred, ref, [1.5]) == pytest.approx(3.0, abs=1e-12)
    assert hd95(pred, ref, [1.5]) == pytest.approx(4.5, abs=1e-12)


def test_pooled_mean_and_interpolated_percentile_1d():
    # pred = single voxel {5}; ref = [0..9]; 2 mm per voxel.
    # Boundaries: pred {5}, ref {0, 9}. pred -> ref: min(5, 4) = 4 vox.
    # ref -> pred: 0 -> 5 = 5 vox, 9 -> 5 = 4 vox. Pooled (mm): [8, 10, 8].
    # ASSD (pooled) = 26 / 3; the average of the two directed means would be
    # (8 + 9) / 2 = 8.5 instead, so this pins the pooled definition.
    # HD95: sorted [8, 8, 10], position 0.95 * 2 = 1.9 -> 8 + 0.9 * (10 - 8) = 9.8.
    pred = np.zeros(20, bool)
    ref = np.zeros(20, bool)
    pred[5] = True
    ref[0:10] = True
    assert assd(pred, ref, (2.0,)) == pytest.approx(26.0 / 3.0, abs=1e-12)
    assert hd95(pred, ref, (2.0,)) == pytest.approx(9.8, abs=1e-12)
    # Symmetric in its arguments.
    assert assd(ref, pred, (2.0,)) == pytest.approx(26.0 / 3.0, abs=1e-12)
    assert hd95(ref, pred, (2.0,)) == pytest.approx(9.8, abs=1e-12)


def _shifted_boxes() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    shape = (14, 12, 14)
    pred = np.zeros(shape, bool)
    ref = np.zeros(shape, bool)
    pred[2:8, 3:9, 4:10] = True  # 6 x 6 x 6 box
    ref[4:10, 3:9, 4:10] = True  # the same box shifted by 2 voxels along axis 0
    return pred, ref, (1.5, 4.0, 5.0)


@pytest.mark.parametrize("axes", [(0, 1, 2), (1, 0, 2), (2, 1, 0), (1, 2, 0)])
def test_boxes_shifted_along_one_axis(axes):
    # Two 6x6x6 boxes, the second shifted by 2 voxels along axis 0, spacing
    # (1.5, 4.0, 5.0) mm. Each box has 216 - 4**3 = 152 boundary voxels.
    # For pred (axis-0 layers i = 2..7):
    #   bottom face i = 2 (36 voxels): nearest ref boundary is ref's face i = 4,
    #     2 vox * 1.5 = 3.0 mm (every ref boundary voxel has i >= 4);
    #   side ring at i = 3 (20 voxels): ref's face i = 4 -> 1.5 mm;
    #   side rings at i = 4, 5, 6 (60) and top-face rim at i = 7 (20): they lie
    #     on ref's side walls -> 0 mm;
    #   top face interior at i = 7 (16): inside ref; ref's face i = 9 is 3.0 mm
    #     away, its side walls at least 4.0 mm -> 3.0 mm.
    # ref -> pred is the mirror image, giving the same multiset.
    # Pooled: 2 * (52 x 3.0, 20 x 1.5, 80 x 0.0) -> 304 values,
    # ASSD = (104 * 3.0 + 40 * 1.5) / 304 = 372 / 304; sorted, the 95th
    # percentile position 0.95 * 303 = 287.85 falls among the 3.0 values.
    # Dice: overlap 4 layers of 36 voxels -> 2 * 144 / 432 = 2 / 3.
    # Permuting the axes (with the spacing) must not change anything, which
    # checks that spacing is paired with the right axis.
    pred, ref, spacing = _shifted_boxes()
    pred = pred.transpose(axes)
    ref = ref.transpose(axes)
    spacing = tuple(spacing[a] for a in axes)
    assert dice(pred, ref) == pytest.approx(2.0 / 3.0, abs=1e-12)
    assert assd(pred, ref, spacing) == pytest.approx(372.0 / 304.0, abs=1e-12)
    assert hd95(pred, ref, spacing) == pytest.approx(3.0, abs=1e-12)
    assert assd(ref, pred, spacing) == pytest.approx(372.0 / 304.0, abs=1e-12)


def test_single_voxels_2d_anisotropic():
    # Offsets (3, 4) voxels at spacing (2.0, 0.5) mm -> sqrt(6**2 + 2**2) mm.
    pred = np.zeros((10, 12), bool)
    ref = np.zeros((10, 12), bool)
    pred[1, 2] = True
    ref[4, 6] = True
    expected = math.sqrt(40.0)
    assert assd(pred, ref, (2.0, 0.5)) == pytest.approx(expected, abs=1e-12)
    assert hd95(pred, ref, (2.0, 0.5)) == pytest.approx(expected, abs=1e-12)
    assert dice(pred, ref) == 0.0


def test_image_edge_counts_as_background():
    # pred fills the whole 5-voxel line, so its boundary is both end voxels
    # {0, 4} (outside the image is background). ref = {0, 1, 2}, boundary {0, 2}.
    # pred -> ref: 0 -> 0, 4 -> 2 (2 vox); ref -> pred: 0 -> 0, 2 -> 0 or 4 (2 vox).
    # With 0.5 mm: pooled [0, 1, 0, 1] -> ASSD 0.5; sorted [0, 0, 1, 1],
    # position 2.85 -> HD95 1.0.
    pred = np.ones(5, bool)
    ref = np.array([1, 1, 1, 0, 0], bool)
    assert assd(pred, ref, (0.5,)) == pytest.approx(0.5, abs=1e-12)
    assert hd95(pred, ref, (0.5,)) == pytest.approx(1.0, abs=1e-12)


def test_full_image_mask_against_itself_and_inner_square():
    # A mask covering the whole 6x6 image has the image frame as its boundary.
    # Against the inner 4x4 square (frame at 1 voxel from the outer frame):
    # every outer-frame voxel is 1 voxel (face) or sqrt(2) (corner) from the
    # inner frame; every inner-frame voxel is 1 voxel from the outer frame.
    full = np.ones((6, 6), bool)
    inner = np.zeros((6, 6), bool)
    inner[1:5, 1:5] = True
    assert assd(full, full, (1.0, 1.0)) == 0.0
    assert hd95(full, full, (1.0, 1.0)) == 0.0
    # outer frame: 20 voxels, 4 corners at sqrt(2), 16 at 1; inner frame: 12 at 1.
    expected = (4 * math.sqrt(2.0) + 16 + 12) / 32
    assert assd(full, inner, (1.0, 1.0)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_identical_masks(seed):
    rng = np.random.default_rng(seed)
    mask = _blob(rng, (20, 24, 18))
    spacing = _random_spacing(rng, 3)
    assert dice(mask, mask.copy()) == 1.0
    assert assd(mask, mask.copy(), spacing) == 0.0
    assert hd95(mask, mask.copy(), spacing) == 0.0


def test_dice_known_overlaps_and_truthy_dtypes():
    assert dice(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)
    assert dice(np.array([1, 1, 1, 0]), np.array([1, 0, 0, 0])) == pytest.approx(0.5)
    assert dice(np.array([1, 1, 1, 1]), np.array([1, 1, 1, 0])) == pytest.approx(6 / 7)
    # Any nonzero value is foreground: {(0,0), (1,1)} vs {(0,0), (0,1)}.
    pred = np.array([[2, 0], [0, -1]], dtype=np.int8)
    ref = np.array([[1.0, 0.5], [0.0, 0.0]])
    assert dice(pred, ref) == pytest.approx(0.5)
    # 0-d and 4-d inputs work for Dice.
    assert dice(np.array(True), np.array(True)) == 1.0
    four_d = np.zeros((2, 3, 4, 5), bool)
    four_d[0, 1, 2, 3] = True
    assert dice(four_d, four_d) == 1.0


def test_results_are_python_floats():
    pred, ref, spacing = _shifted_boxes()
    for value in (dice(pred, ref), assd(pred, ref, spacing), hd95(pred, ref, spacing)):
        assert type(value) is float


# ------------------------------------------------------------ MedPy 0.5.2
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("seed", range(12))
def test_matches_medpy_random_blobs(medpy_binary, seed, ndim):
    rng = np.random.default_rng(1000 * ndim + seed)
    shape = _random_shape(rng, ndim)
    pred = _blob(rng, shape)
    ref = _blob(rng, shape)
    _assert_matches_medpy(medpy_binary, pred, ref, _random_spacing(rng, ndim))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_matches_medpy_masks_touching_image_edge(medpy_binary, seed, ndim):
    rng = np.random.default_rng(2000 * ndim + seed)
    shape = _random_shape(rng, ndim)
    pred = _blob(rng, shape)
    ref = _blob(rng, shape)
    # Slabs along a random face of the image, plus a corner voxel.
    axis = int(rng.integers(ndim))
    side = [slice(None)] * ndim
    side[axis] = slice(0, 3) if rng.random() < 0.5 else slice(shape[axis] - 3, None)
    pred[tuple(side)] = True
    ref[(-1,) * ndim] = True
    _assert_matches_medpy(medpy_binary, pred, ref, _random_spacing(rng, ndim))
    # A mask covering the whole image.
    _assert_matches_medpy(medpy_binary, np.ones(shape, bool), ref, _random_spacing(rng, ndim))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_matches_medpy_single_voxels(medpy_binary, seed, ndim):
    rng = np.random.default_rng(3000 * ndim + seed)
    shape = _random_shape(rng, ndim)
    spacing = _random_spacing(rng, ndim)
    single_a = np.zeros(shape, bool)
    single_b = np.zeros(shape, bool)
    # Include corners of the image among the positions.
    corner = tuple(0 if rng.random() < 0.5 else n - 1 for n in shape)
    single_a[corner] = True
    single_b[tuple(int(rng.integers(n)) for n in shape)] = True
    blob = _blob(rng, shape)
    _assert_matches_medpy(medpy_binary, single_a, single_b, spacing)
    _assert_matches_medpy(medpy_binary, single_a, blob, spacing)
    _assert_matches_medpy(medpy_binary, blob, single_b, spacing)
    _assert_matches_medpy(medpy_binary, single_a, single_a.copy(), spacing)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_matches_medpy_masks_with_holes(medpy_binary, seed, ndim):
    rng = np.random.default_rng(4000 * ndim + seed)
    shape = (40, 44) if ndim == 2 else (26, 30, 24)
    center = [n / 2 + rng.uniform(-2, 2) for n in shape]
    outer = min(shape) / 2 - 2
    # Shells (balls with a ball-shaped hole) and a blob with punched holes.
    pred = _ball(shape, center, outer) & ~_ball(shape, center, outer * rng.uniform(0.3, 0.7))
    shifted = [c + rng.uniform(-3, 3) for c in center]
    ref = _ball(shape, shifted, outer * 0.9) & ~_ball(shape, shifted, outer * 0.4)
    holes = rng.random(shape) < 0.02
    ref_with_holes = ref & ~holes
    _assert_matches_medpy(medpy_binary, pred, ref, _random_spacing(rng, ndim))
    _assert_matches_medpy(medpy_binary, pred, ref_with_holes, _random_spacing(rng, ndim))


def test_matches_medpy_on_non_contiguous_views(medpy_binary):
    rng = np.random.default_rng(7)
    pred = _blob(rng, (30, 28, 26))
    ref = _blob(rng, (30, 28, 26))
    spacing = (0.7, 1.9, 1.3)
    views = (pred.transpose(2, 0, 1)[::-1, :, ::2], ref.transpose(2, 0, 1)[::-1, :, ::2])
    spacing_view = (spacing[2], spacing[0], 2 * spacing[1])
    contiguous = tuple(np.ascontiguousarray(v) for v in views)
    _assert_matches_medpy(medpy_binary, *contiguous, spacing_view)
    assert assd(*views, spacing_view) == assd(*contiguous, spacing_view)
    assert hd95(*views, spacing_view) == hd95(*contiguous, spacing_view)


# -------------------------------------------------------------- empty masks
EMPTY_SHAPE = (10, 20)
EMPTY_SPACING = (0.5, 2.0)
DIAGONAL = math.sqrt((10 * 0.5) ** 2 + (20 * 2.0) ** 2)  # sqrt(25 + 1600)


def _empty_case(which: str) -> tuple[np.ndarray, np.ndarray]:
    empty = np.zeros(EMPTY_SHAPE, bool)
    some = np.zeros(EMPTY_SHAPE, bool)
    some[3:6, 4:9] = True
    return {"both": (empty, empty.copy()), "pred": (empty, some), "ref": (some, empty)}[which]


@pytest.mark.parametrize(
    ("which", "expected_dice", "expected_distance"),
    [("both", 1.0, 0.0), ("pred", 0.0, DIAGONAL), ("ref", 0.0, DIAGONAL)],
)
def test_empty_masks(which, expected_dice, expected_distance):
    pred, ref = _empty_case(which)
    assert dice(pred, ref) == expected_dice
    assert assd(pred, ref, EMPTY_SPACING) == pytest.approx(expected_distance, abs=1e-12)
    assert hd95(pred, ref, EMPTY_SPACING) == pytest.approx(expected_distance, abs=1e-12)


def test_empty_structures_in_evaluate_volume():
    pred = np.zeros(EMPTY_SHAPE, np.int16)
    ref = np.zeros(EMPTY_SHAPE, np.int16)
    pred[2:5, 2:6] = 1  # "a": only in pred
    ref[6:9, 10:15] = 2  # "b": only in ref
    pred[0:2, 15:19] = 3  # "c": in both, identical
    ref[0:2, 15:19] = 3
    result = evaluate_volume(pred, ref, EMPTY_SPACING, {"a": 1, "b": 2, "c": 3, "d": 4})
    assert result["a"] == {"dice": 0.0, "assd_mm": pytest.approx(DIAGONAL), "hd95_mm": pytest.approx(DIAGONAL)}
    assert result["b"] == {"dice": 0.0, "assd_mm": pytest.approx(DIAGONAL), "hd95_mm": pytest.approx(DIAGONAL)}
    assert result["c"] == {"dice": 1.0, "assd_mm": 0.0, "hd95_mm": 0.0}
    assert result["d"] == {"dice": 1.0, "assd_mm": 0.0, "hd95_mm": 0.0}
    for metrics in result.values():
        assert all(math.isfinite(v) for v in metrics.values())


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize("func", [dice, assd, hd95])
def test_shape_mismatch_names_both_shapes(func):
    args = (np.zeros((3, 4), bool), np.zeros((4, 3), bool))
    if func is not dice:
        args += ((1.0, 1.0),)
    with pytest.raises(ValueError, match=r"same shape.*\(3, 4\).*\(4, 3\)"):
        func(*args)


@pytest.mark.parametrize("func", [assd, hd95])
@pytest.mark.parametrize(
    ("spacing", "pattern"),
    [
        ((1.0, 1.0), r"one value per axis.*2 value.*3-D"),
        ((1.0, 1.0, 1.0, 1.0), r"one value per axis.*4 value.*3-D"),
        ((1.0, 0.0, 1.0), r"greater than 0"),
        ((1.0, -2.0, 1.0), r"greater than 0"),
        ((1.0, float("nan"), 1.0), r"finite"),
        (1.0, r"sequence of mm per axis"),
    ],
)
def test_bad_spacing(func, spacing, pattern):
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:3, 1:3] = True
    with pytest.raises(ValueError, match=pattern):
        func(mask, mask, spacing)


def test_bad_spacing_is_rejected_even_for_empty_masks():
    empty = np.zeros((4, 5), bool)
    with pytest.raises(ValueError, match="greater than 0"):
        assd(empty, empty, (1.0, 0.0))


def test_evaluate_volume_errors():
    vol = np.zeros((4, 5, 6), np.uint8)
    with pytest.raises(ValueError, match=r"same shape.*\(4, 5, 6\).*\(4, 5, 7\)"):
        evaluate_volume(vol, np.zeros((4, 5, 7), np.uint8), (1, 1, 1), {"a": 1})
    with pytest.raises(ValueError, match="one value per axis"):
        evaluate_volume(vol, vol, (1, 1), {"a": 1})
    with pytest.raises(ValueError, match="greater than 0"):
        evaluate_volume(vol, vol, (1, 1, 0), {"a": 1})
    with pytest.raises(ValueError, match="nonzero"):
        evaluate_volume(vol, vol, (1, 1, 1), {"background": 0})
    with pytest.raises(ValueError, match="integer"):
        evaluate_volume(vol, vol, (1, 1, 1), {"a": 1.5})
    with pytest.raises(ValueError, match="at least one structure"):
        evaluate_volume(vol, vol, (1, 1, 1), {})
    with pytest.raises(TypeError, match="integer label volume"):
        evaluate_volume(vol.astype(np.float32), vol, (1, 1, 1), {"a": 1})


# --------------------------------------------------------- evaluate_volume
def _label_volumes(rng: np.random.Generator):
    shape = (28, 32, 24)
    labels = {"LV": 500, "RV": 600, "LA": 420, "AO": 820, "absent": 205}
    ref = np.zeros(shape, np.int16)
    pred = np.zeros(shape, np.int16)
    for value in (500, 600, 420, 820):
        center = [rng.uniform(6, n - 6) for n in shape]
        radius = rng.uniform(3, 7)
        ref[_ball(shape, center, radius)] = value
        moved = [c + rng.uniform(-2, 2) for c in center]
        pred[_ball(shape, moved, radius * rng.uniform(0.8, 1.2))] = value
    pred[_blob(rng, shape) & (rng.random(shape) < 0.05)] = 600  # scattered false positives
    return pred, ref, labels


@pytest.mark.parametrize("seed", range(3))
def test_evaluate_volume_equals_per_structure_calls(seed):
    rng = np.random.default_rng(seed)
    pred, ref, labels = _label_volumes(rng)
    spacing = _random_spacing(rng, 3)
    result = evaluate_volume(pred, ref, spacing, labels)
    assert list(result) == list(labels)
    for name, value in labels.items():
        p, r = pred == value, ref == value
        assert result[name] == {
            "dice": dice(p, r),
            "assd_mm": assd(p, r, spacing),
            "hd95_mm": hd95(p, r, spacing),
        }
        assert all(type(v) is float for v in result[name].values())
    assert result["absent"] == {"dice": 1.0, "assd_mm": 0.0, "hd95_mm": 0.0}


def test_evaluate_volume_matches_medpy(medpy_binary):
    rng = np.random.default_rng(11)
    pred, ref, labels = _label_volumes(rng)
    spacing = (0.8, 1.1, 2.5)
    result = evaluate_volume(pred, ref, spacing, labels)
    for name, value in labels.items():
        p, r = pred == value, ref == value
        if p.any() and r.any():
            assert result[name]["dice"] == pytest.approx(medpy_binary.dc(p, r), abs=TOL)
            assert result[name]["assd_mm"] == pytest.approx(
                medpy_binary.assd(p, r, voxelspacing=spacing), abs=TOL
            )
            assert result[name]["hd95_mm"] == pytest.approx(
                medpy_binary.hd95(p, r, voxelspacing=spacing), abs=TOL
            )


def test_mean_over_structures():
    result = {
        "a": {"dice": 0.5, "assd_mm": 1.0, "hd95_mm": 4.0},
        "b": {"dice": 1.0, "assd_mm": 3.0, "hd95_mm": 8.0},
    }
    assert mean_over_structures(result) == {"dice": 0.75, "assd_mm": 2.0, "hd95_mm": 6.0}
    with pytest.raises(ValueError, match="no structures"):
        mean_over_structures({})


@pytest.mark.parametrize("share", [math.inf, 0.0], ids=["shell-search", "distance-transform"])
@pytest.mark.parametrize("seed", range(4))
def test_boundary_and_nearest_distances_equal_scipys_erosion_and_distance_transform(seed, share, monkeypatch):
    import benchmark.metrics
    from benchmark.metrics import SHELL_VOXELS, _boundary, _distances_to

    monkeypatch.setattr(benchmark.metrics, "EDT_SHARE", share)  # each of the two exact paths

    rng = np.random.default_rng(seed)
    shape = (30, 26, 22)
    mask = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) > 0.3
    mask[:3, :3, :3] = True  # touches the image edge
    structure = ndimage.generate_binary_structure(3, 1)
    expected = mask & ~ndimage.binary_erosion(mask, structure, border_value=0)
    np.testing.assert_array_equal(_boundary(mask), expected)
    target = np.zeros(shape, bool)
    target[2:5, 2:5, 2:5] = True  # far from most query voxels: they need the k-d tree beyond the shell
    spacing = tuple(float(s) for s in rng.uniform(0.5, 2.0, 3))
    got = _distances_to(target, expected, spacing)
    reference = ndimage.distance_transform_edt(~target, sampling=spacing)[expected]
    assert (reference > SHELL_VOXELS * min(spacing)).any() and (reference <= SHELL_VOXELS * min(spacing)).any()
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_matches_medpy_on_noisy_predictions(medpy_binary, seed):
    """An untrained model's speckled masks: their boundaries exceed EDT_SHARE of the crop, so the distances come
    from the distance transform rather than the shell search."""
    from benchmark.metrics import EDT_SHARE, _boundary

    rng = np.random.default_rng(seed)
    shape = (28, 24, 12)
    pred = rng.random(shape) < 0.3
    ref = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) > 0.2
    assert _boundary(pred).sum() > EDT_SHARE * pred.size
    _assert_matches_medpy(medpy_binary, pred, ref, _random_spacing(rng, 3))
