"""Aggregation: trial records of the results store into leaderboard rows, one per key combination.

Records are those of :class:`benchmark.store.ResultsStore`: each holds its trial's complete configuration
(:meth:`benchmark.protocol.TrialSpec.to_dict`), its ``status`` and ``commit`` and, when ``ok``, its ``structures``
and ``summary`` (per metric, the mean over test volumes of each structure and of the mean over structures).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .leaderboard_schema import (KEY_COLUMNS, METRICS, ORACLE, SOURCE_ONLY, columns_for, conform, method_sort_key,
                                 normalize_shots, shots_sort_key)
from .protocol import row_name

#: A reference gap (oracle minus source-only Dice) at most this large leaves ``gap_closed`` empty.
GAP_EPS = 1e-9


def method_label(config: dict) -> str:
    """The row name of a trial's configuration (:func:`benchmark.protocol.row_name`), e.g. ``metahallu+cdtg``."""
    return row_name(config["method"], config.get("variant", ""), config.get("plugins", ()),
                    config.get("hparam_sample", 0))


def _method_version(config: dict) -> str:
    """The method's version, followed by each plug-in's (``2 cdtg-1``) for a composed method."""
    plugins = config.get("plugins", ())
    return " ".join([config["method_version"]] + [f"{p['name']}-{p['version']}" for p in plugins])


def _join_sorted(values: Iterable[str]) -> str:
    return "+".join(sorted(set(values) - {""}))


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of the values that are not NaN (NaN where too few)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    mean = float(np.mean(arr))
    std = float(np.std(arr, ddof=1)) if arr.size >= 2 else math.nan
    return mean, std


def aggregate_row(key: tuple, records: list[dict], structures: Sequence[str]) -> dict[str, Any]:
    """One row from the records of one key: statistics over the seeds that completed, in seed order.

    The last ``ok`` record of a seed is its result; a seed without one counts as failed. Provenance comes from
    the completed records, or from all of them when none completed.
    """
    ok_by_seed: dict[int, dict] = {}
    seeds: set[int] = set()
    for rec in records:
        seed = rec["config"]["seed"]
        seeds.add(seed)
        if rec["status"] == "ok":
            ok_by_seed[seed] = rec
    used = [ok_by_seed[s] for s in sorted(ok_by_seed)]

    row: dict[str, Any] = dict(zip(KEY_COLUMNS, key))
    row["seeds_done"] = len(used)
    row["seeds_failed"] = len(seeds) - len(used)
    for metric in METRICS:
        row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([r["summary"][metric]["mean"] for r in used])
    for metric in METRICS:
        for s in structures:
            row[f"{metric}_{s}"] = _mean_std([r["summary"][metric].get(s, math.nan) for r in used])[0]
    row["gap_closed"] = math.nan
    contributing = used or records
    for field in ("protocol", "dataset_version"):
        row[field] = _join_sorted(r["config"][field] for r in contributing)
    row["method_version"] = _join_sorted(_method_version(r["config"]) for r in contributing)
    row["commit"] = _join_sorted(r["commit"] for r in contributing)
    return row


def recompute_gap_closed(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``df`` with ``gap_closed`` computed from its own rows.

    References are the ``source_only`` and ``oracle`` rows sharing dataset,
    direction, shots, selection, preset and protocol.
    """
    out = df.copy()
    if out.empty:
        out["gap_closed"] = pd.Series(dtype="float64")
        return out
    refs: dict[tuple, dict[str, float]] = {}
    for _, r in out.iterrows():
        if r["method"] in (SOURCE_ONLY, ORACLE):
            ref_key = (r["dataset"], r["direction"], r["shots"], r["selection"], r["preset"], r["protocol"])
            refs.setdefault(ref_key, {})[r["method"]] = r["dice_mean"]
    gaps = []
    for _, r in out.iterrows():
        ref = refs.get((r["dataset"], r["direction"], r["shots"], r["selection"], r["preset"], r["protocol"]), {})
        low = ref.get(SOURCE_ONLY, math.nan)
        high = ref.get(ORACLE, math.nan)
        value = r["dice_mean"]
        denom = high - low
        if any(math.isnan(x) for x in (low, high, value)) or not denom > GAP_EPS:
            gaps.append(math.nan)
        else:
            gaps.append((value - low) / denom)
    out["gap_closed"] = pd.Series(gaps, index=out.index, dtype="float64")
    return out


def _row_sort_key(row: dict) -> tuple:
    return (
        row["dataset"], row["direction"], method_sort_key(row["method"]),
        shots_sort_key(row["shots"]), row["selection"], row["preset"],
    )


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
        cfg = rec["config"]
        key = (cfg["dataset"], cfg["direction"], method_label(cfg), normalize_shots(cfg["shots"]),
               cfg["selection"], cfg["preset"])
        groups.setdefault((key, cfg["protocol"]), []).append(rec)  # one row never mixes protocols
        for s in rec.get("structures", ()):
            if s not in structures:
                structures.append(s)
    rows = [aggregate_row(key, recs, structures) for (key, _), recs in groups.items()]
    df = conform(pd.DataFrame(rows, columns=columns_for(structures)), structures)
    return sort_rows(recompute_gap_closed(df))
