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
#: Within one track's table (which holds one protocol), a row is identified by these columns: everything that
#: changes its numbers (the method's row name holds its variant, plug-ins and hyperparameter sample; ``preset``
#: its overrides, e.g. ``quick[steps=20]``).
ROW_KEY: tuple[str, ...] = ("method", "shots", "selection", "preset", "dataset_version", "method_version")
#: The statistics of a row beside each metric's mean and standard deviation: the 95% confidence interval of the
#: mean by a hierarchical bootstrap over seeds, then test volumes (:mod:`benchmark.stats`).
CI_STATS: tuple[str, ...] = ("ci_low", "ci_high")
#: The row's rank by mean Dice among the rows of its group (same shots, selection, preset and dataset version),
#: with its bootstrap 95% interval, and its paired comparison with ``source_only`` of the same group.
RANK_COLUMNS: list[str] = ["rank", "rank_low", "rank_high"]
BASELINE = SOURCE_ONLY
COMPARISON_COLUMNS: list[str] = ["vs_source_only_dice", "vs_source_only_ci_low", "vs_source_only_ci_high",
                                 "vs_source_only_p_holm"]
#: Fixed columns before the per-structure columns.
LEAD_COLUMNS: list[str] = KEY_COLUMNS + ["seeds_done", "seeds_failed"] + [
    f"{m}_{stat}" for m in METRICS for stat in ("mean", "std", *CI_STATS)
] + RANK_COLUMNS + COMPARISON_COLUMNS
#: Fixed columns after the per-structure columns.
TAIL_COLUMNS: list[str] = ["gap_closed", "protocol", "dataset_version", "method_version", "commit"]
#: All fixed columns in order; per-structure columns go between LEAD and TAIL
#: (see :func:`columns_for`).
COLUMNS: list[str] = LEAD_COLUMNS + TAIL_COLUMNS

_TEXT_COLUMNS = ["dataset", "direction", "method", "selection", "preset",
                 "protocol", "dataset_version", "method_version", "commit"]
_INT_COLUMNS = ["seeds_done", "seeds_failed"]


def per_structure_columns(structures: Sequence[str]) -> list[str]:
    """``dice_<S>``, ``assd_mm_<S>``, ``hd95_mm_<S>`` for every structure, then their confidence limits
    ``dice_ci_low_<S>``, ``dice_ci_high_<S>``, ..."""
    cols = [f"{m}_{s}" for m in METRICS for s in structures]
    return cols + [f"{m}_{stat}_{s}" for m in METRICS for stat in CI_STATS for s in structures]


def columns_for(structures: Sequence[str]) -> list[str]:
    """Full column order for a table with the given structures."""
    return LEAD_COLUMNS + per_structure_columns(structures) + TAIL_COLUMNS


def structures_of(df: pd.DataFrame) -> list[str]:
    """Structure names present as ``dice_<S>`` columns, in column order (confidence limits excluded)."""
    fixed = set(COLUMNS)
    return [c[len("dice_"):] for c in df.columns
            if isinstance(c, str) and c.startswith("dice_") and c not in fixed
            and not c.startswith(tuple(f"dice_{stat}_" for stat in CI_STATS))]


def float_columns(structures: Sequence[str]) -> list[str]:
    """The columns holding floats: every statistic, the per-structure metrics and ``gap_closed``."""
    text_or_int = set(_TEXT_COLUMNS) | set(_INT_COLUMNS) | {"shots"}
    return [c for c in columns_for(structures) if c not in text_or_int]


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


