"""``python -m benchmark evaluate``: the protocol's metrics for any model's predictions, as NIfTI label files.

A folder holds one file per test case of a modality, named ``<modality>_<case id>.nii.gz`` (or ``.nii``), on the
grid of that case's label file: the same shape and the same voxel-to-world affine (each corner within a tenth of a
voxel). Its values are either the dataset's raw label values (e.g. 205/420/500/820 for MM-WHS) or the suite's
class indices; which one is detected from the values found in all the files together and said, and
``labels="raw"`` or ``"indices"`` settles a folder whose values fit both. Every fault (a missing, extra,
unreadable or mismatched file, undocumented values) is named in one :class:`DataError`, and nothing is written.

Scores are Dice, ASSD and HD95 per structure (:func:`benchmark.metrics.evaluate_volume`) in mm with the file's
spacing: exactly the numbers a trial of protocol ``fsuda-v2`` computes for its own predictions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, UsageError
from .io import atomic_write_text
from .metrics import METRIC_KEYS, evaluate_volume, mean_over_structures
from .protocol import PROTOCOL

LABEL_MODES = ("auto", "raw", "indices")
PER_VOLUME = "per_volume.csv"
SUMMARY = "summary.csv"
_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$")


@dataclass
class Evaluation:
    """The scores of a folder of predictions: one line per (case, structure), the summary and what was detected."""

    dataset: str
    modality: str
    per_volume: pd.DataFrame
    summary: pd.DataFrame
    label_values: str
    volumes: list[dict[str, Any]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def _reference(adapter, modality: str, case_id: str):
    """The case's label volume in its file's stored order, the stored grid and its spacing."""
    case = adapter.load_case(modality, case_id)
    if case.label is None:
        raise DataError(f"{adapter.name} {modality} case {case_id} has no label file to score predictions against.")
    grid = case.stored_grid()
    return np.ascontiguousarray(grid.to_file(case.label)), grid


def _prediction_files(folder: Path, modality: str, cases: list[str]) -> tuple[dict[str, Path], list[str]]:
    """Case -> its prediction file, and the problems of the folder's listing (missing, extra, duplicate files)."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: the predictions folder does not exist.")
    found: dict[str, list[Path]] = {}
    extra: list[Path] = []
    wanted = {f"{modality}_{c}": c for c in cases}
    for path in sorted(folder.iterdir()):
        m = _NIFTI.match(path.name)
        if m and m.group("stem") in wanted and path.is_file():
            found.setdefault(wanted[m.group("stem")], []).append(path)
        elif m or path.is_file():
            extra.append(path)
    problems = [f"{folder / (modality + '_' + c + '.nii.gz')}: the prediction of test case {c} is missing."
                for c in cases if c not in found]
    problems += [f"{path}: not a prediction of a {modality} test case (expected one of "
                 f"{', '.join(modality + '_' + c + '.nii.gz' for c in cases)})." for path in extra]
    problems += [f"{paths[1]}: a second prediction of case {c} (also {paths[0].name}); keep one."
                 for c, paths in found.items() if len(paths) > 1]
    return {c: paths[0] for c, paths in found.items()}, problems


def _read_predictions(files: dict[str, Path], references: dict[str, tuple]) -> tuple[dict[str, np.ndarray], list[str]]:
    from .formats import affines_match, orientation_code, read_nifti

    arrays, problems = {}, []
    for case_id, path in files.items():
        nii = read_nifti(path, dtype=None, problems=problems)
        if nii is None:
            continue
        ref, grid = references[case_id]
        if nii.data.shape != tuple(grid.shape):
            problems.append(f"{path}: shape {nii.data.shape} differs from the reference label's {tuple(grid.shape)}.")
        elif not affines_match(nii.affine, grid.matrix, grid.shape):
            problems.append(f"{path}: its voxel-to-world affine ({orientation_code(nii.affine)}, origin "
                            f"{np.round(nii.affine[:3, 3], 2).tolist()}) differs from the reference label's "
                            f"({orientation_code(grid.matrix)}, origin {np.round(grid.matrix[:3, 3], 2).tolist()}).")
        else:
            arrays[case_id] = nii.data
    return arrays, problems


def _values(arrays: dict[str, np.ndarray]) -> set[int]:
    found: set[int] = set()
    for path, a in arrays.items():
        if a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
            raise DataError(f"The prediction of case {path} has non-integer values; write label values.")
        found |= set(np.unique(a).astype(np.int64).tolist())
    return found


