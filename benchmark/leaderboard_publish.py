"""Leaderboard files: one CSV per track with its Markdown and plot beside it, written from a run or merged into
the published boards.

One table never mixes protocols. The board of a track, ``<dataset>/<direction>.csv``, holds rows of the current
protocol (:data:`benchmark.protocol.PROTOCOL`); rows of an earlier protocol live under
``<dataset>/archive/<protocol>/<direction>.csv``. Publishing the first rows of a new protocol moves the track's
older rows there, unchanged; rows of an earlier protocol are never published.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .io import atomic_write_bytes, atomic_write_text
from .leaderboard_aggregate import build_rows, recompute_gap_closed, sort_rows
from .leaderboard_render import render_markdown, render_plot
from .errors import UsageError
from .leaderboard_schema import (FLOAT_DECIMALS, METRICS, README_TEXT, conform, float_columns, structures_of,
                                 track_rows, tracks)
from .protocol import PROTOCOL

ARCHIVE = "archive"


def _safe_component(name: str, what: str) -> str:
    if name in ("", ".", "..") or any(ch in name for ch in ("/", "\\", "\0")):
        raise ValueError(f"{what} {name!r} cannot be used as a file name")
    return name


def _csv_path(root: Path, dataset: str, direction: str, protocol: str = PROTOCOL) -> Path:
    """Where a track's board of ``protocol`` lives: the board itself for the current protocol, else its archive."""
    folder = root / _safe_component(dataset, "dataset")
    if protocol != PROTOCOL:
        folder = folder / ARCHIVE / _safe_component(protocol, "protocol")
    return folder / f"{_safe_component(direction, 'direction')}.csv"


def _by_protocol(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows of a table by protocol (a row's ``protocol`` cell names exactly one)."""
    return {str(p): df[df["protocol"] == p].reset_index(drop=True) for p in sorted(set(df["protocol"]))}


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


def _write_track(df: pd.DataFrame, root: Path, dataset: str, direction: str, protocol: str = PROTOCOL) -> Path:
    csv_path = _csv_path(root, dataset, direction, protocol)
    atomic_write_text(csv_path, _csv_text(df))
    atomic_write_text(csv_path.with_suffix(".md"), render_markdown(df))
    title = f"{dataset} / {direction}" + ("" if protocol == PROTOCOL else f" ({protocol})")
    atomic_write_bytes(csv_path.with_suffix(".png"), render_plot(df, title))
    return csv_path


def write_leaderboards(records: list[dict], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``out_dir/<dataset>/<direction>.{csv,md,png}`` for every track in ``records`` (overwriting); rows of
    an earlier protocol go to that track's archive. Returns the CSV paths, sorted by track."""
    by_track: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        by_track.setdefault((rec["config"]["dataset"], rec["config"]["direction"]), []).append(rec)
    paths = []
    for (dataset, direction), recs in sorted(by_track.items()):
        for protocol, rows in _by_protocol(build_rows(recs)).items():
            paths.append(_write_track(rows, Path(out_dir), dataset, direction, protocol))
    return paths


def _row_key(row: pd.Series) -> tuple:
    return (row["method"], row["shots"], row["selection"], row["preset"])


def _structures_with_data(df: pd.DataFrame, structures: Sequence[str]) -> list[str]:
    return [s for s in structures if any(df[f"{m}_{s}"].notna().any() for m in METRICS)]


def _merge_track(incoming: pd.DataFrame, existing: pd.DataFrame | None) -> pd.DataFrame:
    """The rows of one track's board with ``incoming`` merged in, sorted, ``gap_closed`` recomputed.

    An incoming row replaces the row with the same (method, shots, selection, preset), and the last of several
    incoming rows with one key wins. Structures keep the file's order; the incoming rows' structures with any
    value join after them.
    """
    keys = [_row_key(r) for _, r in incoming.iterrows()]
    last = {k: i for i, k in enumerate(keys)}
    incoming = incoming.iloc[sorted(last.values())].reset_index(drop=True)

    existing_structures: list[str] = []
    frames = []
    if existing is not None and not existing.empty:
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

    Rows are identified within a track by (method, shots, selection, preset): an incoming row replaces an existing
    one with the same key; other rows are kept. Existing rows of an earlier protocol move to the track's archive;
    incoming rows of an earlier protocol are refused (:class:`UsageError`). ``gap_closed`` is recomputed for the
    whole file, the ``.md`` and ``.png`` are regenerated, and ``leaderboards_dir/README.md`` is rewritten.
    Returns the CSV paths written, sorted by track.
    """
    root = Path(leaderboards_dir)
    old = rows[rows["protocol"] != PROTOCOL] if not rows.empty else rows
    if not old.empty:
        named = ", ".join(sorted({f"{r.dataset}/{r.direction} {r.method} {r.shots}-shot ({r.protocol})"
                                  for r in old.itertuples()}))
        raise UsageError(f"Rows scored under an earlier protocol cannot be published, since the boards hold "
                         f"{PROTOCOL} rows and one table never mixes protocols: {named}. Run these trials again "
                         f"with this version of the suite.")
    paths = []
    for dataset, direction in (tracks(rows) if not rows.empty else []):
        board = _csv_path(root, dataset, direction)
        existing = read_leaderboard(board) if board.exists() else None
        if existing is not None:
            for protocol, past in _by_protocol(existing).items():
                if protocol != PROTOCOL:
                    archive = _csv_path(root, dataset, direction, protocol)
                    kept = read_leaderboard(archive) if archive.exists() else None
                    paths.append(_write_track(_merge_track(past, kept), root, dataset, direction, protocol))
            existing = existing[existing["protocol"] == PROTOCOL].reset_index(drop=True)
        merged = _merge_track(track_rows(rows, dataset, direction), existing)
        paths.append(_write_track(merged, root, dataset, direction))
    atomic_write_text(root / "README.md", README_TEXT)
    return paths
