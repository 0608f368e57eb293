"""The leaderboard table: its columns, their types, and the prose that explains them in the README."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

METRICS: tuple[str, ...] = ("dice", "assd_mm", "hd95_mm")
SOURCE_ONLY = "source_only"
ORACLE = "oracle"
FLOAT_DECIMALS = 4

#: Columns identifying a row.
KEY_COLUMNS: list[str] = ["dataset", "direction", "method", "shots", "selection", "preset"]
#: Within one track CSV, a row is identified by these columns.
ROW_KEY: tuple[str, ...] = ("method", "shots", "selection", "preset")
#: Fixed columns before the per-structure columns.
LEAD_COLUMNS: list[str] = KEY_COLUMNS + ["seeds_done", "seeds_failed"] + [
    f"{m}_{stat}" for m in METRICS for stat in ("mean", "std")
]
#: Fixed columns after the per-structure columns.
TAIL_COLUMNS: list[str] = ["gap_closed", "protocol", "dataset_version", "method_version", "commit"]
#: All fixed columns in order; per-structure columns go between LEAD and TAIL
#: (see :func:`columns_for`).
COLUMNS: list[str] = LEAD_COLUMNS + TAIL_COLUMNS

_TEXT_COLUMNS = ["dataset", "direction", "method", "selection", "preset",
                 "protocol", "dataset_version", "method_version", "commit"]
_INT_COLUMNS = ["seeds_done", "seeds_failed"]


def columns_for(structures: Sequence[str]) -> list[str]:
    """Full column order for a table with the given structures."""
    per_structure = [f"{m}_{s}" for m in METRICS for s in structures]
    return LEAD_COLUMNS + per_structure + TAIL_COLUMNS


def structures_of(df: pd.DataFrame) -> list[str]:
    """Structure names present as ``dice_<S>`` columns, in column order."""
    fixed = set(COLUMNS)
    return [c[len("dice_"):] for c in df.columns
            if isinstance(c, str) and c.startswith("dice_") and c not in fixed]


def float_columns(structures: Sequence[str]) -> list[str]:
    """The columns holding floats: metric statistics, per-structure metrics and ``gap_closed``."""
    cols = [f"{m}_{stat}" for m in METRICS for stat in ("mean", "std")]
    cols += [f"{m}_{s}" for m in METRICS for s in structures]
    return cols + ["gap_closed"]


def normalize_shots(value: int | str) -> int | str:
    """Shots as ``int`` where numeric (a CSV cell holds text), else the string (``"all"``)."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    return int(value) if value.isdigit() else value


def shots_sort_key(value: int | str) -> tuple:
    """Numeric shots ascending, then ``"all"``, then any other string."""
    shots = normalize_shots(value)
    if isinstance(shots, int):
        return (0, shots, "")
    if shots == "all":
        return (1, 0, "")
    return (2, 0, shots)


def method_sort_key(label: str) -> tuple:
    """``source_only`` first, ``oracle`` last, other methods alphabetically; a method's ``@hp<k>`` rows after it."""
    base, sep, sample = label.rpartition("@hp")
    if not sep:
        base, sample = label, ""
    rank = 0 if base == SOURCE_ONLY else 2 if base == ORACLE else 1
    sample_key = (0, int(sample), "") if sample.isdigit() else (1 if sample else -1, 0, sample)
    return (rank, base, sample_key)


