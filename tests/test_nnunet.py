"""Any nnU-Net v2 raw folder as a track (``nnunet``, ``nnunet:PATH``), its frozen split, and AMOS on top of it."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest
from realdata_files import (
    AMOS_LABELS,
    permuted_affine,
    save_nifti,
    scanner_affine,
    write_amos,
    write_dataset_json,
    write_nnunet,
    write_nnunet_case,
)

import benchmark
from benchmark.cli import main
from benchmark.errors import DataError, UnknownNameError, UsageError

benchmark.registry.discover(kinds=("datasets",))
TRACK = sys.modules[f"{sys.modules[benchmark.registry.DATASETS.get('nnunet').__module__].__package__}.nnunet_track"]
CT_AFFINE = scanner_affine()         # stored LPS: RAS+ flips the first two axes; spacing (0.8, 0.7, 1.5)
MR_AFFINE = permuted_affine()        # sagittal-like: RAS+ permutes the axes; spacing (2.0, 1.2, 0.9)
LABELS = {"background": 0, "liver": 1, "right kidney": 2, "spleen": 3, "tumour": 4}
BY_ID = {"modalities": {"ct": {"id_range": [1, 99]}, "mr": {"id_pattern": r"case_1\d\d"}},
         "classes": {"liver": "liver", "spleen": 3}, "slice_axis": "axial"}
BY_CHANNEL = {"modalities": {"ct": {"channel": "CT"}, "mr": {"channel": "MR"}}}


def by_id_cases() -> dict[str, int]:
    return {**{f"case_{i:03d}": 0 for i in range(1, 7)}, **{f"case_{i}": 0 for i in range(101, 106)}}


def expected_split(cases: list[str], seed=0, fraction=0.2) -> list[str]:
    """The documented rule, computed here independently: the ceil(20%) cases of smallest SHA-256('<seed>:<id>')."""
    k = math.ceil(round(fraction * len(cases), 6))
    return sorted(sorted(cases, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())[:k])


@pytest.fixture(scope="module")
def by_id(tmp_path_factory):
    """One channel; CT cases by an ID range, MR cases by a pattern; classes liver and spleen (by value)."""
    root = tmp_path_factory.mktemp("nnunet-by-id") / "Dataset901_Toy"
    affines = {0: CT_AFFINE}
    written = write_nnunet(root, {c: 0 for c in by_id_cases() if c < "case_1"}, channels={0: "CT_or_MR"},
                           labels=LABELS, values=(1, 2, 3, 4), affines=affines, config=BY_ID)
    for i, case in enumerate(c for c in by_id_cases() if c >= "case_1"):
        image, label = write_nnunet_case(root, case, channel=0, values=(1, 2, 3, 4), affine=MR_AFFINE, seed=50 + i)
        written[case] = (image, label, MR_AFFINE)
    return root, written


@pytest.fixture(scope="module")
def by_channel(tmp_path_factory):
    """Two channels, CT and MR; each case has the file of its modality's channel only; every label is a class."""
    root = tmp_path_factory.mktemp("nnunet-by-channel") / "Dataset902_Toy"
    cases = {**{f"ct{i}": 0 for i in range(1, 6)}, **{f"mr{i}": 1 for i in range(1, 6)}}
    written = write_nnunet(root, cases, channels={0: "CT", 1: "MR"}, labels={"background": 0, "liver": 1, "kidney": 2},
                           values=(1, 2), affines={0: CT_AFFINE, 1: MR_AFFINE}, config=BY_CHANNEL)
    return root, written


def copy(root, tmp_path):
    """A fresh copy of a fixture folder, without the split an earlier test may have written there."""
    return shutil.copytree(root, tmp_path / root.name, ignore=shutil.ignore_patterns("*.split.json"))


