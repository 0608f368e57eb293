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
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .errors import DataError, UsageError
from .native import Grid

SPLITS = ("train", "test")

class CaseArrays(NamedTuple):
    """What a file adapter read for one case: canonical image, label or None, spacing in mm, the file or folder it
    came from, and the stored grid (None: the arrays are stored as returned, with a diagonal affine)."""

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...]
    source: str | Path
    grid: Grid | None = None


@dataclass(frozen=True)
class LabelCoding:
    """How a dataset's label files code its classes: ``to_class`` maps each raw value that is a class to its index
    (every other value of ``allowed`` is background), ``from_class`` gives the value a written file uses per class."""

    to_class: dict[int, int]
    allowed: tuple[int, ...]
    from_class: dict[int, int]


@dataclass
class Case:
    """One scan: ``image`` float32 (X, Y, Z), ``label`` class indices or None, ``spacing`` mm per axis, all in the
    canonical orientation, and ``grid``, the stored grid they came from (None: stored as they are)."""

    case_id: str
    modality: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...]
    grid: Grid | None = None

    def stored_grid(self) -> Grid:
        """The grid the case is stored on: :attr:`grid`, or the canonical arrays' own (a diagonal affine)."""
        return self.grid or Grid.from_spacing(self.spacing, self.image.shape)


