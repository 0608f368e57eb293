"""Figure styles of the leaderboards: a (colour, marker, linestyle) per row that never repeats within a figure,
print-size fonts, and deterministic files.

* **Styles.** Non-reference methods take the 9 colours of Paul Tol's colour-blind-safe "muted" palette together
  with 10 filled markers. Method ``i`` (in ``method_sort_key`` order, counted among non-reference methods) with
  ``i = q * 9 + r`` gets colour ``r`` and marker ``(r + q) % 10``. Two methods with the same colour have the same
  ``r``, and then the same marker only if ``q = q' (mod 10)``; so the first 90 methods have distinct
  (colour, marker) pairs, and neighbours in the order differ in both. Past 90, colours are shaded copies of the
  palette, and a guard nudges any colour whose pair was already taken, so pairs never repeat for any number of
  methods. References (the ``source_only`` and ``oracle`` rows and their ``@hp<k>`` samples) are dashed, in a
  fixed grey (``source_only``) or black (``oracle``) that the palette does not contain.
* **Print size.** Figures are 7 in wide; every text is at least 14 pt, i.e. at least 7 pt when the figure is
  printed one paper column (3.5 in) wide. PNGs are written at 150 dpi.
* **Determinism and isolation.** Figures use the object API on an Agg canvas and matplotlib's default style
  (whatever the caller's ``rcParams``) plus the settings here, inside ``rc_context``; PNGs carry no
  ``Software`` entry, SVGs no date and a fixed ``svg.hashsalt``, PDFs no creation date, so the same rows give
  byte-identical files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from io import BytesIO
from typing import Any

from .leaderboard_schema import ORACLE, SOURCE_ONLY, method_sort_key

#: Paul Tol's "muted" qualitative palette (colour-blind safe), for the non-reference methods.
PALETTE: tuple[str, ...] = ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE",
                            "#882255", "#44AA99", "#999933", "#AA4499")
#: Filled markers, cycled together with :data:`PALETTE`.
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p")
SOURCE_ONLY_COLOUR = "#777777"
ORACLE_COLOUR = "#000000"
REFERENCE_LINESTYLE = "--"
METHOD_LINESTYLE = "-"

#: Width of a printed paper column, and the smallest font size wanted there.
PRINT_WIDTH_IN = 3.5
MIN_PRINT_FONT_PT = 7.0
FIG_WIDTH_IN = 7.0
#: Smallest font size in figure units: MIN_PRINT_FONT_PT once the figure is scaled to PRINT_WIDTH_IN.
BASE_FONT_PT = MIN_PRINT_FONT_PT * FIG_WIDTH_IN / PRINT_WIDTH_IN
PNG_DPI = 150
ROW_HEIGHT_IN = 3.4
FORMATS = ("png", "svg", "pdf")

_RC: dict[str, Any] = {
    "font.size": BASE_FONT_PT,
    "axes.titlesize": BASE_FONT_PT,
    "axes.labelsize": BASE_FONT_PT,
    "xtick.labelsize": BASE_FONT_PT,
    "ytick.labelsize": BASE_FONT_PT,
    "legend.fontsize": BASE_FONT_PT,
    "legend.title_fontsize": BASE_FONT_PT,
    "figure.titlesize": BASE_FONT_PT + 2,
    "axes.linewidth": 1.2,
    "xtick.major.width": 1.2,
    "ytick.major.width": 1.2,
    "lines.linewidth": 2.0,
    "grid.alpha": 0.3,
    "svg.hashsalt": "fsuda",
    "svg.fonttype": "path",
    "pdf.fonttype": 42,
}


# ---------------------------------------------------------------------------
# styles


def _is_reference(method: str) -> str | None:
    """``SOURCE_ONLY`` or ``ORACLE`` for a reference row (including its ``@hp<k>`` samples), else None."""
    base = method_sort_key(method)[1]
    return base if base in (SOURCE_ONLY, ORACLE) else None


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(min(max(c, 0.0), 1.0) * 255)):02X}" for c in rgb)


def _rgb(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def _shade(colour: str, cycle: int) -> str:
    """A shaded copy of ``colour`` for the ``cycle``-th (>= 1) pass through the palette: darker on odd passes,
    lighter on even ones, further from the original with every pass."""
    amount = 0.55 * cycle / (cycle + 1)
    rgb = _rgb(colour)
    target = 0.0 if cycle % 2 else 1.0
    return _hex([c + (target - c) * amount for c in rgb])


def _nudge(colour: str, step: int) -> str:
    """``colour`` with its channels moved by a few 1/255 steps, a different colour for every ``step`` >= 1."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    d = [(step >> (8 * k)) & 0xFF for k in range(3)]  # distinct offsets per step, spread over the channels
    return "#" + "".join(f"{(v + (dv if v + dv <= 255 else -dv)) % 256:02X}" for v, dv in zip((r, g, b), d))


def method_styles(methods: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """``method -> (colour hex, marker, linestyle)`` for the methods of one figure.

    Deterministic: a function of the *set* of names, assigned in ``method_sort_key`` order. No two methods share
    a (colour, marker) pair, for any number of methods. ``source_only`` (and its ``@hp<k>`` samples) is grey,
    ``oracle`` (and its samples) black, both dashed; other methods are solid, in Tol's muted palette.
    """
    names = sorted(set(methods), key=method_sort_key)
    families: dict[str | None, list[str]] = {SOURCE_ONLY: [], ORACLE: [], None: []}
    for name in names:
        families[_is_reference(name)].append(name)
    palettes = {SOURCE_ONLY: (SOURCE_ONLY_COLOUR,), ORACLE: (ORACLE_COLOUR,), None: PALETTE}
    used: set[tuple[str, str]] = set()
    out: dict[str, tuple[str, str, str]] = {}
    n_markers = len(MARKERS)
    for family in (SOURCE_ONLY, None, ORACLE):
        palette = palettes[family]
        n_colours = len(palette)
        linestyle = METHOD_LINESTYLE if family is None else REFERENCE_LINESTYLE
        for i, name in enumerate(families[family]):
            cycle, j = divmod(i, n_colours * n_markers)
            q, r = divmod(j, n_colours)
            colour = palette[r] if cycle == 0 else _shade(palette[r], cycle)
            marker = MARKERS[(r + q) % n_markers]
            step, candidate = 0, colour
            while (candidate, marker) in used:  # only reachable past n_colours * n_markers methods
                step += 1
                candidate = _nudge(colour, step)
            used.add((candidate, marker))
            out[name] = (candidate, marker, linestyle)
    return {name: out[name] for name in names}


# ---------------------------------------------------------------------------
# shared helpers


@contextlib.contextmanager
def _figure_style() -> Iterator[None]:
    """Matplotlib's default style plus this module's settings, whatever the caller's rcParams; restored on exit."""
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        yield


def _new_figure(height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIG_WIDTH_IN, height_in), dpi=PNG_DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas, independent of any pyplot state
    return fig


def _no_results_figure(title: str, detail: str = ""):
    fig = _new_figure(2.5)
    ax = fig.subplots()
    ax.set_axis_off()
    text = "no results" + (f"\n({detail})" if detail else "")
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    return fig


def _save(fig, fmt: str) -> bytes:
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; expected one of {', '.join(FORMATS)}")
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[fmt]
    buf = BytesIO()
    fig.savefig(buf, format=fmt, dpi=PNG_DPI, metadata=metadata)
    return buf.getvalue()
