"""Tests of the procedural cardiac phantom (``benchmark.phantom``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmark.phantom import (  # noqa: E402
    CLASSES,
    MODALITIES,
    TISSUES,
    PhantomCase,
    generate_case,
)

EXPECTED = {
    "mr": {"spacing": (1.6, 1.6, 3.2), "shape": (112, 112, 40)},
    "ct": {"spacing": (1.6, 1.6, 2.0), "shape": (112, 112, 64)},
}


@pytest.fixture(scope="module")
def cases():
    """Two subjects per modality, with tissue maps (generated once)."""
    return {(m, s): generate_case(m, s, return_tissues=True) for m in MODALITIES for s in (0, 1)}


def test_public_constants():
    assert CLASSES == {"MYO": 1, "LAC": 2, "LVC": 3, "AA": 4}
    assert MODALITIES == ("mr", "ct")
    assert {"fat", "myocardium", "blood", "bone", "lung"} <= set(TISSUES)


@pytest.mark.parametrize("modality", MODALITIES)
def test_deterministic(modality, cases):
    a = generate_case(modality, 0)
    b, _ = cases[(modality, 0)]
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.spacing == b.spacing
    c, _ = cases[(modality, 1)]
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.label, c.label)


def test_modalities_are_different_subjects(cases):
    mr, _ = cases[("mr", 0)]
    ct, _ = cases[("ct", 0)]
    assert mr.image.shape != ct.image.shape or not np.array_equal(mr.label, ct.label)


@pytest.mark.parametrize("modality", MODALITIES)
def test_shapes_dtypes_spacing(modality, cases):
    case, tissues = cases[(modality, 0)]
    assert isinstance(case, PhantomCase)
    assert case.image.dtype == np.float32
    assert case.label.dtype == np.uint8
    assert case.image.shape == case.label.shape == tissues.shape
    assert case.image.shape == EXPECTED[modality]["shape"]
    assert tissues.dtype == np.uint8
    assert len(case.spacing) == 3
    assert all(isinstance(v, float) for v in case.spacing)
    assert case.spacing == pytest.approx(EXPECTED[modality]["spacing"])
    assert np.isfinite(case.image).all()


def test_mr_has_thicker_slices(cases):
    mr, _ = cases[("mr", 0)]
    ct, _ = cases[("ct", 0)]
    assert mr.spacing[2] > ct.spacing[2]
    # both cover about the same axial extent
    assert mr.image.shape[2] * mr.spacing[2] == pytest.approx(ct.image.shape[2] * ct.spacing[2], rel=0.1)


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("seed", (0, 1))
def test_labels(modality, seed, cases):
    case, _ = cases[(modality, seed)]
    values = set(np.unique(case.label).tolist())
    assert values <= {0, 1, 2, 3, 4}
    assert values >= {1, 2, 3, 4}, "all four structures must be present"
    # many slices show at least one structure, those through the heart several
    per_slice = [set(np.unique(case.label[:, :, k]).tolist()) - {0} for k in range(case.label.shape[2])]
    assert sum(bool(s) for s in per_slice) >= 0.5 * len(per_slice)
    assert max(len(s) for s in per_slice) >= 3


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("seed", (0, 1))
def test_myocardium_encloses_cavity(modality, seed, cases):
    case, _ = cases[(modality, seed)]
    lab = case.label
    lvc = lab == CLASSES["LVC"]
    myo = lab == CLASSES["MYO"]
    assert lvc.sum() > 0 and myo.sum() > 0
    # no LV cavity voxel touches background through a face
    padded = np.pad(lab, 1, constant_values=0)
    core = (slice(1, -1),) * 3
    for axis in range(3):
        for shift in (-1, 1):
            neighbour = np.roll(padded, shift, axis=axis)[core]
            assert not np.any(lvc & (neighbour == 0))
    # the one-voxel shell around the cavity is (almost) all myocardium
    shell = ndimage.binary_dilation(lvc) & ~lvc
    assert (shell & myo).sum() / shell.sum() > 0.75
    assert not np.any(shell & (lab == 0))


@pytest.mark.parametrize("seed", (0, 1))
def test_distractor_blood_is_unlabelled(seed, cases):
    case, tissues = cases[("ct", seed)]
    blood = tissues == TISSUES["blood"]
    unlabelled_blood = blood & (case.label == 0)
    labelled_blood = blood & (case.label > 0)
    # right heart, pulmonary artery, descending aorta, veins ...
    assert unlabelled_blood.sum() > 0.3 * blood.sum()
    # ... rendered as bright as the labelled blood pools
    mean_unlabelled = case.image[unlabelled_blood].mean()
    mean_labelled = case.image[labelled_blood].mean()
    assert mean_unlabelled > 150.0
    assert abs(mean_unlabelled - mean_labelled) < 60.0
    # voxels brighter than most of the labelled blood exist outside the labels
    threshold = np.percentile(case.image[labelled_blood], 25)
    bright_unlabelled = (case.image > threshold) & (case.label == 0) & blood
    assert bright_unlabelled.sum() > 1000


@pytest.mark.parametrize("modality", MODALITIES)
def test_labels_are_consistent_with_tissues(modality, cases):
    case, tissues = cases[(modality, 0)]
    myo = case.label == CLASSES["MYO"]
    assert np.all(tissues[myo] == TISSUES["myocardium"])
    pools = np.isin(case.label, [CLASSES["LAC"], CLASSES["LVC"], CLASSES["AA"]])
    assert np.all(tissues[pools] == TISSUES["blood"])


def _tissue_mean(case, tissues, name):
    mask = tissues == TISSUES[name]
    # interior voxels only, away from partial-volume borders
    mask = ndimage.binary_erosion(mask, iterations=1)
    return float(case.image[mask].mean())


@pytest.mark.parametrize("seed", (0, 1))
def test_contrast_inversions(seed, cases):
    mr, mr_t = cases[("mr", seed)]
    ct, ct_t = cases[("ct", seed)]
    # fat vs myocardium flips
    assert _tissue_mean(mr, mr_t, "fat") > _tissue_mean(mr, mr_t, "myocardium")
    assert _tissue_mean(ct, ct_t, "fat") < _tissue_mean(ct, ct_t, "myocardium")
    # bone is dark in MR and the brightest tissue in CT
    assert _tissue_mean(mr, mr_t, "bone") < _tissue_mean(mr, mr_t, "soft")
    assert _tissue_mean(ct, ct_t, "bone") > _tissue_mean(ct, ct_t, "blood")
    # blood is bright in both
    assert _tissue_mean(mr, mr_t, "blood") > _tissue_mean(mr, mr_t, "myocardium")
    assert _tissue_mean(ct, ct_t, "blood") > _tissue_mean(ct, ct_t, "myocardium")
    # CT is in Hounsfield-like units
    assert _tissue_mean(ct, ct_t, "lung") < -500
    assert -250 < _tissue_mean(ct, ct_t, "fat") < 0


def test_bad_modality():
    with pytest.raises(ValueError, match="mr") as info:
        generate_case("pet", 0)
    assert "ct" in str(info.value)


def test_negative_seed_rejected():
    with pytest.raises(ValueError):
        generate_case("ct", -1)