# -- reading ------------------------------------------------------------------------------------------------------
def test_modalities_by_case_id_rule_load_with_exact_counts_and_spacing(by_id):
    root, written = by_id
    adapter = benchmark.get_dataset("nnunet", root)
    assert adapter.modalities == ("ct", "mr") and adapter.classes == {"liver": 1, "spleen": 2}
    assert adapter.split_cases("ct") and sorted(adapter.split_cases("ct")) == [f"case_{i:03d}" for i in range(1, 7)]
    assert sorted(adapter.split_cases("mr")) == [f"case_{i}" for i in range(101, 106)]
    ct = adapter.load_case("ct", "case_003")
    image, raw, _ = written["case_003"]
    assert np.array_equal(ct.image, image[::-1, ::-1, :]) and ct.spacing == pytest.approx((0.8, 0.7, 1.5))
    # phantom blocks: value 1 (liver) 2x2x2 voxels, value 3 (spleen) 2x2x2; 2 and 4 are not classes: background
    assert np.bincount(ct.label.ravel(), minlength=3).tolist() == [raw.size - 16, 8, 8]
    assert np.array_equal(ct.label, np.vectorize({1: 1, 3: 2}.get)(raw[::-1, ::-1, :], 0))
    mr = adapter.load_case("mr", "case_102")
    image, raw, _ = written["case_102"]
    assert np.array_equal(mr.image, np.transpose(image, (2, 0, 1))[::-1, ::-1, ::-1])
    assert mr.spacing == pytest.approx((2.0, 1.2, 0.9))
    assert np.bincount(mr.label.ravel(), minlength=3).tolist() == [raw.size - 16, 8, 8]
    coding = adapter.label_coding("ct")
    assert coding.to_class == {1: 1, 3: 2} and coding.from_class == {1: 1, 2: 3} and coding.allowed == (0, 1, 2, 3, 4)


def test_modalities_by_channel_name_load_with_exact_counts_and_spacing(by_channel):
    root, written = by_channel
    adapter = benchmark.get_dataset("nnunet", root)
    assert adapter.classes == {"liver": 1, "kidney": 2}  # default: every foreground label, in dataset.json's order
    assert sorted(adapter.split_cases("ct")) == [f"ct{i}" for i in range(1, 6)]
    assert sorted(adapter.split_cases("mr")) == [f"mr{i}" for i in range(1, 6)]
    for modality, case, spacing in (("ct", "ct2", (0.8, 0.7, 1.5)), ("mr", "mr4", (2.0, 1.2, 0.9))):
        loaded = adapter.load_case(modality, case)
        _, raw, _ = written[case]
        # value 1: 2x2x2 voxels, value 2: 3x2x2 voxels
        assert np.bincount(loaded.label.ravel(), minlength=3).tolist() == [raw.size - 20, 8, 12]
        assert loaded.spacing == pytest.approx(spacing)
    assert adapter.load_case("mr", "mr4").grid is not None


def test_a_label_value_dataset_json_does_not_declare_is_refused_naming_the_file(by_id, tmp_path):
    root = copy(by_id[0], tmp_path)
    path = root / "labelsTr" / "case_004.nii.gz"
    label = np.asanyarray(nib.load(str(path)).dataobj).copy()
    label[1, 1, 1] = 7
    save_nifti(path, label, CT_AFFINE)
    adapter = benchmark.get_dataset("nnunet", root)
    with pytest.raises(DataError, match=rf"^{path}: label values 7 are not declared in {root / 'dataset.json'} "
                                        rf"\(its labels: \[0, 1, 2, 3, 4\]\)\.$"):
        adapter.load_case("ct", "case_004")


def test_a_missing_0000_image_is_refused_naming_the_file(by_id, tmp_path):
    root = copy(by_id[0], tmp_path)
    missing = root / "imagesTr" / "case_002_0000.nii.gz"
    missing.unlink()
    adapter = benchmark.get_dataset("nnunet", root)
    assert "case_002" in adapter.split_cases("ct")  # its label makes it a case: the ID rule takes it
    with pytest.raises(DataError, match=rf"^{missing}: the file is missing\.$"):
        adapter.load_case("ct", "case_002")


