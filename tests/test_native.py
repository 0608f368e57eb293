"""Native-grid evaluation (protocol fsuda-v2): the inverse of the cache's preprocessing, `evaluate` and `predict`."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from realdata_files import permuted_affine, save_nifti, scanner_affine, write_chaos_btcv, write_mmwhs
from scipy import ndimage
from scipy.spatial import cKDTree

import benchmark
from benchmark import registry
from benchmark.cache import PreprocessSettings, prepare, preprocess_volume
from benchmark.cli import main
from benchmark.dataset import Case, DatasetAdapter
from benchmark.evaluate import evaluate_predictions
from benchmark.native import Grid, InverseMap, upsample_labels
from benchmark.presets import get_preset

registry.discover()
PAPER = get_preset("paper")["size"]


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """(N, H, W) labels as (N, C, H, W) scores."""
    return (labels[:, None] == np.arange(classes)[None, :, None, None]).astype(np.float32)


# --- the inverse map ----------------------------------------------------------------------------------------------
def test_resampling_the_foreground_box_equals_resampling_the_whole_slice():
    rng = np.random.default_rng(0)
    for _ in range(150):
        h, w = rng.integers(6, 40, size=2)
        out = tuple(int(v) for v in rng.integers(4, 100, size=2))
        scores = rng.normal(size=(5, h, w)).astype(np.float32)
        keep = np.zeros((h, w), bool)
        r, c = rng.integers(0, h), rng.integers(0, w)
        keep[r:r + rng.integers(1, h), c:c + rng.integers(1, w)] = True
        scores[0][~keep] += 8.0  # background wins outside a random box
        whole = F.interpolate(torch.from_numpy(scores)[None], size=out, mode="bilinear",
                              align_corners=False)[0].argmax(0).numpy()
        got = np.zeros(out, np.uint8)
        found = upsample_labels(scores, out)
        if found is not None:
            labels, (rows, cols) = found
            got[rows, cols] = labels
        np.testing.assert_array_equal(got, whole)


@pytest.mark.parametrize("affine", [scanner_affine(), permuted_affine(), np.diag([0.7, -1.1, -2.0, 1.0])])
def test_a_grid_undoes_its_reorientation_exactly(affine):
    stored = np.random.default_rng(1).integers(0, 5, size=(7, 5, 4)).astype(np.uint8)
    grid = Grid.of(affine, stored.shape, nib.orientations.io_orientation(affine))
    canonical = grid.to_canonical(stored)
    assert nib.aff2axcodes(affine @ nib.orientations.inv_ornt_aff(np.asarray(grid.ornt), stored.shape)) == tuple(
        "RAS")
    np.testing.assert_array_equal(grid.to_file(canonical), stored)
    assert Grid.from_dict(grid.to_dict()) == grid
    # the canonical spacing is the stored spacing permuted with the axes
    expected = np.sqrt((nib.as_closest_canonical(nib.Nifti1Image(stored, affine)).affine[:3, :3] ** 2).sum(0))
    np.testing.assert_allclose(grid.canonical_spacing, expected)


def test_the_inverse_map_places_slices_inside_the_crop_and_moves_the_axis_back():
    inverse = InverseMap(shape=(9, 20, 16), axis=1, crop=((2, 8), (5, 15), (0, 16)), size=4)
    scores = np.zeros((10, 3, 4, 4), np.float32)
    scores[:, 0] = 1.0
    scores[3, 2] = 2.0  # cache slice 3 is class 2 everywhere
    volume = inverse.labels(scores)
    expected = np.zeros((9, 20, 16), np.uint8)
    expected[2:8, 5 + 3, 0:16] = 2
    np.testing.assert_array_equal(volume, expected)
    with pytest.raises(ValueError, match="9 slices of scores for a case of 10"):
        inverse.labels(scores[:9])


def _round_trip(cache, adapter, modality: str, case_id: str):
    inverse, native, spacing = cache.native(modality, case_id)
    _, labels, _ = cache.volume(modality, case_id)
    classes = max(adapter.classes.values()) + 1
    back = inverse.labels(one_hot(labels, classes))
    case = adapter.load_case(modality, case_id)
    np.testing.assert_array_equal(native, case.label)  # the cache keeps the label file's canonical volume
    box = tuple(slice(lo, hi) for lo, hi in inverse.crop)
    outside = np.ones(back.shape, bool)
    outside[box] = False
    assert not back[outside].any()  # background outside the crop, exactly
    return back, case


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("modality", ["mr", "ct"])
def test_synthetic_heart_labels_survive_the_round_trip_at_the_paper_size(modality):
    adapter = registry.get_dataset("synthetic-heart", None)
    case = adapter.load_case(modality, adapter.cases(modality, "test")[0])
    settings = PreprocessSettings(size=PAPER).resolve(adapter)
    pre = preprocess_volume(case.image, case.spacing, adapter.slice_axis, settings, case.label, 5)
    inverse = InverseMap(shape=case.image.shape, axis=adapter.slice_axis, crop=tuple(map(tuple, pre["crop"])),
                         size=PAPER)
    back = inverse.labels(one_hot(pre["label"], 5))
    for name, c in adapter.classes.items():
        assert _dice(back == c, case.label == c) >= 0.98, name


def test_mmwhs_lps_and_permuted_nifti_round_trip(tmp_path):
    root = tmp_path / "mmwhs"
    write_mmwhs(root, shape=(30, 26, 22))  # CT files stored LPS, MR files with permuted axes
    adapter = registry.get_dataset("mmwhs", root)
    cache = prepare(adapter, PreprocessSettings(size=PAPER), root=tmp_path / "cache", workers=1, log=lambda s: None)
    for modality in ("ct", "mr"):
        for case_id in adapter.cases(modality, "test"):
            back, case = _round_trip(cache, adapter, modality, case_id)
            for name, c in adapter.classes.items():
                assert _dice(back == c, case.label == c) >= 0.98, (modality, case_id, name)
            # back in the label file's own voxel order
            raw = np.asanyarray(nib.load(str(adapter._path(modality, case_id, "label"))).dataobj)
            stored = case.grid.to_file(back)
            assert stored.shape == raw.shape
            assert _dice(stored == 1, raw == 205) >= 0.98


def test_chaos_dicom_series_and_btcv_round_trip(tmp_path):
    import json

    split = json.loads(registry.DATASETS.get("chaos-btcv").split_path().read_text())
    write_chaos_btcv(tmp_path / "data", mr_ids=split["mr"]["train"] + split["mr"]["test"],
                     ct_ids=split["ct"]["train"] + split["ct"]["test"])
    adapter = registry.get_dataset("chaos-btcv", tmp_path / "data")
    cache = prepare(adapter, PreprocessSettings(size=PAPER), root=tmp_path / "cache", workers=1, log=lambda s: None)
    for modality in ("mr", "ct"):
        case_id = adapter.cases(modality, "test")[0]
        back, case = _round_trip(cache, adapter, modality, case_id)
        for name, c in adapter.classes.items():
            if (case.label == c).any():
                assert _dice(back == c, case.label == c) >= 0.98, (modality, name)
        assert case.grid is not None and case.grid.to_file(back).shape == case.grid.shape


# --- evaluate -------------------------------------------------------------------------------------------------
class Boxes(DatasetAdapter):
    """Two test cases with one box per structure, stored LPS with anisotropic voxels."""

    name = "boxes"
    modalities = ("mr", "ct")
    classes = {"A": 1, "B": 2}
    needs_root = False
    split = {m: {"train": ["t0"], "test": ["c1", "c2"]} for m in ("mr", "ct")}
    affine = scanner_affine(spacing=(0.8, 0.7, 1.5))
    shape = (40, 36, 30)

    def load_case(self, modality: str, case_id: str) -> Case:
        stored = np.zeros(self.shape, np.uint8)
        stored[5:15, 6:20, 4:12] = 1
        stored[20:32, 10:30, 14:26] = 2 if case_id == "c1" else 0
        grid = Grid.of(self.affine, self.shape, nib.orientations.io_orientation(self.affine))
        label = np.ascontiguousarray(grid.to_canonical(stored))
        return Case(case_id, modality, np.zeros(label.shape, np.float32), label, grid.canonical_spacing, grid)

    def stored(self, case_id: str) -> np.ndarray:
        case = self.load_case("ct", case_id)
        return np.ascontiguousarray(case.grid.to_file(case.label))


def _write(folder, name, array, affine):
    save_nifti(folder / name, array.astype(np.uint8), affine)


def _surface_distances(pred: np.ndarray, ref: np.ndarray, spacing) -> np.ndarray:
    """Both directed boundary distances by scipy's erosion and a k-d tree over all boundary voxels."""
    def boundary(m):
        return m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1), border_value=0)

    sp = np.asarray(spacing)
    bp, br = np.argwhere(boundary(pred)) * sp, np.argwhere(boundary(ref)) * sp
    return np.concatenate([cKDTree(br).query(bp)[0], cKDTree(bp).query(br)[0]])


