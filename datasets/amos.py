"""``amos`` and ``amos-13``: AMOS 2022 abdominal CT <-> MRI in nnU-Net's raw layout, on the ``nnunet`` adapter."""

from __future__ import annotations

from typing import ClassVar

from benchmark.errors import DataError
from benchmark.registry import register_dataset

from .nnunet import NnUNetRaw
from .nnunet_track import DatasetJson, ModalityRule, Track, read_dataset_json

#: AMOS's label values (its ``dataset.json``): 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus,
#: 6 liver, 7 stomach, 8 aorta, 9 inferior vena cava (postcava), 10 pancreas, 11 right adrenal gland, 12 left
#: adrenal gland, 13 duodenum, 14 bladder, 15 prostate/uterus; 0 background.
AMOS_VALUES = tuple(range(16))
#: Words the ``dataset.json`` name of each value used here must contain (any one tuple, all its words), so a
#: conversion that renumbered the labels is caught; the release's own spellings ("arota", "postcava") pass.
AMOS_NAMES: dict[int, tuple[tuple[str, ...], ...]] = {
    1: (("spleen",),), 2: (("right", "kidney"),), 3: (("left", "kidney"),), 4: (("gall",),),
    5: (("esophag",), ("oesophag",)), 6: (("liver",),), 7: (("stomach",),), 8: (("aorta",), ("arota",)),
    9: (("cava",), ("ivc",)), 10: (("pancrea",),), 11: (("right", "adrenal"),), 12: (("left", "adrenal"),),
    13: (("duoden",),)}
#: The abdominal track's four organs, numbered as ``chaos-btcv`` numbers them: benchmark class -> AMOS value.
FOUR = {"liver": 6, "right_kidney": 2, "left_kidney": 3, "spleen": 1}
#: The thirteen abdominal organs (all but the pelvic bladder and prostate/uterus), in AMOS's own numbering.
THIRTEEN = {"spleen": 1, "right_kidney": 2, "left_kidney": 3, "gallbladder": 4, "esophagus": 5, "liver": 6,
            "stomach": 7, "aorta": 8, "inferior_vena_cava": 9, "pancreas": 10, "right_adrenal_gland": 11,
            "left_adrenal_gland": 12, "duodenum": 13}
#: Case ID numbers: 1-500 are CT, 501-600 MRI (``amos_0507`` is MRI case 507).
CT_IDS, MR_IDS = (1, 500), (501, 600)


def amos_track(organs: dict[str, int]) -> Track:
    """The AMOS track on ``organs`` (benchmark class -> AMOS value; classes are numbered 1, 2, ... in that order)."""
    return Track(modalities={"ct": ModalityRule(0, id_range=CT_IDS), "mr": ModalityRule(0, id_range=MR_IDS)},
                 classes={name: i + 1 for i, name in enumerate(organs)},
                 mapping={value: i + 1 for i, value in enumerate(organs.values())}, declared=AMOS_VALUES,
                 preprocessing={"crop": "body", "normalise": "volume"}, split_file="amos.split.json",
                 labels_source="AMOS's label set (0-15)")


