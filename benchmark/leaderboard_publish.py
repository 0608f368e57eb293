"""Leaderboard files: one CSV per track with its Markdown and plot beside it, written from a run or merged into
the published boards."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .io import atomic_write_bytes, atomic_write_text
from .leaderboard_aggregate import build_rows, recompute_gap_closed, sort_rows
from .leaderboard_render import render_markdown, render_plot
from .leaderboard_schema import (FLOAT_DECIMALS, METRICS, README_TEXT, conform, float_columns, structures_of,
                                 track_rows, tracks)


def _safe_component(name: str, what: str) -> str:
    if name in ("", ".", "..") or any(ch in name for ch in ("/", "\\", "\0")):
        raise ValueError(f"{what} {name!r} cannot be used as a file name")
    return name


def _csv_path(root: Path, dataset: str, direction: str) -> Path:
    return root / _safe_component(dataset, "dataset") / f"{_safe_component(direction, 'direction')}.csv"


def _csv_text(df: pd.DataFrame) -> str:
    out = df.copy()
    for col in float_columns(structures_of(df)):
        out[col] = out[col].astype("float64").round(FLOAT_DECIMALS)
    return out.to_csv(index=False, na_rep="", lineterminator="\n")


def read_leaderboard(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a leaderboard CSV: empty cells become NaN in numeric columns (and
    ``""`` in text columns); ``shots`` holds ints and ``"all"``."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    return conform(raw, structures_of(raw))


def _write_track(df: pd.DataFrame, root: Path, dataset: str, direction: str) -> Path:
    csv_path = _csv_path(root, dataset, direction)
    atomic_write_text(csv_path, _csv_text(df))
    atomic_write_text(csv_path.with_suffix(".md"), render_markdown(df))
    atomic_write_bytes(csv_path.with_suffix(".png"), render_plot(df, f"{dataset} / {direction}"))
    return csv_path


def write_leaderboards(records: list[dict], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``out_dir/<dataset>/<direction>.{csv,md,png}`` for every track in
    ``records`` (overwriting). Returns the CSV paths, sorted by track."""
    by_track: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        by_track.setdefault((rec["config"]["dataset"], rec["config"]["direction"]), []).append(rec)
    paths = []
    for (dataset, direction), recs in sorted(by_track.items()):
        paths.append(_write_track(build_rows(recs), Path(out_dir), dataset, direction))
    return paths


def _row_key(row: pd.Series) -> tuple:
    return (row["method"], row["shots"], row["selection"], row["preset"])


def _structures_with_data(df: pd.DataFrame, structures: Sequence[str]) -> list[str]:
    return [s for s in structures if any(df[f"{m}_{s}"].notna().any() for m in METRICS)]


def _merge_track(incoming: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    """The rows of one track's CSV with ``incoming`` merged in, sorted, ``gap_closed`` recomputed.

    An incoming row replaces the row with the same (method, shots, selection, preset), and the last of several
    incoming rows with one key wins. Structures keep the file's order; the incoming rows' structures with any
    value join after them.
    """
    keys = [_row_key(r) for _, r in incoming.iterrows()]
    last = {k: i for i, k in enumerate(keys)}
    incoming = incoming.iloc[sorted(last.values())].reset_index(drop=True)

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
    structures = existing_structures + [s for s in incoming_structures if s not in existing_structures]
    frames.append(incoming)
    frames = [conform(f, structures) for f in frames]
    merged = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return sort_rows(recompute_gap_closed(conform(merged, structures)))


def publish(rows: pd.DataFrame, leaderboards_dir: str | os.PathLike[str]) -> list[Path]:
    """Merge ``rows`` into ``leaderboards_dir/<dataset>/<direction>.csv``.

    Rows are identified within a track by (method, shots, selection, preset):
    an incoming row replaces an existing one with the same key; other rows are
    kept. ``gap_closed`` is recomputed for the whole file, the ``.md`` and
    ``.png`` are regenerated, and ``leaderboards_dir/README.md`` is rewritten.
    Returns the CSV paths written, sorted by track.
    """
    root = Path(leaderboards_dir)
    paths = []
    for dataset, direction in (tracks(rows) if not rows.empty else []):
        incoming = track_rows(rows, dataset, direction)
        merged = _merge_track(incoming, _csv_path(root, dataset, direction))
        paths.append(_write_track(merged, root, dataset, direction))
    atomic_write_text(root / "README.md", README_TEXT)
    return paths