def test_evaluate_scores_the_references_perfectly_and_shifted_ones_analytically(tmp_path):
    adapter = Boxes()
    perfect, shifted = tmp_path / "perfect", tmp_path / "shifted"
    k = 3
    for case_id in ("c1", "c2"):
        ref = adapter.stored(case_id)
        _write(perfect, f"ct_{case_id}.nii.gz", ref, adapter.affine)
        _write(shifted, f"ct_{case_id}.nii.gz", np.roll(ref, k, axis=2), adapter.affine)
    result = evaluate_predictions(adapter, perfect, modality="ct")
    assert (result.per_volume["dice"] == 1).all() and (result.per_volume[["assd_mm", "hd95_mm"]] == 0).all().all()
    result = evaluate_predictions(adapter, shifted, modality="ct", out=tmp_path / "out")
    line = result.per_volume.set_index(["case", "structure"])
    ref = adapter.stored("c1")
    for name, c, depth in (("A", 1, 8), ("B", 2, 12)):  # box extents along stored axis 2
        assert line.loc[("ct_c1", name), "dice"] == pytest.approx(1 - k / depth)
        d = _surface_distances(np.roll(ref, k, axis=2) == c, ref == c, (0.8, 0.7, 1.5))
        assert d.max() == pytest.approx(k * 1.5)  # the Hausdorff distance of a shift is the shift
        assert line.loc[("ct_c1", name), "assd_mm"] == pytest.approx(d.mean(), rel=1e-9)
        assert line.loc[("ct_c1", name), "hd95_mm"] == pytest.approx(np.percentile(d, 95), rel=1e-9)
    # B is absent in case c2 from both: Dice 1 and distance 0 by the suite's convention
    assert line.loc[("ct_c2", "B"), "dice"] == 1 and line.loc[("ct_c2", "B"), "hd95_mm"] == 0
    written = (tmp_path / "out" / "per_volume.csv").read_text().splitlines()
    assert written[0] == "case,structure,dice,assd_mm,hd95_mm" and len(written) == 1 + 2 * 2
    assert (tmp_path / "out" / "summary.csv").read_text().splitlines()[-1].startswith("mean,")


