"""The dataset adapter contract: declarative metadata plus case listing and loading.

An adapter describes a dataset without touching its data (name, modalities, classes as name -> int with 0 the
background, the frozen split file, citation, licence, where to get it and the folder layout it expects), lists the
case IDs of a modality and split, and loads one case as an image volume with an optional label volume, already
mapped to the benchmark's classes, in the canonical orientation, with its voxel spacing in mm.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import DataError, UsageError

SPLITS = ("train", "test")


@dataclass
class Case:
    """One scan: ``image`` float32 (X, Y, Z), ``label`` class indices or None, ``spacing`` mm per axis."""

    case_id: str
    modality: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...]


class DatasetAdapter:
    """Base class of every dataset adapter (register subclasses with ``@register_dataset("name")``)."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    modalities: ClassVar[tuple[str, ...]] = ()
    classes: ClassVar[dict[str, int]] = {}
    slice_axis: ClassVar[int] = 2
    split_file: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    licence: ClassVar[str] = ""
    homepage: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    needs_root: ClassVar[bool] = True

    def __init__(self, root: str | Path | None = None):
        if root is None and self.needs_root:
            raise UsageError(
                f"Dataset {self.name!r} reads files you download yourself: pass --data-root PATH "
                f"(expected layout: {self.layout or 'see the adapter docstring'})."
            )
        self.root = Path(root) if root is not None else None

    # -- metadata -----------------------------------------------------------------------------------------
    @classmethod
    def split_path(cls) -> Path:
        return Path(inspect.getfile(cls)).resolve().parent / cls.split_file

    @cached_property
    def split(self) -> dict[str, dict[str, list[str]]]:
        """The frozen split: ``{modality: {"train": [...], "test": [...]}}``, checked for leaks."""
        path = self.split_path()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"The split file {path} of dataset {self.name!r} is missing.") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"The split file {path} of dataset {self.name!r} is not valid JSON: {exc}.") from None
        for modality in self.modalities:
            entry = data.get(modality)
            if not isinstance(entry, dict) or not all(isinstance(entry.get(s), list) for s in SPLITS):
                raise DataError(f"The split file {path} has no 'train' and 'test' lists for modality {modality!r}.")
            leak = set(entry["train"]) & set(entry["test"])
            if leak:
                raise DataError(
                    f"The split file {path} lists {modality} volumes {sorted(leak)} in both train and test; a test "
                    f"volume may never be a training input."
                )
        return {m: {s: [str(c) for c in data[m][s]] for s in SPLITS} for m in self.modalities}

    def cases(self, modality: str, split: str) -> list[str]:
        """The case IDs of ``modality`` in ``split`` ("train" or "test"), sorted."""
        self.check_modality(modality)
        if split not in SPLITS:
            raise UsageError(f"Unknown split {split!r}; splits are {', '.join(SPLITS)}.")
        return sorted(self.split[modality][split])

    def check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise UsageError(
                f"Dataset {self.name!r} has no modality {modality!r}; its modalities are {', '.join(self.modalities)}."
            )

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "modalities": list(self.modalities),
            "classes": dict(self.classes), "slice_axis": self.slice_axis, "citation": self.citation,
            "licence": self.licence, "homepage": self.homepage, "layout": self.layout,
        }

    def fingerprint(self) -> str:
        """Extra text that keys the slice cache (e.g. a hash of a generator's code); empty by default."""
        return ""

    # -- data ---------------------------------------------------------------------------------------------
    def load_case(self, modality: str, case_id: str) -> Case:
        """Load one case (image, label or None, spacing), labels mapped to :attr:`classes`."""
        raise NotImplementedError

    def check_case(self, case: Case, source: str) -> Case:
        """Validate a loaded case; errors name ``source`` (the file) and the fault."""
        if case.image.ndim != 3:
            raise DataError(f"{source}: expected a 3D image, got shape {case.image.shape}.")
        if not np.all(np.isfinite(case.image)):
            raise DataError(f"{source}: the image has non-finite voxels (NaN or inf).")
        if len(case.spacing) != 3 or not all(s > 0 and np.isfinite(s) for s in case.spacing):
            raise DataError(f"{source}: invalid voxel spacing {case.spacing}.")
        if case.label is not None:
            if case.label.shape != case.image.shape:
                raise DataError(
                    f"{source}: image shape {case.image.shape} and label shape {case.label.shape} differ."
                )
            allowed = {0, *self.classes.values()}
            found = set(np.unique(case.label).tolist())
            if not found <= allowed:
                raise DataError(
                    f"{source}: label values {sorted(found - allowed)} are not classes of {self.name!r} "
                    f"(allowed: {sorted(allowed)})."
                )
        return case
