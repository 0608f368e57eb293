"""Tests of the procedural cardiac phantom (``benchmark.phantom``)."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmark  # noqa: E402
from benchmark.errors import DataError  # noqa: E402
from benchmark.phantom import (  # noqa: E402
    CLASSES,
    MODALITIES,
    TISSUE_INTENSITY,
    TISSUES,
    PhantomCase,
    generate_case,
    parameters,
    tables,
)

DIGESTS = Path(__file__).with_name("phantom_digests.json")

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
    # the myocardium is darker than soft tissue in MR, brighter in CT (enhanced, as in CT angiography)
    assert _tissue_mean(mr, mr_t, "myocardium") < _tissue_mean(mr, mr_t, "soft")
    assert _tissue_mean(ct, ct_t, "myocardium") > _tissue_mean(ct, ct_t, "soft")
    # blood is bright in both
    assert _tissue_mean(mr, mr_t, "blood") > _tissue_mean(mr, mr_t, "myocardium")
    assert _tissue_mean(ct, ct_t, "blood") > _tissue_mean(ct, ct_t, "myocardium")
    # CT is in Hounsfield-like units
    assert _tissue_mean(ct, ct_t, "lung") < -500
    assert -250 < _tissue_mean(ct, ct_t, "fat") < 0


#: Least (median blood pool - median myocardium) / window after the suite's percentile clipping. CT: in CT
#: angiography the iodinated pools lie 300-450 HU above the enhanced myocardium, in a window that reaches from air
#: (-1000 HU) to partial-volumed cortical bone (700-800 HU); a quarter asks for the bright end of that, which
#: version 1's blood (320 HU against 70) missed. MR (bSSFP): bright blood against dark myocardium spans much of
#: the window.
BLOOD_OVER_MYOCARDIUM = {"mr": 0.4, "ct": 0.25}


def _clipped_blood_myocardium_contrast(case) -> float:
    """Median blood-pool (LVC, LAC, AA) minus median MYO intensity, as a share of the window, on the image clipped
    at its 0.5th/99.5th percentiles as the slice cache's preprocessing does."""
    lo, hi = np.percentile(case.image, [0.5, 99.5])
    image = np.clip(case.image, lo, hi)
    pools = np.isin(case.label, [CLASSES["LVC"], CLASSES["LAC"], CLASSES["AA"]])
    myo = case.label == CLASSES["MYO"]
    return float((np.median(image[pools]) - np.median(image[myo])) / (hi - lo))


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("seed", (0, 1))
def test_blood_pools_stand_far_above_the_myocardium_in_the_clipped_window(modality, seed, cases):
    case, _ = cases[(modality, seed)]
    contrast = _clipped_blood_myocardium_contrast(case)
    assert contrast >= BLOOD_OVER_MYOCARDIUM[modality], (
        f"{modality}/{seed}: blood pools only {contrast:.3f} of the clipped window above the myocardium")


def test_bad_modality():
    with pytest.raises(ValueError, match="mr") as info:
        generate_case("pet", 0)
    assert "ct" in str(info.value)


def test_negative_seed_rejected():
    with pytest.raises(ValueError):
        generate_case("ct", -1)


# -- the generator's output is frozen: its fingerprints key the dataset's version --------------------------------
# The label maps are pure geometry and their digests are exact. The images and tissue maps come from float32 maths
# whose last bit depends on the SIMD code NumPy dispatches to on the machine (AVX2 or AVX-512 exp, sin, ...): a
# voxel on a threshold may land in the neighbouring tissue. They are compared by statistics with tolerances far
# below what any change to the generator moves.

#: relative tolerance of an image statistic, and the share of voxels whose tissue may differ
IMAGE_RTOL, TISSUE_SHARE = 1e-4, 1e-4


def _array_digest(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype.str} {a.shape}\n".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _image_stats(image: np.ndarray) -> dict:
    x = image.astype(np.float64)
    q = np.quantile(x, [0.01, 0.25, 0.5, 0.75, 0.99])
    return {"shape": list(image.shape), "dtype": image.dtype.str, "mean": float(x.mean()), "std": float(x.std()),
            "quantiles": [float(v) for v in q], "abs_mean": float(np.abs(x).mean())}


