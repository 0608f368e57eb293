"""``synthetic-heart``: the embedded procedural cardiac phantom (MR-like and CT-like, unpaired)."""

from __future__ import annotations

import hashlib
import json

from benchmark import phantom
from benchmark.dataset import Case, DatasetAdapter
from benchmark.errors import DataError
from benchmark.phantom import CLASSES, MODALITIES, generate_case
from benchmark.registry import register_dataset

#: Subjects per modality; each modality's subjects are independent random draws (unpaired, as in MM-WHS).
SUBJECTS = 24


@register_dataset("synthetic-heart")
class SyntheticHeart(DatasetAdapter):
    """Procedural 3D cardiac phantom with a real MR/CT appearance gap; generated on first use, no download.

    Four labeled structures (MYO, LAC, LVC, AA) among unlabeled distractors (right heart, pulmonary artery,
    descending aorta, spine, lungs, body wall and fat). See :mod:`benchmark.phantom` for the anatomy and the
    tissue intensities of each modality. Case IDs are ``"000"``..``"023"`` per modality; the MR-like and CT-like
    subject with the same ID are unrelated draws.

    Version 2 renders the CT-like side as a contrast-enhanced cardiac CT angiogram (as MM-WHS CT): the blood pools
    far brighter than the myocardium, with attenuations from coronary CTA practice (see
    :mod:`benchmark.phantom.tables`); version 1 had them much closer. The MR-like volumes are those of version 1.

    The data are identified by what the generator produces. The slice cache is keyed by :meth:`fingerprint`, a
    hash of the generator's parameter tables and the number of subjects, so changing a number rebuilds the cache.
    Bump :attr:`version` whenever any generated volume changes (``tests/test_phantom.py`` compares the volumes
    with stored digests and fails until the version and the digests are updated): trials record the version, so
    finished trials and published rows made from the old volumes are then never reused or mixed with new ones.
    """

    version = "2"
    modalities = MODALITIES
    classes = dict(CLASSES)
    slice_axis = 2
    split_file = "synthetic_heart.split.json"
    citation = "fsuda-benchmark synthetic-heart phantom (procedural; see benchmark/phantom/)."
    licence = "Apache-2.0 (generated data)"
    homepage = ""
    layout = "none: generated from a seed on first use"
    needs_root = False

    def fingerprint(self) -> str:
        """A hash of the generator's parameters (every table of :mod:`benchmark.phantom.tables`) and the number of
        subjects; it keys the slice cache, while edits of the code that leave the volumes unchanged keep it."""
        blob = json.dumps({"generator": phantom.parameters(), "subjects": SUBJECTS}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def load_case(self, modality: str, case_id: str) -> Case:
        self.check_modality(modality)
        ids = sorted(self.split_cases(modality))
        if case_id not in ids:
            raise DataError(f"Dataset {self.name!r} has no {modality} case {case_id!r}; its {modality} case IDs are "
                            f"{ids[0]!r} to {ids[-1]!r}.")
        volume = generate_case(modality, int(case_id))
        case = Case(case_id=case_id, modality=modality, image=volume.image, label=volume.label,
                    spacing=tuple(float(s) for s in volume.spacing))
        return self.validate_case(case, f"synthetic-heart {modality}/{case_id}")
