"""``python -m benchmark validate``: check every file of a dataset before any training.

Reads every case of every modality and split through the adapter (in parallel across volumes) and collects all
problems rather than stopping at the first: missing image or label, unreadable or truncated files, image/label
shape or affine mismatch, label values outside the documented set, non-finite voxels, subjects on disk that the
split file does not list. When nothing is wrong it summarises what it read: cases per modality and split, the
ranges of shape and spacing, and the voxels of each class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cache import process_map
from .dataset import SPLITS
from .errors import DataError


@dataclass
class CaseSummary:
    modality: str
    case_id: str
    split: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    counts: list[int] | None


@dataclass
class Report:
    """What ``validate`` found: every problem (one line each, naming the file) and, per case, what was read."""

    dataset: str
    root: str | None
    problems: list[str] = field(default_factory=list)
    cases: list[CaseSummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        """The summary table: one row per modality and split."""
        names = sorted(self.classes, key=self.classes.get)
        header = ["modality", "split", "cases", "shape min", "shape max", "spacing mm min", "spacing mm max",
                  *[f"{n} voxels" for n in names]]
        rows = []
        for modality in dict.fromkeys(c.modality for c in self.cases):
            for split in SPLITS:
                group = [c for c in self.cases if c.modality == modality and c.split == split]
                if not group:
                    continue
                shapes = [c.shape for c in group]
                spacings = [c.spacing for c in group]
                counts = [sum((c.counts or [0] * (max(self.classes.values()) + 1))[self.classes[n]] for c in group)
                          for n in names]
                rows.append([modality, split, str(len(group)),
                             "x".join(str(min(s[i] for s in shapes)) for i in range(3)),
                             "x".join(str(max(s[i] for s in shapes)) for i in range(3)),
                             "x".join(f"{min(s[i] for s in spacings):.2f}" for i in range(3)),
                             "x".join(f"{max(s[i] for s in spacings):.2f}" for i in range(3)),
                             *[f"{n:,}" for n in counts]])
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
        return "\n".join(fmt.format(*r) for r in [header, *rows])


def class_counts(label: np.ndarray, n_classes: int) -> list[int]:
    """Voxels per class index 0..n_classes-1."""
    return np.bincount(label.ravel(order="K"), minlength=n_classes)[:n_classes].tolist()


def _inspect(dataset: str, root: str | None, modality: str, case_id: str) -> tuple[list[str], dict | None]:
    from . import registry

    adapter = registry.get_dataset(dataset, root)
    problems: list[str] = []
    try:
        case = adapter.read_case(modality, case_id, problems)
    except DataError as exc:  # a reader that raised instead of collecting
        return problems + [str(exc)], None
    if case is None:
        return problems or [f"{dataset} {modality} case {case_id}: could not be read."], None
    n_classes = max(adapter.classes.values()) + 1
    return problems, {"shape": tuple(int(n) for n in case.image.shape),
                      "spacing": tuple(float(s) for s in case.spacing),
                      "counts": None if case.label is None else class_counts(case.label, n_classes)}


def validate(adapter, *, workers: int | None = None, log: Callable[[str], None] = print) -> Report:
    """Check every case of ``adapter``; returns the :class:`Report` (never raises for a data fault)."""
    report = Report(dataset=adapter.name, root=str(adapter.root) if adapter.root else None,
                    classes=dict(adapter.classes))
    try:
        report.problems.extend(adapter.check_files())
    except DataError as exc:
        report.problems.append(str(exc))
    if adapter.root is not None and not adapter.root.is_dir():
        return report
    jobs: list[tuple[str, str, str]] = []
    for modality in adapter.modalities:
        for split in SPLITS:
            try:
                jobs.extend((modality, c, split) for c in adapter.cases_to_check(modality, split))
            except DataError as exc:
                if str(exc) not in report.problems and not report.problems:
                    report.problems.append(str(exc))
    root = str(adapter.root) if adapter.root else None
    workers = max(1, min(workers or (os.cpu_count() or 1), len(jobs) or 1))
    log(f"Validating {adapter.name}: {len(jobs)} volumes with {workers} process{'es' if workers > 1 else ''}")
    args: list[tuple[Any, ...]] = [(adapter.name, root, m, c) for m, c, _ in jobs]
    results = process_map(_inspect, args, workers)
    for (modality, case_id, split), (problems, summary) in zip(jobs, results):
        report.problems.extend(p for p in problems if p not in report.problems)
        if summary is not None:
            report.cases.append(CaseSummary(modality=modality, case_id=case_id, split=split, **summary))
    report.notes.extend(adapter.notes())
    return report
