"""``nnunet``: any dataset in nnU-Net v2's raw format as a cross-modality track, configured by ``fsuda.json``."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from benchmark.dataset import CaseArrays, DatasetAdapter, FileDatasetAdapter, LabelCoding
from benchmark.errors import DataError
from benchmark.registry import register_dataset

from ._shared import natural_key
from .nnunet_track import LAYOUT, Track, load_track, read_json, seeded_split


@dataclass
class _Disk:
    """What is in ``imagesTr``/``labelsTr``: case -> {channel: image path}, case -> label path, misnamed files."""

    images: dict[str, dict[int, Path]]
    labels: dict[str, Path]
    problems: list[str]


@register_dataset("nnunet")
class NnUNetRaw(FileDatasetAdapter):
    """Any nnU-Net v2 raw dataset (Isensee et al., Nature Methods 18:203-211, 2021) as a cross-modality track.

    The folder holds nnU-Net's ``dataset.json`` (``channel_names``, ``labels`` as name -> value, ``file_ending``),
    ``imagesTr/<case>_<XXXX>.nii.gz`` and ``labelsTr/<case>.nii.gz``, and a small ``fsuda.json`` beside them that
    says what nnU-Net's format cannot: which cases are which modality (a rule on case IDs, a channel, or a list;
    see :class:`ModalityRule`), which labels are the benchmark's classes (default: every single-value foreground
    label, numbered 1, 2, ... in the order given; the others are background), the slicing axis, the field of view
    and other preprocessing, the split's seed, test share and file, and the class descriptions' file. Use it as
    ``--dataset nnunet --root PATH`` or ``--dataset nnunet:PATH``.

    Every case is checked as the other adapters check theirs: a missing image or label file, a shape or affine
    mismatch, label values that ``dataset.json`` does not declare, non-finite voxels, misnamed files, and cases on
    disk that the split does not list each fail with the file named.

    Split: written on first use beside the data (``fsuda.split.json``, or the file ``fsuda.json`` names) from the
    cases found and a seed (see :func:`seeded_split`), atomically, and read from then on: it never changes, and a
    case added later is reported, not split in. It is not written while the folder has faults ``validate`` finds
    without reading volumes. Deliberate differences from nnU-Net: only ``imagesTr``/``labelsTr`` (labelled cases)
    are used, region-based labels cannot be classes, and NIfTI is the only file format.
    """

    version = "1"
    layout = LAYOUT
    homepage = "https://github.com/MIC-DKFZ/nnUNet/blob/master/documentation/dataset_format.md"
    #: None on the generic adapter: each instance is of a subclass configured from its folder (see ``__new__``).
    track: ClassVar[Track | None] = None
    #: The dataset a written split file names (default: this adapter's name; ``amos`` for both AMOS tracks).
    split_owner: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        track = cls.__dict__.get("track")
        if track is not None:
            cls.modalities, cls.classes = tuple(track.modalities), dict(track.classes)
            cls.slice_axis, cls.preprocessing, cls.version = track.slice_axis, dict(track.preprocessing), track.version

    def __new__(cls, root: str | Path | None = None):
        """The generic adapter on a folder is an instance of a subclass whose metadata its configuration sets, so
        the class-level metadata (classes, modalities, descriptions) is that folder's."""
        if cls.track is None and root is not None:
            track, meta = load_track(Path(root))
            cls = type(cls.__name__, (cls,), {
                "track": track, "_configured": True, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
                "citation": str(meta.meta.get("reference", "")),
                "licence": str(meta.meta.get("licence", meta.meta.get("license", ""))),
                "homepage": str(meta.meta.get("release", cls.homepage))})
        return object.__new__(cls)

    def __reduce_ex__(self, protocol):
        """A configured instance pickles as the adapter and its folder (the folder configures it again)."""
        if type(self).__dict__.get("_configured"):
            return type(self).__bases__[0], (self.root,)
        return super().__reduce_ex__(protocol)

    @classmethod
    def descriptions_path(cls) -> Path:
        if cls.track is not None and cls.track.descriptions is not None:
            return Path(cls.track.descriptions)
        return super().descriptions_path()

    def split_path(self) -> Path:  # beside the data, not beside the adapter
        path = Path(self.track.split_file)
        return path if path.is_absolute() else self.root / path

    def fingerprint(self) -> str:
        from benchmark.preprocess import code_fingerprint

        here = Path(__file__)  # the reading code, also for the adapters built on this one
        return "+".join([super().fingerprint(), code_fingerprint(here, here.with_name("nnunet_track.py")),
                         hashlib.sha256(self.track.key().encode()).hexdigest()[:16]])

    def label_coding(self, modality: str) -> LabelCoding:
        return LabelCoding(dict(self.track.mapping), self.track.declared,
                           {cls: raw for raw, cls in self.track.mapping.items()})

    # -- the files ----------------------------------------------------------------------------------------------
    @cached_property
    def _disk(self) -> _Disk:
        ending = self.track.file_ending
        named = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
        disk = _Disk({}, {}, [])
        for path in self._listing("imagesTr"):
            m = named.match(path.name)
            if m is None:
                disk.problems.append(f"{path}: an image not named <case>_<XXXX>{ending} (a case ID, '_' and a "
                                     f"four-digit channel index, as nnU-Net's raw format names images).")
            elif int(m.group(2)) not in self.track.channels:
                disk.problems.append(f"{path}: channel {int(m.group(2))} is not in channel_names of "
                                     f"{self.root / 'dataset.json'} ({', '.join(map(str, self.track.channels))}).")
            else:
                disk.images.setdefault(m.group(1), {})[int(m.group(2))] = path
        disk.labels = {p.name[:-len(ending)]: p for p in self._listing("labelsTr")}
        return disk

    def _listing(self, folder: str) -> list[Path]:
        where = self.root / folder
        return sorted(p for p in where.iterdir() if p.name.endswith(self.track.file_ending)
                      and not p.name.startswith(".") and p.is_file()) if where.is_dir() else []

    @cached_property
    def _assigned(self) -> tuple[dict[str, dict[str, Path]], list[str], list[str]]:
        """Modality -> case -> a file of it; problems; cases with images that no modality takes."""
        disk, out = self._disk, {m: {} for m in self.modalities}
        problems, unused = [], []
        for case in sorted(set(disk.images) | set(disk.labels), key=natural_key):
            channels = set(disk.images.get(case, {}))
            taken = [m for m, rule in self.track.modalities.items() if rule.takes(case, channels)]
            source = next(iter(disk.images.get(case, {}).values()), None) or disk.labels[case]
            read = [self.track.modalities[m].channel for m in taken]
            if len(set(read)) < len(read):
                problems.append(f"{source}: case {case} matches the rules of {' and '.join(taken)}, which read the "
                                f"same channel; make the rules disjoint.")
            elif not taken and not channels:
                problems.append(f"{source}: a label without an image of its case in {self.root / 'imagesTr'} "
                                f"(expected {case}_<XXXX>{self.track.file_ending}).")
            elif not taken:
                unused.append(case)
            for m in taken:
                out[m][case] = disk.images.get(case, {}).get(self.track.modalities[m].channel, source)
        return out, problems, unused

    def dataset_json_problems(self) -> list[str]:
        """Faults of ``dataset.json`` for this track (the generic adapter read it when configured: none)."""
        return []

    def file_problems(self) -> list[str]:
        return self.dataset_json_problems() + self._disk.problems + self._assigned[1]

    def subjects_on_disk(self, modality: str) -> dict[str, Path]:
        return dict(self._assigned[0][modality])

    def check_files(self) -> list[str]:
        if self.root.is_dir() and not self.split_path().exists() and self.file_problems():
            return self.file_problems()  # the split is not written from a faulty folder
        return super().check_files()

    # -- the split ----------------------------------------------------------------------------------------------
    @cached_property
    def split(self) -> dict[str, dict[str, list[str]]]:
        path = self.split_path()
        if not path.exists():
            self._write_split(path)
        return DatasetAdapter.split.func(self)

    def _write_split(self, path: Path) -> None:
        from benchmark.io import atomic_write_text

        problems = self.file_problems()
        if problems:
            raise DataError(f"Not writing the split file {path}: {self.root} has {len(problems)} problem(s) to fix "
                            f"first (`validate` lists them); the first: {problems[0]}")
        cases = {m: sorted(self._assigned[0][m], key=natural_key) for m in self.modalities}
        empty = [m for m, ids in cases.items() if not ids]
        if empty:
            raise DataError(f"{self.root}: no {' or '.join(empty)} cases found, so no split can be written "
                            f"(expected layout: {self.layout}).")
        t = self.track
        data = {"dataset": self.split_owner or self.name, "version": self.version,
                "note": (f"Written on first use from the cases found; never rewritten (delete it to write a new "
                         f"one). Rule: cases ordered by the SHA-256 of '<seed>:<case ID>'; per modality the first "
                         f"ceil({t.test_fraction:g} x n) cases, at least one, are test."),
                "rule": {"seed": t.split_seed, "test_fraction": t.test_fraction},
                **self._seeded(cases)}
        if not path.exists():  # another process may have written it meanwhile; the same cases give the same split
            try:
                atomic_write_text(path, json.dumps(data, indent=1) + "\n")
            except OSError as exc:
                raise DataError(f"Cannot write the split file {path} ({exc.strerror or exc}); make the folder "
                                f"writable once, or name a writable split file.") from None
            self._wrote_split = True

    def _seeded(self, cases: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
        try:
            return seeded_split(cases, self.track.split_seed, self.track.test_fraction)
        except DataError as exc:
            raise DataError(f"{self.root}: {exc}") from None

    def notes(self) -> list[str]:
        try:
            return self._split_notes() + self._unused_notes()
        except DataError:  # no split (validate lists why)
            return self._unused_notes()

    def _split_notes(self) -> list[str]:
        path, t = self.split_path(), self.track
        counts = ", ".join(f"{m} {len(self.split[m]['train'])} train / {len(self.split[m]['test'])} test"
                           for m in self.modalities)
        if getattr(self, "_wrote_split", False):
            notes = [f"split written to {path} from seed {t.split_seed} (test: {t.test_fraction:.0%} of each "
                     f"modality's cases, at least one; it is never rewritten): {counts}."]
        else:
            notes = [f"split read from {path}: {counts}."]
            rule = read_json(path).get("rule", {})
            if rule and rule != {"seed": t.split_seed, "test_fraction": t.test_fraction}:
                notes.append(f"the split file was written with {rule}, the configuration now says seed "
                             f"{t.split_seed} and test_fraction {t.test_fraction}; the file is kept (delete it to "
                             f"write a new split).")
        return notes

    def _unused_notes(self) -> list[str]:
        unused = self._assigned[2]
        return [f"{len(unused)} case(s) in {self.root / 'imagesTr'} match no modality and are not used: "
                f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}."] if unused else []

    # -- reading ------------------------------------------------------------------------------------------------
    def read_files(self, modality: str, case_id: str, problems: list[str]) -> CaseArrays | None:
        from benchmark.formats import read_nifti_pair

        ending = self.track.file_ending
        image_path = self.root / "imagesTr" / f"{case_id}_{self.track.modalities[modality].channel:04d}{ending}"
        before = len(problems)
        read = read_nifti_pair(image_path, self.root / "labelsTr" / f"{case_id}{ending}",
                               mapping=self.track.mapping, allowed=self.track.declared, problems=problems)
        for i in range(before, len(problems)):  # say where the allowed values come from
            problems[i] = problems[i].replace(
                f"are outside the documented set {sorted(self.track.declared)}",
                f"are not declared in {self.track.labels_source} (its labels: {list(self.track.declared)})")
        if read is None:
            return None
        image, label, spacing, grid = read
        return CaseArrays(image, label, spacing, image_path, grid)