def test_a_shape_mismatch_is_refused_naming_the_file(by_id, tmp_path):
    root = copy(by_id[0], tmp_path)
    path = root / "labelsTr" / "case_105.nii.gz"
    save_nifti(path, np.zeros((14, 12, 9), np.uint8), MR_AFFINE)
    with pytest.raises(DataError, match=rf"^{path}: label shape \(14, 12, 9\) differs from the image's \(14, 12, 10\) "
                                        rf"\(case_105_0000\.nii\.gz\)\.$"):
        benchmark.get_dataset("nnunet", root).load_case("mr", "case_105")


def test_validate_lists_every_fault_with_its_file(by_id, tmp_path, capsys):
    root = copy(by_id[0], tmp_path)
    (root / "imagesTr" / "case_001_0000.nii.gz").unlink()
    label = root / "labelsTr" / "case_101.nii.gz"
    data = np.asanyarray(nib.load(str(label)).dataobj).copy()
    data[0, 0, 0] = 9
    save_nifti(label, data, MR_AFFINE)
    save_nifti(root / "imagesTr" / "case_103_0000.nii.gz", np.full((14, 12, 10), np.nan, np.float32), MR_AFFINE)
    assert main(["validate", f"nnunet:{root}", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"{root / 'imagesTr' / 'case_001_0000.nii.gz'}: the file is missing." in out
    assert f"{label}: label values 9 are not declared in {root / 'dataset.json'}" in out
    assert f"{root / 'imagesTr' / 'case_103_0000.nii.gz'}: the image has 1680 non-finite voxels" in out


def test_misnamed_and_undeclared_channel_files_are_problems(by_channel, tmp_path):
    root = copy(by_channel[0], tmp_path)
    shutil.copy(root / "imagesTr" / "ct1_0000.nii.gz", root / "imagesTr" / "ct9.nii.gz")
    shutil.copy(root / "imagesTr" / "ct1_0000.nii.gz", root / "imagesTr" / "ct8_0003.nii.gz")
    shutil.copy(root / "labelsTr" / "ct1.nii.gz", root / "labelsTr" / "ct7.nii.gz")
    problems = benchmark.get_dataset("nnunet", root).check_files()
    assert problems == [
        f"{root / 'imagesTr' / 'ct8_0003.nii.gz'}: channel 3 is not in channel_names of {root / 'dataset.json'} "
        f"(0, 1).",
        f"{root / 'imagesTr' / 'ct9.nii.gz'}: an image not named <case>_<XXXX>.nii.gz (a case ID, '_' and a "
        f"four-digit channel index, as nnU-Net's raw format names images).",
        f"{root / 'labelsTr' / 'ct7.nii.gz'}: a label without an image of its case in {root / 'imagesTr'} "
        f"(expected ct7_<XXXX>.nii.gz)."]
    assert not (root / "fsuda.split.json").exists()  # never frozen from a faulty folder
    with pytest.raises(DataError, match=r"Not writing the split file .*3 problem\(s\) to fix first"):
        benchmark.get_dataset("nnunet", root).cases("ct", "train")


def test_an_id_range_reads_the_last_number_of_the_case_id():
    rule = TRACK.ModalityRule(0, id_range=(501, 600))
    assert rule.takes("amos_0507", set()) and not rule.takes("amos_0500", set())
    assert rule.takes("BraTS2021_00542", set()) and not rule.takes("site2_00042", set()) and not rule.takes("x", set())


# -- the configuration -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    (None, "fsuda.json: the file is missing; the nnunet adapter reads which cases are which modality"),
    ({"clases": ["liver"]}, r"fsuda.json: unknown keys \['clases'\]"),
    ({"modalities": {"ct": {}, "t2": {}}}, r"modality names \['t2'\] must be .* without a '2'"),
    ({"classes": ["kidneys"]}, r"fsuda.json: label 'kidneys' is not in .*dataset.json's labels"),
    ({"classes": {"liver": 9}}, "fsuda.json: label value 9 is not a foreground label"),
    ({"modalities": {"ct": {"channel": "CT"}, "mr": {"channel": "CT"}}},
     "modalities 'ct' and 'mr' read the same channel 0, so each needs a rule on case IDs"),
    ({"modalities": {"ct": {"channel": "PET"}, "mr": {"channel": "MR"}}}, "channel 'PET' is not in"),
    ({"modalities": {"ct": {"channel": 0, "id_range": [1, 2], "cases": ["a"]}, "mr": {"channel": 1}}},
     "gives id_range and cases; give at most one rule"),
    ({"field_of_view_mm": [240, 0, None]}, "field_of_view_mm must be three sizes"),
    ({"preprocessing": {"normalise": "sometimes"}}, "Unknown normalisation 'sometimes'"),
    ({"split": {"test_fraction": 1.5}}, "split test_fraction 1.5 must lie between 0 and 1"),
])
def test_configuration_faults_name_the_file(by_channel, tmp_path, change, message):
    root = copy(by_channel[0], tmp_path)
    if change is None:
        (root / "fsuda.json").unlink()
    else:
        (root / "fsuda.json").write_text(json.dumps({**BY_CHANNEL, **change}))
    with pytest.raises(DataError, match=message):
        benchmark.get_dataset("nnunet", root)


