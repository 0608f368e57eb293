"""Figures of a leaderboard track: Dice against shots, Dice per structure, and bootstrap rank stability.

* :func:`board_figure` / :func:`render_board` draw one track (one ``dataset / direction`` table): per
  (preset, selection) a panel of mean Dice against shots, one line per row, with 95% confidence intervals of
  the mean as error bars (``dice_ci_low`` / ``dice_ci_high``; +- one std over seeds where a row has no interval),
  and a panel of each structure's Dice per row at one shot count (with ``dice_ci_low_<S>`` /
  ``dice_ci_high_<S>`` bars where they exist). One figure-level legend sits below all panels, outside every
  axes; rows keep one style (:func:`benchmark.figure_styles.method_styles`) across panels, and a small fixed
  horizontal offset per row keeps error bars at one shot count from hiding each other.
* :func:`rank_stability_figure` / :func:`render_rank_stability` draw challengeR's "blob plot" of bootstrap rank
  samples (Wiesenfarth et al., "Methods and open-source toolkit for analyzing and visualizing challenge
  results", Sci. Rep. 11:2369, 2021): rows on the x axis, rank on the y axis (1 at the top), at every
  (row, rank) a circle whose *area* is proportional to the share of bootstrap samples giving the row that
  rank, with the median rank (cross) and the 95% interval of the rank samples (vertical line).

The per-structure panel shows the largest shot count at which the most rows have a per-structure Dice (normally
the largest shot count; a lone row at a larger count does not empty the panel); its title names it. An empty
table, or one whose rows all lack a mean Dice, gives a figure saying "no results".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .figure_styles import (BASE_FONT_PT, FIG_WIDTH_IN, MIN_PRINT_FONT_PT, ORACLE_COLOUR, PNG_DPI, PRINT_WIDTH_IN,
                            ROW_HEIGHT_IN, SOURCE_ONLY_COLOUR, _figure_style, _new_figure, _no_results_figure, _save,
                            method_styles)
from .leaderboard_schema import COLUMNS, method_sort_key, shots_sort_key, tracks

__all__ = [
    "FIG_WIDTH_IN",
    "MIN_PRINT_FONT_PT",
    "ORACLE_COLOUR",
    "PNG_DPI",
    "PRINT_WIDTH_IN",
    "SOURCE_ONLY_COLOUR",
    "board_figure",
    "method_styles",
    "rank_stability_figure",
    "render_board",
    "render_rank_stability",
]


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite(value: Any) -> bool:
    return math.isfinite(_float(value))


def _shots(value: Any) -> int | str:
    """Shots as an int where numeric (also ``4.0`` or ``"4"``), else the text."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    text = str(value).strip()
    return int(text) if text.isdigit() else text


def _structures(df: pd.DataFrame) -> list[str]:
    """Structure names S with a ``dice_<S>`` column, in column order; not the fixed columns nor the interval and
    comparison columns (``dice_ci_low_<S>``, ``dice_vs_...``)."""
    fixed = set(COLUMNS)
    out = []
    for col in df.columns:
        if not isinstance(col, str) or not col.startswith("dice_") or col in fixed:
            continue
        name = col[len("dice_"):]
        if name and not name.startswith(("ci_", "vs_")):
            out.append(name)
    return out


def _dodge(index: int, count: int, width: float) -> float:
    """Horizontal offset of item ``index`` of ``count``: the centre of its slot when ``width`` (centred on 0) is
    cut into ``count`` equal slots."""
    return (index - (count - 1) / 2) * width / max(count, 1)


def _interval(row: Mapping[str, Any], mean: float, low_col: str, high_col: str,
              std_col: str | None) -> tuple[float, float, str | None]:
    """Error bar (below, above) of ``mean``: the CI where both bounds are finite, else +- std, else NaN."""
    low, high = _float(row.get(low_col)), _float(row.get(high_col))
    if math.isfinite(low) and math.isfinite(high):
        return mean - min(low, mean), max(high, mean) - mean, "ci"
    std = _float(row.get(std_col)) if std_col else math.nan
    if math.isfinite(std):
        return std, std, "std"
    return math.nan, math.nan, None