class DatasetAdapter:
    """Base class of every dataset adapter (register subclasses with ``@register_dataset("name")``)."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    modalities: ClassVar[tuple[str, ...]] = ()
    classes: ClassVar[dict[str, int]] = {}
    #: The array axis the 2D slices are taken along; 2 is axial for a volume in RAS+.
    slice_axis: ClassVar[int] = 2
    split_file: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    licence: ClassVar[str] = ""
    homepage: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    needs_root: ClassVar[bool] = True
    #: Class descriptions for plug-ins that use language (JSON beside the adapter); "" means ``<adapter>.classes.json``.
    descriptions_file: ClassVar[str] = ""
    #: Preprocessing choices of this dataset's protocol that differ from the shared defaults, by
    #: :class:`~benchmark.cache.PreprocessSettings` field (e.g. ``{"normalise": "volume"}``); they key the cache.
    preprocessing: ClassVar[dict[str, Any]] = {}

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

    @classmethod
    def descriptions_path(cls) -> Path:
        where = Path(inspect.getfile(cls)).resolve()
        return where.parent / (cls.descriptions_file or f"{where.stem}.classes.json")

    @classmethod
    def class_descriptions(cls) -> dict[str, Any]:
        """The versioned class descriptions: ``{"version", "classes": {name: [sentences]}, "order", "path"}``.

        The file holds a few sentences per class in the field's words (``background`` included), for plug-ins
        that use language (``cdtg``); it must describe exactly ``background`` and every class of :attr:`classes`.
        ``order`` lists the class names by label value, background (0) first.
        """
        path = cls.descriptions_path()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"Dataset {cls.name!r} has no class descriptions: {path} is missing. Write it (a "
                            f"'version' and, under 'classes', a list of sentences for 'background' and for each of "
                            f"{', '.join(cls.classes)}) to use plug-ins that read them.") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"The class descriptions {path} of dataset {cls.name!r} are not valid JSON: "
                            f"{exc}.") from None
        classes = data.get("classes") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("version"), str) or not isinstance(classes, dict):
            raise DataError(f"The class descriptions {path} need a string 'version' and a 'classes' object.")
        wanted = {"background", *cls.classes}
        if set(classes) != wanted:
            raise DataError(f"The class descriptions {path} describe {sorted(classes)}, but dataset {cls.name!r} "
                            f"needs exactly {sorted(wanted)}.")
        for name, texts in classes.items():
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise DataError(f"The class descriptions {path}: class {name!r} needs a non-empty list of sentences.")
        order = ["background", *sorted(cls.classes, key=cls.classes.get)]  # by label value
        return {"version": data["version"], "classes": {k: list(classes[k]) for k in order}, "order": order,
                "path": str(path)}

    def cases(self, modality: str, split: str) -> list[str]:
        """The case IDs of ``modality`` in ``split`` ("train" or "test"), sorted."""
        self.check_modality(modality)
        if split not in SPLITS:
            raise UsageError(f"Unknown split {split!r}; splits are {', '.join(SPLITS)}.")
        return sorted(self.split[modality][split])

    def split_cases(self, modality: str) -> list[str]:
        """Every case the split names for ``modality``, training and test."""
        return self.split[modality]["train"] + self.split[modality]["test"]

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
            "preprocessing": dict(self.preprocessing),
        }

    def input_grid(self, affine: np.ndarray, shape: tuple[int, ...]) -> Grid:
        """How this dataset orients a scan stored with ``affine`` (``predict`` reads new scans with it): by default
        to the closest RAS+ orientation, as the NIfTI and DICOM adapters read their files."""
        import nibabel as nib

        return Grid.of(affine, shape, nib.orientations.io_orientation(affine))

    def label_coding(self, modality: str) -> LabelCoding | None:
        """The raw label values of ``modality``'s files (``evaluate`` reads them, ``predict`` writes them); None when
        the files hold the suite's class indices themselves."""
        return None

    def fingerprint(self) -> str:
        """Extra text that keys the slice cache (e.g. a hash of a generator's code); empty by default."""
        return ""

    # -- data ---------------------------------------------------------------------------------------------
    def load_case(self, modality: str, case_id: str) -> Case:
        """Load one case (image, label or None, spacing), labels mapped to :attr:`classes`.

        Adapters of downloaded data implement :meth:`read_case` instead (:class:`FileDatasetAdapter` does, around
        their ``read_files``); this then raises one :class:`DataError` listing every problem found.
        """
        if type(self).read_case is DatasetAdapter.read_case:
            raise NotImplementedError(f"{type(self).__name__} implements neither load_case nor read_case.")
        problems: list[str] = []
        case = self.read_case(modality, case_id, problems)
        if case is None and not problems:
            problems.append(f"{self.name} {modality} case {case_id} could not be read.")
        if problems or case is None:
            raise DataError(problems[0] if len(problems) == 1 else
                            f"{self.name} {modality} case {case_id} has {len(problems)} problems: "
                            + " ".join(problems))
        return case

    def read_case(self, modality: str, case_id: str, problems: list[str]) -> Case | None:
        """Load one case, appending every problem found to ``problems`` rather than stopping at the first.

        ``validate`` calls this. The default wraps :meth:`load_case` (one problem at most).
        """
        try:
            return self.load_case(modality, case_id)
        except DataError as exc:
            problems.append(str(exc))
            return None

    def check_files(self) -> list[str]:
        """Dataset-level problems found without reading volumes (a missing dataset folder, subjects on disk that
        the split does not list, unreadable listing files); one sentence per problem, naming the path. A split
        subject without files is reported by :meth:`read_case`, which names the missing file."""
        return []

    def cases_to_check(self, modality: str, split: str) -> list[str]:
        """The cases ``validate`` reads: those of the split, listed even where the adapter refuses to train on the
        data as found (so one fault never hides the others)."""
        return self.cases(modality, split)

    def notes(self) -> list[str]:
        """Facts about the data as found that ``validate`` prints with its summary (e.g. slices it set aside)."""
        return []

    def validate_case(self, case: Case, source: str) -> Case:
        """``case`` when it has no fault (see :meth:`case_problems`); else one :class:`DataError` naming them all."""
        problems = self.case_problems(case, source)
        if problems:
            raise DataError(" ".join(problems))
        return case

    def case_problems(self, case: Case, source: str) -> list[str]:
        """Every fault of a loaded case (shape, non-finite voxels, spacing, label shape and values)."""
        if case.image.ndim != 3:
            return [f"{source}: expected a 3D image, got shape {case.image.shape}."]
        problems = []
        if not np.all(np.isfinite(case.image)):
            n = int(np.size(case.image) - np.count_nonzero(np.isfinite(case.image)))
            problems.append(f"{source}: the image has {n} non-finite voxels (NaN or inf).")
        if len(case.spacing) != 3 or not all(s > 0 and np.isfinite(s) for s in case.spacing):
            problems.append(f"{source}: invalid voxel spacing {case.spacing}.")
        if case.label is not None:
            if case.label.shape != case.image.shape:
                problems.append(
                    f"{source}: image shape {case.image.shape} and label shape {case.label.shape} differ."
                )
            else:
                allowed = {0, *self.classes.values()}
                lab = case.label
                if lab.dtype == np.uint8:  # the usual case; far faster than np.unique on large volumes
                    seen = np.zeros(256, dtype=bool)
                    seen[lab.ravel(order="K")] = True
                    found = set(np.flatnonzero(seen).tolist())
                else:
                    found = set(np.unique(lab).tolist())
                if not found <= allowed:
                    problems.append(
                        f"{source}: label values {sorted(found - allowed)} are not classes of {self.name!r} "
                        f"(allowed: {sorted(allowed)})."
                    )
        return problems


