"""Leaderboards: aggregate trial records into per-track tables.

A *track* is a (dataset, direction) pair. Each track gets one CSV file at
``<dir>/<dataset>/<direction>.csv`` with a Markdown rendering (``.md``) and a
plot (``.png``) beside it. A row of the table aggregates the seeds of one
(dataset, direction, method, shots, selection, preset) combination.

Conventions
-----------
* ``*_mean`` is the mean over completed seeds of the per-trial summary (itself
  a mean over test volumes); ``*_std`` is the sample standard deviation
  (``ddof=1``) over seeds and is empty (NaN) when fewer than two seeds
  completed.
* Failed trials are never hidden: ``seeds_failed`` counts them, and a
  combination whose seeds all failed still gets a row with empty metrics.
* A seed with at least one ``ok`` record counts as done (the last ``ok`` record
  in input order is used); a seed with only non-``ok`` records counts as failed.
* NaN is written as an empty CSV cell; floats are rounded to 4 decimals.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io import atomic_write_bytes, atomic_write_text
from .protocol import composed_name

__all__ = [
    "METRICS",
    "KEY_COLUMNS",
    "ROW_KEY",
    "LEAD_COLUMNS",
    "TAIL_COLUMNS",
    "COLUMNS",
    "COLUMN_DESCRIPTIONS",
    "README_TEXT",
    "PLOT_DPI",
    "columns_for",
    "structures_of",
    "method_label",
    "normalize_shots",
    "shots_sort_key",
    "build_rows",
    "recompute_gap_closed",
    "sort_rows",
    "write_leaderboards",
    "read_leaderboard",
    "format_table",
    "render_markdown",
    "render_plot",
    "publish",
]

# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------

METRICS: tuple[str, ...] = ("dice", "assd_mm", "hd95_mm")
SOURCE_ONLY = "source_only"
ORACLE = "oracle"
GAP_EPS = 1e-9
FLOAT_DECIMALS = 4
PLOT_DPI = 100

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
_PROVENANCE_FIELDS = ("protocol", "dataset_version", "method_version")


def columns_for(structures: Sequence[str]) -> list[str]:
    """Full column order for a table with the given structures."""
    per_structure = [f"{m}_{s}" for m in METRICS for s in structures]
    return LEAD_COLUMNS + per_structure + TAIL_COLUMNS


def structures_of(df: pd.DataFrame) -> list[str]:
    """Structure names present as ``dice_<S>`` columns, in column order."""
    fixed = set(COLUMNS)
    return [c[len("dice_"):] for c in df.columns
            if isinstance(c, str) and c.startswith("dice_") and c not in fixed]


def _is_metric_column(col: Any) -> bool:
    """True for fixed metric columns and per-structure ``<metric>_<S>`` columns."""
    return isinstance(col, str) and any(col.startswith(f"{m}_") for m in METRICS)


def _float_columns(structures: Sequence[str]) -> list[str]:
    cols = [f"{m}_{stat}" for m in METRICS for stat in ("mean", "std")]
    cols += [f"{m}_{s}" for m in METRICS for s in structures]
    return cols + ["gap_closed"]


COLUMN_DESCRIPTIONS: dict[str, str] = {
    "dataset": "Dataset identifier; one sub-directory per dataset.",
    "direction": "Adaptation direction, source modality to target modality "
                 "(e.g. `mr2ct`); one CSV per direction.",
    "method": "Method name. Trials with a non-default hyper-parameter sample k "
              "appear as separate rows named `<method>@hp<k>`.",
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
                  "selection and preset. 0 for source_only, 1 for oracle; "
                  "empty when a reference row is missing or has no completed "
                  "seed, or the denominator is <= 1e-9.",
    "protocol": "Evaluation protocol identifier of the contributing trials "
                "(several values joined with `+`, sorted).",
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
`fsuda-v1`). Every file here is generated by `python -m benchmark publish RUN_DIR`;
never edit them by hand. Each row can be re-run with `python -m benchmark run`
using its method, shots, preset and the seeds it reports, at the commit it names.

Layout: one directory per dataset and, inside it, one file set per adaptation
direction (a *track*):

* `<dataset>/<direction>.csv` - the table (machine readable, source of truth);
* `<dataset>/<direction>.md`  - the same table rendered as Markdown;
* `<dataset>/<direction>.png` - mean Dice against the number of shots,
  one line per method, one panel per (preset, selection).

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


# --------------------------------------------------------------------------
# Small value helpers
# --------------------------------------------------------------------------

def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        return bool(pd.isna(value)) if not isinstance(value, (list, dict, tuple)) else False
    except (TypeError, ValueError):
        return False


def _text(value: Any) -> str:
    return "" if _is_missing(value) else str(value)


def _to_float(value: Any) -> float:
    if _is_missing(value):
        return math.nan
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _to_int(value: Any) -> int:
    f = _to_float(value)
    return 0 if math.isnan(f) else int(f)


def normalize_shots(value: Any) -> int | str:
    """Shots as ``int`` where numeric, else the string (e.g. ``"all"``)."""
    if _is_missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else str(value)
    text = str(value).strip()
    body = text[1:] if text[:1] in "+-" else text
    if body.isdigit():
        return int(text)
    return text


def shots_sort_key(value: Any) -> tuple:
    """Numeric shots ascending, then ``"all"``, then any other string."""
    shots = normalize_shots(value)
    if isinstance(shots, int):
        return (0, shots, "")
    if shots == "all":
        return (1, 0, "")
    return (2, 0, shots)


def method_label(config: dict) -> str:
    """Method name as shown on the leaderboard (``<method>[:<variant>][+<plug-in>[:<variant>]...]`` and
    ``@hp<k>`` for k != 0), e.g. ``metahallu+cdtg``."""
    method = composed_name(_text(config.get("method")), config.get("variant") or "", config.get("plugins") or ())
    sample = config.get("hparam_sample", 0)
    if _is_missing(sample):
        sample = 0
    try:
        is_default = int(sample) == 0
    except (TypeError, ValueError):
        is_default = False
    return method if is_default else f"{method}@hp{sample}"


def _method_version(config: dict) -> Any:
    """The method's version, followed by each plug-in's (``2 cdtg-1``) for a composed method."""
    version = config.get("method_version")
    plugins = config.get("plugins") or ()
    if not plugins:
        return version
    return " ".join([_text(version)] + [f"{p['name']}-{p.get('version', '')}" for p in plugins])


def _method_sort_key(label: str) -> tuple:
    base, sep, sample = label.rpartition("@hp")
    if not sep:
        base, sample = label, ""
    rank = 0 if base == SOURCE_ONLY else 2 if base == ORACLE else 1
    sample_key = (0, int(sample), "") if sample.isdigit() else (1 if sample else -1, 0, sample)
    return (rank, base, sample_key)


def _row_sort_key(row: dict) -> tuple:
    return (
        row["dataset"], row["direction"], _method_sort_key(row["method"]),
        shots_sort_key(row["shots"]), row["selection"], row["preset"],
    )


def _join_sorted(values: Iterable[Any]) -> str:
    return "+".join(sorted({_text(v) for v in values} - {""}))


def _safe_component(name: str, what: str) -> str:
    if name in ("", ".", "..") or any(ch in name for ch in ("/", "\\", "\0")):
        raise ValueError(f"{what} {name!r} cannot be used as a file name")
    return name


# --------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------

def _record_structures(record: dict) -> list[str]:
    structures = record.get("structures")
    if isinstance(structures, (list, tuple)) and structures:
        return [str(s) for s in structures]
    summary = record.get("summary") or {}
    dice = summary.get("dice") if isinstance(summary, dict) else None
    if isinstance(dice, dict):
        return [str(k) for k in dice if k != "mean"]
    return []


def _is_ok(record: dict) -> bool:
    if record.get("status") != "ok":
        return False
    summary = record.get("summary")
    return isinstance(summary, dict) and isinstance(summary.get("dice"), dict)


def _summary_value(record: dict, metric: str, key: str) -> float:
    block = (record.get("summary") or {}).get(metric)
    if not isinstance(block, dict):
        return math.nan
    return _to_float(block.get(key))


def _seed_key(seed: Any) -> Any:
    try:
        hash(seed)
    except TypeError:
        return repr(seed)
    return seed


def _seed_order(seed: Any) -> tuple:
    if isinstance(seed, (int, float, np.integer, np.floating)) and not isinstance(seed, bool):
        return (0, float(seed), "")
    return (1, 0.0, str(seed))


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    mean = float(np.mean(arr))
    std = float(np.std(arr, ddof=1)) if arr.size >= 2 else math.nan
    return mean, std


def _aggregate(key: tuple, records: list[dict], structures: list[str]) -> dict:
    dataset, direction, method, shots, selection, preset = key
    ok_by_seed: dict[Any, dict] = {}
    seen_seeds: dict[Any, Any] = {}
    for rec in records:
        seed = (rec.get("config") or {}).get("seed")
        skey = _seed_key(seed)
        seen_seeds[skey] = seed
        if _is_ok(rec):
            ok_by_seed[skey] = rec  # the last ok record of a seed wins
    failed = [s for s in seen_seeds if s not in ok_by_seed]
    used = [ok_by_seed[s] for s in sorted(ok_by_seed, key=lambda s: _seed_order(seen_seeds[s]))]

    row: dict[str, Any] = {
        "dataset": dataset, "direction": direction, "method": method, "shots": shots,
        "selection": selection, "preset": preset,
        "seeds_done": len(used), "seeds_failed": len(failed),
    }
    for metric in METRICS:
        mean, std = _mean_std([_summary_value(r, metric, "mean") for r in used])
        row[f"{metric}_mean"] = mean
        row[f"{metric}_std"] = std
    for metric in METRICS:
        for s in structures:
            row[f"{metric}_{s}"] = _mean_std([_summary_value(r, metric, s) for r in used])[0]
    row["gap_closed"] = math.nan
    provenance_from = used if used else records
    for field in _PROVENANCE_FIELDS:
        value = _method_version if field == "method_version" else lambda cfg, f=field: cfg.get(f)
        row[field] = _join_sorted(value(r.get("config") or {}) for r in provenance_from)
    row["commit"] = _join_sorted(r.get("commit") for r in provenance_from)
    return row


def _finalize(df: pd.DataFrame, structures: Sequence[str]) -> pd.DataFrame:
    """Reindex to the canonical column order and coerce column types."""
    cols = columns_for(structures)
    extras = [c for c in df.columns if c not in cols and not _is_metric_column(c)]
    n = len(df)
    out: dict[str, Any] = {}
    for col in cols + extras:
        values = list(df[col]) if col in df.columns else [None] * n
        if col == "shots":
            out[col] = pd.Series([normalize_shots(v) for v in values], dtype=object)
        elif col in _INT_COLUMNS:
            out[col] = pd.Series([_to_int(v) for v in values], dtype="int64")
        elif col in _TEXT_COLUMNS or col in extras:
            out[col] = pd.Series([_text(v) for v in values], dtype=str)
        else:
            out[col] = pd.Series([_to_float(v) for v in values], dtype="float64")
    return pd.DataFrame(out, columns=cols + extras)


def recompute_gap_closed(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``df`` with ``gap_closed`` computed from its own rows.

    References are the ``source_only`` and ``oracle`` rows sharing dataset,
    direction, shots, selection and preset.
    """
    out = df.copy()
    if out.empty:
        out["gap_closed"] = pd.Series(dtype="float64")
        return out
    refs: dict[tuple, dict[str, float]] = {}
    for _, r in out.iterrows():
        if r["method"] in (SOURCE_ONLY, ORACLE):
            ref_key = (r["dataset"], r["direction"], normalize_shots(r["shots"]),
                       r["selection"], r["preset"])
            refs.setdefault(ref_key, {})[r["method"]] = _to_float(r["dice_mean"])
    gaps = []
    for _, r in out.iterrows():
        ref = refs.get((r["dataset"], r["direction"], normalize_shots(r["shots"]),
                        r["selection"], r["preset"]), {})
        low = ref.get(SOURCE_ONLY, math.nan)
        high = ref.get(ORACLE, math.nan)
        value = _to_float(r["dice_mean"])
        denom = high - low
        if any(math.isnan(x) for x in (low, high, value)) or not denom > GAP_EPS:
            gaps.append(math.nan)
        else:
            gaps.append((value - low) / denom)
    out["gap_closed"] = pd.Series(gaps, index=out.index, dtype="float64")
    return out


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Sort by dataset, direction, method (source_only first, oracle last), shots."""
    if df.empty:
        return df.reset_index(drop=True)
    order = sorted(range(len(df)), key=lambda i: _row_sort_key(
        {c: df[c].iloc[i] for c in KEY_COLUMNS}))
    return df.iloc[order].reset_index(drop=True)


def build_rows(records: list[dict]) -> pd.DataFrame:
    """Aggregate trial records into leaderboard rows (one per key combination).

    Structure columns are the union of the records' structures in order of
    first appearance. ``gap_closed`` is computed; rows are sorted.
    """
    groups: dict[tuple, list[dict]] = {}
    structures: list[str] = []
    for rec in records:
        cfg = rec.get("config") or {}
        key = (
            _text(cfg.get("dataset")), _text(cfg.get("direction")), method_label(cfg),
            normalize_shots(cfg.get("shots")), _text(cfg.get("selection")),
            _text(cfg.get("preset")),
        )
        groups.setdefault(key, []).append(rec)
        for s in _record_structures(rec):
            if s not in structures:
                structures.append(s)
    rows = [_aggregate(key, recs, structures) for key, recs in groups.items()]
    df = _finalize(pd.DataFrame(rows, columns=columns_for(structures)), structures)
    return sort_rows(recompute_gap_closed(df))


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------

def _csv_text(df: pd.DataFrame) -> str:
    out = df.copy()
    for col in _float_columns(structures_of(df)):
        if col in out.columns:
            out[col] = out[col].astype("float64").round(FLOAT_DECIMALS)
    return out.to_csv(index=False, na_rep="", lineterminator="\n")


def read_leaderboard(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a leaderboard CSV: empty cells become NaN in numeric columns (and
    ``""`` in text columns); ``shots`` holds ints and ``"all"``."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    return _finalize(raw, structures_of(raw))


# --------------------------------------------------------------------------
# Text renderings
# --------------------------------------------------------------------------

def _fmt(value: Any, digits: int) -> str:
    v = _to_float(value)
    return "" if math.isnan(v) else f"{v:.{digits}f}"


def _fmt_pm(mean: Any, std: Any, digits: int) -> str:
    m = _fmt(mean, digits)
    if not m:
        return ""
    s = _fmt(std, digits)
    return f"{m} ± {s}" if s else m


def _seeds_cell(row: pd.Series) -> str:
    done, failed = int(row["seeds_done"]), int(row["seeds_failed"])
    return f"{done} ({failed} failed)" if failed else str(done)


def _tracks(df: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted({(str(a), str(b)) for a, b in zip(df["dataset"], df["direction"])})


def _track_rows(df: pd.DataFrame, dataset: str, direction: str) -> pd.DataFrame:
    mask = (df["dataset"] == dataset) & (df["direction"] == direction)
    return df[mask.to_numpy()].reset_index(drop=True)


def format_table(df: pd.DataFrame) -> str:
    """Compact fixed-width text table for the terminal (one section per track)."""
    if df.empty:
        return "(no rows)"
    structures = structures_of(df)
    sections = []
    for dataset, direction in _tracks(df):
        sub = _track_rows(df, dataset, direction)
        show_preset = sub["preset"].nunique() > 1
        header = ["method", "shots", "selection"] + (["preset"] if show_preset else [])
        header += ["seeds ok/fail", "Dice", "ASSD mm", "HD95 mm", "gap"]
        header += [f"Dice {s}" for s in structures]
        lines = [header]
        for _, r in sub.iterrows():
            cells = [str(r["method"]), str(r["shots"]), str(r["selection"])]
            if show_preset:
                cells.append(str(r["preset"]))
            cells += [
                f"{int(r['seeds_done'])}/{int(r['seeds_failed'])}",
                _fmt_pm(r["dice_mean"], r["dice_std"], 3) or "-",
                _fmt_pm(r["assd_mm_mean"], r["assd_mm_std"], 2) or "-",
                _fmt(r["hd95_mm_mean"], 2) or "-",
                _fmt(r["gap_closed"], 3) or "-",
            ]
            cells += [_fmt(r.get(f"dice_{s}"), 3) or "-" for s in structures]
            lines.append(cells)
        n_text = 4 if show_preset else 3
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out = [f"{dataset} / {direction}"]
        for line in lines:
            parts = [c.ljust(w) if i < n_text else c.rjust(w)
                     for i, (c, w) in enumerate(zip(line, widths))]
            out.append("  ".join(parts).rstrip())
        sections.append("\n".join(out))
    return "\n\n".join(sections)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _provenance_values(df: pd.DataFrame, col: str) -> str:
    values: set[str] = set()
    for v in df[col]:
        values.update(p for p in _text(v).split("+") if p)
    return ", ".join(sorted(values)) or "n/a"


def render_markdown(df: pd.DataFrame) -> str:
    """Markdown rendering of a leaderboard (normally one track)."""
    tracks = _tracks(df) if not df.empty else []
    title = ", ".join(f"{a} / {b}" for a, b in tracks) or "(empty)"
    lines = [f"# Leaderboard: {title}", ""]
    if df.empty:
        lines += ["No results yet.", ""]
        return "\n".join(lines)
    lines.append(
        f"Protocol: {_provenance_values(df, 'protocol')}; "
        f"preset: {_provenance_values(df, 'preset')}; "
        f"commit: {_provenance_values(df, 'commit')}; "
        f"dataset version: {_provenance_values(df, 'dataset_version')}; "
        f"method version: {_provenance_values(df, 'method_version')}"
    )
    lines.append("")
    structures = structures_of(df)
    header = ["method", "shots", "selection", "preset", "seeds", "Dice",
              "ASSD (mm)", "HD95 (mm)", "gap closed"] + [f"Dice {s}" for s in structures]
    lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
    lines.append("|" + "|".join(["---"] * 5 + ["---:"] * (len(header) - 5)) + "|")
    for _, r in df.iterrows():
        cells = [
            str(r["method"]), str(r["shots"]), str(r["selection"]), str(r["preset"]),
            _seeds_cell(r),
            _fmt_pm(r["dice_mean"], r["dice_std"], 3),
            _fmt_pm(r["assd_mm_mean"], r["assd_mm_std"], 2),
            _fmt_pm(r["hd95_mm_mean"], r["hd95_mm_std"], 2),
            _fmt(r["gap_closed"], 3),
        ] + [_fmt(r.get(f"dice_{s}"), 3) for s in structures]
        lines.append("| " + " | ".join(_md_escape(c) or "-" for c in cells) + " |")
    lines += [
        "",
        "Notes:",
        "",
        "- `selection=last` means the final weights after a fixed training budget "
        "are evaluated (no model selection on target labels).",
        "- Values are mean ± sample std (ddof=1) over seeds; the std is omitted "
        "when fewer than two seeds completed.",
        "- `seeds` counts completed seeds; failed seeds are shown in parentheses. "
        "A row whose seeds all failed has no metrics (`-`).",
        "- `gap closed` = (Dice - Dice[source_only]) / (Dice[oracle] - Dice[source_only]) "
        "at the same shots, selection and preset.",
        "- Column definitions: see the README of the leaderboards directory.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------

def render_plot(df: pd.DataFrame, title: str | None = None) -> bytes:
    """PNG bytes: mean Dice (± std) against shots, one line per method and one
    panel per (preset, selection)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if title is None:
        title = ", ".join(f"{a} / {b}" for a, b in _tracks(df)) if not df.empty else ""
    panels = sorted({(str(p), str(s)) for p, s in zip(df["preset"], df["selection"])})
    n = max(1, len(panels))
    fig = Figure(figsize=(4.8 * n, 3.6), dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg backend, independent of any global pyplot state
    axes = fig.subplots(1, n, squeeze=False)[0]
    # One colour per method, shared by all panels.
    all_methods = sorted({str(m) for m in df["method"]}, key=_method_sort_key)
    colours = {m: f"C{i % 10}" for i, m in enumerate(all_methods)}
    if not panels:
        axes[0].text(0.5, 0.5, "no results", ha="center", va="center",
                     transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, (preset, selection) in zip(axes, panels):
        sub = df[((df["preset"] == preset) & (df["selection"] == selection)).to_numpy()]
        shots = sorted({normalize_shots(s) for s in sub["shots"]}, key=shots_sort_key)
        pos = {s: i for i, s in enumerate(shots)}
        methods = sorted(set(sub["method"]), key=_method_sort_key)
        plotted = 0
        for method in methods:
            m = sub[(sub["method"] == method).to_numpy()]
            pts = sorted(
                ((pos[normalize_shots(s)], _to_float(mu), _to_float(sd))
                 for s, mu, sd in zip(m["shots"], m["dice_mean"], m["dice_std"])),
                key=lambda t: t[0])
            pts = [p for p in pts if not math.isnan(p[1])]
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = [p[1] for p in pts]
            err = [0.0 if math.isnan(p[2]) else p[2] for p in pts]
            base = _method_sort_key(method)[1]
            style = "--" if base in (SOURCE_ONLY, ORACLE) else "-"
            ax.errorbar(x, y, yerr=err, marker="o", markersize=4, linewidth=1.4,
                        linestyle=style, capsize=3, label=method, color=colours[str(method)])
            plotted += 1
        ax.set_xticks(range(len(shots)))
        ax.set_xticklabels([str(s) for s in shots])
        if shots:
            ax.set_xlim(-0.5, len(shots) - 0.5)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("shots (labeled volumes)")
        ax.set_ylabel("Dice (mean ± std over seeds)")
        ax.set_title(f"preset={preset}, selection={selection}", fontsize=9)
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no completed seeds", ha="center", va="center",
                    transform=ax.transAxes)
    fig.suptitle(title)
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI, metadata={"Software": None})
    return buf.getvalue()


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

