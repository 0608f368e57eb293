"""``synthetic-heart``: the embedded procedural cardiac phantom (MR-like and CT-like, unpaired)."""

from __future__ import annotations

import hashlib
import inspect

from benchmark import phantom
from benchmark.dataset import Case, DatasetAdapter
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
    """

    version = "1"
    modalities = MODALITIES
    classes = dict(CLASSES)
    slice_axis = 2
    split_file = "synthetic_heart.split.json"
    citation = "fsuda-benchmark synthetic-heart phantom (procedural; see benchmark/phantom.py)."
    licence = "Apache-2.0 (generated data)"
    homepage = ""
    layout = "none: generated from a seed on first use"
    needs_root = False

    def fingerprint(self) -> str:
        """The generator's source code keys the cache, so editing the phantom never reuses stale volumes."""
        return hashlib.sha256(inspect.getsource(phantom).encode()).hexdigest()[:16]

    def load_case(self, modality: str, case_id: str) -> Case:
        self.check_modality(modality)
        if case_id not in self.split[modality]["train"] + self.split[modality]["test"]:
            raise KeyError(f"synthetic-heart has no {modality} case {case_id!r}.")
        phantom = generate_case(modality, int(case_id))
        case = Case(case_id=case_id, modality=modality, image=phantom.image, label=phantom.label,
                    spacing=tuple(float(s) for s in phantom.spacing))
        return self.check_case(case, f"synthetic-heart {modality}/{case_id}")