def _decide_coding(adapter, modality: str, arrays: dict[str, np.ndarray], mode: str):
    """The coding of the folder's values: ``(coding or None for class indices, sentence saying which)``."""
    coding = adapter.label_coding(modality)
    indices = {0, *adapter.classes.values()}
    if mode not in LABEL_MODES:
        raise UsageError(f"Unknown label coding {mode!r}; choose {', '.join(LABEL_MODES)}.")
    if coding is None:
        return None, "class indices (the dataset's files use them too)"
    values = _values(arrays)
    fits_indices, fits_raw = values <= indices, values <= set(coding.allowed)
    if mode == "auto":
        if fits_indices and fits_raw and any(coding.to_class.get(v, 0) != v for v in values):
            raise DataError(f"The predictions' values {sorted(values)} are both {adapter.name} raw label values and "
                            f"the suite's class indices ({sorted(indices)}); pass --labels raw or --labels indices.")
        mode = "indices" if fits_indices else "raw" if fits_raw else "unknown"
        if mode == "unknown":
            raise DataError(f"The predictions' values {sorted(values)} are neither the suite's class indices "
                            f"{sorted(indices)} nor {adapter.name} raw label values {list(coding.allowed)}.")
        how = "detected"
    else:
        how = "as told"
    if mode == "indices":
        return None, f"class indices {sorted(indices)} ({how})"
    shown = ", ".join(f"{coding.from_class[c]} {name}" for name, c in adapter.classes.items())
    return coding, f"{adapter.name} raw label values ({shown}; {how})"


def _as_indices(arrays: dict[str, np.ndarray], files: dict[str, Path], coding, adapter) -> dict[str, np.ndarray]:
    from .formats import map_labels

    out, problems = {}, []
    for case_id, a in arrays.items():
        if coding is None:
            allowed = {0, *adapter.classes.values()}
            mapped = map_labels(a, {v: v for v in allowed if v}, allowed, str(files[case_id]), problems)
        else:
            mapped = map_labels(a, coding.to_class, coding.allowed, str(files[case_id]), problems)
        if mapped is not None:
            out[case_id] = mapped
    if problems:
        raise DataError(" ".join(problems))
    return out


def _tables(volumes: list[dict[str, Any]], structures: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    lines = [{"case": v["case"], "structure": s, **{k: v["metrics"][s][k] for k in METRIC_KEYS}}
             for v in volumes for s in structures]
    per_volume = pd.DataFrame(lines, columns=["case", "structure", *METRIC_KEYS])
    summary = [{"structure": s, **{k: float(np.mean([v["metrics"][s][k] for v in volumes])) for k in METRIC_KEYS}}
               for s in structures]
    summary.append({"structure": "mean", **{k: float(np.mean([mean_over_structures(v["metrics"])[k]
                                                              for v in volumes])) for k in METRIC_KEYS}})
    return per_volume, pd.DataFrame(summary, columns=["structure", *METRIC_KEYS])


def evaluate_predictions(adapter, predictions: str | Path, *, modality: str | None = None, labels: str = "auto",
                         out: str | Path | None = None) -> Evaluation:
    """Score a folder of predictions of ``modality``'s test cases (default: the dataset's last modality, the
    target of the usual direction); write ``per_volume.csv`` and ``summary.csv`` under ``out`` when given."""
    modality = modality or adapter.modalities[-1]
    adapter.check_modality(modality)
    cases = adapter.cases(modality, "test")
    folder = Path(predictions)
    files, problems = _prediction_files(folder, modality, cases)
    references = {c: _reference(adapter, modality, c) for c in files}
    arrays, read_problems = _read_predictions(files, references)
    problems += read_problems
    if problems:
        raise DataError(f"{folder}: {len(problems)} problem{'s' if len(problems) > 1 else ''} with the predictions, "
                        f"so nothing was scored: " + " ".join(problems))
    coding, said = _decide_coding(adapter, modality, arrays, labels)
    indices = _as_indices(arrays, files, coding, adapter)
    volumes = [{"case": f"{modality}_{c}",
                "metrics": evaluate_volume(indices[c], references[c][0], references[c][1].spacing, adapter.classes)}
               for c in cases]
    per_volume, summary = _tables(volumes, list(adapter.classes))
    result = Evaluation(adapter.name, modality, per_volume, summary, said, volumes)
    if out is not None:
        out = Path(out)
        for name, table in ((PER_VOLUME, per_volume), (SUMMARY, summary)):
            atomic_write_text(out / name, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
            result.written.append(out / name)
    return result


def external_record(evaluation: Evaluation, adapter, name: str, direction: str, shots: int | str) -> dict[str, Any]:
    """A results-store-like record of an external model's evaluation, for an ``external:NAME`` leaderboard row.

    Its preset and selection read ``external``: the suite neither trained it nor chose its checkpoint.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise UsageError(f"External model name {name!r} must be letters, digits, '_', '.' or '-'.")
    summary = {k: {**{s: float(evaluation.summary.set_index("structure").loc[s, k]) for s in adapter.classes},
                   "mean": float(evaluation.summary.set_index("structure").loc["mean", k])} for k in METRIC_KEYS}
    config = {"dataset": adapter.name, "direction": direction, "method": f"external:{name}", "shots": shots,
              "seed": 0, "preset": "external", "selection": "external", "protocol": PROTOCOL,
              "dataset_version": adapter.version, "method_version": "external", "hparam_sample": 0}
    return {"status": "ok", "config": config, "summary": summary, "structures": list(adapter.classes),
            "volumes": evaluation.volumes, "commit": "external"}
