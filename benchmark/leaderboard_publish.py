"""Leaderboard files: one CSV per track with its Markdown, figures and per-volume metrics beside it, written from a
run or merged into the published boards.

Files of a track: ``<direction>.csv`` (the table), ``.md``, ``.png`` and ``.svg`` (the figure), ``.ranks.png``
(the bootstrap rank distribution of each group's rows) and ``.volumes.csv`` (one line per trial x test volume x
structure, the data behind every interval, rank and comparison of the table).

Publishing never replaces a row silently. Rows are identified by :data:`~benchmark.leaderboard_schema.ROW_KEY`
(a short run's preset reads ``quick[steps=20]``, so it is a row of its own); :func:`publish` reports each row it
adds or replaces and refuses, naming the row, to replace a row by one with fewer seeds (``replace=True``
allows it) or to publish a row whose trials ran from a tree with uncommitted changes (``allow_dirty=True``).

One table never mixes protocols. The board of a track, ``<dataset>/<direction>.csv``, holds rows of the current
protocol (:data:`benchmark.protocol.PROTOCOL`); rows of an earlier protocol live under
``<dataset>/archive/<protocol>/<direction>.csv``. Publishing the first rows of a new protocol moves the track's
older rows there, unchanged; rows of an earlier protocol are never published.

Nor does a table mix versions of one method (a row name such as ``metahallu`` or ``metahallu+cdtg``). Publishing a
row of a method version the board does not hold moves every row of that method's other versions, unchanged and
reported, to ``<dataset>/archive/<protocol>/superseded/<direction>.csv``; it is refused, like a replacement, when
the new version's row has fewer seeds than the row it displaces.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from .errors import DataError, UsageError
from .io import atomic_write_bytes, atomic_write_text
from .leaderboard_aggregate import (VOLUME_COLUMNS, build_rows, recompute_gap_closed, sort_rows, sort_volumes,
                                    volume_rows)
from .leaderboard_render import render_markdown
from .leaderboard_schema import (FLOAT_DECIMALS, METRICS, README_TEXT, conform, float_columns, normalize_shots,
                                 structures_of, track_rows, tracks)
from .leaderboard_stats import row_key, table_statistics
from .leaderboard_validators import validator_summary, validator_tables, write_validators
from .protocol import PROTOCOL

ARCHIVE = "archive"
SUPERSEDED = "superseded"


def _safe_component(name: str, what: str) -> str:
    if name in ("", ".", "..") or any(ch in name for ch in ("/", "\\", "\0")):
        raise ValueError(f"{what} {name!r} cannot be used as a file name")
    return name


def _track_folder(root: Path, dataset: str, protocol: str = PROTOCOL, superseded: bool = False) -> Path:
    """The folder of a dataset's boards of ``protocol``: the dataset's own for the current protocol, else its
    archive; ``superseded``: the archive of the protocol's rows of earlier method versions."""
    folder = root / _safe_component(dataset, "dataset")
    if protocol != PROTOCOL or superseded:
        folder = folder / ARCHIVE / _safe_component(protocol, "protocol")
    return folder / SUPERSEDED if superseded else folder


def _csv_path(root: Path, dataset: str, direction: str, protocol: str = PROTOCOL, superseded: bool = False) -> Path:
    """Where a track's board of ``protocol`` lives (:func:`_track_folder`)."""
    return _track_folder(root, dataset, protocol, superseded) / f"{_safe_component(direction, 'direction')}.csv"


def _track_file(csv_path: Path, suffix: str) -> Path:
    """A file beside a board: ``<direction><suffix>``, e.g. ``.volumes.csv`` or ``.ranks.png``."""
    return csv_path.with_name(csv_path.stem + suffix)


def _versions(rows: pd.DataFrame) -> dict[str, set[str]]:
    """Method row name -> the method versions of ``rows``."""
    out: dict[str, set[str]] = {}
    for _, r in rows.iterrows():
        out.setdefault(str(r["method"]), set()).add(str(r["method_version"]))
    return out


