"""Leaderboard figures: method styles, the board figure (Dice against shots, per-structure Dice) and the
bootstrap rank-stability blob plot."""

from __future__ import annotations

import math
import random
import warnings
import xml.etree.ElementTree as ET

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer
from matplotlib.text import Text

from benchmark import figure_styles
from benchmark import leaderboard_figures as lf
from benchmark.leaderboard_schema import conform

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STRUCTURES = ["MYO", "LAC", "LVC", "AA"]
METHODS_14 = ["source_only", "source_only+cdtg", "source_only@hp1", "adaptseg", "advent", "cycada", "metahallu",
              "metahallu+cdtg", "metahallu:meta=false", "metahallu:meta=false+cdtg", "sifa", "external:nnunet",
              "oracle", "oracle@hp2"]


def _board(methods=METHODS_14, shots=(1, 4), ci: bool = True, per_structure_ci: bool = True) -> pd.DataFrame:
    """A track with one row per (method, shots): Dice values on a 1/64 grid (exact in binary)."""
    rows = []
    for i, method in enumerate(methods):
        for j, k in enumerate(shots):
            mean = (16 + 2 * i + j) / 64
            row = {"dataset": "synthetic-heart", "direction": "mr2ct", "method": method, "shots": k,
                   "selection": "last", "preset": "quick", "seeds_done": 3, "seeds_failed": 0,
                   "dice_mean": mean, "dice_std": 1 / 32, "assd_mm_mean": 3.0, "hd95_mm_mean": 9.0,
                   "protocol": "fsuda-v2", "dataset_version": "1", "method_version": "1", "commit": "abc"}
            for s_i, s in enumerate(STRUCTURES):
                row[f"dice_{s}"] = mean + (s_i - 1.5) / 64
            if ci:
                row["dice_ci_low"], row["dice_ci_high"] = mean - 3 / 64, mean + 1 / 64
            if per_structure_ci:
                for s in STRUCTURES:
                    row[f"dice_ci_low_{s}"] = row[f"dice_{s}"] - 1 / 64
                    row[f"dice_ci_high_{s}"] = row[f"dice_{s}"] + 2 / 64
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def board() -> pd.DataFrame:
    return _board()


@pytest.fixture(scope="module")
def fig(board):
    figure = lf.board_figure(board, "synthetic-heart / mr2ct")
    figure.canvas.draw()
    return figure


def _panel(fig, letter: str):
    (ax,) = [ax for ax in fig.axes if ax.get_title(loc="left").startswith(f"({letter})")]
    return ax


def _container(ax, method: str) -> ErrorbarContainer:
    (c,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer) and c.get_label() == method]
    return c


def _bar_segments(container: ErrorbarContainer) -> list[np.ndarray]:
    """The drawn error bars of a container as (x, y_low, y_high) rows, sorted by x (a point without a bar has an
    empty segment)."""
    (bars,) = container.lines[2]
    return sorted((seg[0, 0], min(seg[:, 1]), max(seg[:, 1])) for seg in bars.get_segments() if len(seg))


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


# ---------------------------------------------------------------------------
# method_styles


@pytest.mark.parametrize("n_extra", [0, 16, 200])
def test_method_styles_pairs_are_unique(n_extra):
    methods = METHODS_14 + [f"method{i:03d}" for i in range(n_extra)]
    styles = lf.method_styles(methods)
    assert list(styles) == sorted(set(methods), key=lf.method_sort_key)
    pairs = [(colour, marker) for colour, marker, _ in styles.values()]
    assert len(set(pairs)) == len(methods) == len(pairs)
    for colour, marker, linestyle in styles.values():
        assert to_hex(colour) == colour.lower()
        assert marker in figure_styles.MARKERS
        assert linestyle in ("-", "--")


def test_method_styles_30_methods_use_palette_and_differ_from_neighbours():
    methods = [f"m{i:02d}" for i in range(30)]
    styles = lf.method_styles(methods)
    assert len({(c, m) for c, m, _ in styles.values()}) == 30
    assert {c for c, _, _ in styles.values()} == set(figure_styles.PALETTE)
    values = list(styles.values())
    for (c1, m1, _), (c2, m2, _) in zip(values, values[1:]):
        assert c1 != c2 and m1 != m2