def _digests(case: PhantomCase, tissues: np.ndarray | None = None) -> dict:
    out = {"image": _image_stats(case.image), "label": _array_digest(case.label), "spacing": list(case.spacing)}
    if tissues is not None:
        values, counts = np.unique(tissues, return_counts=True)
        out["tissues"] = {"shape": list(tissues.shape), "counts": {str(int(v)): int(c) for v, c in zip(values, counts)}}
    return out


def _differs(field: str, want, have) -> bool:
    """Whether a stored fingerprint field and the current one disagree beyond the rounding tolerances."""
    if field == "image":
        return (have["shape"] != want["shape"] or have["dtype"] != want["dtype"] or not np.allclose(
            [have["mean"], have["std"], have["abs_mean"], *have["quantiles"]],
            [want["mean"], want["std"], want["abs_mean"], *want["quantiles"]], rtol=IMAGE_RTOL, atol=1e-6))
    if field == "tissues":
        if have["shape"] != want["shape"] or set(have["counts"]) != set(want["counts"]):
            return True
        moved = sum(abs(have["counts"][k] - want["counts"][k]) for k in want["counts"])
        return moved > TISSUE_SHARE * int(np.prod(want["shape"]))
    return have != want


def _current_digests(keys, cases) -> dict:
    """Fingerprints of the cases named ``modality/seed``; seeds 0 and 1 come from the fixture (with tissue maps)."""
    out = {}
    for key in keys:
        modality, seed = key.split("/")
        if (modality, int(seed)) in cases:
            out[key] = _digests(*cases[(modality, int(seed))])
        else:
            out[key] = _digests(generate_case(modality, int(seed)))
    return out


