"""Command-line behaviour that needs no training: usage errors, ls, the plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=cwd, capture_output=True, text=True)


def test_unknown_method_exits_2_naming_known_methods():
    res = run_cli("run", "--methods", "nosuch")
    assert res.returncode == 2
    assert "Unknown method 'nosuch'" in res.stderr and "source_only" in res.stderr and "oracle" in res.stderr
    assert "Traceback" not in res.stderr


def test_close_match_is_suggested(capsys):
    assert main(["run", "--methods", "sourceonly", "--dry-run"]) == 2
    assert "Did you mean 'source_only'?" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["run", "--shots", "19", "--dry-run"], "Shot count 19 is impossible"),
    (["run", "--shots", "0", "--dry-run"], "Shot count 0 is impossible"),
    (["run", "--directions", "mr2pet", "--dry-run"], "modality 'pet'"),
    (["run", "--dataset", "nosuch", "--dry-run"], "Unknown dataset 'nosuch'"),
    (["run", "--preset", "huge", "--dry-run"], "Unknown preset 'huge'"),
    (["run", "--seeds", "x", "--dry-run"], "not an integer"),
    (["run", "--steps", "0", "--dry-run"], "--steps 0 is impossible"),
    (["frobnicate"], "invalid choice"),
    (["leaderboard", "/nonexistent/dir"], "does not exist"),
    (["publish", "/nonexistent/dir"], "not a run directory"),
])
def test_usage_errors_exit_2(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_plan_is_printed_before_running(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Plan: 24 trials (2 methods x 2 shot counts x 2 directions x 3 seeds) on synthetic-heart, preset quick." \
        in out
    assert "0 already finished, 0 failed earlier" in out and "24 to run" in out
    assert str(tmp_path / "trials") in out


def test_ls_lists_plugins_with_their_files():
    res = run_cli("ls")
    assert res.returncode == 0
    assert "source_only" in res.stdout and "synthetic-heart" in res.stdout
    assert "methods/source_only.py" in res.stdout and "datasets/synthetic_heart.py" in res.stdout