def test_reference_methods_have_fixed_colours_and_dashes():
    for methods in (METHODS_14, ["source_only", "oracle"], ["oracle", "zeta", "source_only", "alpha"] * 2):
        styles = lf.method_styles(methods)
        assert styles["source_only"][0] == lf.SOURCE_ONLY_COLOUR
        assert styles["oracle"][0] == lf.ORACLE_COLOUR
        for name, (colour, _, linestyle) in styles.items():
            reference = name.split("@hp")[0] in ("source_only", "oracle")
            assert linestyle == ("--" if reference else "-"), name
            if not reference:
                assert colour not in (lf.SOURCE_ONLY_COLOUR, lf.ORACLE_COLOUR), name
    styles = lf.method_styles(METHODS_14)
    assert styles["source_only@hp1"][0] == lf.SOURCE_ONLY_COLOUR
    assert styles["oracle@hp2"][0] == lf.ORACLE_COLOUR
    assert styles["source_only+cdtg"][2] == "-"  # a plug-in on source_only is a method, not the reference


def test_method_styles_are_deterministic_for_any_input_order():
    expected = lf.method_styles(METHODS_14)
    shuffled = list(METHODS_14) * 2
    random.Random(7).shuffle(shuffled)
    assert lf.method_styles(shuffled) == expected
    assert lf.method_styles(tuple(reversed(METHODS_14))) == expected


def test_structures_ignore_interval_and_comparison_columns(board):
    df = board.assign(dice_vs_source_only=0.1)
    assert lf._structures(df) == STRUCTURES


# ---------------------------------------------------------------------------
# board figure


def test_board_png_svg_pdf_are_valid_and_deterministic(board):
    png = lf.render_board(board)
    assert png.startswith(PNG_MAGIC)
    assert lf.render_board(board.iloc[::-1].reset_index(drop=True)) == png  # row order does not matter
    svg = lf.render_board(board, fmt="svg")
    assert ET.fromstring(svg).tag.endswith("svg")
    assert lf.render_board(board, fmt="svg") == svg
    pdf = lf.render_board(board, fmt="pdf")
    assert pdf.startswith(b"%PDF") and lf.render_board(board, fmt="pdf") == pdf
    with pytest.raises(ValueError):
        lf.render_board(board, fmt="gif")


def test_board_ignores_caller_rc_params(board):
    expected = lf.render_board(board, fmt="svg")
    with matplotlib.rc_context({"lines.linewidth": 5.0, "font.size": 3.0, "svg.hashsalt": "other",
                                "axes.prop_cycle": matplotlib.cycler(color=["#123456"])}):
        assert lf.render_board(board, fmt="svg") == expected
        assert matplotlib.rcParams["svg.hashsalt"] == "other"


def test_legend_has_one_entry_per_method_outside_every_axes(fig):
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(lf.method_styles(METHODS_14))
    assert len(legend.get_texts()) == 14
    box = legend.get_window_extent()
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_legend() is None
        assert not box.overlaps(ax.get_window_extent()), ax.get_title(loc="left")
        assert not box.overlaps(ax.get_tightbbox()), ax.get_title(loc="left")  # nor tick labels, axis labels
    assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1


def test_legend_styles_match_the_lines(fig):
    (legend,) = fig.legends
    ax = _panel(fig, "a")
    for text, handle in zip(legend.get_texts(), legend.legend_handles):
        line = _container(ax, text.get_text()).lines[0]
        assert (to_hex(handle.get_color()), handle.get_marker(), handle.get_linestyle()) == \
               (to_hex(line.get_color()), line.get_marker(), line.get_linestyle())


def test_dice_panel_has_14_lines_with_distinct_styles(fig):
    ax = _panel(fig, "a")
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(containers) == 14
    styles = lf.method_styles(METHODS_14)
    read = {}
    for c in containers:
        line = c.lines[0]
        read[c.get_label()] = (to_hex(line.get_color()), line.get_marker(), line.get_linestyle())
        assert len(line.get_xdata()) == 2
    assert len({v[:2] for v in read.values()}) == 14
    assert read == {m: (c.lower(), mk, ls) for m, (c, mk, ls) in styles.items()}
    assert ax.get_xticklabels()[0].get_text() == "1" and ax.get_xticklabels()[1].get_text() == "4"


def test_dice_error_bars_are_the_confidence_interval(fig, board):
    ax = _panel(fig, "a")
    for method in ("advent", "oracle"):
        row = board[(board["method"] == method) & (board["shots"] == 4)].iloc[0]
        (_, lo1, hi1), (_, lo4, hi4) = _bar_segments(_container(ax, method))
        assert (lo4, hi4) == pytest.approx((row["dice_ci_low"], row["dice_ci_high"]), abs=1e-12)
        assert hi4 - lo4 == pytest.approx(4 / 64)  # the CI is asymmetric here; +-std would span 4/64 too, but
        assert row["dice_mean"] - lo4 == pytest.approx(3 / 64)  # centred, so this tells them apart
    assert "error bars: 95% CI of the mean" in _texts(fig)


