"""Command-line behaviour that needs no training: usage errors, ls, the plan, help, version, trackers."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import COMMANDS, DEFAULT_OUT, build_parser, main, prog_name

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


def test_version():
    res = run_cli("--version")
    assert res.returncode == 0
    from benchmark import __version__

    assert res.stdout.strip() == f"fsuda-benchmark {__version__}"


def test_run_help_shows_defaults_and_choices():
    res = run_cli("run", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())  # help wraps lines
    assert text.startswith("usage: python -m benchmark run ")
    for shown in ("(default: source_only,oracle)", "(default: 1,4)", "(default: 0,1,2)", "(default: quick)",
                  "(default: synthetic-heart)", f"(default: {DEFAULT_OUT})", "--preset {quick,standard,paper}",
                  "--tracker {tensorboard,mlflow,wandb}", "-q, --quiet", "-v, --verbose"):
        assert shown in text, shown
    assert "(default: None)" not in text and "(default: False)" not in text


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == set(COMMANDS)
    for name, command in [("", parser), *sub.choices.items()]:
        for action in command._actions:
            assert action.help, f"{name or 'the top level'}: {action.option_strings or action.dest} has no help"


def test_the_console_script_calls_itself_by_its_name(monkeypatch, capsys):
    assert prog_name("/venv/bin/fsuda-benchmark") == "fsuda-benchmark"
    assert prog_name("/repo/benchmark/__main__.py") == "python -m benchmark"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fsuda-benchmark", "run", "--seeds"])
    assert main() == 2
    assert "usage: fsuda-benchmark run" in capsys.readouterr().err
    res = run_cli("run", "--seeds")
    assert res.returncode == 2 and "usage: python -m benchmark run" in res.stderr


@pytest.mark.parametrize("tracker, package", [("wandb", "wandb"), ("mlflow", "mlflow"),
                                              ("tensorboard", "tensorboardX")])
def test_a_tracker_without_its_package_exits_2_naming_it(tracker, package, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail as if it were not installed
    assert main(["run", "--tracker", tracker, "--out", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"--tracker {tracker} needs the {package} package" in err and f"pip install {package}" in err


def test_an_installed_tracker_says_where_it_records(tmp_path, capsys):
    assert main(["run", "--tracker", "tensorboard", "--out", str(tmp_path), "--dry-run"]) == 0
    assert f"Tracking: TensorBoard: tensorboard --logdir {tmp_path / 'ray_results' / 'fsuda'}" in \
        capsys.readouterr().out


def test_quiet_and_verbose_exclude_each_other(capsys):
    assert main(["run", "--quiet", "--verbose", "--dry-run"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
