"""Aggregation: trial records of the results store into leaderboard rows, one per key combination.

Records are those of :class:`benchmark.store.ResultsStore`: each holds its trial's complete configuration
(:meth:`benchmark.protocol.TrialSpec.to_dict`), its ``status`` and ``commit`` and, when ``ok``, its ``structures``
and ``summary`` (per metric, the mean over test volumes of each structure and of the mean over structures).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .leaderboard_schema import (FLOAT_DECIMALS, KEY_COLUMNS, METRICS, ORACLE, SOURCE_ONLY, columns_for, conform,
                                 method_sort_key, normalize_shots, shots_sort_key)
from .presets import PRESETS, get_preset
from .protocol import row_name
from .selection import expand_selections

#: A reference gap (oracle minus source-only Dice) at most this large leaves ``gap_closed`` empty.
GAP_EPS = 1e-9


def preset_label(config: dict) -> str:
    """The preset a trial ran with, followed by every setting that differs from the named preset:
    ``quick[steps=20]``, or ``quick`` for the preset as defined (the name alone for one the suite does not
    define, e.g. ``external``). A selection study adds its settings: ``quick[select_every=50,source_val=0.2]``."""
    name = config["preset"]
    if name not in PRESETS:
        return name
    defaults = get_preset(name)
    changed = {k: v for k, v in config.get("preset_settings", {}).items() if defaults.get(k) != v}
    changed.update(config.get("validation") or {})  # a selection study trains on fewer labeled slices
    if not changed:
        return name
    text = ",".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(changed.items()))
    return f"{name}[{text}]"


def method_label(config: dict) -> str:
    """The row name of a trial's configuration (:func:`benchmark.protocol.row_name`), e.g. ``metahallu+cdtg``."""
    return row_name(config["method"], config.get("variant", ""), config.get("plugins", ()),
                    config.get("hparam_sample", 0))


def _method_version(config: dict) -> str:
    """The method's version, followed by each plug-in's (``2 cdtg-2[minilm]``, with the model it reads) for a
    composed method."""
    def plugin(p: dict) -> str:
        encoder = p.get("provenance", {}).get("encoder")
        return f"{p['name']}-{p['version']}" + (f"[{encoder}]" if encoder else "")

    return " ".join([config["method_version"]] + [plugin(p) for p in config.get("plugins", ())])


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

    row: dict[str, Any] = dict(zip(KEY_COLUMNS, key))  # the key's remaining parts are repeated by the records
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

    It is computed from the Dice means as a table writes them (rounded to :data:`FLOAT_DECIMALS`), so a
    published row's value does not move when the file is read and written again.
    References are the ``source_only`` and ``oracle`` rows sharing dataset,
    direction, shots, selection, preset, protocol and dataset version.
    """
    out = df.copy()
    if out.empty:
        out["gap_closed"] = pd.Series(dtype="float64")
        return out
    refs: dict[tuple, dict[str, float]] = {}
    for _, r in out.iterrows():
        if r["method"] in (SOURCE_ONLY, ORACLE):
            ref_key = (r["dataset"], r["direction"], r["shots"], r["selection"], r["preset"], r["protocol"],
                       r["dataset_version"])
            refs.setdefault(ref_key, {})[r["method"]] = round(r["dice_mean"], FLOAT_DECIMALS)
    gaps = []
    for _, r in out.iterrows():
        ref = refs.get((r["dataset"], r["direction"], r["shots"], r["selection"], r["preset"], r["protocol"],
                        r["dataset_version"]), {})
        low = ref.get(SOURCE_ONLY, math.nan)
        high = ref.get(ORACLE, math.nan)
        value = round(r["dice_mean"], FLOAT_DECIMALS)
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
        shots_sort_key(row["shots"]), row["selection"], row["preset"], row["dataset_version"],
        row["method_version"],
    )


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Sort by dataset, direction, method (source_only first, oracle last), shots."""
    if df.empty:
        return df.reset_index(drop=True)
    order = sorted(range(len(df)), key=lambda i: _row_sort_key(
        {c: df[c].iloc[i] for c in [*KEY_COLUMNS, "dataset_version", "method_version"]}))
    return df.iloc[order].reset_index(drop=True)