def test_dice_error_bars_fall_back_to_std():
    df = _board(ci=False)
    fig = lf.board_figure(df)
    ax = _panel(fig, "a")
    row = df[(df["method"] == "advent") & (df["shots"] == 4)].iloc[0]
    (_, _, _), (_, lo, hi) = _bar_segments(_container(ax, "advent"))
    assert (lo, hi) == pytest.approx((row["dice_mean"] - row["dice_std"], row["dice_mean"] + row["dice_std"]))
    assert any(t.startswith("error bars: \u00b11 std") for t in _texts(fig))


def test_missing_interval_of_one_row_falls_back_per_point():
    df = _board()
    mask = (df["method"] == "advent") & (df["shots"] == 1)
    df.loc[mask, "dice_ci_low"] = math.nan
    df.loc[mask, "dice_std"] = math.nan
    df.loc[(df["method"] == "cycada") & (df["shots"] == 1), "dice_ci_high"] = math.nan
    fig = lf.board_figure(df)
    ax = _panel(fig, "a")
    assert len(_bar_segments(_container(ax, "advent"))) == 1  # no bar at all where neither CI nor std exists
    (_, lo, hi), _ = _bar_segments(_container(ax, "cycada"))
    row = df[(df["method"] == "cycada") & (df["shots"] == 1)].iloc[0]
    assert (lo, hi) == pytest.approx((row["dice_mean"] - row["dice_std"], row["dice_mean"] + row["dice_std"]))
    assert any("where no CI" in t for t in _texts(fig))


def test_conformed_board_without_interval_columns_renders():
    df = conform(_board(ci=False, per_structure_ci=False), STRUCTURES)
    fig = lf.board_figure(df)
    assert len(_panel(fig, "a").containers) == 14
    assert len(_panel(fig, "b").containers) == 14
    assert lf.render_board(df).startswith(PNG_MAGIC)


def test_structure_panel_dots_and_intervals(fig, board):
    ax = _panel(fig, "b")
    assert ax.get_title(loc="left").endswith("shots=4")
    assert [t.get_text() for t in ax.get_xticklabels()] == STRUCTURES
    assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == 14
    row = board[(board["method"] == "metahallu") & (board["shots"] == 4)].iloc[0]
    c = _container(ax, "metahallu")
    assert list(c.lines[0].get_ydata()) == pytest.approx([row[f"dice_{s}"] for s in STRUCTURES])
    assert c.lines[0].get_linestyle() == "None"
    segments = _bar_segments(c)
    assert [v for _, lo, hi in segments for v in (lo, hi)] == pytest.approx(
        [row[f"dice_ci_{end}_{s}"] for s in STRUCTURES for end in ("low", "high")], abs=1e-12)
    xs = [x for x, _, _ in segments]
    assert [round(x) for x in xs] == [0, 1, 2, 3]  # dodged around each structure's position


def test_structure_panel_prefers_the_shot_count_most_methods_have():
    df = pd.concat([_board(), _board(methods=["sifa"], shots=(16,))], ignore_index=True)
    fig = lf.board_figure(df)
    assert _panel(fig, "b").get_title(loc="left").endswith("shots=4")
    assert [t.get_text() for t in _panel(fig, "a").get_xticklabels()] == ["1", "4", "16"]