def test_dataset_json_faults_name_the_file(by_channel, tmp_path):
    root = copy(by_channel[0], tmp_path)
    write_dataset_json(root, channels={0: "CT"}, labels={"background": 0}, num_training=1, file_ending=".mha")
    with pytest.raises(DataError, match=rf"{root / 'dataset.json'}: file_ending '\.mha' is not supported"):
        benchmark.get_dataset("nnunet", root)
    (root / "dataset.json").write_text("{")
    with pytest.raises(DataError, match=rf"{root / 'dataset.json'}: not readable JSON"):
        benchmark.get_dataset("nnunet", root)


def test_options_set_the_track(by_channel, tmp_path):
    root = copy(by_channel[0], tmp_path)
    (root / "fsuda.json").write_text(json.dumps({**BY_CHANNEL, "classes": {"organ": "kidney"}, "slice_axis": "coronal",
                                                 "field_of_view_mm": [200, None, 150], "version": "3"}))
    adapter = benchmark.get_dataset("nnunet", root)
    assert (adapter.classes, adapter.slice_axis, adapter.version) == ({"organ": 1}, 1, "3")
    assert adapter.preprocessing == {"crop": "body", "normalise": "volume", "crop_fov_mm": (200.0, None, 150.0)}
    assert np.bincount(adapter.load_case("ct", "ct1").label.ravel()).tolist()[1] == 12
    other = benchmark.get_dataset("nnunet", by_channel[0])
    assert adapter.fingerprint() != other.fingerprint()  # the label mapping keys the cache
    again = pickle.loads(pickle.dumps(adapter))  # configured again from its folder
    assert (again.classes, again.slice_axis, again.root) == (adapter.classes, 1, root)
    assert pickle.loads(pickle.dumps(benchmark.get_dataset("amos", root))).classes["spleen"] == 4


def test_the_name_may_carry_the_folder(by_id, tmp_path):
    root = by_id[0]
    adapter = benchmark.get_dataset(f"nnunet:{root}")
    assert adapter.name == "nnunet" and adapter.root == root.resolve() and adapter.classes == {"liver": 1, "spleen": 2}
    assert benchmark.get_dataset(f"nnunet:{root}", root=str(root)).root == root.resolve()
    with pytest.raises(UsageError, match="names the folder .* but --root names"):
        benchmark.get_dataset(f"nnunet:{root}", root=tmp_path)
    with pytest.raises(UsageError, match="not of the form NAME or NAME:PATH"):
        benchmark.get_dataset("nnunet:")
    with pytest.raises(UnknownNameError, match="Unknown dataset 'nnunett'"):
        benchmark.get_dataset(f"nnunett:{root}")
    with pytest.raises(UsageError, match="--data-root"):
        benchmark.get_dataset("nnunet")


