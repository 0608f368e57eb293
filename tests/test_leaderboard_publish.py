"""Row identity and safe publishing, the per-volume table, the statistics columns, compare and the LaTeX export."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from benchmark import leaderboard as lb
from benchmark.cli import main
from benchmark import errors as benchmark_errors
from benchmark.errors import UsageError
from benchmark.presets import get_preset
from benchmark.protocol import PROTOCOL

STRUCTS = ("MYO", "LAC", "LVC", "AA")
CASES = [f"ct_{i:03d}" for i in range(6)]


def record(method: str, seed: int, level: float, *, steps: int | None = None, commit: str = "c0ffee",
           shots: int = 1, version: str = "1") -> dict:
    """A finished trial whose per-volume Dice is ``level`` plus a fixed pattern over cases and structures."""
    rng = np.random.default_rng(zlib.crc32(f"{method}/{seed}/{level}".encode()))
    volumes = []
    for i, case in enumerate(CASES):
        metrics = {s: {"dice": float(np.clip(level + 0.02 * i + 0.01 * seed + rng.normal(0, 0.01), 0, 1)),
                       "assd_mm": float(5 - 3 * level + 0.1 * i), "hd95_mm": float(12 - 5 * level + 0.3 * i)}
                   for s in STRUCTS}
        volumes.append({"case": case, "metrics": metrics})
    summary = {m: {s: float(np.mean([v["metrics"][s][m] for v in volumes])) for s in STRUCTS}
               for m in ("dice", "assd_mm", "hd95_mm")}
    for m in summary:
        summary[m]["mean"] = float(np.mean([summary[m][s] for s in STRUCTS]))
    settings = get_preset("quick", steps=steps)
    config = {"dataset": "synthetic-heart", "direction": "mr2ct", "method": method, "shots": shots, "seed": seed,
              "preset": "quick", "preset_settings": settings, "hparam_sample": 0, "hparams": {}, "selection": "last",
              "protocol": PROTOCOL, "dataset_version": "2", "method_version": version}
    return {"trial_id": f"{method}-{seed}-{steps}-v{version}", "status": "ok", "config": config, "summary": summary,
            "structures": list(STRUCTS), "volumes": volumes, "commit": commit}


def publish(records, root, **kw):
    return lb.publish(lb.build_rows(records), root, volumes=lb.volume_rows(records), **kw)


@pytest.fixture
def board(tmp_path):
    """A published board: source_only, metahallu and oracle at 1 shot, 3 seeds each."""
    records = [record(m, s, level) for m, level in (("source_only", 0.3), ("metahallu", 0.45), ("oracle", 0.8))
               for s in range(3)]
    publish(records, tmp_path / "boards")
    return tmp_path / "boards" / "synthetic-heart" / "mr2ct.csv"


def test_a_short_run_is_a_row_of_its_own_and_leaves_every_published_number(board, tmp_path):
    before = board.read_text().splitlines()
    before_volumes = board.with_name("mr2ct.volumes.csv").read_text()
    lines = []
    publish([record("metahallu", 0, 0.05, steps=20)], board.parent.parent, log=lines.append)
    after = board.read_text().splitlines()
    assert set(before) <= set(after) and len(after) == len(before) + 1  # every old line, byte for byte
    new = lb.read_leaderboard(board)
    short = new[new["preset"] == "quick[steps=20]"]
    assert list(short["method"]) == ["metahallu"] and list(short["seeds_done"]) == [1]
    assert len(lines) == 1 and re.fullmatch(r"add synthetic-heart/mr2ct metahallu 1-shot, preset quick\[steps=20\], "
                                            r"version 1 \(1 seed, Dice 0\.\d{4}, commit c0ffee\)", lines[0])
    assert board.with_name("mr2ct.volumes.csv").read_text().startswith(before_volumes.splitlines()[0])


def test_replacing_a_row_by_fewer_seeds_needs_replace(board):
    before = board.read_text()
    with pytest.raises(UsageError, match=r"metahallu 1-shot, preset quick, version 1 has 3 seeds published and 1 "
                                         r"in this run.*--replace"):
        publish([record("metahallu", 0, 0.05)], board.parent.parent)
    assert board.read_text() == before  # nothing written
    lines = []
    publish([record("metahallu", 0, 0.05)], board.parent.parent, replace=True, log=lines.append)
    row = lb.read_leaderboard(board).set_index("method").loc["metahallu"]
    assert row["seeds_done"] == 1 and lines[0].startswith("replace synthetic-heart/mr2ct metahallu 1-shot")
    assert re.search(r": 3 seeds, Dice 0\.5\d{3}, commit c0ffee -> 1 seed, Dice 0\.\d{4}, commit c0ffee$", lines[0])


def test_a_new_method_version_moves_the_old_rows_to_the_superseded_archive(board):
    boards = board.parent.parent
    before = lb.read_leaderboard(board).set_index("method").loc["metahallu"]
    before_volumes = board.with_name("mr2ct.volumes.csv").read_text().splitlines()
    old_lines = [line for line in before_volumes[1:] if line.startswith("metahallu,")]
    lines = []
    publish([record("metahallu", s, 0.5, version="2") for s in range(3)], boards, log=lines.append)
    new = lb.read_leaderboard(board)
    assert list(new[new["method"] == "metahallu"]["method_version"]) == ["2"]  # one version per method on a board
    assert sorted(new["method"]) == ["metahallu", "oracle", "source_only"]
    archive = board.parent / "archive" / PROTOCOL / "superseded" / "mr2ct.csv"
    kept = lb.read_leaderboard(archive)
    assert list(kept["method"]) == ["metahallu"] and list(kept["method_version"]) == ["1"]
    assert kept.iloc[0]["dice_mean"] == before["dice_mean"] and kept.iloc[0]["seeds_done"] == 3
    archived_volumes = archive.with_name("mr2ct.volumes.csv").read_text().splitlines()
    assert archived_volumes[1:] == old_lines and len(old_lines) == 3 * len(CASES) * len(STRUCTS)
    on_board = pd.read_csv(board.with_name("mr2ct.volumes.csv"), dtype=str)
    assert set(on_board[on_board["method"] == "metahallu"]["method_version"]) == {"2"}
    assert lines[0] == (f"supersede synthetic-heart/mr2ct metahallu 1-shot, preset quick, version 1 (3 seeds, Dice "
                        f"{before['dice_mean']:.4f}, commit c0ffee): moved to archive/{PROTOCOL}/superseded/mr2ct.csv")
    assert lines[1].startswith("add synthetic-heart/mr2ct metahallu 1-shot, preset quick, version 2 (3 seeds")


def test_a_new_method_version_with_fewer_seeds_or_two_versions_at_once_is_refused(board):
    before = board.read_text()
    with pytest.raises(UsageError, match=r"metahallu 1-shot, preset quick, version 1 has 3 seeds published and "
                                         r"version 2 has 1 in this run"):
        publish([record("metahallu", 0, 0.5, version="2")], board.parent.parent)
    with pytest.raises(UsageError, match=r"synthetic-heart/mr2ct advent in versions 1, 2.*one version of each"):
        publish([record("advent", 0, 0.4), record("advent", 1, 0.4, version="2")], board.parent.parent,
                replace=True)
    assert board.read_text() == before
    assert not (board.parent / "archive").exists()


def test_rows_from_uncommitted_code_need_allow_dirty(board):
    before = board.read_text()
    dirty = [record("advent", s, 0.4, commit="c0ffee-dirty") for s in range(3)]
    with pytest.raises(UsageError, match=r"dirty: synthetic-heart/mr2ct advent 1-shot.*--allow-dirty"):
        publish(dirty, board.parent.parent)
    assert board.read_text() == before
    publish(dirty, board.parent.parent, allow_dirty=True)
    assert "advent" in set(lb.read_leaderboard(board)["method"])


def test_dry_run_writes_nothing(board):
    before = board.read_text()
    lines = []
    assert publish([record("advent", 0, 0.4)], board.parent.parent, dry_run=True, log=lines.append) == []
    assert board.read_text() == before and lines[0].startswith("would add synthetic-heart/mr2ct advent")


def test_statistics_columns_come_from_the_per_volume_table(board):
    rows = lb.read_leaderboard(board).set_index("method")
    volumes = lb.read_volumes(board)
    assert len(volumes) == 9 * len(CASES) * len(STRUCTS)
    mh = rows.loc["metahallu"]
    assert mh["dice_ci_low"] < mh["dice_mean"] < mh["dice_ci_high"]
    assert mh["dice_ci_low_MYO"] < mh["dice_MYO"] < mh["dice_ci_high_MYO"]
    assert (rows.loc["oracle", "rank"], mh["rank"], rows.loc["source_only", "rank"]) == (1, 2, 3)
    # the paired comparison with source_only: the mean per-volume difference and scipy's Wilcoxon p-value,
    # Holm-corrected over the two comparisons of the table (metahallu and oracle)
    def per_volume(method):
        v = volumes[volumes["method"] == method]
        return v.groupby(["seed", "case"])["dice"].mean().sort_index().to_numpy()
    diffs = {m: per_volume(m) - per_volume("source_only") for m in ("metahallu", "oracle")}
    assert mh["vs_source_only_dice"] == pytest.approx(diffs["metahallu"].mean(), abs=1e-4)
    raw = {m: sps.wilcoxon(per_volume(m), per_volume("source_only")).pvalue for m in diffs}
    (first, p1), (second, p2) = sorted(raw.items(), key=lambda kv: kv[1])
    expected = {first: min(1.0, 2 * p1), second: min(1.0, max(2 * p1, p2))}  # Holm with two comparisons
    for m in diffs:
        assert rows.loc[m, "vs_source_only_p_holm"] == pytest.approx(expected[m], rel=1e-3)
    assert np.isnan(rows.loc["source_only", "vs_source_only_dice"])


def test_republishing_the_same_run_changes_no_byte(board, tmp_path):
    records = [record(m, s, level) for m, level in (("source_only", 0.3), ("metahallu", 0.45), ("oracle", 0.8))
               for s in range(3)]
    before = {p.name: p.read_bytes() for p in board.parent.iterdir() if p.suffix in (".csv", ".md", ".svg")}
    publish(records, board.parent.parent)
    after = {p.name: p.read_bytes() for p in board.parent.iterdir() if p.suffix in (".csv", ".md", ".svg")}
    assert after == before


def test_latex_export_bolds_the_best_non_oracle_row_and_escapes_names(board):
    tex = lb.format_latex(lb.read_leaderboard(board))
    assert "\\toprule" in tex and "\\bottomrule" in tex and "source\\_only" in tex
    metahallu = next(line for line in tex.splitlines() if line.startswith("metahallu"))
    oracle = next(line for line in tex.splitlines() if line.startswith("oracle"))
    assert metahallu.count("\\textbf") == 3 and "\\textbf" not in oracle  # best Dice, ASSD and HD95
    assert "{\\scriptsize [" in metahallu


def test_compare_prints_every_pair_with_holm(board, capsys):
    assert main(["compare", str(board.parent.parent), "--track", "synthetic-heart/mr2ct"]) == 0
    out = capsys.readouterr().out
    assert "Holm-corrected over the 3 comparisons" in out
    table = [line.split() for line in out.splitlines()[2:]]
    assert {(t[3], t[4]) for t in table} == {("source_only", "metahallu"), ("source_only", "oracle"),
                                            ("metahallu", "oracle")}
    assert main(["compare", str(board.parent.parent), "--track", "synthetic-heart/mr2ct", "--baseline",
                 "nope"]) == 2
    assert "has no row 'nope'" in capsys.readouterr().err


def test_rows_differing_only_in_a_preset_override_are_distinct():
    a, b = record("metahallu", 0, 0.4), record("metahallu", 0, 0.4, steps=20)
    assert lb.preset_label(a["config"]) == "quick" and lb.preset_label(b["config"]) == "quick[steps=20]"
    rows = lb.build_rows([a, b])
    assert sorted(rows["preset"]) == ["quick", "quick[steps=20]"]
    assert isinstance(rows, pd.DataFrame)


def test_a_short_run_published_into_a_copy_of_the_repository_boards_changes_no_published_number(tmp_path):
    import shutil

    from benchmark.registry import REPO_ROOT

    copy = shutil.copytree(REPO_ROOT / "leaderboards", tmp_path / "leaderboards")
    boards = {p: p.read_text() for p in copy.glob("*/*.csv") if not p.name.endswith(".volumes.csv")}
    assert boards, "the repository publishes boards"
    from benchmark import registry

    registry.discover()  # the run is of the method as it is now, the version its published rows have
    publish([record("metahallu", 0, 0.05, steps=20, version=registry.METHODS.get("metahallu").version)], copy)
    for path, text in boards.items():
        if path.exists() and path.read_text() == text:
            continue  # a track the run did not touch
        if path.exists() and set(lb.read_leaderboard(path)["protocol"]) == {PROTOCOL}:
            if set(pd.read_csv(pd.io.common.StringIO(text))["protocol"]) == {PROTOCOL}:
                assert set(text.splitlines()) <= set(path.read_text().splitlines()), path  # byte for byte
                continue
        # a board of an earlier protocol moved, unchanged, to its archive
        protocol = next(iter(set(pd.read_csv(pd.io.common.StringIO(text))["protocol"])))
        assert (path.parent / "archive" / protocol / path.name).read_text() == text
    short = lb.read_leaderboard(copy / "synthetic-heart" / "mr2ct.csv")
    assert list(short[short["preset"] == "quick[steps=20]"]["method"]) == ["metahallu"]


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerender_draws_stale_figures_again_and_changes_nothing_else(board):
    boards = board.parent.parent
    publish([record("metahallu", s, 0.5, version="2") for s in range(3)], boards)  # a superseded archive too
    archive_png = board.parent / "archive" / PROTOCOL / "superseded" / "mr2ct.png"
    published = _files(boards)
    stale = [board.with_suffix(".png"), board.with_suffix(".svg"), archive_png]
    for path in stale:
        path.write_bytes(b"drawn by an earlier version")
    board.with_suffix(".md").write_text("kept as published")
    lines = []
    assert lb.rerender(boards, dry_run=True, log=lines.append) == []
    assert lines == [f"would re-render {p.relative_to(boards)}" for p in sorted(stale, key=lambda p: (
        p.parent != board.parent, p))]
    assert board.with_suffix(".png").read_bytes() == b"drawn by an earlier version"
    assert sorted(lb.rerender(boards)) == sorted(stale)
    after = _files(boards)
    assert after.pop(board.with_suffix(".md").relative_to(boards)) == b"kept as published"
    published.pop(board.with_suffix(".md").relative_to(boards))
    assert after == published  # the figures as publish drew them, and every other byte as it was
    lines = []
    assert lb.rerender(boards, log=lines.append) == []
    assert lines == [f"every board under {boards} is drawn as this version of the suite draws it"]


def test_rerender_refuses_when_a_table_would_change_and_writes_nothing(board):
    boards = board.parent.parent
    cells = pd.read_csv(board, dtype=str, keep_default_na=False)
    row = cells.index[cells["method"] == "metahallu"][0]
    cells.loc[row, "dice_ci_low"] = f"{float(cells.loc[row, 'dice_ci_low']) - 0.01:.4f}"  # not what the volumes give
    board.write_text(cells.to_csv(index=False, lineterminator="\n"))
    board.with_suffix(".png").write_bytes(b"stale")
    with pytest.raises(UsageError, match=r"Re-rendering refused, nothing was written: synthetic-heart/mr2ct\.csv "
                                         r"would change"):
        lb.rerender(boards)
    assert board.with_suffix(".png").read_bytes() == b"stale"
    with pytest.raises(UsageError, match=r"holds no fsuda-v\d+ leaderboards to re-render"):
        lb.rerender(board.parent / "nothing-here")


def test_publish_rerender_takes_no_run_and_refuses_uncommitted_code(board, monkeypatch, capsys):
    assert main(["publish", "runs", "--rerender", "--to", str(board.parent.parent)]) == 2
    assert "publish --rerender publishes no rows, so it takes no run directory" in capsys.readouterr().err
    board.with_suffix(".png").write_bytes(b"stale")
    monkeypatch.setattr("benchmark.store.git_commit", lambda: "c0ffee-dirty")
    assert main(["publish", "--rerender", "--to", str(board.parent.parent)]) == 2
    assert "the checkout has uncommitted changes (c0ffee-dirty)" in capsys.readouterr().err
    assert board.with_suffix(".png").read_bytes() == b"stale"
    assert main(["publish", "--rerender", "--allow-dirty", "--to", str(board.parent.parent)]) == 0
    assert capsys.readouterr().out.splitlines() == ["re-render synthetic-heart/mr2ct.png",
                                                    f"Wrote {board.with_suffix('.png')}"]


def test_leaderboard_prints_a_published_folder_beside_its_per_volume_and_validator_tables(board, capsys):
    # the per-volume and validator tables beside a board are not boards: reading them as boards used to crash
    boards = board.parent.parent
    board.with_name("mr2ct.validators.csv").write_text("method,validator,spearman\nmetahallu,entropy,0.5\n")
    assert board.with_name("mr2ct.volumes.csv").exists()
    assert main(["leaderboard", str(boards)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "synthetic-heart / mr2ct"
    assert sorted(line.split()[0] for line in lines[2:] if line.strip()) == ["metahallu", "oracle", "source_only"]


@pytest.mark.parametrize("text", ['dataset,direction\n"unterminated\n', "dataset,direction\nx,y\n", ""])
def test_an_unreadable_board_is_named_with_how_to_restore_it(board, capsys, text):
    before = board.with_suffix(".png").read_bytes()
    board.write_text(text)
    assert main(["publish", "--rerender", "--allow-dirty", "--to", str(board.parent.parent)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: The leaderboard file {board} cannot be read (")
    assert f"restore it from git (git checkout -- {board}) or publish its rows again" in err
    assert "Traceback" not in err and board.with_suffix(".png").read_bytes() == before
    with pytest.raises(benchmark_errors.DataError, match="cannot be read"):
        publish([record("advent", 0, 0.4)], board.parent.parent)
