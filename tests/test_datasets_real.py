"""The real-dataset adapters read files written in each public format by independent writers."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest
from realdata_files import (
    BTCV_TO_CLASS,
    MMWHS_TO_CLASS,
    TESTS_2D,
    write_chaos_btcv,
    write_mmwhs,
    write_png,
    write_release,
)

import benchmark
from benchmark.cache import PreprocessSettings, cache_key, prepare
from benchmark.errors import DataError, UsageError

REPO_SPLITS = benchmark.registry.REPO_ROOT / "datasets"
benchmark.registry.discover(kinds=("datasets",))
CHAOS = sys.modules[benchmark.registry.DATASETS.get("chaos-btcv").__module__]


def split_ids(name: str) -> dict:
    return json.loads((REPO_SPLITS / name).read_text())


def mapped_counts(raw: np.ndarray, mapping: dict[int, int]) -> list[int]:
    counts = [0] * 5
    for value, n in zip(*np.unique(raw, return_counts=True)):
        counts[mapping.get(int(value), 0)] += int(n)
    return counts


@pytest.fixture(scope="module")
def mmwhs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmwhs")
    written = write_mmwhs(root)
    # the release's stray 421 (left atrium) in one MR label file
    path = root / "mr_train" / "mr_train_1002_label.nii.gz"
    img = nib.load(str(path))
    label = np.asanyarray(img.dataobj).copy()
    label[label == 420] = 421
    nib.save(nib.Nifti1Image(label, img.affine), str(path))
    return root, written


@pytest.fixture(scope="module")
def chaos_btcv_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaosbtcv")
    split = split_ids("chaos_btcv.split.json")
    written = write_chaos_btcv(root, mr_ids=split["mr"]["train"] + split["mr"]["test"],
                               ct_ids=split["ct"]["train"] + split["ct"]["test"])
    return root, written


# -- MM-WHS -------------------------------------------------------------------------------------------------
def test_mmwhs_split_is_the_literature_split():
    adapter = benchmark.get_dataset("mmwhs", root="/nonexistent")
    assert adapter.cases("ct", "test") == ["1003", "1008", "1014", "1019"]
    assert adapter.cases("mr", "test") == ["1007", "1009", "1018", "1019"]
    for m in ("ct", "mr"):
        assert len(adapter.cases(m, "train")) == 16
        assert sorted(adapter.cases(m, "train") + adapter.cases(m, "test")) == [str(i) for i in range(1001, 1021)]


def test_mmwhs_needs_a_root():
    with pytest.raises(UsageError, match="--data-root"):
        benchmark.get_dataset("mmwhs")


def test_mmwhs_labels_orientation_and_spacing(mmwhs_root):
    root, written = mmwhs_root
    adapter = benchmark.get_dataset("mmwhs", root=root)
    ct = adapter.load_case("ct", "1003")
    image, raw, _ = written[("ct", "1003")]
    # stored LPS (axes run R->L, A->P, I->S): the canonical RAS array flips the first two axes
    assert np.array_equal(ct.image, image[::-1, ::-1, :]) and ct.image.dtype == np.float32
    assert ct.spacing == pytest.approx((0.8, 0.7, 1.5))
    expected = np.vectorize(lambda v: MMWHS_TO_CLASS.get(int(v), 0))(raw[::-1, ::-1, :])
    assert np.array_equal(ct.label, expected)

    mr = adapter.load_case("mr", "1005")
    image, raw, _ = written[("mr", "1005")]
    # stored sagittal-like (axes run A->P, S->I, L->R): RAS needs a permutation and three flips
    assert np.array_equal(mr.image, np.transpose(image, (2, 0, 1))[::-1, ::-1, ::-1])
    assert mr.spacing == pytest.approx((2.0, 1.2, 0.9))


def test_mmwhs_class_counts_equal_the_raw_files_after_mapping(mmwhs_root):
    root, _ = mmwhs_root
    adapter = benchmark.get_dataset("mmwhs", root=root)
    for modality, case in [("ct", "1001"), ("mr", "1002"), ("mr", "1019")]:
        raw = np.asanyarray(nib.load(str(root / f"{modality}_train" / f"{modality}_train_{case}_label.nii.gz"))
                            .dataobj)
        loaded = adapter.load_case(modality, case).label
        assert np.bincount(loaded.ravel(), minlength=5).tolist() == mapped_counts(raw, MMWHS_TO_CLASS)
        assert (loaded == 2).sum() > 0  # LAC present, including the stray 421 of mr 1002


def test_mmwhs_unknown_case_and_missing_files(mmwhs_root, tmp_path):
    root, _ = mmwhs_root
    adapter = benchmark.get_dataset("mmwhs", root=root)
    with pytest.raises(DataError, match="no ct case '2001'"):
        adapter.load_case("ct", "2001")
    empty = benchmark.get_dataset("mmwhs", root=tmp_path)
    with pytest.raises(DataError, match=r"ct_train_1001_image\.nii\.gz: the file is missing.*"
                                        r"ct_train_1001_label\.nii\.gz: the file is missing"):
        empty.load_case("ct", "1001")


@pytest.mark.parametrize("name", ["mmwhs", "chaos-btcv"])
def test_a_case_outside_the_split_is_refused_naming_the_split_file(name, tmp_path):
    adapter = benchmark.get_dataset(name, root=tmp_path)
    split_file = str(adapter.split_path()).replace(".", r"\.")
    with pytest.raises(DataError, match=rf"^{name} has no ct case '9999' in its split file {split_file}\.$"):
        adapter.load_case("ct", "9999")
    with pytest.raises(UsageError, match=f"Dataset '{name}' has no modality 'pet'"):
        adapter.load_case("pet", adapter.split_cases("ct")[0])


def test_mmwhs_files_in_one_folder(tmp_path):
    write_mmwhs(tmp_path, ids=[1001], modalities=("ct",))
    for p in (tmp_path / "ct_train").iterdir():
        p.rename(tmp_path / p.name)
    case = benchmark.get_dataset("mmwhs", root=tmp_path).load_case("ct", "1001")
    assert case.image.shape == (14, 12, 10)


def test_mmwhs_cache_is_cropped_coronal_and_normalised_per_volume(mmwhs_root, tmp_path):
    root, _ = mmwhs_root
    adapter = benchmark.get_dataset("mmwhs", root=root)
    cache = prepare(adapter, PreprocessSettings(size=16), root=tmp_path, workers=1, log=lambda s: None)
    assert cache.index["settings"] == {"size": 16, "clip_low": 0.0, "clip_high": 99.0, "normalise": "volume",
                                       "crop": "body", "crop_fov_mm": [240.0, None, 240.0]}
    info = cache.case_info("ct", "1003")
    # coronal: the anterior-posterior axis (canonical axis 1, 12 voxels of 0.7 mm) is the slice axis; the body
    # crop drops the one-voxel dark border of the phantom on that axis
    assert info["crop"][1] == [1, 11] and info["stop"] - info["start"] == 10
    assert info["spacing"][0] == pytest.approx(0.7)
    images, labels, _ = cache.volume("ct", "1003")
    assert images.mean() == pytest.approx(0, abs=1e-4) and images.std() == pytest.approx(1, abs=1e-3)
    assert labels.max() == 4


def test_settings_resolution_keeps_the_synthetic_cache_key():
    synthetic = benchmark.get_dataset("synthetic-heart")
    # the synthetic caches' keys stay put unless the generator's parameters, the cache layout or a preprocessing
    # default change (dataset version 2 and cache format 2 set these)
    assert cache_key(synthetic, PreprocessSettings(size=64)) == "29ca2605d0afa4f6"
    assert cache_key(synthetic, PreprocessSettings(size=32)) == "07683bb177c3bec1"
    assert PreprocessSettings(size=64).resolve(synthetic) == PreprocessSettings(
        size=64, clip_low=0.5, clip_high=99.5, normalise="modality", crop="none")
    mmwhs = benchmark.get_dataset("mmwhs", root="/x")
    explicit = PreprocessSettings(size=64, normalise="modality").resolve(mmwhs)
    assert explicit.normalise == "modality" and explicit.crop == "body"  # the caller's choice wins
    assert cache_key(mmwhs, PreprocessSettings(size=64)) != cache_key(mmwhs, explicit)
    with pytest.raises(UsageError, match="Unknown normalisation 'sometimes'"):
        PreprocessSettings(normalise="sometimes").resolve()


# -- CHAOS / BTCV -------------------------------------------------------------------------------------------
def test_chaos_btcv_split_is_sifas():
    adapter = benchmark.get_dataset("chaos-btcv", root="/nonexistent")
    assert adapter.cases("mr", "test") == sorted(["1", "13", "32", "38"])
    assert adapter.cases("ct", "test") == ["0001", "0009", "0030", "0032", "0033", "0039"]
    assert len(adapter.cases("mr", "train")) == 16 and len(adapter.cases("ct", "train")) == 24


def test_png_masks(tmp_path):
    mask = np.array([[0, 63], [126, 252]], np.uint8)
    write_png(tmp_path / "m.png", mask)
    assert np.array_equal(CHAOS.read_png(tmp_path / "m.png"), mask)
    blob = (tmp_path / "m.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(blob[:40])
    with pytest.raises(DataError, match=r"cut\.png: (unreadable or truncated image|not a readable image)"):
        CHAOS.read_png(tmp_path / "cut.png")
    with pytest.raises(DataError, match=r"none\.png: the file is missing"):
        CHAOS.read_png(tmp_path / "none.png")


def test_chaos_colour_masks_are_read_only_when_grey(tmp_path):
    from PIL import Image

    grey = np.array([[0, 63], [126, 252]], np.uint8)
    Image.fromarray(np.stack([grey, grey, grey], axis=-1)).save(tmp_path / "rgb.png")
    assert np.array_equal(CHAOS.read_png(tmp_path / "rgb.png"), grey)
    Image.fromarray(np.stack([grey, grey, grey[::-1]], axis=-1)).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour\.png: a colour mask; expected a grey-level label image"):
        CHAOS.read_png(tmp_path / "colour.png")


def test_chaos_slices_follow_patient_position_not_file_names(chaos_btcv_root):
    root, written = chaos_btcv_root
    truth = written[("mr", "1")]
    assert truth["names"] != sorted(truth["names"])  # the file names are shuffled against position
    case = benchmark.get_dataset("chaos-btcv", root=root).load_case("mr", "1")
    # DICOM (rows, cols) with rows running anterior->posterior and columns right->left, slices inferior->superior:
    # RAS+ axes are (columns reversed, rows reversed, slices)
    expected_image = np.transpose(truth["pixels"], (2, 1, 0))[::-1, ::-1, :]
    expected_label = np.transpose(truth["classes"], (2, 1, 0))[::-1, ::-1, :]
    assert np.array_equal(case.image, expected_image.astype(np.float32))
    assert np.array_equal(case.label, expected_label)
    assert case.spacing == pytest.approx((0.8, 0.9, 7.5))


def test_chaos_and_btcv_class_counts_equal_the_raw_files_after_mapping(chaos_btcv_root):
    root, written = chaos_btcv_root
    adapter = benchmark.get_dataset("chaos-btcv", root=root)
    chaos_map = {63: 1, 126: 2, 189: 3, 252: 4}
    mr = adapter.load_case("mr", "13").label
    assert np.bincount(mr.ravel(), minlength=5).tolist() == mapped_counts(written[("mr", "13")]["masks"], chaos_map)
    raw = np.asanyarray(nib.load(str(root / "BTCV" / "RawData" / "Training" / "label" / "label0009.nii.gz")).dataobj)
    ct = adapter.load_case("ct", "0009").label
    assert np.bincount(ct.ravel(), minlength=5).tolist() == mapped_counts(raw, BTCV_TO_CLASS)
    assert all(np.bincount(ct.ravel(), minlength=5)[1:] > 0)


def test_chaos_interpolated_mask_values_map_by_the_organisers_ranges(chaos_btcv_root, tmp_path):
    import shutil

    root, written = chaos_btcv_root
    shutil.copytree(root, tmp_path / "r")
    gt = min((tmp_path / "r").glob("**/MR/2/T2SPIR/Ground/*.png"))
    from PIL import Image

    mask = np.array(Image.open(gt))
    mask[0, 0], mask[0, 1] = 60, 245  # edge values of liver and spleen
    write_png(gt, mask)
    label = benchmark.get_dataset("chaos-btcv", root=tmp_path / "r").load_case("mr", "2").label
    counts = np.bincount(label.ravel(), minlength=5)
    base = np.bincount(written[("mr", "2")]["classes"].ravel(), minlength=5)
    assert counts[1] == base[1] + 1 and counts[4] == base[4] + 1


# -- the preprocessed 2D release ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmwhs2d")
    return root, write_release(root)


def test_2d_release_chains_slices_into_subjects_and_removes_test_subjects(release):
    root, subjects = release
    adapter = benchmark.get_dataset("mmwhs-2d", root=root)
    for m in ("ct", "mr"):
        train = adapter.cases(m, "train")
        assert len(train) == 3 and adapter.cases(m, "test") == TESTS_2D[m]
        loaded = [adapter.load_case(m, c) for c in train]
        # each chain is one training subject, its slices in volume order, whatever the list's order
        for sid in "abc":
            image, label = subjects[(m, sid)]
            assert sum(np.array_equal(c.image, image) and np.array_equal(c.label, label) for c in loaded) == 1
    notes = " ".join(adapter.notes())
    assert "removed 1 chains that are test subjects" in notes and "matching 1003" in notes and "matching 1007" in notes


def test_2d_release_test_volumes_are_flipped_into_the_training_orientation(release):
    root, subjects = release
    adapter = benchmark.get_dataset("mmwhs-2d", root=root)
    npz = adapter.load_case("ct", "1014")
    assert np.array_equal(npz.image, subjects[("ct", "1014")][0]) and npz.spacing == (1.0, 1.0, 1.0)
    assert np.array_equal(npz.label, subjects[("ct", "1014")][1])
    nii = adapter.load_case("ct", "1008")
    assert np.array_equal(nii.image, subjects[("ct", "1008")][0]) and nii.spacing == pytest.approx((1.2, 1.2, 1.5))
    raw = np.load(root / "test_mr" / "image_mr_1009.npz")["arr_1"]
    counts = np.bincount(adapter.load_case("mr", "1009").label.ravel(), minlength=5)
    assert counts.tolist() == mapped_counts(raw, {1: 1, 2: 2, 3: 3, 4: 4})


def test_2d_release_cases_are_the_chains_and_the_test_subjects(release):
    root, _ = release
    adapter = benchmark.get_dataset("mmwhs-2d", root=root)
    assert adapter.split_cases("ct") == TESTS_2D["ct"] + adapter.cases("ct", "train")
    for case_id in ("chain999", "1001"):
        with pytest.raises(DataError, match=rf"mmwhs-2d has no ct case '{case_id}' \(training chains and the "
                                            rf"split's test subjects\)"):
            adapter.load_case("ct", case_id)


def test_2d_release_single_matching_slices_are_removed_from_kept_chains(tmp_path):
    """A training chain that shares one slice with a test volume loses that slice and keeps the others."""
    subjects = write_release(tmp_path, leak=())
    a_image = subjects[("ct", "a")][0]
    test_image, test_label = subjects[("ct", "1019")]
    test_image = test_image.copy()
    test_image[:, :, 1] = a_image[:, :, 2]
    np.savez(tmp_path / "test_ct" / "image_ct_1019.npz", test_image[::-1, ::-1], test_label[::-1, ::-1])
    adapter = benchmark.get_dataset("mmwhs-2d", root=tmp_path)
    assert len(adapter.cases("ct", "train")) == 3
    assert "removed 0 chains that are test subjects and 1 other matching slices" in adapter.notes()[1]
    chains = [adapter.load_case("ct", c).image for c in adapter.cases("ct", "train")]
    kept_a = [c for c in chains if c.shape[2] == a_image.shape[2] - 1]
    assert len(kept_a) == 1 and np.array_equal(kept_a[0], np.delete(a_image, 2, axis=2))


def test_2d_release_with_a_corrupt_record_refuses_to_train(release, tmp_path):
    import shutil

    root, _ = release
    shutil.copytree(root, tmp_path / "r")
    victim = min((tmp_path / "r" / "ct_train_tfs").glob("*.tfrecords"))
    blob = bytearray(victim.read_bytes())
    blob[100] ^= 0x55
    victim.write_bytes(bytes(blob))
    adapter = benchmark.get_dataset("mmwhs-2d", root=tmp_path / "r")
    with pytest.raises(DataError, match=r"problem\(s\) in the training TFRecords, first: .*corrupt file.*validate"):
        adapter.cases("ct", "train")