_CI = ("95% confidence interval of the mean over seeds and test volumes by a hierarchical bootstrap (seeds "
       "resampled, then test volumes within each; 2000 replicates, percentile interval): ")
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "dataset": "Dataset identifier; one sub-directory per dataset.",
    "direction": "Adaptation direction, source modality to target modality "
                 "(e.g. `mr2ct`); one CSV per direction.",
    "method": "Row name: the method, then its command-line settings after `:` "
              "(a variant, e.g. an ablation), then each plug-in after `+` with "
              "its own settings after `:`, then `@hp<k>` for a non-default "
              "hyper-parameter sample k; e.g. `metahallu:meta=false+cdtg` or "
              "`source_only@hp3`; `external:NAME` for predictions scored with "
              "`python -m benchmark evaluate`. Each name is a row of its own.",
    "shots": "Number K of labeled *source* training volumes (labeled *target* "
             "volumes for `oracle`), chosen by the seed; or `all`.",
    "selection": "How the evaluated weights were chosen. `last` = the final "
                 "weights after a fixed training budget (no model selection "
                 "on target labels); `external` = not trained by the suite.",
    "preset": "Run-size preset (`quick`, `standard` or `paper`: slice size, "
              "training steps, batch size and backbone), followed by every "
              "setting that differs from it, e.g. `quick[steps=20]`: a short "
              "run is a row of its own, never a replacement of the full one.",
    "seeds_done": "Number of distinct seeds with a completed (status `ok`) trial.",
    "seeds_failed": "Number of distinct seeds whose trials failed and that have "
                    "no completed trial. Failures are never hidden: a row whose "
                    "seeds all failed is still listed, with empty metric cells.",
    "dice_mean": "Dice (0-1, higher is better): mean over completed seeds of "
                 "each trial's Dice averaged over structures and test volumes.",
    "dice_std": "Sample standard deviation (ddof=1) over seeds of the same "
                "per-trial value; empty when fewer than two seeds completed.",
    "dice_ci_low": _CI + "lower limit, Dice averaged over structures.",
    "dice_ci_high": _CI + "upper limit, Dice averaged over structures.",
    "assd_mm_mean": "Average symmetric surface distance in mm (lower is better): "
                    "mean over completed seeds of the per-trial value averaged "
                    "over structures and test volumes.",
    "assd_mm_std": "Sample standard deviation (ddof=1) of ASSD over seeds; "
                   "empty when fewer than two seeds completed.",
    "assd_mm_ci_low": _CI + "lower limit, ASSD averaged over structures.",
    "assd_mm_ci_high": _CI + "upper limit, ASSD averaged over structures.",
    "hd95_mm_mean": "95th-percentile Hausdorff distance in mm (lower is better): "
                    "mean over completed seeds of the per-trial value averaged "
                    "over structures and test volumes.",
    "hd95_mm_std": "Sample standard deviation (ddof=1) of HD95 over seeds; "
                   "empty when fewer than two seeds completed.",
    "hd95_mm_ci_low": _CI + "lower limit, HD95 averaged over structures.",
    "hd95_mm_ci_high": _CI + "upper limit, HD95 averaged over structures.",
    "rank": "Rank by mean Dice (1 = best, ties share the better rank) among the "
            "rows with the same shots, selection, preset and dataset version "
            "whose trials cover the same seeds and test volumes; empty for a "
            "row outside that set.",
    "rank_low": "2.5th percentile of the row's rank over 2000 bootstrap "
                "replicates that resample seeds, then test volumes, jointly for "
                "all rows of the group (the rank stability of challenge reports, "
                "Maier-Hein et al., Nat. Commun. 2018; challengeR).",
    "rank_high": "97.5th percentile of the same bootstrap ranks.",
    "vs_source_only_dice": "Mean paired Dice difference, this row minus "
                           "`source_only` of the same group, over the (seed, "
                           "test volume) pairs both have.",
    "vs_source_only_ci_low": "Lower limit of the hierarchical bootstrap 95% "
                             "confidence interval of that paired difference.",
    "vs_source_only_ci_high": "Upper limit of that interval.",
    "vs_source_only_p_holm": "Two-sided Wilcoxon signed-rank p-value of the "
                             "paired per-volume Dice (`scipy.stats.wilcoxon`), "
                             "Holm-corrected over the comparisons with "
                             "`source_only` under one preset and selection of "
                             "the table. The test treats the pairs as independent; "
                             "the interval respects seeds and volumes.",
    "dice_<S>": "Dice of structure S (mean over test volumes, then mean over "
                "completed seeds); one column per structure of the dataset.",
    "assd_mm_<S>": "ASSD (mm) of structure S, mean over test volumes then over seeds.",
    "hd95_mm_<S>": "HD95 (mm) of structure S, mean over test volumes then over seeds.",
    "dice_ci_low_<S>": _CI + "lower limit, Dice of structure S.",
    "dice_ci_high_<S>": _CI + "upper limit, Dice of structure S.",
    "assd_mm_ci_low_<S>": _CI + "lower limit, ASSD of structure S.",
    "assd_mm_ci_high_<S>": _CI + "upper limit, ASSD of structure S.",
    "hd95_mm_ci_low_<S>": _CI + "lower limit, HD95 of structure S.",
    "hd95_mm_ci_high_<S>": _CI + "upper limit, HD95 of structure S.",
    "gap_closed": "Fraction of the source-only to oracle Dice gap closed: "
                  "(dice_mean - dice_mean[source_only]) / "
                  "(dice_mean[oracle] - dice_mean[source_only]), using the "
                  "`source_only` and `oracle` rows with the same shots, "
                  "selection, preset, dataset version and protocol. 0 for "
                  "source_only, 1 for oracle; empty when a reference row is "
                  "missing or has no completed seed, or the denominator is "
                  "<= 1e-9.",
    "protocol": "Evaluation protocol of the row's trials; one table holds one "
                "protocol (rows of an earlier one are under `archive/`).",
    "dataset_version": "Dataset version of the row's trials (part of the row's "
                       "identity).",
    "method_version": "Method implementation version of the row's trials, "
                      "followed by each plug-in's, with the model it reads in brackets "
                      "(`2 cdtg-2[minilm]`: cdtg version 2 on the MiniLM text encoder; "
                      "part of the row's identity).",
    "commit": "Git commit(s) of the code that ran the contributing trials "
              "(joined with `+` if several; `unknown` outside a git checkout; "
              "`-dirty` marks a tree with uncommitted changes, which publishing "
              "refuses without `--allow-dirty`).",
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
* `<dataset>/<direction>.png` and `.svg` - mean Dice against the number of
  shots with 95% confidence intervals, one line per row, and the Dice of each
  structure at the largest shot count, drawn from the table as published
  (`python -m benchmark publish --rerender` draws them again after a change
  to how figures are drawn, and refuses if a table would change);
