"""Renderings of leaderboard rows: a text table for the terminal, Markdown, and a PNG plot of Dice against shots."""

from __future__ import annotations

import math
from io import BytesIO

import pandas as pd

from .leaderboard_schema import (ORACLE, SOURCE_ONLY, method_sort_key, shots_sort_key, structures_of, track_rows,
                                 tracks)

PLOT_DPI = 100


def _fmt(value: float, digits: int) -> str:
    v = float(value)
    return "" if math.isnan(v) else f"{v:.{digits}f}"


def _fmt_pm(mean: float, std: float, digits: int) -> str:
    m = _fmt(mean, digits)
    if not m:
        return ""
    s = _fmt(std, digits)
    return f"{m} ± {s}" if s else m


def _seeds_cell(row: pd.Series) -> str:
    done, failed = int(row["seeds_done"]), int(row["seeds_failed"])
    return f"{done} ({failed} failed)" if failed else str(done)


def _table_lines(sub: pd.DataFrame, structures: list[str], show_preset: bool) -> list[list[str]]:
    """Header and cells of one track's text table."""
    header = ["method", "shots", "selection"] + (["preset"] if show_preset else [])
    header += ["seeds ok/fail", "Dice", "ASSD mm", "HD95 mm", "gap"]
    header += [f"Dice {s}" for s in structures]
    lines = [header]
    for _, r in sub.iterrows():
        cells = [r["method"], str(r["shots"]), r["selection"]]
        if show_preset:
            cells.append(r["preset"])
        cells += [
            f"{int(r['seeds_done'])}/{int(r['seeds_failed'])}",
            _fmt_pm(r["dice_mean"], r["dice_std"], 3) or "-",
            _fmt_pm(r["assd_mm_mean"], r["assd_mm_std"], 2) or "-",
            _fmt(r["hd95_mm_mean"], 2) or "-",
            _fmt(r["gap_closed"], 3) or "-",
        ]
        cells += [_fmt(r[f"dice_{s}"], 3) or "-" for s in structures]
        lines.append(cells)
    return lines


def format_table(df: pd.DataFrame) -> str:
    """Compact fixed-width text table for the terminal (one section per track)."""
    if df.empty:
        return "(no rows)"
    structures = structures_of(df)
    sections = []
    for dataset, direction in tracks(df):
        sub = track_rows(df, dataset, direction)
        show_preset = sub["preset"].nunique() > 1
        lines = _table_lines(sub, structures, show_preset)
        n_text = 4 if show_preset else 3
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
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
        values.update(p for p in v.split("+") if p)
    return ", ".join(sorted(values)) or "n/a"


_MARKDOWN_NOTES = [
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


def render_markdown(df: pd.DataFrame) -> str:
    """Markdown rendering of a leaderboard (normally one track)."""
    title = ", ".join(f"{a} / {b}" for a, b in (tracks(df) if not df.empty else [])) or "(empty)"
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
            r["method"], str(r["shots"]), r["selection"], r["preset"],
            _seeds_cell(r),
            _fmt_pm(r["dice_mean"], r["dice_std"], 3),
            _fmt_pm(r["assd_mm_mean"], r["assd_mm_std"], 2),
            _fmt_pm(r["hd95_mm_mean"], r["hd95_mm_std"], 2),
            _fmt(r["gap_closed"], 3),
        ] + [_fmt(r[f"dice_{s}"], 3) for s in structures]
        lines.append("| " + " | ".join(_md_escape(c) or "-" for c in cells) + " |")
    return "\n".join(lines + _MARKDOWN_NOTES)


def _plot_panel(ax, sub: pd.DataFrame, colours: dict[str, str]) -> int:
    """Draw one (preset, selection) panel: a line of mean Dice ± std per method; returns the lines drawn."""
    shots = sorted(set(sub["shots"]), key=shots_sort_key)
    pos = {s: i for i, s in enumerate(shots)}
    plotted = 0
    for method in sorted(set(sub["method"]), key=method_sort_key):
        m = sub[(sub["method"] == method).to_numpy()]
        pts = sorted(((pos[s], mu, sd) for s, mu, sd in zip(m["shots"], m["dice_mean"], m["dice_std"])),
                     key=lambda t: t[0])
        pts = [p for p in pts if not math.isnan(p[1])]
        if not pts:
            continue
        x = [p[0] for p in pts]
        y = [p[1] for p in pts]
        err = [0.0 if math.isnan(p[2]) else p[2] for p in pts]
        style = "--" if method_sort_key(method)[1] in (SOURCE_ONLY, ORACLE) else "-"
        ax.errorbar(x, y, yerr=err, marker="o", markersize=4, linewidth=1.4,
                    linestyle=style, capsize=3, label=method, color=colours[method])
        plotted += 1
    ax.set_xticks(range(len(shots)))
    ax.set_xticklabels([str(s) for s in shots])
    if shots:
        ax.set_xlim(-0.5, len(shots) - 0.5)
    return plotted


def render_plot(df: pd.DataFrame, title: str | None = None) -> bytes:
    """PNG bytes: mean Dice (± std) against shots, one line per method and one
    panel per (preset, selection)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if title is None:
        title = ", ".join(f"{a} / {b}" for a, b in tracks(df))
    panels = sorted(set(zip(df["preset"], df["selection"])))
    n = max(1, len(panels))
    fig = Figure(figsize=(4.8 * n, 3.6), dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg backend, independent of any global pyplot state
    axes = fig.subplots(1, n, squeeze=False)[0]
    # One colour per method, shared by all panels.
    all_methods = sorted(set(df["method"]), key=method_sort_key)
    colours = {m: f"C{i % 10}" for i, m in enumerate(all_methods)}
    if not panels:
        axes[0].text(0.5, 0.5, "no results", ha="center", va="center",
                     transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, (preset, selection) in zip(axes, panels):
        sub = df[((df["preset"] == preset) & (df["selection"] == selection)).to_numpy()]
        plotted = _plot_panel(ax, sub, colours)
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