def _write_track(df: pd.DataFrame, root: Path, dataset: str, direction: str) -> Path:
    folder = Path(root) / _safe_component(dataset, "dataset")
    stem = _safe_component(direction, "direction")
    csv_path = folder / f"{stem}.csv"
    atomic_write_text(csv_path, _csv_text(df))
    atomic_write_text(folder / f"{stem}.md", render_markdown(df))
    atomic_write_bytes(folder / f"{stem}.png", render_plot(df, f"{dataset} / {direction}"))
    return csv_path


def write_leaderboards(records: list[dict], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``out_dir/<dataset>/<direction>.{csv,md,png}`` for every track in
    ``records`` (overwriting). Returns the CSV paths, sorted by track."""
    by_track: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        cfg = rec.get("config") or {}
        by_track.setdefault((_text(cfg.get("dataset")), _text(cfg.get("direction"))), []).append(rec)
    paths = []
    for (dataset, direction), recs in sorted(by_track.items()):
        paths.append(_write_track(build_rows(recs), Path(out_dir), dataset, direction))
    return paths


def _row_key(row: pd.Series) -> tuple:
    return (str(row["method"]), normalize_shots(row["shots"]), str(row["selection"]),
            str(row["preset"]))


def _structures_with_data(df: pd.DataFrame, structures: Sequence[str]) -> list[str]:
    return [s for s in structures
            if any(f"{m}_{s}" in df.columns and df[f"{m}_{s}"].notna().any() for m in METRICS)]


def publish(rows: pd.DataFrame, leaderboards_dir: str | os.PathLike[str]) -> list[Path]:
    """Merge ``rows`` into ``leaderboards_dir/<dataset>/<direction>.csv``.

    Rows are identified within a track by (method, shots, selection, preset):
    an incoming row replaces an existing one with the same key; other rows are
    kept. ``gap_closed`` is recomputed for the whole file, the ``.md`` and
    ``.png`` are regenerated, and ``leaderboards_dir/README.md`` is rewritten.
    Returns the CSV paths written, sorted by track.
    """
    root = Path(leaderboards_dir)
    incoming_all = _finalize(rows, structures_of(rows))
    paths = []
    for dataset, direction in (_tracks(incoming_all) if not incoming_all.empty else []):
        incoming = _track_rows(incoming_all, dataset, direction)
        # Last occurrence wins among duplicate incoming keys.
        keys = [_row_key(r) for _, r in incoming.iterrows()]
        last = {k: i for i, k in enumerate(keys)}
        incoming = incoming.iloc[sorted(last.values())].reset_index(drop=True)

        csv_path = root / _safe_component(dataset, "dataset") / f"{_safe_component(direction, 'direction')}.csv"
        existing_structures: list[str] = []
        frames = []
        if csv_path.exists():
            existing = read_leaderboard(csv_path)
            existing_structures = structures_of(existing)
            keep = [i for i, (_, r) in enumerate(existing.iterrows()) if _row_key(r) not in last]
            if keep:
                frames.append(existing.iloc[keep])
        incoming_structures = _structures_with_data(incoming, structures_of(incoming))
        if not incoming_structures and not existing_structures:
            incoming_structures = structures_of(incoming)
        structures = existing_structures + [s for s in incoming_structures
                                            if s not in existing_structures]
        frames.append(_finalize(incoming, structures))
        frames = [_finalize(f, structures) for f in frames]
        merged = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        merged = sort_rows(recompute_gap_closed(_finalize(merged, structures)))
        paths.append(_write_track(merged, root, dataset, direction))
    atomic_write_text(root / "README.md", README_TEXT)
    return paths