COLUMN_DESCRIPTIONS: dict[str, str] = {
    "dataset": "Dataset identifier; one sub-directory per dataset.",
    "direction": "Adaptation direction, source modality to target modality "
                 "(e.g. `mr2ct`); one CSV per direction.",
    "method": "Row name: the method, then its command-line settings after `:` "
              "(a variant, e.g. an ablation), then each plug-in after `+` with "
              "its own settings after `:`, then `@hp<k>` for a non-default "
              "hyper-parameter sample k; e.g. `metahallu:meta=false+cdtg` or "
              "`source_only@hp3`. Each name is a row of its own.",
    "shots": "Number K of labeled *source* training volumes (labeled *target* "
             "volumes for `oracle`), chosen by the seed; or `all`.",
    "selection": "How the evaluated weights were chosen. `last` = the final "
                 "weights after a fixed training budget (no model selection "
                 "on target labels).",
    "preset": "Run-size preset (`quick`, `standard` or `paper`): slice size, "
              "training steps, batch size and backbone.",
    "seeds_done": "Number of distinct seeds with a completed (status `ok`) trial.",
    "seeds_failed": "Number of distinct seeds whose trials failed and that have "
                    "no completed trial. Failures are never hidden: a row whose "
                    "seeds all failed is still listed, with empty metric cells.",
    "dice_mean": "Dice (0-1, higher is better): mean over completed seeds of "
                 "each trial's Dice averaged over structures and test volumes.",
    "dice_std": "Sample standard deviation (ddof=1) over seeds of the same "
                "per-trial value; empty when fewer than two seeds completed.",
    "assd_mm_mean": "Average symmetric surface distance in mm (lower is better): "
                    "mean over completed seeds of the per-trial value averaged "
                    "over structures and test volumes.",
    "assd_mm_std": "Sample standard deviation (ddof=1) of ASSD over seeds; "
                   "empty when fewer than two seeds completed.",
    "hd95_mm_mean": "95th-percentile Hausdorff distance in mm (lower is better): "
                    "mean over completed seeds of the per-trial value averaged "
                    "over structures and test volumes.",
    "hd95_mm_std": "Sample standard deviation (ddof=1) of HD95 over seeds; "
                   "empty when fewer than two seeds completed.",
    "dice_<S>": "Dice of structure S (mean over test volumes, then mean over "
                "completed seeds); one column per structure of the dataset.",
    "assd_mm_<S>": "ASSD (mm) of structure S, mean over test volumes then over seeds.",
    "hd95_mm_<S>": "HD95 (mm) of structure S, mean over test volumes then over seeds.",
    "gap_closed": "Fraction of the source-only to oracle Dice gap closed: "
                  "(dice_mean - dice_mean[source_only]) / "
                  "(dice_mean[oracle] - dice_mean[source_only]), using the "
                  "`source_only` and `oracle` rows with the same shots, "
                  "selection, preset and protocol. 0 for source_only, 1 for oracle; "
                  "empty when a reference row is missing or has no completed "
                  "seed, or the denominator is <= 1e-9.",
    "protocol": "Evaluation protocol of the row's trials; one table holds one "
                "protocol (rows of an earlier one are under `archive/`).",
    "dataset_version": "Dataset version(s) of the contributing trials "
                       "(joined with `+` if several).",
    "method_version": "Method implementation version(s) of the contributing "
                      "trials (joined with `+` if several).",
    "commit": "Git commit(s) of the code that ran the contributing trials "
              "(joined with `+` if several; `unknown` outside a git checkout).",
}

