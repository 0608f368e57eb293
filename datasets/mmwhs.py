"""``mmwhs``: the MM-WHS 2017 challenge's training volumes (CT and MR NIfTI files), cardiac track."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from benchmark.dataset import CaseArrays, FileDatasetAdapter, LabelCoding
from benchmark.registry import register_dataset

from ._shared import MMWHS_CLASSES, MMWHS_LABEL_MAP, MMWHS_RAW_LABELS, MMWHS_WRITE

_FILE = re.compile(r"^(ct|mr)_train_(\d{4})_(image|label)\.nii(\.gz)?$")


@register_dataset("mmwhs")
class MMWHS(FileDatasetAdapter):
    """MM-WHS 2017 cardiac CT and MR (20 labelled training volumes each); MYO, LAC, LVC, AA; coronal slices.

    Data: Zhuang & Shen, "Multi-scale patch and multi-modality atlases for whole heart segmentation of MRI",
    MedIA 31, 2016; Zhuang et al., "Evaluation of algorithms for multi-modality whole heart segmentation: an
    open-access grand challenge", MedIA 58, 2019. Only the challenge's *training* files are used (the test
    set's labels are not public), so every case has a label.

    Labels: 205 -> MYO, 420 (and the stray 421) -> LAC, 500 -> LVC, 820 -> AA; the other documented values (550,
    600, 850) and 0 are background; any other value is a fault of the file.

    Preprocessing (the established cardiac UDA protocol of Dou et al. 2018 / Chen et al. 2019, made label-free):

    * each volume is reoriented from its NIfTI header to the closest RAS+ orientation (axis permutation and
      flips, no resampling), so MR volumes acquired in different planes line up; spacing is permuted with it;
    * slices are coronal (the anterior-posterior axis, ``slice_axis = 1`` in RAS+);
    * crop: the published 2D release cropped "around the heart" using the labels, which would tell a model where
      the heart is on test volumes. Here the crop is found from the image alone: the body is the largest
      component above an Otsu threshold; the crop keeps the body's anterior-posterior extent and a fixed field
      of view of 240 mm x 240 mm (left-right x superior-inferior) centred on the body, which holds the whole heart
      and the ascending aorta of an adult (prepare warns if any labelled voxel falls outside it);
    * intensities are clipped at the 99th percentile of each volume (the top percentile) and normalised per
      volume to zero mean and unit variance.

    Split (frozen in ``mmwhs.split.json``): the test volumes used across the cardiac UDA literature since
    PnP-AdaNet (Dou et al. 2018) and SIFA (Chen et al. 2019): CT 1003, 1008, 1014, 1019 (the CT test volumes of
    the PnP-AdaNet/SIFA release) and MR 1007, 1009, 1018, 1019 (given by SIFA's authors, cchen-cc/SIFA issue #6);
    the other 16 volumes per modality are for training. Case IDs are the file's number, e.g. ``"1001"``.
    """

    version = "1"
    modalities = ("mr", "ct")
    classes: ClassVar[dict[str, int]] = dict(MMWHS_CLASSES)
    slice_axis = 1
    split_file = "mmwhs.split.json"
    citation = ("Zhuang & Shen, MedIA 31:77-87, 2016; Zhuang et al., Evaluation of algorithms for multi-modality "
                "whole heart segmentation, MedIA 58:101537, 2019.")
    licence = "MM-WHS 2017 data terms (research use; cite the papers); obtain the data from the organisers."
    homepage = "https://zmiclab.github.io/zxh/0/mmwhs/"
    layout = ("ROOT/ct_train/ct_train_1001_image.nii.gz, ct_train_1001_label.nii.gz, ... and "
              "ROOT/mr_train/mr_train_1001_image.nii.gz, ... (or every file directly in ROOT)")
    preprocessing: ClassVar[dict[str, Any]] = {
        "crop": "body", "crop_fov_mm": (240.0, None, 240.0), "clip_low": 0.0, "clip_high": 99.0,
        "normalise": "volume",
    }

    @cached_property
    def _found(self) -> dict[str, dict[str, dict[str, list[Path]]]]:
        """Modality -> case ID -> {"image": [paths], "label": [paths]} for every matching file on disk."""
        found: dict[str, dict[str, dict[str, list[Path]]]] = {m: {} for m in self.modalities}
        if not self.root.is_dir():
            return found
        folders = [self.root] + [p for p in sorted(self.root.iterdir()) if p.is_dir()]
        for folder in folders:
            for path in sorted(folder.iterdir()):
                m = _FILE.match(path.name)
                if m and path.is_file():
                    found[m.group(1)].setdefault(m.group(2), {"image": [], "label": []})[m.group(3)].append(path)
        return found

    def _path(self, modality: str, case_id: str, kind: str) -> Path:
        paths = self._found[modality].get(case_id, {}).get(kind, [])
        return paths[0] if paths else self.root / f"{modality}_train" / f"{modality}_train_{case_id}_{kind}.nii.gz"

    def subjects_on_disk(self, modality: str) -> dict[str, Path]:
        return {case_id: (kinds["image"] or kinds["label"])[0]
                for case_id, kinds in sorted(self._found[modality].items())}

    def file_problems(self) -> list[str]:
        """Files found twice (in ROOT and in their modality's folder, say)."""
        return [f"{paths[1]}: a second copy of {paths[0].name} (also at {paths[0].parent}); keep one."
                for modality in self.modalities for _, kinds in sorted(self._found[modality].items())
                for paths in kinds.values() if len(paths) > 1]

    def label_coding(self, modality: str) -> LabelCoding:
        return LabelCoding(MMWHS_LABEL_MAP, MMWHS_RAW_LABELS, MMWHS_WRITE)

    def read_files(self, modality: str, case_id: str, problems: list[str]) -> CaseArrays | None:
        from benchmark.formats import read_nifti_pair

        image_path = self._path(modality, case_id, "image")
        read = read_nifti_pair(image_path, self._path(modality, case_id, "label"), mapping=MMWHS_LABEL_MAP,
                               allowed=MMWHS_RAW_LABELS, problems=problems)
        if read is None:
            return None
        image, label, spacing, grid = read
        return CaseArrays(image, label, spacing, image_path, grid)