def row_identity(config: dict) -> tuple:
    """The leaderboard row a trial belongs to: its track, row name, shots, selection, preset with overrides,
    protocol, dataset version and method version (everything that changes its numbers but the seed)."""
    return (config["dataset"], config["direction"], method_label(config), normalize_shots(config["shots"]),
            config["selection"], preset_label(config), config["protocol"], config["dataset_version"],
            _method_version(config))


def build_rows(records: list[dict]) -> pd.DataFrame:
    """Aggregate trial records into leaderboard rows (one per :func:`row_identity`).

    Structure columns are the union of the records' structures in order of
    first appearance. ``gap_closed`` is computed; rows are sorted.
    """
    groups: dict[tuple, list[dict]] = {}
    structures: list[str] = []
    for rec in expand_selections(records):  # a selection study's trial gives one record per policy
        groups.setdefault(row_identity(rec["config"]), []).append(rec)  # never mixes protocols or versions
        for s in rec.get("structures", ()):
            if s not in structures:
                structures.append(s)
    rows = [aggregate_row(key[:6], recs, structures) for key, recs in groups.items()]
    df = conform(pd.DataFrame(rows, columns=columns_for(structures)), structures)
    return sort_rows(recompute_gap_closed(df))


#: The columns of a per-volume table: the row's identity, then one line per trial x test volume x structure.
VOLUME_COLUMNS = ["method", "shots", "selection", "preset", "dataset_version", "method_version", "seed", "case",
                  "structure", "dice", "assd_mm", "hd95_mm", "trial_id", "commit"]


def volume_rows(records: list[dict]) -> dict[tuple[str, str, str], pd.DataFrame]:
    """The per-volume metrics of the completed trials, per (dataset, direction, protocol): one line per trial x
    test volume x structure, in :data:`VOLUME_COLUMNS` (the last ``ok`` record of a seed, as in the rows)."""
    last: dict[tuple, dict] = {}
    for rec in expand_selections(records):
        if rec["status"] == "ok":
            last[(row_identity(rec["config"]), rec["config"]["seed"])] = rec
    lines: dict[tuple[str, str, str], list[dict]] = {}
    for (key, seed), rec in last.items():
        track = (key[0], key[1], key[6])
        for volume in rec.get("volumes", ()):
            for structure, m in volume["metrics"].items():
                lines.setdefault(track, []).append({
                    "method": key[2], "shots": key[3], "selection": key[4], "preset": key[5],
                    "dataset_version": key[7], "method_version": key[8], "seed": int(seed),
                    "case": volume["case"], "structure": structure, "dice": m["dice"], "assd_mm": m["assd_mm"],
                    "hd95_mm": m["hd95_mm"], "trial_id": rec.get("trial_id", ""), "commit": rec["commit"]})
    return {track: sort_volumes(pd.DataFrame(v, columns=VOLUME_COLUMNS)) for track, v in lines.items()}


def sort_volumes(df: pd.DataFrame) -> pd.DataFrame:
    """A per-volume table in a stable order: by row (as :func:`sort_rows`), seed, case, structure."""
    if df.empty:
        return df.reset_index(drop=True)
    order = sorted(range(len(df)), key=lambda i: (
        method_sort_key(df["method"].iloc[i]), shots_sort_key(df["shots"].iloc[i]), df["selection"].iloc[i],
        df["preset"].iloc[i], df["dataset_version"].iloc[i], df["method_version"].iloc[i],
        int(df["seed"].iloc[i]), str(df["case"].iloc[i]), str(df["structure"].iloc[i])))
    return df.iloc[order].reset_index(drop=True)