def test_one_row_of_panels_per_preset_and_selection():
    df = pd.concat([_board(), _board().assign(preset="standard")], ignore_index=True)
    fig = lf.board_figure(df)
    fig.canvas.draw()
    assert len(fig.axes) == 4
    assert [ax.get_title(loc="left") for ax in fig.axes] == [
        "(a) quick, last", "(b) quick, last, shots=4", "(c) standard, last", "(d) standard, last, shots=4"]
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 14
    assert all(not legend.get_window_extent().overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_a_tuned_rows_long_preset_wraps_its_panel_titles_without_overlap():
    # a tuned row's preset names every override; unwrapped, its titles overlapped the neighbouring panel's and
    # left constrained layout no room for the axes (matplotlib warned and gave up)
    preset = 'quick[samples=4,search="asha",select_every=2,source_val=0.2,steps=4,tune_by="snd"]'
    df = pd.concat([_board(methods=["source_only", "oracle"]),
                    _board(methods=["source_only"], shots=(1,)).assign(preset=preset, selection="tuned-snd")],
                   ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied" included
        fig = lf.board_figure(df, "synthetic-heart / mr2ct")
        fig.canvas.draw()
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[:2] == ["(a) quick, last", "(b) quick, last, shots=4"]  # short titles stay on one line
    assert len(titles[2].split("\n")) > 3
    assert [t.replace("\n", "").replace(" ", "") for t in titles[2:]] == [
        f"(c){preset},tuned-snd", f"(d){preset},tuned-snd,shots=1"]  # wrapped at commas, nothing lost
    assert all(len(line) <= 28 for t in titles for line in t.split("\n"))
    renderer = fig.canvas.get_renderer()
    boxes = [ax._left_title.get_window_extent(renderer) for ax in fig.axes]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # each title stays above its own axes, which keep the height of an unwrapped row
    heights = [ax.get_window_extent(renderer).height for ax in fig.axes]
    assert min(heights) > 0.9 * max(heights)


def test_text_is_at_least_7pt_when_printed_one_column_wide(fig):
    scale = lf.PRINT_WIDTH_IN / fig.get_figwidth()
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert sizes and min(sizes) * scale >= lf.MIN_PRINT_FONT_PT - 1e-9
    assert 6.0 <= fig.get_figwidth() <= 7.5


@pytest.mark.parametrize("make", [
    lambda: _board().iloc[0:0],
    lambda: pd.DataFrame(),
    lambda: conform(pd.DataFrame(), STRUCTURES),
    lambda: _board().assign(dice_mean=math.nan),
])
def test_no_results(make):
    df = make()
    fig = lf.board_figure(df, "empty track")
    assert any(t.startswith("no results") for t in _texts(fig))
    assert "empty track" in _texts(fig)
    assert lf.render_board(df, "empty track").startswith(PNG_MAGIC)
    assert ET.fromstring(lf.render_board(df, fmt="svg")) is not None


# ---------------------------------------------------------------------------
# rank stability blob plot


def _rank_samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    samples = {m: np.clip(np.rint(rng.normal(i + 1, 1.5, 2000)), 1, 14).astype(np.int64)
               for i, m in enumerate(METHODS_14)}
    samples["advent"] = np.array([1] * 1500 + [2] * 500)  # 75% rank 1, 25% rank 2
    return samples


def _blobs(fig, method: str):
    (ax,) = fig.axes
    (sc,) = [c for c in ax.collections if c.get_label() == method]
    return ax, sc


def test_blob_areas_are_proportional_to_frequencies():
    fig = lf.rank_stability_figure(_rank_samples())
    ax, sc = _blobs(fig, "advent")
    offsets = sc.get_offsets()
    assert list(offsets[:, 1]) == [1, 2]
    sizes = sc.get_sizes()
    assert sizes[0] / sizes[1] == pytest.approx(3.0)
    assert to_hex(sc.get_facecolor()[0]) == lf.method_styles(METHODS_14)["advent"][0].lower()
    assert ax.yaxis_inverted()
    bottom, top = ax.get_ylim()
    assert top < 1 < 14 < bottom  # rank 1 at the top
    # Areas are comparable across methods: a method always at one rank has a blob of the summed area.
    _, sc_one = _blobs(lf.rank_stability_figure({**_rank_samples(), "sifa": np.full(2000, 5)}), "sifa")
    assert sc_one.get_sizes()[0] / sizes[0] == pytest.approx(4 / 3)


def test_blob_order_median_and_interval():
    samples = {"b": np.array([2] * 90 + [3] * 10), "a": np.array([1] * 60 + [2] * 40), "c": np.array([3] * 100)}
    fig = lf.rank_stability_figure(samples)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]  # by median bootstrap rank
    fig = lf.rank_stability_figure(samples, ranks={"a": 2, "b": 1, "c": 3})
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "a", "c"]  # by observed rank
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert [float(line.get_ydata()[0]) for line in crosses] == [2.0, 1.0, 3.0]
    intervals = sorted((seg[0, 0], seg[0, 1], seg[1, 1]) for coll in ax.collections
                       if coll.get_label() not in samples for seg in coll.get_segments())
    assert intervals == [(0, 2, 3), (1, 1, 2), (2, 3, 3)]
    (legend,) = fig.legends
    fig.canvas.draw()
    assert not legend.get_window_extent().overlaps(ax.get_window_extent())


def test_rank_stability_renders_deterministically():
    samples = _rank_samples()
    png = lf.render_rank_stability(samples, title="synthetic-heart / mr2ct")
    assert png.startswith(PNG_MAGIC)
    svg = lf.render_rank_stability(samples, fmt="svg")
    assert ET.fromstring(svg) is not None
    assert lf.render_rank_stability(dict(reversed(list(samples.items()))), fmt="svg") == svg
    fig = lf.rank_stability_figure(samples)
    scale = lf.PRINT_WIDTH_IN / fig.get_figwidth()
    assert min(t.get_fontsize() for t in fig.findobj(Text) if t.get_text()) * scale >= lf.MIN_PRINT_FONT_PT


def test_rank_stability_without_samples():
    fig = lf.rank_stability_figure({})
    assert any(t.startswith("no results") for t in _texts(fig))
    assert lf.render_rank_stability({"a": np.array([], dtype=int)}).startswith(PNG_MAGIC)