_README_HEAD = """\
# Leaderboards

Results of the few-shot cross-modality domain adaptation benchmark (protocol
`fsuda-v2`: every test volume scored on its native grid, in mm). Every file here
but `NOTES.md` is generated by `python -m benchmark publish RUN_DIR`; never edit
them by hand. Each row can be re-run with `python -m
benchmark run` using its method, shots, preset and the seeds it reports, at the
commit it names. `NOTES.md` holds the measurements behind some methods' settings.

Layout: one directory per dataset and, inside it, one file set per adaptation
direction (a *track*):

* `<dataset>/<direction>.csv` - the table (machine readable, source of truth);
* `<dataset>/<direction>.md`  - the same table rendered as Markdown;
* `<dataset>/<direction>.png` - mean Dice against the number of shots,
  one line per method, one panel per (preset, selection);
* `<dataset>/archive/<protocol>/<direction>.*` - the rows of an earlier
  protocol, moved there unchanged when the first rows of the next one were
  published (one table never mixes protocols: `fsuda-v1` scored on the
  resized slices of the slice cache, so its numbers are not comparable).

Each row aggregates the seeds of one (method, shots, selection, preset)
combination. Publishing a row replaces the row with the same method, shots,
selection and preset; other rows are kept. `gap_closed` is recomputed for the
whole file on every publish.

Conventions:

* An empty cell means "not available" (NaN), e.g. a standard deviation with
  fewer than two completed seeds, or metrics of a row whose seeds all failed.
* Floating-point values are rounded to 4 decimals.
* Rows are sorted by method (`source_only` first, `oracle` last, others
  alphabetically in between) and then by shots (numerically, `all` last).
* Failed trials are never hidden; see `seeds_failed`.

Where the columns come from: every row is built from the records its trials
wrote into their run's results store (`<run>/trials/<trial id>/result.json`).
The metric columns aggregate each record's per-volume metrics (`summary`,
`volumes`); `method`, `shots`, `selection`, `preset`, `protocol`,
`dataset_version` and `method_version` come from the trial's configuration
(`config`); `commit` from the record. A record holds more than the row shows:
the version of every package that can move a number (torch, torchvision,
numpy, scipy, OpenCV, albumentations, segmentation-models-pytorch, timm,
nibabel, pydicom, Pillow, edt, pandas, Ray) under `versions`, the labeled
volumes' IDs under `labeled_volumes`, the device, the determinism settings
(`determinism`, with the CPU's vector instructions that torch used), the final losses and the timing.

## Columns

Columns appear in the order below; `<S>` stands for each segmentation
structure of the dataset, in the dataset's order (all `dice_<S>` columns, then
all `assd_mm_<S>`, then all `hd95_mm_<S>`).

| column | description |
| --- | --- |
"""


def _readme_text() -> str:
    lines = [f"| `{name}` | {desc} |" for name, desc in COLUMN_DESCRIPTIONS.items()]
    return _README_HEAD + "\n".join(lines) + "\n"


#: Text of ``<leaderboards_dir>/README.md``, rewritten on every publish.
README_TEXT: str = _readme_text()

# Keep the README in step with the schema.
assert list(COLUMN_DESCRIPTIONS) == columns_for(["<S>"]), "column descriptions out of sync"


def _cell_float(value: Any) -> float:
    """A float column's value: a number, or the text of a CSV cell, where an empty cell is NaN."""
    return math.nan if isinstance(value, str) and value == "" else float(value)


def conform(df: pd.DataFrame, structures: Sequence[str]) -> pd.DataFrame:
    """``df`` with the columns of :func:`columns_for` ``(structures)``, in order, each of its type.

    A metric column of a structure not listed is dropped and one that is missing is NaN. Values may be those of
    aggregated rows or the text of CSV cells.
    """
    out: dict[str, Any] = {}
    for col in columns_for(structures):
        values = list(df[col]) if col in df.columns else [math.nan] * len(df)
        if col == "shots":
            out[col] = pd.Series([normalize_shots(v) for v in values], dtype=object)
        elif col in _INT_COLUMNS:
            out[col] = pd.Series([int(v) for v in values], dtype="int64")
        elif col in _TEXT_COLUMNS:
            out[col] = pd.Series(values, dtype=str)
        else:
            out[col] = pd.Series([_cell_float(v) for v in values], dtype="float64")
    return pd.DataFrame(out, columns=columns_for(structures))


def tracks(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, direction) pairs of ``df``'s rows, sorted."""
    return sorted(set(zip(df["dataset"], df["direction"])))


def track_rows(df: pd.DataFrame, dataset: str, direction: str) -> pd.DataFrame:
    """The rows of one track, renumbered from 0."""
    mask = (df["dataset"] == dataset) & (df["direction"] == direction)
    return df[mask.to_numpy()].reset_index(drop=True)
