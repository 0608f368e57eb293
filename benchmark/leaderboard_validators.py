"""Validator quality beside a board: how well each checkpoint score ranks a method's checkpoints by target Dice.

A selection study (:mod:`benchmark.study`) keeps, for every candidate checkpoint of a trial, the scores of the
validators (:mod:`benchmark.validators`) and the target test metrics. ``<direction>.validators.csv`` holds, per
(method, method version, shots, preset) of a track and per validator, the Spearman and Kendall rank correlations
between the validator's score and mean target test Dice over every candidate of every ``ok`` study trial (all
seeds and hyperparameter samples pooled, with the trials a search stopped early), as in Musgrave, Belongie and
Lim, "Benchmarking Validation Methods for Unsupervised Domain Adaptation" (2022). Publishing merges a run's lines
into the published file (a group's lines replace the file's lines of the same group, reported) and summarises
every track's file in the leaderboards README.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from .io import atomic_write_text
from .leaderboard_aggregate import _method_version, preset_label
from .leaderboard_schema import FLOAT_DECIMALS
from .protocol import row_name
from .selection import LABEL_FREE, is_study

#: The columns of a track's ``<direction>.validators.csv``.
VALIDATOR_COLUMNS = ["method", "method_version", "shots", "preset", "validator", "candidates", "trials", "spearman",
                     "kendall"]
#: A group of lines: the checkpoints of one method version at one shot count and preset.
GROUP = ["method", "method_version", "shots", "preset"]
#: The validators, in the order the tables list them.
VALIDATORS = ("source-val", *LABEL_FREE)


def _correlations(score: list[float], dice: list[float]) -> tuple[int, float, float]:
    """(candidates scored, Spearman, Kendall) over the candidates with a score; NaN where either side is constant."""
    from scipy import stats

    ok = [i for i, v in enumerate(score) if v == v]
    a, b = [score[i] for i in ok], [dice[i] for i in ok]
    if len(set(a)) < 2 or len(set(b)) < 2:
        return len(ok), math.nan, math.nan
    return len(ok), float(stats.spearmanr(a, b).statistic), float(stats.kendalltau(a, b).statistic)


def validator_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The validator lines of ``records`` (raw store records; selection views carry no candidates), one track's or
    several tracks' pooled by group: use :func:`validator_tables` to split by track."""
    pooled: dict[tuple, list[dict[str, Any]]] = {}
    trials: dict[tuple, int] = {}
    for rec in records:
        if rec.get("status") not in ("ok", "stopped") or not is_study(rec):  # a search's stopped trials count
            continue
        c = rec["config"]
        key = (row_name(c["method"], c.get("variant", ""), c.get("plugins", ())), _method_version(c),
               str(c["shots"]), preset_label(c))
        pooled.setdefault(key, []).extend(x for x in rec["candidates"] if x.get("test") is not None)
        trials[key] = trials.get(key, 0) + 1
    lines = []
    for key, cands in sorted(pooled.items()):
        dice = [float(x["test"]["summary"]["dice"]["mean"]) for x in cands]
        for name in VALIDATORS:
            n, rho, tau = _correlations([float(x["scores"].get(name, math.nan)) for x in cands], dice)
            lines.append(dict(zip(GROUP, key), validator=name, candidates=n, trials=trials[key], spearman=rho,
                              kendall=tau))
    return pd.DataFrame(lines, columns=VALIDATOR_COLUMNS)


def validator_tables(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], pd.DataFrame]:
    """:func:`validator_table` per (dataset, direction); tracks without a selection study are left out."""
    by_track: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        by_track.setdefault((rec["config"]["dataset"], rec["config"]["direction"]), []).append(rec)
    tables = {track: validator_table(recs) for track, recs in sorted(by_track.items())}
    return {track: t for track, t in tables.items() if not t.empty}


