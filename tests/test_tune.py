"""``tune``: a search's settings checked before anything runs, the scores its trials report, the tuned row's pick,
and an ASHA search that stops trials early, records every trial and resumes."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.selection import expand_selections, expand_tuned

SEARCH = {"source_val": 0.2, "select_every": 2, "search": "asha", "samples": 2, "tune_by": "snd"}


@pytest.mark.parametrize("args, message", [
    (["--selection", "oracle-target"], "reads target test labels, which a search must never see"),
    (["--selection", "last"], "is not a checkpoint score"),
    (["--selection", "snd,im"], "names several validators"),
    (["--scheduler", "pbt"], "Unknown scheduler 'pbt'; the schedulers are asha, hyperband, fifo"),
    (["--samples", "0"], "--samples 0 is impossible"),
    (["--reduction-factor", "1"], "--reduction-factor 1 is impossible"),
    (["--select-every", "0"], "--select-every 0 is impossible"),
    (["--methods", "nosuch"], "nosuch"),
])
def test_bad_search_settings_exit_2_naming_the_setting(args, message, tmp_path, capsys):
    base = ["tune", "--methods", "source_only", "--out", str(tmp_path), "--dry-run"]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "trials").exists()


def test_plan_names_the_searches_and_the_validator(tmp_path, capsys):
    assert main(["tune", "--methods", "source_only,sifa_lite", "--shots", "4", "--samples", "5", "--seeds", "0,1",
                 "--directions", "mr2ct", "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Plan: 4 searches of 5 hyperparameter samples (20 trials)" in out
    assert "scheduler asha on snd" in out and "rows: tuned-snd" in out


def _candidate(step, dice, snd):
    return {"step": step, "scores": {"snd": snd}, "test": {"volumes": [{"case": f"d{dice}"}],
                                                           "summary": {"dice": {"mean": dice}}}}


def _record(sample, status, candidates, seed=0):
    from test_selection import study_spec

    config = {**study_spec(validation=SEARCH, seed=seed).to_dict(), "hparam_sample": sample,
              "hparams": {"lr": 0.001 * (sample + 1)}}
    return {"status": status, "config": config, "candidates": candidates, "commit": "x",
            "trial_id": f"t{sample}{seed}", "summary": None, "volumes": []}


def test_the_tuned_row_is_the_best_validator_score_over_every_sample_and_stop():
    records = [
        _record(0, "ok", [_candidate(2, 0.30, 0.5), _candidate(4, 0.60, 0.7)]),
        _record(1, "stopped", [_candidate(2, 0.10, 0.9)]),  # stopped early, yet the best snd: it is chosen
        _record(2, "ok", [_candidate(2, 0.80, 0.9), _candidate(4, 0.90, 0.2)]),  # ties sample 1 at 0.9: loses
        _record(3, "failed", None),
        _record(0, "ok", [_candidate(2, 0.40, 0.1), _candidate(4, 0.45, 0.1)], seed=1),  # its own search
    ]
    views = expand_tuned(records)
    tuned = sorted((v for v in views if v["status"] == "ok"), key=lambda v: v["config"]["seed"])
    assert [v["config"]["seed"] for v in tuned] == [0, 1]
    first = tuned[0]
    assert first["tuned_sample"] == 1 and first["selected_step"] == 2
    assert first["summary"] == {"dice": {"mean": 0.10}} and first["volumes"] == [{"case": "d0.1"}]
    assert first["config"]["selection"] == "tuned-snd" and first["config"]["hparam_sample"] == 0
    assert first["config"]["hparams"] == {"lr": 0.002}  # the chosen sample's settings
    assert tuned[1]["tuned_sample"] == 0 and tuned[1]["selected_step"] == 4  # equal scores: the later step
    assert [v["config"]["hparam_sample"] for v in views if v["status"] == "failed"] == [3]  # a failure stays
    assert expand_selections(views) == views  # a view is never expanded again


def test_a_search_trial_reports_its_validator_score_and_no_target_metric(tmp_path):
    from test_selection import study_spec

    from benchmark.trainer import run_trial

    reports: list[dict] = []
    spec = study_spec(steps=4, validation={**SEARCH, "tune_by": "entropy"})
    result = run_trial(spec, tmp_path, report=reports.append, log=lambda s: None)
    scored = [r for r in reports if any(k.startswith("score_") for k in r)]
    assert [(r["timesteps_total"], set(r) - {"step", "total_steps", "timesteps_total"}) for r in scored] == [
        (2, {"score_entropy"})]  # the last step's score is the final record's, never reported early
    assert scored[0]["score_entropy"] == result["candidates"][0]["scores"]["entropy"]
    assert not any("dice" in k or "assd" in k or "hd95" in k for r in reports for k in r)


def test_asha_stops_trials_early_records_every_trial_and_a_rerun_skips_them(tmp_path, capsys):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = ["tune", "--methods", "source_only", "--shots", "1", "--samples", "4", "--seeds", "0",
            "--directions", "mr2ct", "--steps", "4", "--select-every", "2", "--scheduler", "asha",
            "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    statuses = {}
    for folder in (tmp_path / "trials").iterdir():
        record = json.loads((folder / "result.json").read_text())
        statuses[record["config"]["hparam_sample"]] = record["status"]
        if record["status"] == "stopped":
            assert record["stopped_at"] == 2 and [c["step"] for c in record["candidates"]] == [2]
            assert "stopped early by the scheduler at step 2/4" in out
    assert sorted(statuses) == [0, 1, 2, 3] and set(statuses.values()) <= {"ok", "stopped"}
    assert "stopped" in statuses.values() and statuses[0] == "ok"  # the first trial meets an empty rung
    board = pd.read_csv(tmp_path / "leaderboards" / "synthetic-heart" / "mr2ct.csv")
    assert list(board["selection"]) == ["tuned-snd"] and list(board["seeds_done"]) == [1]
    assert 'search="asha"' in board["preset"][0] and "samples=4" in board["preset"][0]
    assert main(args) == 0
    assert "0 trials run (0 ok, 0 stopped early, 0 failed), 4 skipped as already recorded" in capsys.readouterr().out