def test_fingerprints_tolerate_rounding_and_catch_changes(cases):
    case, tissues = cases[("ct", 0)]
    want = _digests(case, tissues)
    flipped = tissues.copy()
    flipped.reshape(-1)[:3] = (flipped.reshape(-1)[:3] + 1) % (tissues.max() + 1)  # three voxels on a threshold
    assert not _differs("tissues", want["tissues"], _digests(case, flipped)["tissues"])
    regrown = tissues.copy()
    regrown.reshape(-1)[: tissues.size // 100] = 0  # a structure painted 1 % differently
    assert _differs("tissues", want["tissues"], _digests(case, regrown)["tissues"])
    ulp = case.image.copy()
    ulp.reshape(-1)[:10] = np.nextafter(ulp.reshape(-1)[:10], np.float32(np.inf))
    assert not _differs("image", want["image"], _image_stats(ulp))
    brighter = case.image.copy()
    brighter[case.label == 1] *= np.float32(1.01)  # one tissue's contrast moved by 1 %
    assert _differs("image", want["image"], _image_stats(brighter))


def test_volumes_match_the_stored_digests(cases):
    stored = json.loads(DIGESTS.read_text())["cases"]
    assert {k.split("/")[0] for k in stored} == set(MODALITIES)
    assert len(stored) >= 8 and sum("tissues" in d for d in stored.values()) >= 2
    current = _current_digests(stored, cases)
    changed = [f"{key} ({', '.join(bad)})" for key, want in stored.items()
               if (bad := [f for f in want if f not in current[key] or _differs(f, want[f], current[key][f])])]
    assert not changed, (
        f"The synthetic-heart generator's output changed for {', '.join(changed)}: bump SyntheticHeart.version in "
        "datasets/synthetic_heart.py and rewrite tests/phantom_digests.json (python tests/test_phantom.py), so "
        "that no slice cache or finished trial made from the old volumes is reused."
    )


def test_parameters_are_the_tables_as_json():
    params = parameters()
    assert json.loads(json.dumps(params)) == params
    params["SPINE"]["marrow"] += 1.0  # a copy: the tables themselves stay as they are
    assert parameters()["SPINE"]["marrow"] == tables.SPINE["marrow"] != params["SPINE"]["marrow"]
    assert params["TISSUE_INTENSITY"] == TISSUE_INTENSITY and params["CLASSES"] == CLASSES
    assert params["STRUCT_LABEL"] == tables.STRUCT_LABEL.tolist()
    assert [d[0] for d in params["SUBJECT"]][:2] == ["angles", "scale"]
    assert "SPINE" in params and "WALLS" in params and "SLICES" in params


def test_documented_contrasts_hold_in_the_intensity_table():
    """The orderings the package docstring states in words, checked on the nominal means."""
    mr, ct = TISSUE_INTENSITY["mr"], TISSUE_INTENSITY["ct"]
    soft_tissues = ("soft", "liver", "myocardium")
    assert set(mr) == set(ct) == set(TISSUES)
    assert mr["blood"] == max(mr.values())
    assert all(mr["fat"] > mr[t] for t in soft_tissues)
    assert all(ct["fat"] < ct[t] for t in soft_tissues)
    assert ct["bone"] == max(ct.values())
    assert max(mr["lung"], mr["bone"]) < min(mr[t] for t in soft_tissues)
    assert min(mr[t] for t in soft_tissues) < mr["marrow"] < mr["blood"]
    assert mr["myocardium"] < min(mr["fat"], mr["soft"]) and ct["myocardium"] > max(ct["fat"], ct["soft"])
    # CT angiography: the blood pool enhanced to at least 250 HU, hundreds of HU above the myocardium
    assert ct["blood"] >= 250.0 and ct["blood"] - ct["myocardium"] >= 300.0


def test_slice_profiles_and_extent():
    for modality in MODALITIES:
        spec = tables.SLICES[modality]
        profile = spec["profile"]
        assert len(profile) % 2 == 1 and tuple(profile) == tuple(reversed(profile))
        assert sum(profile) == pytest.approx(1.0)
    mr, ct = tables.SLICES["mr"], tables.SLICES["ct"]
    assert len(mr["profile"]) > 1 and len(ct["profile"]) == 1
    assert mr["count"] * mr["spacing"] == pytest.approx(ct["count"] * ct["spacing"])


# -- the dataset adapter -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter():
    return benchmark.get_dataset("synthetic-heart")


def test_unknown_case_is_a_data_error(adapter):
    with pytest.raises(DataError, match=re.escape(
            "Dataset 'synthetic-heart' has no ct case '024'; its ct case IDs are '000' to '023'.")):
        adapter.load_case("ct", "024")
    with pytest.raises(DataError, match="has no mr case '7'"):
        adapter.load_case("mr", "7")


def test_load_case_is_the_generated_volume(adapter, cases):
    case = adapter.load_case("mr", "001")
    raw, _ = cases[("mr", 1)]
    np.testing.assert_array_equal(case.image, raw.image)
    np.testing.assert_array_equal(case.label, raw.label)
    assert case.spacing == raw.spacing and case.case_id == "001" and case.modality == "mr"


def test_fingerprint_follows_the_parameters_not_the_code(adapter, monkeypatch):
    key = adapter.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    module = sys.modules[type(adapter).__module__]
    assert "inspect" not in vars(module), "the fingerprint must not hash source code"
    monkeypatch.setitem(tables.SPINE, "canal_r", tables.SPINE["canal_r"] + 0.5)
    assert adapter.fingerprint() != key
    monkeypatch.undo()
    assert adapter.fingerprint() == key
    monkeypatch.setattr(module, "SUBJECTS", module.SUBJECTS + 1)
    assert adapter.fingerprint() != key


if __name__ == "__main__":  # rewrite phantom_digests.json from the current generator, after a version bump
    stored = json.loads(DIGESTS.read_text())
    fixture_cases = {(m, s): generate_case(m, s, return_tissues=True) for m in MODALITIES for s in (0, 1)}
    stored["cases"] = _current_digests(list(stored["cases"]), fixture_cases)
    DIGESTS.write_text(json.dumps(stored, indent=1) + "\n")
    print(f"wrote {DIGESTS}")