def read_validators(path: Path) -> pd.DataFrame:
    """A ``.validators.csv`` file as written (shots as text), or an empty table when there is none."""
    if not path.exists():
        return pd.DataFrame(columns=VALIDATOR_COLUMNS)
    return pd.read_csv(path, dtype={"shots": str, "method_version": str, "preset": str}, keep_default_na=False,
                       na_values=[""])[VALIDATOR_COLUMNS]


def _group_keys(df: pd.DataFrame) -> list[tuple[str, ...]]:
    """Each line's group, as text."""
    return [tuple(str(v) for v in key) for key in df[GROUP].itertuples(index=False)]


def write_validators(table: pd.DataFrame, path: Path, merge: bool = False,
                     log: Callable[[str], None] | None = None, dry_run: bool = False) -> Path:
    """Write ``table`` to ``path``; with ``merge``, into the file's lines: a group of ``table`` replaces the file's
    lines of the same group, other groups stay. Each group added or replaced is reported through ``log``;
    ``dry_run`` only reports."""
    log = log or (lambda line: None)
    frames = [table]
    if merge:
        existing = read_validators(path)
        existing_keys = _group_keys(existing)
        new, old = set(_group_keys(table)), set(existing_keys)
        for key in sorted(new):
            verb = ("would " if dry_run else "") + ("replace" if key in old else "add")
            log(f"{verb} validator correlations {path.name}: {' '.join(key)}")
        frames.insert(0, existing.iloc[[i for i, key in enumerate(existing_keys) if key not in new]])
    if dry_run:
        return path
    frames = [f for f in frames if not f.empty]
    merged = pd.concat(frames, ignore_index=True) if frames else table
    order = sorted(range(len(merged)), key=lambda i: (
        *(str(merged[c].iloc[i]) for c in GROUP), VALIDATORS.index(merged["validator"].iloc[i])
        if merged["validator"].iloc[i] in VALIDATORS else len(VALIDATORS)))
    merged = merged.iloc[order].reset_index(drop=True)
    atomic_write_text(path, merged.to_csv(index=False, float_format=f"%.{FLOAT_DECIMALS}f", lineterminator="\n"))
    return path


def validator_summary(root: Path) -> str:
    """The leaderboards README's section on validator quality: per track, preset and validator, the mean, lowest
    and highest Spearman correlation over the track's methods (every current ``*.validators.csv`` under ``root``);
    an empty string when there is none."""
    blocks = []
    for path in sorted(Path(root).glob("*/*.validators.csv")):
        df = read_validators(path)
        if df.empty:
            continue
        track = f"{path.parent.name}/{path.name[:-len('.validators.csv')]}"
        for (shots, preset, name), g in df.groupby(["shots", "preset", "validator"], sort=False):
            rho = g["spearman"].dropna()
            stats = " | ".join(f"{v:+.2f}" for v in (rho.mean(), rho.min(), rho.max())) if len(rho) else "- | - | -"
            blocks.append(f"| {track} | {shots} | {preset} | `{name}` | {len(g)} | {stats} |")
    if not blocks:
        return ""
    return ("\n## Validator quality\n\n"
            "How well each checkpoint score ranks a method's checkpoints by target test Dice, from each track's\n"
            "`<direction>.validators.csv` (one line per method, method version, shots, preset and validator: the\n"
            "Spearman and Kendall correlations over every candidate checkpoint of every seed and hyperparameter\n"
            "sample). Here: the Spearman correlation's mean, lowest and highest value over the track's methods.\n"
            "`source-val` is Dice on held-out labeled source slices; `entropy`, `im` and `snd` are label-free.\n"
            "Where a method acts on its target predictions' entropy while training (ADVENT aligns entropy maps, its\n"
            "`minent` variant minimises entropy), `entropy` and `im` score it partly on its own objective.\n\n"
            "| track | shots | preset | validator | methods | mean Spearman | lowest | highest |\n"
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |\n" + "\n".join(blocks) + "\n")


__all__ = ["VALIDATOR_COLUMNS", "validator_table", "validator_tables", "read_validators", "write_validators",
           "validator_summary"]
