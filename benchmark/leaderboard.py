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

This module gathers the public names of four others, one per job: :mod:`benchmark.leaderboard_schema` (columns,
their types and the README prose), :mod:`benchmark.leaderboard_aggregate` (records into rows and their statistics),
:mod:`benchmark.leaderboard_render` (text table, Markdown, plot) and :mod:`benchmark.leaderboard_publish` (the
files on disk).
"""

from __future__ import annotations

from .leaderboard_aggregate import (build_rows, method_label, preset_label, recompute_gap_closed, sort_rows,
                                    volume_rows)
from .leaderboard_publish import (publish, publish_plan, read_leaderboard, read_volumes, rerender,
                                  write_leaderboards)
from .leaderboard_render import format_latex, format_table, render_markdown
from .leaderboard_schema import (COLUMN_DESCRIPTIONS, COLUMNS, KEY_COLUMNS, LEAD_COLUMNS, METRICS, README_TEXT,
                                 ROW_KEY, TAIL_COLUMNS, columns_for, normalize_shots, shots_sort_key, structures_of,
                                 track_rows)

__all__ = [
    "METRICS",
    "KEY_COLUMNS",
    "ROW_KEY",
    "LEAD_COLUMNS",
    "TAIL_COLUMNS",
    "COLUMNS",
    "COLUMN_DESCRIPTIONS",
    "README_TEXT",
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
    "format_latex",
    "preset_label",
    "volume_rows",
    "read_volumes",
    "publish_plan",
    "track_rows",
    "publish",
    "rerender",
]
