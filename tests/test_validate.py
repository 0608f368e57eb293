"""``python -m benchmark validate``: every fault of a dataset listed with its file; a summary when all is well."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from realdata_files import save_nifti, write_chaos_btcv, write_mmwhs, write_png
from test_datasets_real import write_release

import benchmark
from benchmark.cli import main
from benchmark.validate import validate

REPO_SPLITS = benchmark.registry.REPO_ROOT / "datasets"


@pytest.fixture(scope="module")
def good_mmwhs(tmp_path_factory):
    root = tmp_path_factory.mktemp("good-mmwhs")
    write_mmwhs(root)
    return root


def test_a_good_dataset_prints_the_summary_and_exits_0(good_mmwhs, capsys):
    assert main(["validate", "mmwhs", "--root", str(good_mmwhs), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines.pop(0) == "Validating mmwhs: 40 volumes with 1 process"
    assert lines[0].split() == ["modality", "split", "cases", "shape", "min", "shape", "max", "spacing", "mm", "min",
                                "spacing", "mm", "max", "MYO", "voxels", "LAC", "voxels", "LVC", "voxels", "AA",
                                "voxels"]
    rows = {tuple(line.split()[:3]) for line in lines[1:5]}
    assert rows == {("mr", "train", "16"), ("mr", "test", "4"), ("ct", "train", "16"), ("ct", "test", "4")}
    ct_test = next(line.split() for line in lines[1:5] if line.startswith("ct") and " test " in line)
    assert ct_test[3:7] == ["14x12x10", "14x12x10", "0.80x0.70x1.50", "0.80x0.70x1.50"]
    # 4 test volumes x 8 voxels of MYO (205) each, as written
    assert ct_test[7] == "32"
    assert "mmwhs: all 40 volumes passed" in out


def test_every_mmwhs_fault_is_listed_with_its_file(good_mmwhs, tmp_path, capsys):
    root = shutil.copytree(good_mmwhs, tmp_path / "broken")
    ct = root / "ct_train"
    (ct / "ct_train_1002_label.nii.gz").unlink()                                       # missing label
    blob = (ct / "ct_train_1004_image.nii.gz").read_bytes()
    (ct / "ct_train_1004_image.nii.gz").write_bytes(blob[: len(blob) * 2 // 3])       # truncated gzip
    (ct / "ct_train_1012_image.nii.gz").write_bytes(b"garbage" * 100)                 # not a NIfTI at all
    aff = np.asarray(nib.load(str(ct / "ct_train_1005_image.nii.gz")).affine)
    save_nifti(ct / "ct_train_1005_label.nii.gz", np.zeros((14, 12, 9), np.int16), aff)  # shape mismatch
    moved = aff.copy()
    moved[:3, 3] += 5.0
    save_nifti(ct / "ct_train_1006_label.nii.gz", np.zeros((14, 12, 10), np.int16), moved)  # affine mismatch
    bad = np.zeros((14, 12, 10), np.int16)
    bad[1, 1, 1], bad[2, 2, 2], bad[3, 3, 3] = 999, 77, 205
    save_nifti(ct / "ct_train_1010_label.nii.gz", bad, aff)                          # undocumented values
    nan = np.asarray(nib.load(str(ct / "ct_train_1011_image.nii.gz")).dataobj).astype(np.float32)
    nan[2, 2, 2] = np.nan
    save_nifti(ct / "ct_train_1011_image.nii.gz", nan, aff)                          # non-finite voxel
    shutil.copy(ct / "ct_train_1001_image.nii.gz", ct / "ct_train_1021_image.nii.gz")  # not in the split
    shutil.copy(ct / "ct_train_1001_label.nii.gz", ct / "ct_train_1021_label.nii.gz")

    assert main(["validate", "mmwhs", "--root", str(root), "--workers", "2"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()[1:]
    expected = [
        (ct / "ct_train_1002_label.nii.gz", "the file is missing"),
        (ct / "ct_train_1004_image.nii.gz", "the file is truncated"),
        (ct / "ct_train_1012_image.nii.gz", "not a gzip file"),
        (ct / "ct_train_1005_label.nii.gz", "label shape (14, 12, 9) differs from the image's (14, 12, 10)"),
        (ct / "ct_train_1006_label.nii.gz", "its voxel-to-world affine differs from the image's"),
        (ct / "ct_train_1010_label.nii.gz", "label values 77, 999 are outside the documented set"),
        (ct / "ct_train_1011_image.nii.gz", "the image has 1 non-finite voxels"),
        (ct / "ct_train_1021_image.nii.gz", "subject ct 1021 is not in the split file"),
    ]
    for path, message in expected:
        assert any(line.startswith(f"{path}: ") and message in line for line in lines), (path, message)
    assert len(lines) == len(expected)
    assert "error: 8 problem(s) in mmwhs" in captured.err and "Traceback" not in captured.err


def test_prepare_refuses_a_broken_dataset_and_leaves_no_cache(good_mmwhs, tmp_path, capsys):
    root = shutil.copytree(good_mmwhs, tmp_path / "broken")
    (root / "mr_train" / "mr_train_1007_label.nii.gz").unlink()
    cache = tmp_path / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FSUDA_CACHE", str(cache))
        assert main(["prepare", "mmwhs", "--root", str(root), "--workers", "1"]) == 1
    assert "mr_train_1007_label.nii.gz: the file is missing" in capsys.readouterr().err
    assert not any(p.is_dir() and not p.name.startswith(".") for p in (cache / "mmwhs").iterdir())
    assert list((cache / "mmwhs").iterdir()) == []


def test_validate_needs_a_root_and_a_known_dataset(capsys):
    assert main(["validate", "mmwhs"]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert main(["validate", "mmwsh", "--root", "/x"]) == 2
    assert "Did you mean 'mmwhs'" in capsys.readouterr().err


def test_a_missing_root_is_one_problem(tmp_path):
    report = validate(benchmark.get_dataset("mmwhs", root=tmp_path / "nowhere"), workers=1, log=lambda s: None)
    layout = benchmark.get_dataset("mmwhs", root="/x").layout
    missing = f"{tmp_path / 'nowhere'}: the dataset folder does not exist (expected layout: {layout})."
    assert report.problems == [missing]


def test_second_copies_and_subjects_outside_the_split_are_found_without_reading(good_mmwhs, tmp_path):
    root = shutil.copytree(good_mmwhs, tmp_path / "r")
    shutil.copy(root / "mr_train" / "mr_train_1003_label.nii.gz", root / "mr_train_1003_label.nii.gz")
    shutil.copy(root / "ct_train" / "ct_train_1001_label.nii.gz", root / "ct_train" / "ct_train_1030_label.nii.gz")
    adapter = benchmark.get_dataset("mmwhs", root=root)
    assert adapter.check_files() == [
        f"{root / 'mr_train' / 'mr_train_1003_label.nii.gz'}: a second copy of mr_train_1003_label.nii.gz (also at "
        f"{root}); keep one.",
        f"{root / 'ct_train' / 'ct_train_1030_label.nii.gz'}: subject ct 1030 is not in the split file "
        f"{adapter.split_path()}.",
    ]


def test_every_chaos_btcv_fault_is_listed_with_its_file(tmp_path):
    split = json.loads((REPO_SPLITS / "chaos_btcv.split.json").read_text())
    root = tmp_path / "r"
    write_chaos_btcv(root, mr_ids=split["mr"]["train"] + split["mr"]["test"],
                     ct_ids=split["ct"]["train"] + split["ct"]["test"])
    mr = root / "CHAOS_Train_Sets" / "Train_Sets" / "MR"
    btcv = root / "BTCV" / "RawData" / "Training"
    dcms = sorted((mr / "2" / "T2SPIR" / "DICOM_anon").glob("*.dcm"))
    dcms[1].write_bytes(b"no dicom here")                                                  # unreadable DICOM
    pngs = sorted((mr / "3" / "T2SPIR" / "Ground").glob("*.png"))
    mask = np.array(Image.open(pngs[0]))
    mask[0, 0] = 100
    write_png(pngs[0], mask)                                                              # undocumented mask value
    gone = sorted((mr / "5" / "T2SPIR" / "Ground").glob("*.png"))[2]
    gone.unlink()                                                                         # a mask is missing
    blob = sorted((mr / "8" / "T2SPIR" / "Ground").glob("*.png"))[1]
    blob.write_bytes(blob.read_bytes()[:30])                                              # truncated PNG
    lab = btcv / "label" / "label0002.nii.gz"
    data = np.asanyarray(nib.load(str(lab)).dataobj).copy()
    data[0, 0, 0] = 20
    save_nifti(lab, data, nib.load(str(lab)).affine)                                     # BTCV value 20
    (btcv / "img" / "img0003.nii.gz").unlink()                                            # missing CT image
    shutil.copytree(mr / "2", mr / "40")                                                  # patient not in split

    report = validate(benchmark.get_dataset("chaos-btcv", root=root), workers=1, log=lambda s: None)
    expected = [
        (dcms[1], "unreadable DICOM file"),
        (pngs[0], "mask values [100] are outside the documented set"),
        (mr / "5" / "T2SPIR" / "Ground", f"DICOM files without a mask: ['{gone.stem}.dcm']"),
        (blob, "truncated"),
        (lab, "label values 20 are outside the documented set"),
        (btcv / "img" / "img0003.nii.gz", "the file is missing"),
        (mr / "40", "subject mr 40 is not in the split file"),
    ]
    for path, message in expected:
        assert any(p.startswith(f"{path}: ") and message in p for p in report.problems), (path, message)
    assert len(report.problems) == len(expected)  # patient 40 is reported, not read


def test_every_2d_release_fault_is_listed_with_its_file(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    write_release(root)
    records = sorted((root / "ct_train_tfs").glob("*.tfrecords"))
    blob = bytearray(records[0].read_bytes())
    blob[200] ^= 0xFF
    records[0].write_bytes(bytes(blob))                                                    # CRC failure
    records[1].write_bytes(records[1].read_bytes()[:-10])                                  # truncated record
    with open(root / "mr_train_list", "a") as f:
        f.write("mr_train_tfs/mr_train_slice9999.tfrecords\n")                            # listed, not on disk
    np.savez(root / "test_ct" / "image_ct_1014.npz", np.zeros((4, 4, 2)))                  # no arr_1
    np.savez(root / "test_ct" / "image_ct_1019.npz", np.zeros((4, 4, 2)), np.zeros((4, 4, 3)))  # shape mismatch
    label = np.zeros((4, 4, 2))
    label[0, 0, 0] = 7
    np.savez(root / "test_mr" / "image_mr_1018.npz", np.zeros((4, 4, 2)), label)           # class index 7
    report = validate(benchmark.get_dataset("mmwhs-2d", root=root), workers=1, log=lambda s: None)
    expected = [
        (records[0], "corrupt file: the data of record 0 (byte 0) fails its CRC-32C check"),
        (records[1], "truncated file: record 0 (byte 0) declares"),
        (root / "mr_train_list", "mr_train_tfs/mr_train_slice9999.tfrecords does not exist"),
        (root / "test_ct" / "image_ct_1014.npz", "the archive has no array 'arr_1'"),
        (root / "test_ct" / "image_ct_1019.npz", "image shape (4, 4, 2) and label shape (4, 4, 3) differ"),
        (root / "test_mr" / "image_mr_1018.npz", "label values 7 are outside the documented set"),
    ]
    for path, message in expected:
        assert any(p.startswith(f"{path}") and message in p for p in report.problems), (path, message)
    assert len(report.problems) == len(expected), report.problems


def test_a_2d_release_test_volume_outside_the_split_is_reported(tmp_path):
    write_release(tmp_path)
    np.savez(tmp_path / "test_ct" / "image_ct_1099.npz", np.zeros((4, 4, 2)), np.zeros((4, 4, 2)))
    adapter = benchmark.get_dataset("mmwhs-2d", root=tmp_path)
    assert adapter.check_files() == [f"{tmp_path / 'test_ct' / 'image_ct_1099.npz'}: test subject ct 1099 is not in "
                                     f"the split file {adapter.split_path()}."]