def _superseded_mask(existing: pd.DataFrame, incoming: pd.DataFrame) -> list[bool]:
    """Which rows of ``existing`` belong to a method that ``incoming`` publishes in another version."""
    new = _versions(incoming)
    return [str(r["method"]) in new and str(r["method_version"]) not in new[str(r["method"])]
            for _, r in existing.iterrows()]


def _by_protocol(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows of a table by protocol (a row's ``protocol`` cell names exactly one)."""
    return {str(p): df[df["protocol"] == p].reset_index(drop=True) for p in sorted(set(df["protocol"]))}


def _csv_text(df: pd.DataFrame) -> str:
    """A table's CSV: floats rounded to :data:`FLOAT_DECIMALS` decimals, p-values to 4 significant digits."""
    out = df.copy()
    for col in float_columns(structures_of(df)):
        values = out[col].astype("float64")
        out[col] = (values.map(lambda v: float(f"{v:.4g}")) if col.endswith("_p_holm")
                    else values.round(FLOAT_DECIMALS))
    return out.to_csv(index=False, na_rep="", lineterminator="\n")


@contextmanager
def _reading(path: str | os.PathLike[str]) -> Iterator[None]:
    """A published file that cannot be parsed becomes a :class:`DataError` naming it (and how to get it back)."""
    try:
        yield
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, KeyError, ValueError, TypeError,
            AttributeError) as exc:  # a malformed cell reaches conform as NaN or as text of another type
        raise DataError(f"The leaderboard file {path} cannot be read ({type(exc).__name__}: {exc}). Its files are "
                        f"written by publish, never by hand: restore it from git (git checkout -- {path}) or "
                        f"publish its rows again from their run.") from None


def read_leaderboard(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a leaderboard CSV: empty cells become NaN in numeric columns (and
    ``""`` in text columns); ``shots`` holds ints and ``"all"``."""
    with _reading(path):
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
        return conform(raw, structures_of(raw))


VOLUMES_SUFFIX = ".volumes.csv"
VALIDATORS_SUFFIX = ".validators.csv"


def board_csvs(paths: Iterable[Path]) -> list[Path]:
    """The boards among ``paths`` (CSV files), sorted: not the per-volume or validator tables beside them."""
    return sorted(p for p in paths if not p.name.endswith((VOLUMES_SUFFIX, VALIDATORS_SUFFIX)))


def _volumes_path(csv_path: Path) -> Path:
    return _track_file(csv_path, VOLUMES_SUFFIX)


def read_volumes(csv_path: str | os.PathLike[str]) -> pd.DataFrame:
    """The per-volume table beside a board (empty when there is none, e.g. a board of an earlier protocol)."""
    path = _volumes_path(Path(csv_path))
    if not path.exists():
        return pd.DataFrame(columns=VOLUME_COLUMNS)
    with _reading(path):
        raw = pd.read_csv(path, dtype={c: str for c in ("method", "shots", "selection", "preset", "dataset_version",
                                                        "method_version", "case", "structure", "trial_id",
                                                        "commit")}, keep_default_na=False)
        raw["shots"] = [normalize_shots(v) for v in raw["shots"]]
        return raw[VOLUME_COLUMNS]


def _write_track(df: pd.DataFrame, root: Path, dataset: str, direction: str, protocol: str = PROTOCOL,
                 volumes: pd.DataFrame | None = None, superseded: bool = False) -> Path:
    """Write one track's files; with ``volumes`` the statistics are computed and the per-volume table written."""
    from .leaderboard_figures import render_board, render_rank_stability

    csv_path = _csv_path(root, dataset, direction, protocol, superseded)
    title = (f"{dataset} / {direction}" + ("" if protocol == PROTOCOL else f" ({protocol})")
             + (", earlier method versions" if superseded else ""))
    samples = {}
    if volumes is not None:
        volumes = sort_volumes(volumes)
        df, samples = table_statistics(df, volumes)
        atomic_write_text(_volumes_path(csv_path), volumes.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(csv_path, _csv_text(df))
    atomic_write_text(csv_path.with_suffix(".md"), render_markdown(df))
    shown = read_leaderboard(csv_path)  # figures drawn from the table as published, so it alone redraws them
    atomic_write_bytes(csv_path.with_suffix(".png"), render_board(shown, title, fmt="png"))
    atomic_write_bytes(csv_path.with_suffix(".svg"), render_board(shown, title, fmt="svg"))
    ranks_path = _track_file(csv_path, ".ranks.png")
    if samples:
        group, by_name = max(samples.items(), key=lambda kv: (normalize_shots(kv[0][0]) if isinstance(
            normalize_shots(kv[0][0]), int) else 10 ** 9, len(kv[1])))
        atomic_write_bytes(ranks_path, render_rank_stability(
            by_name, title=f"{title}: rank stability, {group[0]} shots, preset {group[2]}", fmt="png"))
    return csv_path


def write_leaderboards(records: list[dict], out_dir: str | os.PathLike[str],
                       policies: Sequence[str] | None = None) -> list[Path]:
    """Write the files of every track in ``records`` (the results store's records) under ``out_dir/<dataset>/``
    (overwriting): a selection study's trials give one row per policy in ``policies`` (default: every policy) and
    the track's ``<direction>.validators.csv``. Rows of an earlier protocol go to that track's archive. Returns the
    CSV paths of the boards, sorted by track."""
    from .selection import expand_selections

    records = list(records)
    validators = validator_tables(records)
    by_track: dict[tuple[str, str], list[dict]] = {}
    for rec in expand_selections(records, policies):
        by_track.setdefault((rec["config"]["dataset"], rec["config"]["direction"]), []).append(rec)
    paths = []
    for (dataset, direction), recs in sorted(by_track.items()):
        volumes = volume_rows(recs)
        for protocol, rows in _by_protocol(build_rows(recs)).items():
            v = volumes.get((dataset, direction, protocol), pd.DataFrame(columns=VOLUME_COLUMNS))
            paths.append(_write_track(rows, Path(out_dir), dataset, direction, protocol, v))
        if (dataset, direction) in validators:
            write_validators(validators[(dataset, direction)], _validators_path(Path(out_dir), dataset, direction))
    return paths


def _validators_path(root: Path, dataset: str, direction: str) -> Path:
    return _track_file(_csv_path(root, dataset, direction), VALIDATORS_SUFFIX)


def _structures_with_data(df: pd.DataFrame, structures: Sequence[str]) -> list[str]:
    return [s for s in structures if any(df[f"{m}_{s}"].notna().any() for m in METRICS)]


def _merge_track(incoming: pd.DataFrame, existing: pd.DataFrame | None) -> pd.DataFrame:
    """The rows of one track's board with ``incoming`` merged in, sorted, ``gap_closed`` recomputed.

    An incoming row replaces the row with the same key (:func:`benchmark.leaderboard_stats.row_key`). Structures
    keep the file's order; the incoming rows' structures with any value join after them.
    """
    keys = {row_key(r) for _, r in incoming.iterrows()}
    existing_structures: list[str] = []
    frames = []
    if existing is not None and not existing.empty:
        existing_structures = structures_of(existing)
        keep = [i for i, (_, r) in enumerate(existing.iterrows()) if row_key(r) not in keys]
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


def _merge_volumes(incoming: pd.DataFrame, existing: pd.DataFrame) -> pd.DataFrame:
    keys = {row_key(r) for _, r in incoming.iterrows()}
    kept = existing[[row_key(r) not in keys for _, r in existing.iterrows()]] if not existing.empty else existing
    frames = [f for f in (kept, incoming) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=VOLUME_COLUMNS)


def _describe(row: pd.Series) -> str:
    selection = "" if row["selection"] == "last" else f", selection {row['selection']}"
    return (f"{row['dataset']}/{row['direction']} {row['method']} {row['shots']}-shot{selection}, preset "
            f"{row['preset']}, version {row['method_version']}")


def _seeds(row: pd.Series) -> str:
    dice = "no Dice" if math.isnan(row["dice_mean"]) else f"Dice {row['dice_mean']:.4f}"
    return f"{int(row['seeds_done'])} seed{'s' if int(row['seeds_done']) != 1 else ''}, {dice}, commit {row['commit']}"


class PublishPlan(NamedTuple):
    """What publishing would do (``changes``, one line per row) and why it may be refused: ``fewer_seeds`` names
    rows that would replace one with more seeds (allowed with ``replace``), ``conflicts`` the methods that one
    publish brings in two versions (never allowed, since a board holds one version of each method)."""

    changes: list[str]
    fewer_seeds: list[str]
    conflicts: list[str]


def publish_plan(rows: pd.DataFrame, root: Path) -> PublishPlan:
    """What publishing ``rows`` into ``root`` would do, one line per row, and the refusals (without overrides)."""
    plan = PublishPlan([], [], [])
    for dataset, direction in tracks(rows) if not rows.empty else []:
        board = _csv_path(root, dataset, direction)
        existing = read_leaderboard(board) if board.exists() else None
        current = {} if existing is None else {row_key(r): r for _, r in existing.iterrows()
                                               if r["protocol"] == PROTOCOL}
        incoming = track_rows(rows, dataset, direction)
        plan.conflicts.extend(f"{dataset}/{direction} {m} in versions {', '.join(sorted(v))}"
                              for m, v in sorted(_versions(incoming).items()) if len(v) > 1)
        if existing is not None:
            board_rows = existing[existing["protocol"] == PROTOCOL].reset_index(drop=True)
            for (_, old), gone in zip(board_rows.iterrows(), _superseded_mask(board_rows, incoming)):
                if not gone:
                    continue
                plan.changes.append(f"supersede {_describe(old)} ({_seeds(old)}): moved to {ARCHIVE}/{PROTOCOL}/"
                                    f"{SUPERSEDED}/{direction}.csv")
                like = [n for _, n in incoming.iterrows() if row_key(n)[:-1] == row_key(old)[:-1]]
                if like and int(like[0]["seeds_done"]) < int(old["seeds_done"]):
                    plan.fewer_seeds.append(f"{_describe(old)} has {int(old['seeds_done'])} seeds published and "
                                            f"version {like[0]['method_version']} has "
                                            f"{int(like[0]['seeds_done'])} in this run")
        for _, new in incoming.iterrows():
            old = current.get(row_key(new))
            if old is None:
                plan.changes.append(f"add {_describe(new)} ({_seeds(new)})")
                continue
            plan.changes.append(f"replace {_describe(new)}: {_seeds(old)} -> {_seeds(new)}")
            if int(new["seeds_done"]) < int(old["seeds_done"]):
                plan.fewer_seeds.append(f"{_describe(new)} has {int(old['seeds_done'])} seeds published and "
                                        f"{int(new['seeds_done'])} in this run")
    return plan


def publish(rows: pd.DataFrame, leaderboards_dir: str | os.PathLike[str], *,
            volumes: dict[tuple[str, str, str], pd.DataFrame] | None = None,
            validators: dict[tuple[str, str], pd.DataFrame] | None = None, replace: bool = False,
            allow_dirty: bool = False, dry_run: bool = False, log: Callable[[str], None] | None = None) -> list[Path]:
    """Merge ``rows`` (and their per-volume tables ``volumes``, by (dataset, direction, protocol), and validator
    correlations ``validators``, by (dataset, direction): :mod:`benchmark.leaderboard_validators`) into the boards
    under ``leaderboards_dir``.

    An incoming row replaces the existing row with the same key; other rows are kept. Every addition and
    replacement is reported through ``log``. Nothing is written, and a :class:`UsageError` names the rows, when a
    row would replace one with more seeds (unless ``replace``), when a row's trials ran from a tree with
    uncommitted changes (unless ``allow_dirty``), or when a row was scored under an earlier protocol. Existing
    rows of an earlier protocol move to the track's archive, unchanged. The statistics, ``gap_closed``, the
    Markdown, the figures and ``leaderboards_dir/README.md`` are regenerated. Returns the paths written.
    """
    root = Path(leaderboards_dir)
    log = log or (lambda line: None)
    old = rows[rows["protocol"] != PROTOCOL] if not rows.empty else rows
    if not old.empty:
        named = ", ".join(sorted({f"{r.dataset}/{r.direction} {r.method} {r.shots}-shot ({r.protocol})"
                                  for r in old.itertuples()}))
        raise UsageError(f"Rows scored under an earlier protocol cannot be published, since the boards hold "
                         f"{PROTOCOL} rows and one table never mixes protocols: {named}. Run these trials again "
                         f"with this version of the suite.")
    plan = publish_plan(rows, root)
    for line in plan.changes:
        log(("would " if dry_run else "") + line)
    dirty = sorted({_describe(r) + f" (commit {r['commit']})" for _, r in rows.iterrows() if "dirty" in r["commit"]})
    problems = [f"versions: {c}" for c in plan.conflicts] + ([] if replace else [
        f"replace: {r}" for r in plan.fewer_seeds])
    if dirty and not allow_dirty:
        problems += [f"dirty: {d}" for d in dirty]
    if problems:
        raise UsageError(f"Publishing refused, nothing was written: {'; '.join(problems)}. A row is replaced by one "
                         f"with fewer seeds only with --replace, rows whose trials ran from a tree with "
                         f"uncommitted changes (their commit cannot be re-run) are published only with --allow-dirty, "
                         f"and one board holds one version of each method.")
    validators = {t: v for t, v in (validators or {}).items() if not v.empty}
    if dry_run:
        for (dataset, direction), table in validators.items():
            write_validators(table, _validators_path(root, dataset, direction), merge=True, log=log, dry_run=True)
        return []
    paths = []
    for dataset, direction in (tracks(rows) if not rows.empty else []):
        board = _csv_path(root, dataset, direction)
        existing = read_leaderboard(board) if board.exists() else None
        existing_volumes = read_volumes(board)
        incoming = track_rows(rows, dataset, direction)
        if existing is not None:
            paths += _archive_past(existing, root, dataset, direction, board)
            existing = existing[existing["protocol"] == PROTOCOL].reset_index(drop=True)
            existing, existing_volumes, archived = _supersede(existing, existing_volumes, incoming, root, dataset,
                                                              direction)
            paths += archived
        new_volumes = (volumes or {}).get((dataset, direction, PROTOCOL), pd.DataFrame(columns=VOLUME_COLUMNS))
        merged = _merge_track(incoming, existing)
        paths.append(_write_track(merged, root, dataset, direction, volumes=_merge_volumes(new_volumes,
                                                                                            existing_volumes)))
    for (dataset, direction), table in validators.items():
        paths.append(write_validators(table, _validators_path(root, dataset, direction), merge=True, log=log))
    atomic_write_text(root / "README.md", README_TEXT + validator_summary(root))
    return paths


def _archive_past(existing: pd.DataFrame, root: Path, dataset: str, direction: str, board: Path) -> list[Path]:
    """Move a board's rows of earlier protocols to the archive: the files themselves when the board holds only
    such rows and the archive has none yet (byte for byte), else merged into the archive's table."""
    written = []
    for protocol, past in _by_protocol(existing).items():
        if protocol == PROTOCOL:
            continue
        archive = _csv_path(root, dataset, direction, protocol)
        if len(past) == len(existing) and not archive.exists():
            archive.parent.mkdir(parents=True, exist_ok=True)
            for suffix in (".csv", ".md", ".png"):
                if board.with_suffix(suffix).exists():
                    os.replace(board.with_suffix(suffix), archive.with_suffix(suffix))
            written.append(archive)
            continue
        kept = read_leaderboard(archive) if archive.exists() else None
        written.append(_write_track(_merge_track(past, kept), root, dataset, direction, protocol))
    return written


def _supersede(existing: pd.DataFrame, volumes: pd.DataFrame, incoming: pd.DataFrame, root: Path, dataset: str,
               direction: str) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """Move the board's rows (and per-volume lines) of methods that ``incoming`` publishes in another version to
    the track's archive of superseded versions; returns what stays on the board and the paths written."""
    mask = pd.Series(_superseded_mask(existing, incoming), index=existing.index, dtype=bool)
    if not mask.any():
        return existing, volumes, []
    gone = existing[mask].reset_index(drop=True)
    keys = {row_key(r) for _, r in gone.iterrows()}
    moving = pd.Series([row_key(r) in keys for _, r in volumes.iterrows()], index=volumes.index, dtype=bool)
    archive = _csv_path(root, dataset, direction, PROTOCOL, superseded=True)
    kept = read_leaderboard(archive) if archive.exists() else None
    archived_volumes = _merge_volumes(volumes[moving], read_volumes(archive))
    path = _write_track(_merge_track(gone, kept), root, dataset, direction, PROTOCOL, archived_volumes,
                        superseded=True)
    return existing[~mask].reset_index(drop=True), volumes[~moving].reset_index(drop=True), [path]


#: The files of a track that :func:`rerender` draws again. The table and per-volume table it only checks; the
#: Markdown it leaves as published, since that was written from unrounded values and would move in the third decimal
#: if written again from the table's rounded ones.
RENDERED_SUFFIXES = (".png", ".svg", ".ranks.png")


def _rerendered_boards(root: Path) -> list[tuple[Path, str, str, bool]]:
    """The boards of the current protocol under ``root``: (CSV path, dataset, direction, superseded)."""
    boards = []
    for dataset_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for superseded in (False, True):
            folder = _track_folder(root, dataset_dir.name, PROTOCOL, superseded)
            if not folder.is_dir():
                continue
            boards += [(csv_path, dataset_dir.name, csv_path.stem, superseded)
                       for csv_path in board_csvs(folder.glob("*.csv"))]
    return boards


def rerender(leaderboards_dir: str | os.PathLike[str], *, dry_run: bool = False,
             log: Callable[[str], None] | None = None) -> list[Path]:
    """Draw the figures of every published board of the current protocol (the boards and their superseded archives)
    again from the tables already published, after a change to how figures are drawn; boards of earlier protocols
    stay as they were archived, and the Markdown as it was published (:data:`RENDERED_SUFFIXES`).

    Each board is written again, as :func:`publish` writes it, into a scratch folder, and its table and per-volume
    table must come out byte for byte as published: a re-render moves no number. If any does not, nothing is
    written and a :class:`UsageError` names the board. Only files whose bytes change are replaced; each is reported
    through ``log``. Returns the paths written (none with ``dry_run``).
    """
    import tempfile

    root = Path(leaderboards_dir)
    log = log or (lambda line: None)
    boards = _rerendered_boards(root) if root.is_dir() else []
    if not boards:
        raise UsageError(f"{root} holds no {PROTOCOL} leaderboards to re-render (no <dataset>/<direction>.csv).")
    changed: list[tuple[Path, bytes]] = []
    moved: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rerender-") as scratch:
        for csv_path, dataset, direction, superseded in boards:
            volumes = read_volumes(csv_path)
            fresh = _write_track(read_leaderboard(csv_path), Path(scratch), dataset, direction,
                                 volumes=volumes if len(volumes) else None, superseded=superseded)
            for suffix in (".csv", VOLUMES_SUFFIX):
                old, new = _track_file(csv_path, suffix), _track_file(fresh, suffix)
                if old.exists() and new.exists() and old.read_bytes() != new.read_bytes():
                    moved.append(str(old.relative_to(root)))
            for suffix in RENDERED_SUFFIXES:
                old, new = _track_file(csv_path, suffix), _track_file(fresh, suffix)
                if new.exists() and (not old.exists() or old.read_bytes() != new.read_bytes()):
                    changed.append((old, new.read_bytes()))
    if moved:
        raise UsageError(f"Re-rendering refused, nothing was written: {', '.join(moved)} would change when written "
                         f"again from the published rows, so this version of the suite computes the boards' numbers "
                         f"differently from the one that published them; publish the rows again from a run instead.")
    readme = README_TEXT + validator_summary(root)
    readme_path = root / "README.md"
    if not readme_path.exists() or readme_path.read_text() != readme:
        changed.append((readme_path, readme.encode()))
    for path, _ in changed:
        log(("would re-render " if dry_run else "re-render ") + str(path.relative_to(root)))
    if not changed:
        log(f"every board under {root} is drawn as this version of the suite draws it")
    if dry_run:
        return []
    for path, data in changed:
        atomic_write_bytes(path, data)
    return [path for path, _ in changed]
