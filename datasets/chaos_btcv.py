"""``chaos-btcv``: the abdominal cross-modality track, CHAOS T2-SPIR MR and BTCV (Synapse) CT."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchmark import formats
from benchmark.dataset import CaseArrays, FileDatasetAdapter, LabelCoding
from benchmark.errors import DataError
from benchmark.native import Grid
from benchmark.registry import register_dataset

from ._shared import natural_key

CLASSES = {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}

#: CHAOS MR ground truth (PNG): liver 63, right kidney 126, left kidney 189, spleen 252. The organisers define
#: each organ by a range around its value, (55, 70], (110, 135], (175, 200], (240, 255], which the masks'
#: few interpolated edge values fall into; any other non-zero value is a fault of the file.
CHAOS_RANGES = {1: (55, 70), 2: (110, 135), 3: (175, 200), 4: (240, 255)}
CHAOS_MAP = {v: cls for cls, (lo, hi) in CHAOS_RANGES.items() for v in range(lo + 1, hi + 1)}
CHAOS_VALUES = (0, *CHAOS_MAP)
_CHAOS_SET = set(CHAOS_VALUES)

#: BTCV labels 0..13: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 oesophagus, 6 liver, 7 stomach,
#: 8 aorta, 9 inferior vena cava, 10 portal and splenic veins, 11 pancreas, 12/13 right/left adrenal gland.
BTCV_MAP = {1: 4, 2: 2, 3: 3, 6: 1}
BTCV_VALUES = tuple(range(14))

_BTCV_FILE = re.compile(r"^(img|label)(\d{4})\.nii(\.gz)?$")


def read_png(path: str | Path) -> np.ndarray:
    """A CHAOS ground-truth mask as a 2D integer array (an RGB/RGBA file is accepted when its colour channels
    agree); a missing, unreadable or colour file raises a :class:`DataError` naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: the file is missing.")
    try:
        with Image.open(path) as im:
            im.load()
            array = np.array(im)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image file (not a PNG, or truncated).") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({formats.reason(exc)}).") from None
    if array.ndim == 3:
        colour = array[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
            raise DataError(f"{path}: a colour mask; expected a grey-level label image.")
        array = colour[..., 0]
    return array


def _checked_mask(path: Path, rows_columns: tuple[int, ...] | None, problems: list[str]) -> np.ndarray | None:
    """One mask, checked against its DICOM slice's (rows, columns) where known and against the documented values."""
    try:
        mask = read_png(path)
    except DataError as exc:
        problems.append(str(exc))
        return None
    if rows_columns is not None and mask.shape != rows_columns:
        problems.append(f"{path}: mask size {mask.shape} differs from its DICOM slice's {rows_columns} (rows, "
                        f"columns).")
        return None
    bad = sorted(set(np.unique(mask).tolist()) - _CHAOS_SET)
    if bad:
        problems.append(f"{path}: mask values {bad[:20]} are outside the documented set (0 and (55, 70], "
                        f"(110, 135], (175, 200], (240, 255]).")
        return None
    return mask


@register_dataset("chaos-btcv")
class ChaosBTCV(FileDatasetAdapter):
    """Abdominal track: CHAOS T2-SPIR MR <-> BTCV CT; liver, right kidney, left kidney, spleen; axial slices.

    Data: CHAOS (Kavur et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ segmentation", MedIA
    69, 2021), the 20 MR training patients' T2-SPIR series (DICOM) with their PNG ground truth; BTCV (Landman et
    al., "MICCAI multi-atlas labeling beyond the cranial vault - workshop and challenge", 2015), the 30 labelled
    CT volumes (NIfTI).

    MR: the slices of a series are ordered by ``ImagePositionPatient`` projected on the slice normal, never by file
    name; each PNG mask belongs to the DICOM file with the same name stem (or, when the names differ throughout,
    to the DICOM file at the same place in file-name order, the organisers' pairing). Mask values map by the
    organisers' ranges (see :data:`CHAOS_RANGES`). CT: labels 1 spleen, 2 right kidney, 3 left kidney and
    6 liver are kept; the other organs are background.

    Both are reoriented to RAS+ from their headers and sliced axially (``slice_axis = 2``). Preprocessing: a
    label-free crop to the body (the largest component above an Otsu threshold), clipping at the 0.5th and 99.5th
    percentiles and per-volume normalisation.

    Split (``chaos_btcv.split.json``): SIFA's test volumes (Chen et al., IEEE TMI 2020, given by its authors in
    cchen-cc/SIFA issue #34): CHAOS MR 1, 13, 32, 38 and BTCV CT 1, 9, 30, 32, 33, 39; the rest train. Case IDs
    are the CHAOS patient folder names (``"1"``, ``"13"``) and the BTCV file numbers (``"0001"``).
    """

    version = "1"
    modalities = ("mr", "ct")
    classes: ClassVar[dict[str, int]] = dict(CLASSES)
    split_file = "chaos_btcv.split.json"
    citation = ("Kavur et al., CHAOS Challenge, MedIA 69:101950, 2021; Landman et al., MICCAI Multi-Atlas Labeling "
                "Beyond the Cranial Vault - Workshop and Challenge, 2015.")
    licence = "CHAOS: CC BY-SA 4.0; BTCV: Synapse terms of use (registration required). Obtain both yourself."
    homepage = "https://chaos.grand-challenge.org/ and https://www.synapse.org/#!Synapse:syn3193805"
    layout = ("ROOT/Train_Sets/MR/<patient>/T2SPIR/DICOM_anon/*.dcm and .../T2SPIR/Ground/*.png (CHAOS, also one "
              "or two folders deeper), and ROOT/img/img0001.nii.gz with ROOT/label/label0001.nii.gz (BTCV, also "
              "ROOT/<folder>/img or ROOT/<folder>/Training/img)")
    preprocessing: ClassVar[dict[str, Any]] = {"crop": "body", "normalise": "volume"}

    # -- where the files are -----------------------------------------------------------------------------------
    @cached_property
    def chaos_dir(self) -> Path:
        """The CHAOS ``Train_Sets/MR`` folder."""
        found = self._first([self.root / "Train_Sets" / "MR", *self.root.glob("*/Train_Sets/MR"),
                             *self.root.glob("*/*/Train_Sets/MR")])
        return found or self.root / "Train_Sets" / "MR"

    @cached_property
    def btcv_dir(self) -> Path:
        """The BTCV folder holding ``img/`` and ``label/``."""
        found = self._first([self.root / "img", *self.root.glob("*/img"), *self.root.glob("*/Training/img"),
                             *self.root.glob("*/*/Training/img")])
        return found.parent if found else self.root

    @staticmethod
    def _first(candidates: list[Path]) -> Path | None:
        for path in candidates:
            if path.is_dir():
                return path
        return None

    def subjects_on_disk(self, modality: str) -> dict[str, Path]:
        if modality == "mr":
            if not self.chaos_dir.is_dir():
                return {}
            return {p.name: p for p in sorted(self.chaos_dir.iterdir()) if p.is_dir() and p.name.isdigit()}
        out: dict[str, Path] = {}
        for folder in (self.btcv_dir / "img", self.btcv_dir / "label"):
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                m = _BTCV_FILE.match(path.name)
                if m:
                    out.setdefault(m.group(2), path)
        return out

    def _btcv_path(self, kind: str, case_id: str) -> Path:
        for suffix in (".nii.gz", ".nii"):
            path = self.btcv_dir / kind / f"{kind}{case_id}{suffix}"
            if path.exists():
                return path
        return self.btcv_dir / kind / f"{kind}{case_id}.nii.gz"

    def label_coding(self, modality: str) -> LabelCoding:
        """CHAOS MR masks write each organ at its nominal value (63, 126, 189, 252); BTCV CT at its organ number."""
        if modality == "mr":
            return LabelCoding(CHAOS_MAP, CHAOS_VALUES, {1: 63, 2: 126, 3: 189, 4: 252})
        return LabelCoding(BTCV_MAP, BTCV_VALUES, {cls: raw for raw, cls in BTCV_MAP.items()})

    # -- reading -------------------------------------------------------------------------------------------
    def read_files(self, modality: str, case_id: str, problems: list[str]) -> CaseArrays | None:
        if modality == "mr":
            return self._read_chaos(case_id, problems)
        image_path = self._btcv_path("img", case_id)
        read = formats.read_nifti_pair(image_path, self._btcv_path("label", case_id), mapping=BTCV_MAP,
                                       allowed=BTCV_VALUES, problems=problems)
        if read is None:
            return None
        image, label, spacing, grid = read
        return CaseArrays(image, label, spacing, image_path, grid)

    def _read_chaos(self, case_id: str, problems: list[str]) -> CaseArrays | None:
        folder = self.chaos_dir / case_id / "T2SPIR"
        dcm_dir, gt_dir = folder / "DICOM_anon", folder / "Ground"
        dcms = sorted(dcm_dir.glob("*.dcm"), key=natural_key) if dcm_dir.is_dir() else []
        pngs = sorted(gt_dir.glob("*.png"), key=natural_key) if gt_dir.is_dir() else []
        if not dcms:
            problems.append(f"{dcm_dir}: no DICOM files (*.dcm) for CHAOS patient {case_id}.")
        if not pngs:
            problems.append(f"{gt_dir}: no ground-truth masks (*.png) for CHAOS patient {case_id}.")
        if not dcms or not pngs:
            return None
        by_stem = {p.stem: p for p in pngs}
        if len(pngs) == len(dcms) and all(d.stem in by_stem for d in dcms):
            masks = [by_stem[d.stem] for d in dcms]
        elif len(pngs) == len(dcms) and not any(d.stem in by_stem for d in dcms):
            masks = pngs  # names differ throughout: pair in file-name order
        else:
            stems = {d.stem for d in dcms}
            extra = [p.name for p in pngs if p.stem not in stems][:5]
            lacking = [d.name for d in dcms if d.stem not in by_stem][:5]
            problems.append(f"{gt_dir}: {len(pngs)} masks for {len(dcms)} DICOM slices in {dcm_dir.name}; masks "
                            f"without a DICOM file: {extra or 'none'}; DICOM files without a mask: "
                            f"{lacking or 'none'}.")
            return None
        series = formats.read_dicom_series(dcms, problems=problems)
        rows_columns = None if series is None else series.volume.shape[1::-1]
        planes = [_checked_mask(path, rows_columns, problems) for path in masks]
        if series is None or any(p is None for p in planes):
            return None
        raw = np.stack([planes[k].T for k in series.order], axis=-1)
        label = formats.map_labels(raw, CHAOS_MAP, CHAOS_VALUES, str(gt_dir), problems,
                                   described="0 and (55, 70], (110, 135], (175, 200], (240, 255]")
        if label is None:
            return None
        ornt = formats.canonical_orientation(series.affine)
        image, _, spacing = formats.to_canonical(series.volume, series.affine, ornt)
        label, _, _ = formats.to_canonical(label, series.affine, ornt)
        return CaseArrays(image, label, spacing, folder, Grid.of(series.affine, series.volume.shape, ornt))