class FileDatasetAdapter(DatasetAdapter):
    """Base of the adapters that read files a user downloaded (the real datasets).

    A subclass knows only its format: :meth:`read_files` finds and reads one case's files, :meth:`subjects_on_disk`
    names the subjects found under the root and :meth:`file_problems` any other fault of the files as found. This
    base checks the modality and that a case is in the split before reading, checks what was read (see
    :meth:`case_problems`), and flags subjects on disk that the split file does not list.

    The cache key includes the code that reads and preprocesses the files (the adapter's own source file, the
    format readers and the shared preprocessing), so editing a reader never reuses slices the old code made.
    """

    #: What problems call a subject of :meth:`subjects_on_disk` ("test subject" where only those have files).
    subject_kind: ClassVar[str] = "subject"

    def fingerprint(self) -> str:
        """A hash of the code that reads this adapter's files: its own file, the helpers (``_*.py``) of its folder,
        the format readers and the shared preprocessing."""
        from . import formats
        from .preprocess import code_fingerprint

        source = Path(inspect.getfile(type(self)))
        return code_fingerprint(source, *sorted(source.parent.glob("_*.py")), formats.__file__)

    def subjects_on_disk(self, modality: str) -> dict[str, Path]:
        """Case ID -> a file or folder of that subject, for every ``modality`` subject found under the root."""
        return {}

    def file_problems(self) -> list[str]:
        """Faults of the files as found other than subjects the split does not list (none unless overridden)."""
        return []

    def check_files(self) -> list[str]:
        if not self.root.is_dir():
            return [f"{self.root}: the dataset folder does not exist (expected layout: {self.layout})."]
        problems = self.file_problems()
        for modality in self.modalities:
            in_split = set(self.split_cases(modality))
            problems.extend(f"{path}: {self.subject_kind} {modality} {case_id} is not in the split file "
                            f"{self.split_path()}." for case_id, path in self.subjects_on_disk(modality).items()
                            if case_id not in in_split)
        return problems

    def unknown_case_problem(self, modality: str, case_id: str) -> str:
        """The problem of a requested case that is not one of :meth:`split_cases`."""
        return f"{self.name} has no {modality} case {case_id!r} in its split file {self.split_path()}."

    def read_case(self, modality: str, case_id: str, problems: list[str]) -> Case | None:
        self.check_modality(modality)
        if case_id not in self.split_cases(modality):
            problems.append(self.unknown_case_problem(modality, case_id))
            return None
        before = len(problems)
        read = self.read_files(modality, case_id, problems)
        if read is None or len(problems) > before:
            return None
        read = CaseArrays(*read)
        case = Case(case_id=case_id, modality=modality, image=read.image, label=read.label, spacing=read.spacing,
                     grid=read.grid)
        found = self.case_problems(case, str(read.source))
        problems.extend(found)
        return None if found else case

    def read_files(self, modality: str, case_id: str, problems: list[str]) -> CaseArrays | None:
        """Find and read the files of one case of the split, labels mapped to :attr:`classes`; every problem found
        is appended to ``problems`` (and then it returns None)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement read_files.")