# -- the split ---------------------------------------------------------------------------------------------------
def test_the_split_is_written_once_by_the_rule_and_never_changes(by_id, tmp_path):
    root = copy(by_id[0], tmp_path)
    path = root / "fsuda.split.json"
    first = benchmark.get_dataset("nnunet", root).split
    written, stamp = path.read_bytes(), path.stat().st_mtime_ns
    cases = by_id_cases()
    ct = sorted(c for c in cases if c < "case_1")
    mr = sorted(c for c in cases if c >= "case_1")
    assert first["ct"]["test"] == expected_split(ct) and len(first["ct"]["test"]) == 2  # ceil(0.2 x 6)
    assert first["mr"]["test"] == expected_split(mr) and len(first["mr"]["test"]) == 1  # ceil(0.2 x 5)
    assert sorted(first["ct"]["train"] + first["ct"]["test"]) == ct
    data = json.loads(written)
    assert data["rule"] == {"seed": 0, "test_fraction": 0.2} and data["dataset"] == "nnunet"

    assert benchmark.get_dataset("nnunet", root).split == first  # a second run reads it
    assert path.read_bytes() == written and path.stat().st_mtime_ns == stamp

    (root / "notes.txt").write_text("unrelated")
    (root / "imagesTr" / "README.md").write_text("unrelated")
    (root / "imagesTr" / "._case_001_0000.nii.gz").write_bytes(b"\0" * 4096)  # macOS metadata beside a copied file
    (root / "imagesTs").mkdir()
    shutil.copy(root / "imagesTr" / "case_001_0000.nii.gz", root / "imagesTs" / "case_900_0000.nii.gz")
    again = benchmark.get_dataset("nnunet", root)
    assert again.split == first and again.check_files() == []
    assert path.read_bytes() == written and path.stat().st_mtime_ns == stamp
    path.unlink()  # rewritten from the same cases, the rule gives the same file
    assert benchmark.get_dataset("nnunet", root).split == first and path.read_bytes() == written


def test_a_scan_in_two_modalities_is_test_in_both():
    ids = [f"p{i}" for i in range(10)]
    paired = TRACK.seeded_split({"t1": ids, "t2": ids}, 0, 0.2)
    assert paired["t1"] == paired["t2"] and paired["t1"]["test"] == expected_split(ids)
    part = TRACK.seeded_split({"t1": ids, "t2": ids[:5]}, 0, 0.2)
    assert set(part["t1"]["test"]) >= set(part["t2"]["test"]) and not set(part["t2"]["train"]) & set(part["t1"]["test"])
    with pytest.raises(DataError, match="Modality 't2' has 1 case"):
        TRACK.seeded_split({"t1": ids, "t2": ids[:1]}, 0, 0.2)


def test_a_case_added_later_is_reported_not_split_in(by_id, tmp_path):
    root = copy(by_id[0], tmp_path)
    split = benchmark.get_dataset("nnunet", root).split
    write_nnunet_case(root, "case_007", channel=0, values=(1, 2, 3, 4), affine=CT_AFFINE)
    adapter = benchmark.get_dataset("nnunet", root)
    assert adapter.split == split
    assert adapter.check_files() == [f"{root / 'imagesTr' / 'case_007_0000.nii.gz'}: subject ct case_007 is not in "
                                     f"the split file {root / 'fsuda.split.json'}."]