@register_dataset("amos")
class AMOS(NnUNetRaw):
    """AMOS 2022 abdominal CT <-> MRI (nnU-Net raw layout); spleen, right kidney, left kidney, liver; axial slices.

    Data: Ji et al., "AMOS: A Large-Scale Abdominal Multi-Organ Benchmark for Versatile Medical Image
    Segmentation", NeurIPS 2022 Datasets and Benchmarks (https://zenodo.org/record/7262581): 500 CT and 100 MRI
    scans with 15 organs labelled, of which the labelled release holds 200 CT + 40 MRI (``imagesTr``/``labelsTr``)
    and 100 CT + 20 MRI (``imagesVa``/``labelsVa``); the challenge's test labels are not used. The same release
    is the MRI <-> CT task of M3DA (Shirokikh et al., arXiv 2502.17029, 2025).

    Layout: nnU-Net v2's conversion of the release (Isensee et al., Nature Methods 18:203-211, 2021), as its
    ``nnunetv2/dataset_conversion/Dataset219_Amos2022_task2.py`` writes it: ``imagesVa`` merged into
    ``ROOT/imagesTr/amos_XXXX_0000.nii.gz`` and ``labelsVa`` into ``ROOT/labelsTr/amos_XXXX.nii.gz``, one channel
    (``"either_CT_or_MR"``) and AMOS's labels as name -> value in ``ROOT/dataset.json`` (``Dataset223_AMOS2022
    postChallenge`` is the same with channel ``"nonCT"``). ``fsuda.json`` is not read: this track is fixed.

    Modalities, from the case ID's number: 1-500 CT, 501-600 MRI. The release's readme says "id numbers less than
    500 belong to CT data, otherwise they belong to MRI data"; nnU-Net's ``Dataset218_Amos2022_task1.py`` keeps
    as CT the training IDs <= 410, validation IDs <= 409 and test IDs <= 500, so 500 is read as CT as it does.

    Labels: AMOS's values (see :data:`AMOS_VALUES`) are checked against ``dataset.json`` by name (see
    :data:`AMOS_NAMES`); values outside 0-15 are faults of the file. ``amos`` keeps liver, right kidney, left
    kidney and spleen, numbered 1-4 as ``chaos-btcv`` numbers them so the two abdominal tracks read alike;
    ``amos-13`` keeps the thirteen abdominal organs (all but the pelvic bladder and prostate/uterus), to score both
    modalities on the same structures; AMOS notes that some scans lack organs (removed, or outside the scanned
    range), and ``validate`` prints each class's voxels per modality. Every other organ is background.
    Preprocessing as ``chaos-btcv``: RAS+, axial slices, a label-free crop to the body, clipping at the 0.5th and
    99.5th percentiles and per-volume normalisation.

    Split: no public list of AMOS's labelled case IDs could be verified to freeze beside this adapter (nor is
    M3DA's split adopted), so the split is the ``nnunet`` adapter's rule with seed 0 (see
    :func:`~nnunet_track.seeded_split`): written on first use to ``ROOT/amos.split.json`` (shared by ``amos`` and
    ``amos-13``) and never rewritten; per modality the 20% of cases (rounded up) with the smallest SHA-256 of
    ``"0:<case ID>"`` are test. It depends only on the case IDs, so every copy of the full labelled release
    (300 CT, 60 MRI) gets the same split: 60 CT and 12 MRI test cases.
    Case IDs are the file names' ``amos_XXXX``.
    """

    track: ClassVar[Track] = amos_track(FOUR)
    split_owner = "amos"
    citation = ("Ji et al., AMOS: A Large-Scale Abdominal Multi-Organ Benchmark for Versatile Medical Image "
                "Segmentation, NeurIPS 2022 Datasets and Benchmarks.")
    licence = ("The Zenodo record's terms (CC BY 4.0 there; the NeurIPS paper's page lists a CC BY-NC licence); "
               "obtain the data yourself.")
    homepage = "https://amos22.grand-challenge.org/ and https://zenodo.org/record/7262581"
    layout = ("ROOT/dataset.json, ROOT/imagesTr/amos_0001_0000.nii.gz, ..., ROOT/labelsTr/amos_0001.nii.gz, ... "
              "(nnU-Net's Dataset219_AMOS2022_postChallenge_task2 conversion: imagesVa/labelsVa merged in)")

    def dataset_json_problems(self) -> list[str]:
        """``ROOT/dataset.json`` must be AMOS's: NIfTI, one channel, labels 0-15 with this track's organs named."""
        path = self.root / "dataset.json"
        try:
            meta = read_dataset_json(path)
        except DataError as exc:
            return [str(exc)]
        problems = []
        if meta.file_ending != ".nii.gz" or len(meta.channels) != 1:
            problems.append(f"{path}: expected AMOS in nnU-Net's conversion (file_ending .nii.gz, one channel); "
                            f"found {meta.file_ending!r} and channels {meta.channels}.")
        if meta.declared != AMOS_VALUES:
            problems.append(f"{path}: declares label values {list(meta.declared)}; AMOS's are 0-15.")
        problems.extend(self._misnamed(meta))
        return problems

    def _misnamed(self, meta: DatasetJson) -> list[str]:
        names = meta.names()
        return [f"{meta.path}: label value {value} is named {names.get(value)!r}, not AMOS's organ for {value} "
                f"({' '.join(AMOS_NAMES[value][0])}); this conversion numbers the labels differently."
                for value in sorted(self.track.mapping)
                if not any(all(w in names.get(value, "").lower() for w in words) for words in AMOS_NAMES[value])]


@register_dataset("amos-13")
class AMOS13(AMOS):
    """AMOS 2022 CT <-> MRI with thirteen abdominal organs (all but the pelvic bladder and prostate/uterus).

    As ``amos`` (same files, checks, preprocessing and split file), with the classes of :data:`THIRTEEN`
    numbered as AMOS numbers them (1 spleen ... 13 duodenum).
    """

    track: ClassVar[Track] = amos_track(THIRTEEN)
    descriptions_file = "amos_13.classes.json"
