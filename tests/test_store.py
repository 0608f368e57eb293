"""The results store: completion markers, failures, atomicity, skipping finished trials."""

from __future__ import annotations

import json

import pytest

from benchmark.protocol import TrialSpec
from benchmark.store import DONE, RESULT, ResultsStore


def spec(seed: int = 0) -> TrialSpec:
    return TrialSpec(dataset="synthetic-heart", direction="mr2ct", method="source_only", shots=1, seed=seed,
                     preset="quick")


def test_lifecycle_missing_incomplete_ok(tmp_path):
    store = ResultsStore(tmp_path)
    s = spec()
    assert store.status(s) == "missing"
    d = store.start(s)
    assert d == tmp_path / "trials" / s.trial_id
    assert json.loads((d / "config.json").read_text())["config"] == s.to_dict()
    assert store.status(s) == "incomplete" and store.read(s) is None
    assert list(store.records()) == [] and [p.name for p in store.trials.iterdir()] == [s.trial_id]
    (d / "checkpoint.pt").write_bytes(b"x")
    rec = store.write_result(s, {"summary": {"dice": {"mean": 0.5}}, "volumes": []})
    assert store.status(s) == "ok" and (d / DONE).read_text() == "ok\n"
    assert not (d / "checkpoint.pt").exists()
    assert store.read(s) == rec and rec["config"] == s.to_dict() and rec["trial_id"] == s.trial_id
    assert {"torch", "python", "ray"} <= set(rec["versions"]) and rec["commit"]
    assert [r["trial_id"] for r in store.records()] == [s.trial_id]


def test_failure_is_recorded_with_its_error(tmp_path):
    store = ResultsStore(tmp_path)
    s = spec(1)
    store.start(s)
    try:
        raise RuntimeError("the loss went sideways")
    except RuntimeError as exc:
        rec = store.write_failure(s, exc, timing={"total_s": 1.0})
    assert store.status(s) == "failed"
    assert rec["error"] == "RuntimeError: the loss went sideways"
    assert "Traceback" in rec["traceback"] and rec["summary"] is None
    assert store.read(s)["status"] == "failed"


def test_result_without_marker_is_not_trusted(tmp_path):
    """A crash between writing result.json and DONE leaves a trial that a rerun redoes."""
    store = ResultsStore(tmp_path)
    s = spec(2)
    d = store.start(s)
    (d / RESULT).write_text('{"status": "ok", "trunc')  # a half-written record from a killed process
    assert store.status(s) == "incomplete"
    assert list(store.records()) == []
    store.start(s, fresh=True)
    assert not (d / RESULT).exists()


def test_unserialisable_record_leaves_no_partial_files(tmp_path):
    store = ResultsStore(tmp_path)
    s = spec(3)
    d = store.start(s)
    with pytest.raises(TypeError):
        store.write_result(s, {"summary": object()})
    assert store.status(s) == "incomplete"
    assert sorted(p.name for p in d.iterdir()) == ["config.json"]


def test_a_fresh_start_keeps_the_trial_log_only(tmp_path):
    store = ResultsStore(tmp_path)
    s = spec()
    d = store.start(s)
    (d / "log.txt").write_text("attempt 1\n")
    (d / "checkpoint.pt").write_bytes(b"x")
    store.write_failure(s, RuntimeError("boom"))
    d = store.start(s, fresh=True)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "log.txt"]
    assert (d / "log.txt").read_text() == "attempt 1\n" and store.status(s) == "incomplete"