def test_evaluate_names_every_faulty_file_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "get_dataset", lambda name, root=None: Boxes())
    folder = tmp_path / "preds"
    ref = Boxes().stored("c1")
    _write(folder, "ct_c1.nii.gz", ref[:, :, :-1], Boxes.affine)  # wrongly shaped
    _write(folder, "ct_c9.nii.gz", ref, Boxes.affine)  # extra; and ct_c2 is missing
    code = main(["evaluate", "--dataset", "boxes", "--predictions", str(folder), "--modality", "ct",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "3 problems" in err and "ct_c1.nii.gz: shape (40, 36, 29) differs from the reference label's (40, 36, 30)" \
        in err and "ct_c2.nii.gz: the prediction of test case c2 is missing" in err and "ct_c9.nii.gz: not a " \
        "prediction" in err
    assert not (tmp_path / "out").exists()


def test_evaluate_detects_mmwhs_raw_values_and_refuses_a_moved_affine(tmp_path, capsys):
    root = tmp_path / "mmwhs"
    write_mmwhs(root, shape=(30, 26, 22))
    adapter = registry.get_dataset("mmwhs", root)
    raw_folder, index_folder = tmp_path / "raw", tmp_path / "indices"
    for case_id in adapter.cases("ct", "test"):
        img = nib.load(str(adapter._path("ct", case_id, "label")))
        raw = np.asanyarray(img.dataobj)
        save_nifti(raw_folder / f"ct_{case_id}.nii.gz", raw, img.affine)
        case = adapter.load_case("ct", case_id)
        save_nifti(index_folder / f"ct_{case_id}.nii.gz", case.grid.to_file(case.label).astype(np.uint8), img.affine)
    for folder, said in ((raw_folder, "mmwhs raw label values (205 MYO, 420 LAC, 500 LVC, 820 AA; detected)"),
                         (index_folder, "class indices [0, 1, 2, 3, 4] (detected)")):
        result = evaluate_predictions(adapter, folder, modality="ct")
        assert result.label_values == said
        assert (result.per_volume["dice"] == 1).all()
    moved = adapter.cases("ct", "test")[0]
    img = nib.load(str(raw_folder / f"ct_{moved}.nii.gz"))
    affine = img.affine.copy()
    affine[0, 3] += 5.0
    save_nifti(raw_folder / f"ct_{moved}.nii.gz", np.asanyarray(img.dataobj), affine)
    code = main(["evaluate", "--dataset", "mmwhs", "--root", str(root), "--predictions", str(raw_folder),
                 "--modality", "ct", "--out", str(tmp_path / "o")])
    assert code == 1 and f"ct_{moved}.nii.gz: its voxel-to-world affine" in capsys.readouterr().err


def test_evaluate_publishes_an_external_row(tmp_path, capsys, monkeypatch):
    from benchmark.leaderboard import read_leaderboard
    from benchmark.protocol import PROTOCOL

    monkeypatch.setattr(benchmark, "get_dataset", lambda name, root=None: Boxes())
    folder = tmp_path / "preds"
    for case_id in ("c1", "c2"):
        _write(folder, f"ct_{case_id}.nii.gz", Boxes().stored(case_id), Boxes.affine)
    args = ["evaluate", "--dataset", "boxes", "--predictions", str(folder), "--modality", "ct", "--out",
            str(tmp_path / "o"), "--publish", "--name", "nnunet-2d", "--to", str(tmp_path / "boards")]
    assert main(args) == 2 and "--shots K" in capsys.readouterr().err
    assert main(args + ["--shots", "4"]) == 0
    board = read_leaderboard(tmp_path / "boards" / "boxes" / "mr2ct.csv")
    row = board.iloc[0]
    assert (row["method"], row["shots"], row["preset"], row["protocol"], row["dice_mean"]) == (
        "external:nnunet-2d", 4, "external", PROTOCOL, 1.0)


# --- predict --------------------------------------------------------------------------------------------------
def test_predict_writes_the_input_grid(tmp_path, cache_dir, capsys):
    from helpers import finished_run

    (spec, record), = finished_run(tmp_path / "run", cache_dir, ["source_only"], shots=[1], directions=["mr2ct"],
                                   seeds=[0])
    adapter = registry.get_dataset("synthetic-heart", None)
    case = adapter.load_case("ct", adapter.cases("ct", "test")[0])
    affine = permuted_affine(spacing=(1.6, 1.6, 2.0))
    grid = Grid.of(affine, (0, 0, 0), nib.orientations.io_orientation(affine))
    stored = np.ascontiguousarray(grid.to_file(case.image))  # the same scan stored with permuted, flipped axes
    save_nifti(tmp_path / "scan.nii.gz", stored.astype(np.float32), affine)
    code = main(["predict", "--trial", spec.trial_id, "--out", str(tmp_path / "run"), "--input",
                 str(tmp_path / "scan.nii.gz"), "--output", str(tmp_path / "seg" / "scan_seg.nii.gz")])
    assert code == 0, capsys.readouterr().err
    written = nib.load(str(tmp_path / "seg" / "scan_seg.nii.gz"))
    assert written.shape == stored.shape
    np.testing.assert_allclose(written.affine, affine)
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1, 2, 3, 4}
    assert "voxels per structure" in capsys.readouterr().out


def test_mmwhs_2d_release_test_volumes_round_trip_to_their_stored_flip(tmp_path):
    from realdata_files import write_release

    subjects = write_release(tmp_path / "release")
    adapter = registry.get_dataset("mmwhs-2d", tmp_path / "release")
    cache = prepare(adapter, PreprocessSettings(size=PAPER), root=tmp_path / "cache", workers=1, log=lambda s: None)
    for case_id in ("1008", "1014"):  # a NIfTI and an npz test volume
        back, case = _round_trip(cache, adapter, "ct", case_id)
        np.testing.assert_array_equal(back, case.label)
        stored = subjects[("ct", case_id)][1][::-1, ::-1]  # as the release stores it
        np.testing.assert_array_equal(case.grid.to_file(back), stored)


def test_predict_then_evaluate_gives_the_trials_own_scores(tmp_path, cache_dir):
    """The external path (predict each test scan, score the folder) reproduces the trial's native-grid scores."""
    from helpers import finished_run

    from benchmark.predict import predict_scan

    (spec, record), = finished_run(tmp_path / "run", cache_dir, ["oracle"], shots=[1], directions=["mr2ct"],
                                   seeds=[0])
    adapter = registry.get_dataset("synthetic-heart", None)
    folder = tmp_path / "predictions"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FSUDA_CACHE", cache_dir)
        for case_id in adapter.cases("ct", "test"):
            case = adapter.load_case("ct", case_id)
            grid = Grid.from_spacing(case.spacing, case.image.shape)
            save_nifti(tmp_path / "scans" / f"{case_id}.nii.gz", case.image, grid.matrix)
            predict_scan(tmp_path / "run", tmp_path / "scans" / f"{case_id}.nii.gz",
                         folder / f"ct_{case_id}.nii.gz", trial_id=spec.trial_id)
    result = evaluate_predictions(adapter, folder, modality="ct")
    assert result.label_values == "class indices (the dataset's files use them too)"
    for theirs, ours in zip(record["volumes"], result.volumes):
        assert theirs["case"] == ours["case"]
        for name, metrics in theirs["metrics"].items():
            for key, value in metrics.items():
                assert ours["metrics"][name][key] == pytest.approx(value, rel=1e-9, abs=1e-9), (ours["case"], name)
