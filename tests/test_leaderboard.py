"""Tests for leaderboard aggregation, rendering and publishing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import leaderboard as lb
from benchmark.errors import UsageError
from benchmark.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from benchmark.leaderboard_publish import _csv_text
from benchmark.protocol import PROTOCOL

STRUCTS = ["MYO", "LAC", "LVC", "AA"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_record(
    method: str = "source_only",
    shots=4,
    seed: int = 0,
    dice=(0.8, 0.9, 0.9, 0.7),
    assd=(1.0, 2.0, 3.0, 4.0),
    hd95=(5.0, 6.0, 7.0, 8.0),
    status: str = "ok",
    hparam_sample: int = 0,
    dataset: str = "synthetic-heart",
    direction: str = "mr2ct",
    preset: str = "quick",
    selection: str = "last",
    commit: str = "a1b2c3d",
    protocol: str = PROTOCOL,
    structures=STRUCTS,
) -> dict:
    def block(values):
        out = {s: float(v) for s, v in zip(structures, values)}
        out["mean"] = float(np.mean(values))
        return out

    ok = status == "ok"
    return {
        "trial_id": f"{method}-{shots}-{seed}-{hparam_sample}",
        "status": status,
        "error": None if ok else "RuntimeError: boom",
        "config": {
            "dataset": dataset, "direction": direction, "method": method,
            "shots": shots, "seed": seed, "hparam_sample": hparam_sample,
            "hparams": {"lr": 0.001}, "preset": preset, "selection": selection,
            "protocol": protocol, "dataset_version": "1", "method_version": "1",
        },
        "structures": list(structures),
        "summary": {"dice": block(dice), "assd_mm": block(assd), "hd95_mm": block(hd95)} if ok else None,
        "volumes": [],
        "timing": {"train_s": 1.0, "eval_s": 1.0, "total_s": 2.0},
        "versions": {"benchmark": "0.1.0"},
        "commit": commit,
    }


def uniform(value: float) -> tuple:
    return (value,) * len(STRUCTS)


def row(df: pd.DataFrame, method: str, shots=4, **extra) -> pd.Series:
    mask = (df["method"] == method) & (df["shots"] == shots)
    for k, v in extra.items():
        mask &= df[k] == v
    sub = df[mask.to_numpy()]
    assert len(sub) == 1, f"expected one row for {method}/{shots}, got {len(sub)}"
    return sub.iloc[0]


# ----------------------------------------------------------------------------
# columns
# ----------------------------------------------------------------------------

def test_column_order():
    cols = lb.columns_for(["A", "B"])
    stats = [f"{m}_{s}" for m in ("dice", "assd_mm", "hd95_mm") for s in ("mean", "std", "ci_low", "ci_high")]
    lead = ["dataset", "direction", "method", "shots", "selection", "preset", "seeds_done", "seeds_failed", *stats,
            "rank", "rank_low", "rank_high", "vs_source_only_dice", "vs_source_only_ci_low",
            "vs_source_only_ci_high", "vs_source_only_p_holm"]
    n = len(lead)
    assert cols[:n] == lead
    assert cols[n:n + 6] == ["dice_A", "dice_B", "assd_mm_A", "assd_mm_B", "hd95_mm_A", "hd95_mm_B"]
    assert cols[n + 6:n + 8] == ["dice_ci_low_A", "dice_ci_low_B"]
    assert cols[-5:] == ["gap_closed", "protocol", "dataset_version", "method_version", "commit"]
    assert lb.COLUMNS == cols[:n] + cols[-5:]
    # confidence limits of a structure are never mistaken for a structure
    assert lb.structures_of(pd.DataFrame(columns=cols)) == ["A", "B"]


def test_build_rows_columns_follow_structures():
    df = lb.build_rows([make_record()])
    assert list(df.columns) == lb.columns_for(STRUCTS)
    assert lb.structures_of(df) == STRUCTS


# ----------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------

def test_seed_counts_and_failed_only_row():
    records = [
        make_record("mixed", seed=0),
        make_record("mixed", seed=1),
        make_record("mixed", seed=2, status="failed"),
        make_record("broken", seed=0, status="failed"),
        make_record("broken", seed=1, status="failed"),
        make_record("broken", seed=1, status="failed"),  # same seed twice: counted once
    ]
    df = lb.build_rows(records)
    mixed = row(df, "mixed")
    assert (mixed["seeds_done"], mixed["seeds_failed"]) == (2, 1)
    broken = row(df, "broken")
    assert (broken["seeds_done"], broken["seeds_failed"]) == (0, 2)
    metric_cols = [c for c in df.columns if c.startswith(("dice_", "assd_mm_", "hd95_mm_"))]
    assert all(math.isnan(broken[c]) for c in metric_cols)
    assert math.isnan(broken["gap_closed"])
    # provenance of a failed-only row still comes from its records
    assert broken["commit"] == "a1b2c3d"


def test_seed_retried_successfully_counts_as_done():
    records = [
        make_record("m", seed=0, status="failed"),
        make_record("m", seed=0, dice=uniform(0.6)),
    ]
    r = row(lb.build_rows(records), "m")
    assert (r["seeds_done"], r["seeds_failed"]) == (1, 0)
    assert r["dice_mean"] == pytest.approx(0.6)


def test_mean_and_std_over_seeds():
    per_seed_dice = [(0.8, 0.9, 0.9, 0.7), (0.6, 0.7, 0.8, 0.5), (0.7, 0.75, 0.85, 0.6)]
    per_seed_assd = [(1.0, 2.0, 3.0, 4.0), (2.0, 2.0, 2.0, 2.0), (1.5, 2.5, 3.5, 4.5)]
    per_seed_hd = [(5.0, 6.0, 7.0, 8.0), (9.0, 9.0, 9.0, 9.0), (4.0, 4.0, 6.0, 6.0)]
    records = [
        make_record("m", seed=s, dice=d, assd=a, hd95=h)
        for s, (d, a, h) in enumerate(zip(per_seed_dice, per_seed_assd, per_seed_hd))
    ]
    r = row(lb.build_rows(records), "m")
    for metric, values in (("dice", per_seed_dice), ("assd_mm", per_seed_assd), ("hd95_mm", per_seed_hd)):
        arr = np.array(values)
        seed_means = arr.mean(axis=1)
        assert r[f"{metric}_mean"] == pytest.approx(np.mean(seed_means), abs=1e-12)
        assert r[f"{metric}_std"] == pytest.approx(np.std(seed_means, ddof=1), abs=1e-12)
        for j, s in enumerate(STRUCTS):
            assert r[f"{metric}_{s}"] == pytest.approx(np.mean(arr[:, j]), abs=1e-12)
    # hand-checked values
    assert r["dice_mean"] == pytest.approx((0.825 + 0.65 + 0.725) / 3)
    assert r["dice_MYO"] == pytest.approx(0.7)
    assert r["hd95_mm_AA"] == pytest.approx((8.0 + 9.0 + 6.0) / 3)


def test_std_is_nan_with_one_seed():
    r = row(lb.build_rows([make_record("m", dice=uniform(0.5))]), "m")
    assert r["dice_mean"] == pytest.approx(0.5)
    assert math.isnan(r["dice_std"])
    assert math.isnan(r["assd_mm_std"])


def test_gap_closed_analytic():
    records = []
    for seed in (0, 1):
        records += [
            make_record("source_only", seed=seed, dice=uniform(0.5)),
            make_record("oracle", seed=seed, dice=uniform(0.9)),
            make_record("mymethod", seed=seed, dice=uniform(0.7)),
        ]
    # Shots 8 has no oracle row: gap must be empty there.
    records += [
        make_record("source_only", shots=8, dice=uniform(0.5)),
        make_record("mymethod", shots=8, dice=uniform(0.7)),
    ]
    df = lb.build_rows(records)
    assert row(df, "mymethod")["gap_closed"] == pytest.approx(0.5)
    assert row(df, "source_only")["gap_closed"] == 0.0
    assert row(df, "oracle")["gap_closed"] == 1.0
    assert math.isnan(row(df, "mymethod", 8)["gap_closed"])
    assert math.isnan(row(df, "source_only", 8)["gap_closed"])


def test_gap_closed_empty_for_failed_reference_or_zero_denominator():
    records = [
        make_record("source_only", dice=uniform(0.5)),
        make_record("oracle", status="failed"),
        make_record("m", dice=uniform(0.7)),
        make_record("source_only", shots=2, dice=uniform(0.5)),
        make_record("oracle", shots=2, dice=uniform(0.5)),
        make_record("m", shots=2, dice=uniform(0.7)),
    ]
    df = lb.build_rows(records)
    assert math.isnan(row(df, "m", 4)["gap_closed"])
    assert math.isnan(row(df, "m", 2)["gap_closed"])


def test_gap_closed_uses_matching_preset_and_selection():
    records = [
        make_record("source_only", dice=uniform(0.5), preset="quick"),
        make_record("oracle", dice=uniform(0.9), preset="quick"),
        make_record("m", dice=uniform(0.7), preset="full"),
    ]
    df = lb.build_rows(records)
    assert math.isnan(row(df, "m")["gap_closed"])


def test_hparam_sample_naming():
    records = [
        make_record("m", hparam_sample=0, dice=uniform(0.6)),
        make_record("m", hparam_sample=3, dice=uniform(0.4)),
    ]
    df = lb.build_rows(records)
    assert sorted(df["method"]) == ["m", "m@hp3"]
    assert row(df, "m")["dice_mean"] == pytest.approx(0.6)
    assert row(df, "m@hp3")["dice_mean"] == pytest.approx(0.4)


def test_sorting():
    records = [
        make_record("zeta", shots="all"),
        make_record("oracle", shots=16),
        make_record("alpha", shots=16),
        make_record("alpha", shots=2),
        make_record("alpha", shots="all"),
        make_record("source_only", shots=16),
        make_record("source_only", shots=1),
        make_record("alpha", shots=10),
        make_record("alpha@x", shots=1, direction="ct2mr"),
    ]
    df = lb.build_rows(records)
    got = list(zip(df["direction"], df["method"], df["shots"]))
    assert got == [
        ("ct2mr", "alpha@x", 1),
        ("mr2ct", "source_only", 1),
        ("mr2ct", "source_only", 16),
        ("mr2ct", "alpha", 2),
        ("mr2ct", "alpha", 10),
        ("mr2ct", "alpha", 16),
        ("mr2ct", "alpha", "all"),
        ("mr2ct", "zeta", "all"),
        ("mr2ct", "oracle", 16),
    ]


def test_shots_string_digits_are_ints():
    df = lb.build_rows([make_record("m", shots="4"), make_record("m", seed=1, shots=4)])
    assert len(df) == 1
    assert df["shots"].iloc[0] == 4 and isinstance(df["shots"].iloc[0], int)


def test_provenance_joined_sorted():
    records = [
        make_record("m", seed=0, commit="bbb"),
        make_record("m", seed=1, commit="aaa"),
        make_record("m", seed=2, commit="bbb"),
    ]
    r = row(lb.build_rows(records), "m")
    assert r["commit"] == "aaa+bbb"
    assert r["protocol"] == PROTOCOL
    assert r["dataset_version"] == "1"


def test_protocols_never_share_a_row_or_a_board(tmp_path: Path):
    records = [make_record("m", seed=0, dice=(0.2,) * 4), make_record("m", seed=1, dice=(0.4,) * 4),
               make_record("m", seed=2, dice=(0.9,) * 4, protocol="fsuda-v1"),
               make_record("source_only", seed=0, protocol="fsuda-v1"), make_record("oracle", seed=0)]
    rows = lb.build_rows(records)
    current, past = row(rows, "m", protocol=PROTOCOL), row(rows, "m", protocol="fsuda-v1")
    assert (current["seeds_done"], current["dice_mean"]) == (2, pytest.approx(0.3))
    assert (past["seeds_done"], past["dice_mean"]) == (1, pytest.approx(0.9))
    # gap_closed needs both references of the row's own protocol; v2 has no source_only row here
    assert np.isnan(current["gap_closed"])
    paths = lb.write_leaderboards(records, tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        "synthetic-heart/archive/fsuda-v1/mr2ct.csv", "synthetic-heart/mr2ct.csv"]
    assert set(lb.read_leaderboard(paths[1])["protocol"]) == {PROTOCOL}


def test_publishing_a_new_protocol_archives_the_old_board(tmp_path: Path):
    old = lb.build_rows([make_record("m", seed=s, protocol="fsuda-v1") for s in range(3)]
                        + [make_record("adaptseg", seed=0, protocol="fsuda-v1")])
    board = tmp_path / "synthetic-heart" / "mr2ct.csv"
    board.parent.mkdir(parents=True)
    board.write_text(_csv_text(old))  # a board published under the earlier protocol
    before = board.read_text()
    lb.publish(lb.build_rows([make_record("m", seed=0, dice=(0.1,) * 4)]), tmp_path)
    now = lb.read_leaderboard(board)
    assert list(now["method"]) == ["m"] and list(now["protocol"]) == [PROTOCOL]
    archived = tmp_path / "synthetic-heart" / "archive" / "fsuda-v1" / "mr2ct.csv"
    assert sorted(lb.read_leaderboard(archived)["method"]) == ["adaptseg", "m"]
    assert archived.read_text() == before  # the old rows, byte for byte
    with pytest.raises(UsageError, match=r"earlier protocol.*m 4-shot \(fsuda-v1\)"):
        lb.publish(old, tmp_path)


def test_rows_from_results_store_records(tmp_path: Path):
    from benchmark.protocol import TrialSpec
    from benchmark.store import ResultsStore

    store = ResultsStore(tmp_path)
    spec = TrialSpec(dataset="synthetic-heart", direction="mr2ct", method="metahallu", shots=4, seed=0,
                     preset="quick", variant="meta=false",
                     plugins=[{"name": "cdtg", "version": "2", "hparams": {}}])
    summary = {metric: {**{s: value for s in STRUCTS}, "mean": value}
               for metric, value in (("dice", 0.6), ("assd_mm", 2.0), ("hd95_mm", 5.0))}
    store.write_result(spec, {"structures": STRUCTS, "summary": summary, "volumes": [], "timing": {}})
    store.write_failure(TrialSpec(**{**spec.to_dict(), "seed": 1}), RuntimeError("boom"))
    df = lb.build_rows(list(store.records()))
    assert list(df["method"]) == ["metahallu:meta=false+cdtg"]
    r = row(df, "metahallu:meta=false+cdtg")
    assert (r["seeds_done"], r["seeds_failed"]) == (1, 1)
    assert r["dice_mean"] == pytest.approx(0.6)
    assert r["hd95_mm_AA"] == pytest.approx(5.0)
    assert r["method_version"] == "1 cdtg-2"
    assert lb.structures_of(df) == STRUCTS


def test_empty_records():
    df = lb.build_rows([])
    assert df.empty
    assert list(df.columns) == lb.COLUMNS


# ----------------------------------------------------------------------------
# CSV round trip and writing
# ----------------------------------------------------------------------------

def _sample_records() -> list[dict]:
    return [
        make_record("source_only", seed=0, dice=uniform(0.5)),
        make_record("source_only", seed=1, dice=uniform(0.52)),
        make_record("oracle", seed=0, dice=uniform(0.9)),
        make_record("m", seed=0, dice=(0.71234567, 0.7, 0.7, 0.7)),
        make_record("m", seed=1, status="failed"),
        make_record("m", shots="all", seed=0, dice=uniform(0.8)),
        make_record("dead", seed=0, status="failed"),
    ]


def test_csv_round_trip(tmp_path: Path):
    df = lb.build_rows(_sample_records())
    (csv_path,) = lb.write_leaderboards(_sample_records(), tmp_path)
    assert csv_path == tmp_path / "synthetic-heart" / "mr2ct.csv"
    text = csv_path.read_text()
    assert "nan" not in text.lower()
    dead_line = next(line for line in text.splitlines() if ",dead," in line)
    assert ",," in dead_line  # NaN written as empty cells

    back = lb.read_leaderboard(csv_path)
    assert list(back.columns) == list(df.columns)
    assert list(back["shots"]) == list(df["shots"])
    assert 4 in list(back["shots"]) and "all" in list(back["shots"])
    assert all(isinstance(s, int) for s in back["shots"] if s != "all")
    assert math.isnan(row(back, "dead")["dice_mean"])
    assert math.isnan(row(back, "oracle")["dice_std"])
    assert row(back, "m")["dice_MYO"] == 0.7123  # rounded to 4 decimals
    assert row(back, "dead")["seeds_failed"] == 1
    assert back["seeds_done"].dtype.kind == "i"
    assert back["dataset_version"].iloc[0] == "1"

    rounded = df.copy()
    float_cols = [c for c in df.columns if df[c].dtype.kind == "f"]
    rounded[float_cols] = rounded[float_cols].round(4)
    pd.testing.assert_frame_equal(back, rounded, check_dtype=False)


def test_write_leaderboards_one_set_per_track(tmp_path: Path):
    records = _sample_records() + [make_record("m", direction="ct2mr")]
    paths = lb.write_leaderboards(records, tmp_path)
    assert paths == [tmp_path / "synthetic-heart" / "ct2mr.csv", tmp_path / "synthetic-heart" / "mr2ct.csv"]
    for p in paths:
        assert p.with_suffix(".md").exists()
        assert p.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)
    assert set(lb.read_leaderboard(paths[0])["direction"]) == {"ct2mr"}


def test_markdown_contains_rows(tmp_path: Path):
    (csv_path,) = lb.write_leaderboards(_sample_records(), tmp_path)
    md = csv_path.with_suffix(".md").read_text()
    assert "synthetic-heart / mr2ct" in md
    assert PROTOCOL in md and "quick" in md and "a1b2c3d" in md
    assert "selection=last" in md
    # source_only has two seeds: mean 0.51, std of (0.5, 0.52)
    std = np.std([0.5, 0.52], ddof=1)
    assert f"0.510 ± {std:.3f}" in md
    table_rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table_rows) == 1 + 5  # header + rows
    for method in ("source_only", "oracle", "dead"):
        assert any(f"| {method} |" in line for line in table_rows)
    assert "1 (1 failed)" in md  # m at 4 shots
    assert "0 (1 failed)" in md  # dead


def test_png_written(tmp_path: Path):
    records = _sample_records() + [make_record("m", preset="full", dice=uniform(0.6))]
    (csv_path,) = lb.write_leaderboards(records, tmp_path)
    png = csv_path.with_suffix(".png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert 1000 < len(png) < 500_000


def test_format_table():
    df = lb.build_rows(_sample_records())
    text = lb.format_table(df)
    lines = text.splitlines()
    assert lines[0] == "synthetic-heart / mr2ct"
    assert "Dice MYO" in lines[1]
    assert any(line.startswith("dead") and "0/1" in line for line in lines)
    assert any(line.startswith("source_only") and "0.510 ±" in line for line in lines)
    assert lb.format_table(lb.build_rows([])) == "(no rows)"


def test_importing_module_does_not_import_matplotlib():
    code = "import sys, benchmark.leaderboard; print('matplotlib' in sys.modules)"
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------
# publish
# ----------------------------------------------------------------------------

def test_publish_merge_semantics(tmp_path: Path):
    first = lb.build_rows([
        make_record("source_only", dice=uniform(0.5)),
        make_record("m", dice=uniform(0.6)),
        make_record("m", shots=8, dice=uniform(0.6)),
        make_record("other", dice=uniform(0.55)),
    ])
    (csv_path,) = lb.publish(first, tmp_path)
    assert csv_path == tmp_path / "synthetic-heart" / "mr2ct.csv"
    assert math.isnan(row(lb.read_leaderboard(csv_path), "m")["gap_closed"])

    # Replace m@4, add an oracle row, add a new preset for m@4.
    second = lb.build_rows([
        make_record("m", dice=uniform(0.7)),
        make_record("oracle", dice=uniform(0.9)),
        make_record("m", preset="full", dice=uniform(0.3)),
    ])
    lb.publish(second, tmp_path)
    df = lb.read_leaderboard(csv_path)
    keys = list(zip(df["method"], df["shots"], df["selection"], df["preset"]))
    assert len(keys) == len(set(keys))
    assert sorted(keys, key=str) == sorted([
        ("source_only", 4, "last", "quick"),
        ("m", 4, "last", "quick"),
        ("m", 4, "last", "full"),
        ("m", 8, "last", "quick"),
        ("other", 4, "last", "quick"),
        ("oracle", 4, "last", "quick"),
    ], key=str)
    assert row(df, "m", preset="quick")["dice_mean"] == pytest.approx(0.7)
    assert row(df, "m", preset="full")["dice_mean"] == pytest.approx(0.3)
    assert row(df, "m", 8)["dice_mean"] == pytest.approx(0.6)
    # gap recomputed for rows that were not republished, thanks to the new oracle
    assert row(df, "m", preset="quick")["gap_closed"] == pytest.approx(0.5)
    assert row(df, "other")["gap_closed"] == pytest.approx(0.125)
    assert row(df, "oracle")["gap_closed"] == pytest.approx(1.0)
    assert math.isnan(row(df, "m", 8)["gap_closed"])
    assert math.isnan(row(df, "m", preset="full")["gap_closed"])
    # order: source_only first, oracle last
    assert df["method"].iloc[0] == "source_only"
    assert df["method"].iloc[-1] == "oracle"

    # Publishing the same rows again changes nothing.
    before = csv_path.read_text()
    lb.publish(second, tmp_path)
    assert csv_path.read_text() == before

    md = csv_path.with_suffix(".md").read_text()
    assert "| oracle |" in md and "| other |" in md
    assert csv_path.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)


def test_publish_keeps_other_tracks_and_writes_readme(tmp_path: Path):
    lb.publish(lb.build_rows([make_record("m", direction="ct2mr")]), tmp_path)
    lb.publish(lb.build_rows([make_record("m", direction="mr2ct")]), tmp_path)
    assert (tmp_path / "synthetic-heart" / "ct2mr.csv").exists()
    assert (tmp_path / "synthetic-heart" / "mr2ct.csv").exists()
    readme = (tmp_path / "README.md").read_text()
    assert readme == lb.README_TEXT
    for col in lb.COLUMNS + ["dice_<S>", "assd_mm_<S>", "hd95_mm_<S>"]:
        assert f"`{col}`" in readme, col
    # README is regenerated if it was changed by hand
    (tmp_path / "README.md").write_text("stale")
    lb.publish(lb.build_rows([make_record("m")]), tmp_path)
    assert (tmp_path / "README.md").read_text() == lb.README_TEXT


def test_method_description_spells_row_names():
    from benchmark.protocol import row_name

    desc = lb.COLUMN_DESCRIPTIONS["method"]
    assert f"`{row_name('metahallu', 'meta=false', [{'name': 'cdtg'}])}`" in desc
    assert f"`{row_name('source_only', hparam_sample=3)}`" in desc
    assert f"| `method` | {desc} |" in lb.README_TEXT


def test_publish_multi_dataset_rows_keep_own_structures(tmp_path: Path):
    records = [
        make_record("m"),
        make_record("m", dataset="synthetic-abdomen", structures=["LIV", "SPL"], dice=(0.5, 0.6),
                    assd=(1.0, 1.0), hd95=(2.0, 2.0)),
    ]
    paths = lb.publish(lb.build_rows(records), tmp_path)
    assert len(paths) == 2
    abdomen = lb.read_leaderboard(tmp_path / "synthetic-abdomen" / "mr2ct.csv")
    heart = lb.read_leaderboard(tmp_path / "synthetic-heart" / "mr2ct.csv")
    assert lb.structures_of(abdomen) == ["LIV", "SPL"]
    assert lb.structures_of(heart) == STRUCTS


def test_publish_failed_only_row_appears(tmp_path: Path):
    (csv_path,) = lb.publish(lb.build_rows([make_record("m", status="failed")]), tmp_path)
    r = row(lb.read_leaderboard(csv_path), "m")
    assert (r["seeds_done"], r["seeds_failed"]) == (0, 1)
    assert math.isnan(r["dice_mean"])


# ----------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------

def test_atomic_writes_leave_no_temp_files(tmp_path: Path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_text(tmp_path / "a.txt", "hello again")
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "c.json", {"b": 1, "a": [1, 2]})
    lb.publish(lb.build_rows(_sample_records()), tmp_path / "lbs")
    assert (tmp_path / "a.txt").read_text() == "hello again"
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    text = (tmp_path / "c.json").read_text()
    assert text == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n"
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_failed_json_write_keeps_old_file(tmp_path: Path):
    target = tmp_path / "record.json"
    atomic_write_json(target, {"ok": True})
    before = target.read_text()
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert target.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_failed_write_midway_removes_temp(tmp_path: Path, monkeypatch):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("benchmark.io.os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]
