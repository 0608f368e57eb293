"""Renderings of leaderboard rows as text: a table for the terminal, Markdown, and a LaTeX (booktabs) table.

The figures are drawn by :mod:`benchmark.leaderboard_figures`.
"""

from __future__ import annotations

import math

import pandas as pd

from .leaderboard_schema import ORACLE, method_sort_key, structures_of, track_rows, tracks



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
        cells = [r["method"], str(r["shots"]), selection_cell(r["selection"])]
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


def _fmt_ci(row: pd.Series, metric: str, digits: int) -> str:
    """``mean ± std [low, high]`` of a metric: the std over seeds and the 95% interval where computed."""
    text = _fmt_pm(row[f"{metric}_mean"], row[f"{metric}_std"], digits)
    low, high = (_fmt(row[f"{metric}_ci_{b}"], digits) for b in ("low", "high"))
    return f"{text} [{low}, {high}]" if text and low and high else text


def _rank_cell(row: pd.Series) -> str:
    if math.isnan(float(row["rank"])):
        return ""
    low, high = int(row["rank_low"]), int(row["rank_high"])
    return f"{int(row['rank'])} ({low}-{high})" if low != high else f"{int(row['rank'])}"


def _comparison_cell(row: pd.Series) -> str:
    diff = float(row["vs_source_only_dice"])
    if math.isnan(diff):
        return ""
    p = float(row["vs_source_only_p_holm"])
    return (f"{diff:+.3f} [{row['vs_source_only_ci_low']:+.3f}, {row['vs_source_only_ci_high']:+.3f}], "
            f"p={p:.2g}")


_MARKDOWN_NOTES = [
    "",
    "Notes:",
    "",
    "- `selection=last` means the final weights after a fixed training budget "
    "are evaluated (no model selection on target labels). A selection study's "
    "rows (preset `...[select_every=N,source_val=S]`) name their policy: `source-val`, `entropy`, `im`, `snd` "
    "choose a checkpoint without target labels; `oracle-target` chooses on target test labels and only bounds "
    "what selection can buy: it is never a result.",
    "- Metrics are the mean over seeds and test volumes ± the sample std "
    "(ddof=1) over seeds, with the 95% confidence interval of a hierarchical "
    "bootstrap (seeds, then test volumes) in brackets; the std is omitted "
    "when fewer than two seeds completed.",
    "- `rank` is the rank by mean Dice among the rows of the same shots, "
    "selection and preset, with its bootstrap 95% interval in parentheses.",
    "- `vs source_only`: the paired Dice difference with `source_only` over "
    "(seed, test volume), its bootstrap 95% interval, and the Wilcoxon "
    "signed-rank p-value, Holm-corrected over the table's comparisons.",
    "- `seeds` counts completed seeds; failed seeds are shown in parentheses. "
    "A row whose seeds all failed has no metrics (`-`).",
    "- `gap closed` = (Dice - Dice[source_only]) / (Dice[oracle] - Dice[source_only]) "
    "at the same shots, selection and preset.",
    "- Column definitions: see the README of the leaderboards directory.",
    "",
]


def selection_cell(selection: str) -> str:
    """A row's selection as tables print it: ``oracle-target`` says that it is an upper bound, not a result."""
    return f"{selection} (upper bound, not a result)" if selection == "oracle-target" else str(selection)


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
    header = ["method", "shots", "selection", "preset", "seeds", "Dice ± std [95% CI]", "ASSD mm ± std [95% CI]",
              "HD95 mm ± std [95% CI]", "rank", "vs source_only", "gap closed"] + [f"Dice {s}" for s in structures]
    lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
    lines.append("|" + "|".join(["---"] * 5 + ["---:"] * (len(header) - 5)) + "|")
    for _, r in df.iterrows():
        cells = [
            r["method"], str(r["shots"]), selection_cell(r["selection"]), r["preset"], _seeds_cell(r),
            _fmt_ci(r, "dice", 3), _fmt_ci(r, "assd_mm", 2), _fmt_ci(r, "hd95_mm", 2), _rank_cell(r),
            _comparison_cell(r), _fmt(r["gap_closed"], 3),
        ] + [_fmt(r[f"dice_{s}"], 3) for s in structures]
        lines.append("| " + " | ".join(_md_escape(c) or "-" for c in cells) + " |")
    return "\n".join(lines + _MARKDOWN_NOTES)


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text


#: The LaTeX table's metric columns: (metric, heading, digits, higher is better).
_LATEX_METRICS = (("dice", "Dice $\\uparrow$", 3, True), ("assd_mm", "ASSD (mm) $\\downarrow$", 2, False),
                  ("hd95_mm", "HD95 (mm) $\\downarrow$", 2, False))


def _best(sub: pd.DataFrame, metric: str, higher: bool) -> set[int]:
    """Row positions of the best mean among the rows that do not use target labels (``oracle`` is a reference)."""
    values = [(i, float(v)) for i, (v, m) in enumerate(zip(sub[f"{metric}_mean"], sub["method"]))
              if not math.isnan(float(v)) and method_sort_key(m)[1] != ORACLE]
    if not values:
        return set()
    target = (max if higher else min)(v for _, v in values)
    return {i for i, v in values if round(v, 6) == round(target, 6)}


def _latex_cell(row: pd.Series, metric: str, digits: int, bold: bool) -> str:
    mean = _fmt(row[f"{metric}_mean"], digits)
    if not mean:
        return "--"
    mean = f"\\textbf{{{mean}}}" if bold else mean
    low, high = (_fmt(row[f"{metric}_ci_{b}"], digits) for b in ("low", "high"))
    return f"{mean} {{\\scriptsize [{low}, {high}]}}" if low and high else mean


def format_latex(df: pd.DataFrame) -> str:
    """A booktabs table per track: mean [95% CI] of each metric, the best per column and shot count in bold
    (``oracle`` excluded, it uses target labels), and the paired Dice difference with ``source_only``."""
    out = []
    for dataset, direction in tracks(df) if not df.empty else []:
        sub = track_rows(df, dataset, direction)
        lines = [f"% {dataset} / {direction}; protocol {_provenance_values(sub, 'protocol')}; needs booktabs",
                 "\\begin{tabular}{llrrrr}", "\\toprule",
                 "Method & Shots & " + " & ".join(h for _, h, _, _ in _LATEX_METRICS)
                 + " & $\\Delta$Dice vs.\\ source-only \\\\", "\\midrule"]
        groups = list(dict.fromkeys(zip(sub["shots"], sub["preset"], sub["selection"])))
        for g, group in enumerate(groups):
            rows = sub[[k == group for k in zip(sub["shots"], sub["preset"], sub["selection"])]].reset_index(drop=True)
            best = {m: _best(rows, m, higher) for m, _, _, higher in _LATEX_METRICS}
            for i, r in rows.iterrows():
                cells = [_tex(str(r["method"])), str(r["shots"])]
                cells += [_latex_cell(r, m, d, i in best[m]) for m, _, d, _ in _LATEX_METRICS]
                diff = float(r["vs_source_only_dice"])
                cells.append("--" if math.isnan(diff) else
                             f"{diff:+.3f} {{\\scriptsize [{r['vs_source_only_ci_low']:+.3f}, "
                             f"{r['vs_source_only_ci_high']:+.3f}], $p$={float(r['vs_source_only_p_holm']):.2g}}}")
                lines.append(" & ".join(cells) + " \\\\")
            if g < len(groups) - 1:
                lines.append("\\midrule")
        lines += ["\\bottomrule", "\\end{tabular}"]
        out.append("\n".join(lines))
    return "\n\n".join(out) or "% no rows"