def _default_title(df: pd.DataFrame) -> str:
    if df.empty or not {"dataset", "direction"} <= set(df.columns):
        return ""
    return ", ".join(f"{a} / {b}" for a, b in tracks(df))


def _legend_columns(fig, handles, labels, max_cols: int = 4, **kwargs):
    """A figure legend below the panels with the most columns (<= max_cols) that fit the figure width."""
    renderer = fig.canvas.get_renderer()
    width = fig.get_figwidth() * fig.dpi
    for ncols in range(min(max_cols, max(1, len(labels))), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False, **kwargs)
        if ncols == 1 or legend.get_window_extent(renderer).width <= 0.98 * width:
            return legend
        legend.remove()
    raise AssertionError("unreachable")


def _legend_height_in(fig, legend) -> float:
    return legend.get_window_extent(fig.canvas.get_renderer()).height / fig.dpi


# ---------------------------------------------------------------------------
# board figure


_BAR_TITLES = {
    frozenset(): None,
    frozenset({"ci"}): "error bars: 95% CI of the mean",
    frozenset({"std"}): "error bars: \u00b11 std over seeds",
    frozenset({"ci", "std"}): "error bars: 95% CI of the mean (\u00b11 std over seeds where no CI)",
}


def _usable_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a method and a finite mean Dice, shots normalised; missing key columns filled in."""
    if df.empty or "method" not in df.columns or "dice_mean" not in df.columns:
        return df.iloc[0:0]
    out = df.copy()
    for col, default in (("preset", ""), ("selection", ""), ("shots", "all")):
        if col not in out.columns:
            out[col] = default
    out["shots"] = [_shots(v) for v in out["shots"]]
    out["dice_mean"] = [_float(v) for v in out["dice_mean"]]
    out = out[np.isfinite(out["dice_mean"].to_numpy(dtype=float))]
    return out.reset_index(drop=True)


def _structure_shot(sub: pd.DataFrame, structures: Sequence[str]):
    """The shot count for the per-structure panel: most methods with a per-structure Dice, then the largest."""
    best = None
    for shot in set(sub["shots"]):
        rows = sub[(sub["shots"] == shot).to_numpy()]
        n = sum(1 for _, r in rows.iterrows() if any(_finite(r.get(f"dice_{s}")) for s in structures))
        if n and (best is None or (n, shots_sort_key(shot)) > (best[0], shots_sort_key(best[1]))):
            best = (n, shot)
    return None if best is None else best[1]


def _dice_panel(ax, sub: pd.DataFrame, order: Sequence[str], styles, kinds: set) -> list[str]:
    """Mean Dice against shots, one errorbar line per method; returns the methods drawn."""
    shots = sorted(set(sub["shots"]), key=shots_sort_key)
    pos = {s: i for i, s in enumerate(shots)}
    drawn = []
    for k, method in enumerate(order):
        rows = sub[(sub["method"] == method).to_numpy()]
        if rows.empty:
            continue
        pts = []
        for _, r in rows.iterrows():
            mean = float(r["dice_mean"])
            below, above, kind = _interval(r, mean, "dice_ci_low", "dice_ci_high", "dice_std")
            kinds.add(kind)
            pts.append((pos[r["shots"]], mean, below, above))
        pts.sort()
        colour, marker, linestyle = styles[method]
        x = np.array([p[0] for p in pts], dtype=float) + _dodge(k, len(order), 0.4)
        ax.errorbar(x, [p[1] for p in pts], yerr=np.array([[p[2] for p in pts], [p[3] for p in pts]]),
                    color=colour, marker=marker, linestyle=linestyle, markersize=7, linewidth=1.8,
                    markeredgecolor="white", markeredgewidth=0.6, elinewidth=1.2, capsize=2.5, label=method)
        drawn.append(method)
    ax.set_xticks(range(len(shots)))
    ax.set_xticklabels([str(s) for s in shots])
    ax.set_xlim(-0.5, len(shots) - 0.5)
    ax.set_xlabel("shots (labeled volumes)")
    ax.set_ylabel("mean Dice")
    return drawn


def _structure_panel(ax, sub: pd.DataFrame, structures: Sequence[str], shot, order: Sequence[str],
                     styles) -> list[str]:
    """Dice of each structure per method at one shot count (dot plot with CI bars); returns the methods drawn."""
    rows = sub[(sub["shots"] == shot).to_numpy()]
    drawn = []
    for k, method in enumerate(order):
        mrows = rows[(rows["method"] == method).to_numpy()]
        if mrows.empty:
            continue
        r = mrows.iloc[0]
        xs, ys, below, above = [], [], [], []
        for i, s in enumerate(structures):
            mean = _float(r.get(f"dice_{s}"))
            if not math.isfinite(mean):
                continue
            lo, hi, _ = _interval(r, mean, f"dice_ci_low_{s}", f"dice_ci_high_{s}", None)
            xs.append(i + _dodge(k, len(order), 0.8))
            ys.append(mean)
            below.append(lo)
            above.append(hi)
        if not xs:
            continue
        colour, marker, _ = styles[method]
        ax.errorbar(xs, ys, yerr=np.array([below, above]), color=colour, marker=marker, linestyle="none",
                    markersize=6, markeredgecolor="white", markeredgewidth=0.5, elinewidth=1.0, capsize=0,
                    label=method)
        drawn.append(method)
    ax.set_xticks(range(len(structures)))
    ax.set_xticklabels(list(structures))
    ax.set_xlim(-0.5, len(structures) - 0.5)
    for i in range(1, len(structures)):
        ax.axvline(i - 0.5, color="#BBBBBB", linewidth=0.8, zorder=0)
    ax.set_xlabel("structure")
    ax.set_ylabel("Dice")
    return drawn


def board_figure(df: pd.DataFrame, title: str | None = None):
    """The :class:`matplotlib.figure.Figure` of one track (see the module docstring); used by :func:`render_board`.

    One row of panels per (preset, selection): mean Dice against shots, and (when the table has per-structure
    columns) each structure's Dice per method. One legend below all panels, one entry per drawn method.
    """
    with _figure_style():
        return _board_figure(df, title)


#: Width (inches) of a board's Dice panel and structure panel (one column: the Dice panel alone) that a panel
#: title may fill; a longer title (a tuned row's preset with its overrides) wraps, as one too wide for the panel
#: would overlap its neighbour's or leave the layout no room for the axes.
_TITLE_WIDTH_IN = {1: (6.0,), 2: (2.2, 2.75)}
#: Height of one more line of a panel title.
_TITLE_LINE_IN = 1.25 * BASE_FONT_PT / 72


def _panel_title(text: str, width_in: float) -> str:
    """``text`` wrapped after its commas, brackets and spaces (a piece too long for a line anywhere) to ``width_in``."""
    chars = max(12, int(width_in * 72 / (0.5 * BASE_FONT_PT)))  # DejaVu Sans: about half an em a character
    pieces = [piece for part in re.split(r"(?<=[,[ ])", text) if part
              for piece in (part[i:i + chars] for i in range(0, len(part), chars))]
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1]) + len(piece.rstrip()) > chars:
            lines.append(piece.lstrip())
        else:
            lines[-1] += piece
    return "\n".join(line.rstrip() for line in lines)


def _board_figure(df: pd.DataFrame, title: str | None):
    if title is None:
        title = _default_title(df)
    rows = _usable_rows(df)
    if rows.empty:
        detail = f"{len(df)} rows, none with a completed seed" if len(df) else ""
        return _no_results_figure(title, detail)
    structures = _structures(rows)
    styles = method_styles(list(df["method"]))
    order = list(styles)
    panels = sorted(set(zip(rows["preset"], rows["selection"])))
    ncols = 2 if structures else 1
    letters = iter("abcdefghijklmnopqrstuvwxyz" * 4)
    widths = _TITLE_WIDTH_IN[ncols]
    plan = []  # per row of panels: its rows, the structure panel's shot count and the panels' titles
    for preset, selection in panels:
        sub = rows[((rows["preset"] == preset) & (rows["selection"] == selection)).to_numpy()]
        where = f"{preset}, {selection}"
        shot = _structure_shot(sub, structures) if ncols == 2 else None
        titles = [_panel_title(f"({next(letters)}) {where}", widths[0])]
        if ncols == 2:
            titles.append(_panel_title(f"({next(letters)}) {where}" + ("" if shot is None else f", shots={shot}"),
                                       widths[1]))
        plan.append((sub, shot, titles))
    # the figure grows by a wrapped title's extra lines, so every row's axes keep their height (constrained layout
    # gives the titles their margins and the axes equal shares of the rest)
    heights = [ROW_HEIGHT_IN + _TITLE_LINE_IN * (max(t.count("\n") for t in titles)) for _, _, titles in plan]
    fig = _new_figure(sum(heights))
    axes = fig.subplots(len(panels), ncols, squeeze=False,
                        gridspec_kw={"width_ratios": [1.0, 1.25]} if ncols == 2 else None)
    drawn: set[str] = set()
    kinds: set = set()
    for row_axes, (sub, shot, titles) in zip(axes, plan):
        ax = row_axes[0]
        drawn.update(_dice_panel(ax, sub, order, styles, kinds))
        ax.set_title(titles[0], loc="left")
        if ncols == 2:
            ax = row_axes[1]
            if shot is None:
                ax.text(0.5, 0.5, "no per-structure Dice", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
            else:
                drawn.update(_structure_panel(ax, sub, structures, shot, order, styles))
            ax.set_title(titles[1], loc="left")
        for ax in row_axes:
            ax.set_ylim(0.0, 1.0)
            ax.grid(axis="y")
    from matplotlib.lines import Line2D

    methods = [m for m in order if m in drawn]
    handles = [Line2D([], [], color=styles[m][0], marker=styles[m][1], linestyle=styles[m][2], markersize=7,
                      linewidth=1.8, markeredgecolor="white", markeredgewidth=0.6) for m in methods]
    legend = _legend_columns(fig, handles, methods, title=_BAR_TITLES[frozenset(kinds - {None})],
                             handlelength=2.6, columnspacing=1.2)
    if title:
        fig.suptitle(title)
    fig.set_size_inches(FIG_WIDTH_IN, sum(heights) + _legend_height_in(fig, legend) + (0.45 if title else 0.1))
    return fig


def render_board(df: pd.DataFrame, title: str | None = None, *, fmt: str = "png") -> bytes:
    """The bytes of :func:`board_figure` as ``fmt`` (``"png"``, ``"svg"`` or ``"pdf"``); byte-identical for the
    same rows."""
    with _figure_style():
        return _save(_board_figure(df, title), fmt)


# ---------------------------------------------------------------------------
# rank stability (challengeR blob plot)


def _clean_samples(samples: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, values in samples.items():
        a = np.asarray(values, dtype=float).ravel()
        a = a[np.isfinite(a)]
        if a.size:
            out[str(name)] = np.rint(a).astype(np.int64)
    return out


def rank_stability_figure(samples: Mapping[str, np.ndarray], ranks: Mapping[str, int] | None = None,
                          title: str | None = None):
    """challengeR's blob plot of bootstrap rank samples as a :class:`matplotlib.figure.Figure`.

    ``samples[name]`` holds integer ranks (1 = best), one per bootstrap sample. Methods are ordered by
    ``ranks`` (the observed ranks) where given, else by median bootstrap rank (then mean rank, then
    ``method_sort_key``). At every (method, rank) a circle with area proportional to the share of the method's
    samples at that rank (one scatter collection per method, labelled with its name); a black cross marks the
    median rank and a black line the 95% interval (2.5th percentile rounded down to a sampled rank, 97.5th
    rounded up). Rank 1 is at the top.
    """
    with _figure_style():
        return _rank_stability_figure(samples, ranks, title)


def _rank_stability_figure(samples: Mapping[str, np.ndarray], ranks: Mapping[str, int] | None,
                           title: str | None):
    if title is None:
        title = "Bootstrap rank stability"
    clean = _clean_samples(samples)
    if not clean:
        return _no_results_figure(title)
    ranks = dict(ranks or {})
    styles = method_styles(list(clean))

    def order_key(name: str):
        a = clean[name]
        observed = _float(ranks.get(name))
        return (observed if math.isfinite(observed) else math.inf, float(np.median(a)), float(a.mean()),
                method_sort_key(name))

    order = sorted(clean, key=order_key)
    n_ranks = max([len(order)] + [int(a.max()) for a in clean.values()]
                  + [int(_float(v)) for v in ranks.values() if _finite(v)])
    label_in = max(len(n) for n in order) * 0.55 * BASE_FONT_PT * math.sin(math.radians(45)) / 72
    fig = _new_figure(3.6 + label_in)
    ax = fig.subplots()
    from matplotlib.lines import Line2D

    blobs = []
    for k, name in enumerate(order):
        a = clean[name]
        values, counts = np.unique(a, return_counts=True)
        freq = counts / a.size
        sc = ax.scatter(np.full(values.shape, k, dtype=float), values, s=freq, color=styles[name][0], alpha=0.85,
                        linewidths=0, zorder=2, label=name)
        blobs.append((sc, freq))
        low = np.percentile(a, 2.5, method="lower")
        high = np.percentile(a, 97.5, method="higher")
        ax.vlines(k, low, high, color="black", linewidth=1.6, zorder=3)
        ax.plot([k], [np.median(a)], marker="x", color="black", markersize=9, markeredgewidth=2.0,
                linestyle="none", zorder=4)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(order) - 0.4)
    step = max(1, int(math.ceil(n_ranks / 15)))
    ax.set_yticks(range(1, n_ranks + 1, step))
    ax.set_ylim(n_ranks + 0.6, 0.4)  # inverted: rank 1 on top
    ax.set_ylabel("rank (1 = best)")
    ax.set_xlabel("method, ordered by " + ("observed rank" if ranks else "median bootstrap rank"))
    ax.grid(axis="y")
    if title:
        fig.suptitle(title)

    key_shares = (1.0, 0.5, 0.1)
    handles = [Line2D([], [], marker="o", linestyle="none", color="#888888", markeredgewidth=0) for _ in key_shares]
    handles += [Line2D([], [], marker="x", linestyle="none", color="black", markersize=9, markeredgewidth=2.0),
                Line2D([], [], color="black", linewidth=1.6)]
    labels = [f"{int(round(100 * f))}% of samples" for f in key_shares] + ["median rank", "95% interval"]
    legend = _legend_columns(fig, handles, labels, max_cols=5, title="circle area \u221d share of bootstrap samples")
    fig.set_size_inches(FIG_WIDTH_IN, 3.6 + label_in + _legend_height_in(fig, legend))

    def size_blobs() -> None:
        # Largest circle (share 1) as wide as the spacing between ranks / methods in the laid-out axes.
        fig.draw_without_rendering()
        box = ax.get_window_extent()
        spacing_pt = min(box.height / (n_ranks + 0.2), box.width / (len(order) + 0.2)) * 72 / fig.dpi
        s_max = (0.95 * spacing_pt) ** 2
        for sc, freq in blobs:
            sc.set_sizes(freq * s_max)
        for handle, share in zip(legend.legend_handles, key_shares):
            handle.set_markersize(math.sqrt(share * s_max))

    size_blobs()
    size_blobs()  # the key's sizes move the layout a little; once more settles it
    return fig


def render_rank_stability(samples: Mapping[str, np.ndarray], ranks: Mapping[str, int] | None = None,
                          title: str | None = None, *, fmt: str = "png") -> bytes:
    """The bytes of :func:`rank_stability_figure` as ``fmt`` (``"png"``, ``"svg"`` or ``"pdf"``)."""
    with _figure_style():
        return _save(_rank_stability_figure(samples, ranks, title), fmt)