* `<dataset>/<direction>.ranks.png` - each row's bootstrap rank distribution
  (a challengeR "blob plot") at the largest shot count;
* `<dataset>/<direction>.volumes.csv` - one line per trial x test volume x
  structure: the data behind every interval, rank and comparison;
* `<dataset>/<direction>.validators.csv` - for the rows of a selection study,
  how well each checkpoint score ranks a method's checkpoints by target test
  Dice (Spearman, Kendall; one line per method, method version, shots, preset
  and validator), summarised at the end of this file;
* `<dataset>/archive/<protocol>/<direction>.*` - the rows of an earlier
  protocol, moved there unchanged when the first rows of the next one were
  published (one table never mixes protocols: `fsuda-v1` scored on the
  resized slices of the slice cache, so its numbers are not comparable);
* `<dataset>/archive/<protocol>/superseded/<direction>.*` - rows of earlier
  versions of a method, moved there unchanged when rows of its next version
  were published (one table holds one version of each method).

A row aggregates the seeds of one (method, shots, selection, preset, dataset
version, method version); the preset names every setting a run overrode, e.g.
`quick[steps=20]`, so a short run is a row of its own. Publishing prints every
row it adds or replaces; it refuses, naming the row, to replace a row by one
with fewer seeds (`--replace` allows it) or to publish rows whose trials ran
from a tree with uncommitted changes (`--allow-dirty`); `--dry-run` only
prints. `gap_closed`, the intervals, ranks and comparisons are recomputed for
the whole file on every publish, each bootstrap from a generator seeded by
what it computes: a row's intervals never depend on the other rows, while its
rank and Holm-corrected p-value are relative to the rows of its group (same
shots, selection, preset and dataset version) and move only when that group
changes.
`python -m benchmark compare leaderboards --track DATASET/DIRECTION` prints
every paired comparison of a track, and `python -m benchmark leaderboard
leaderboards --format latex` a booktabs table.

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
(`determinism`, with the CPU's model and the vector instructions that torch
used), the final losses and the timing.

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