def test_seed_fraction_and_file_of_the_split_are_options(by_id, tmp_path):
    root = copy(by_id[0], tmp_path)
    (root / "fsuda.json").write_text(json.dumps({**BY_ID, "split": {"seed": 7, "test_fraction": 0.5,
                                                                    "file": "mine.json"}}))
    split = benchmark.get_dataset("nnunet", root).split
    ct = sorted(c for c in by_id_cases() if c < "case_1")
    assert split["ct"]["test"] == expected_split(ct, seed=7, fraction=0.5) and (root / "mine.json").is_file()
    assert not (root / "fsuda.split.json").exists()


def test_validate_reports_the_split_written_then_read(by_id, tmp_path, capsys):
    root = copy(by_id[0], tmp_path)
    assert main(["validate", f"nnunet:{root}", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert (f"note: split written to {root / 'fsuda.split.json'} from seed 0 (test: 20% of each modality's cases, at "
            f"least one; it is never rewritten): ct 4 train / 2 test, mr 4 train / 1 test.") in out
    assert "nnunet:" in out and "all 11 volumes passed" in out
    (root / "fsuda.json").write_text(json.dumps({**BY_ID, "split": {"seed": 3}}))
    assert main(["validate", "nnunet", "--root", str(root), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"note: split read from {root / 'fsuda.split.json'}: ct 4 train / 2 test, mr 4 train / 1 test." in out
    assert "the split file was written with {'seed': 0, 'test_fraction': 0.2}, the configuration now says seed 3" in out


# -- AMOS --------------------------------------------------------------------------------------------------------
AMOS_CT, AMOS_MR = (1, 4, 5, 6, 7), (507, 508, 510, 514, 518)


@pytest.fixture(scope="module")
def amos(tmp_path_factory):
    root = tmp_path_factory.mktemp("amos") / "Dataset219_AMOS2022_postChallenge_task2"
    return root, write_amos(root, ct_ids=AMOS_CT, mr_ids=AMOS_MR)


def amos_counts(raw: np.ndarray, to_class: dict[int, int]) -> list[int]:
    counts = [0] * (max(to_class.values()) + 1)
    for value, n in zip(*np.unique(raw, return_counts=True)):
        counts[to_class.get(int(value), 0)] += int(n)
    return counts


def test_amos_modalities_come_from_the_case_ids(amos):
    root, _ = amos
    adapter = benchmark.get_dataset("amos", root)
    assert adapter.modalities == ("ct", "mr")
    assert adapter.classes == {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}  # as chaos-btcv
    assert sorted(adapter.split_cases("ct")) == [f"amos_{i:04d}" for i in AMOS_CT]
    assert sorted(adapter.split_cases("mr")) == [f"amos_{i:04d}" for i in AMOS_MR]
    assert adapter.cases("mr", "test") == expected_split([f"amos_{i:04d}" for i in AMOS_MR])
    assert adapter.split_path() == root / "amos.split.json" and adapter.check_files() == []
    assert benchmark.get_dataset("amos-13", root).split == adapter.split  # one split file for both tracks
    assert json.loads((root / "amos.split.json").read_text())["dataset"] == "amos"


@pytest.mark.parametrize(("name", "to_class"), [
    ("amos", {6: 1, 2: 2, 3: 3, 1: 4}),                 # AMOS 6 liver, 2 right kidney, 3 left kidney, 1 spleen
    ("amos-13", {v: v for v in range(1, 14)}),          # AMOS's own numbering; 14 bladder, 15 prostate/uterus out
])
def test_amos_organs_map_from_amos_values(amos, name, to_class):
    root, written = amos
    adapter = benchmark.get_dataset(name, root)
    assert len(adapter.classes) == len(to_class)
    for modality, case, spacing in (("ct", "amos_0005", (0.75, 0.75, 2.5)), ("mr", "amos_0510", (1.2, 1.1, 4.0))):
        loaded = adapter.load_case(modality, case)
        image, raw, _ = written[(modality, case)]
        assert np.array_equal(loaded.image, image[::-1, ::-1, :])
        assert np.bincount(loaded.label.ravel(), minlength=len(to_class) + 1).tolist() == amos_counts(raw, to_class)
        assert loaded.spacing == pytest.approx(spacing)
    liver = adapter.load_case("ct", "amos_0005").label == adapter.classes["liver"]
    assert liver.sum() == 12  # AMOS value 6, the sixth phantom block: 3x2x2 voxels
    coding = adapter.label_coding("mr")
    assert coding.to_class == to_class and coding.allowed == tuple(range(16))


def test_amos_refuses_a_dataset_json_that_numbers_the_organs_differently(amos, tmp_path):
    root = copy(amos[0], tmp_path)
    swapped = {**AMOS_LABELS, "spleen": 6, "liver": 1}
    write_dataset_json(root, channels={0: "either_CT_or_MR"}, labels=swapped, num_training=10)
    assert benchmark.get_dataset("amos", root).check_files() == [
        f"{root / 'dataset.json'}: label value 1 is named 'liver', not AMOS's organ for 1 (spleen); this conversion "
        f"numbers the labels differently.",
        f"{root / 'dataset.json'}: label value 6 is named 'spleen', not AMOS's organ for 6 (liver); this conversion "
        f"numbers the labels differently."]


def test_amos_label_values_beyond_15_are_refused(amos, tmp_path):
    root = copy(amos[0], tmp_path)
    path = root / "labelsTr" / "amos_0508.nii.gz"
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).copy()
    data[2, 2, 2] = 16
    save_nifti(path, data, img.affine)
    with pytest.raises(DataError, match=rf"^{path}: label values 16 are not declared in AMOS's label set \(0-15\)"):
        benchmark.get_dataset("amos", root).load_case("mr", "amos_0508")


@pytest.mark.parametrize("name", ["amos", "amos-13"])
def test_amos_describes_each_class_and_the_background(name):
    cls = benchmark.registry.DATASETS.get(name)
    texts = cls.class_descriptions()
    assert texts["version"] == "2" and texts["order"] == ["background", *sorted(cls.classes, key=cls.classes.get)]
    for sentences in texts["classes"].values():  # one caption per class, in CD-TG's standard form
        assert len(sentences) == 1 and sentences[0].startswith("A photo of the ") and " in which " in sentences[0]


def test_generic_descriptions_are_read_beside_the_data(by_id, tmp_path):
    root = copy(by_id[0], tmp_path)
    adapter = benchmark.get_dataset("nnunet", root)
    with pytest.raises(DataError, match=rf"{root / 'fsuda.classes.json'} is missing"):
        adapter.class_descriptions()
    texts = {k: [f"A sentence about the {k} here."] for k in ("background", "liver", "spleen")}
    (root / "fsuda.classes.json").write_text(json.dumps({"version": "2", "classes": texts}))
    assert adapter.class_descriptions()["order"] == ["background", "liver", "spleen"]


def test_the_readme_example_configures_a_folder(tmp_path):
    readme = (benchmark.registry.REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Any nnU-Net raw dataset"):]
    config = json.loads(section[section.index("```json") + 7:section.index("```\n")])
    cases = {"s_0001": 0, "s_0002": 0, "s_0501": 0, "s_0502": 0}
    write_nnunet(tmp_path, cases, channels={0: "CT_or_MR"}, labels=LABELS, values=(1, 2, 3, 4), affines={0: CT_AFFINE},
                 config=config)
    adapter = benchmark.get_dataset(f"nnunet:{tmp_path}")
    assert adapter.classes == {"liver": 1, "spleen": 2} and adapter.preprocessing["crop_fov_mm"] == (None, None, 240.0)
    assert sorted(adapter.split_cases("mr")) == ["s_0501", "s_0502"] and adapter.check_files() == []
