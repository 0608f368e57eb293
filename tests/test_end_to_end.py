"""A tiny end-to-end run on Ray Tune: trials recorded, failures isolated, leaderboards written, reruns skip; what
the command prints (plain lines when its output is not a terminal) and each trial's log.txt."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from benchmark.cli import main
from benchmark.store import DONE, ResultsStore

pytestmark = pytest.mark.slow

FAILING_METHODS = '''
from benchmark.method import SupervisedMethod
from benchmark.registry import register_method


@register_method("crashes_e2e")
class Crashes(SupervisedMethod):
    """Raises inside update (to test failure isolation)."""

    def update(self, batch, step):
        raise RuntimeError("deliberate crash in update")


@register_method("diverges_e2e")
class Diverges(SupervisedMethod):
    """Reports an infinite loss (to test divergence handling)."""

    def update(self, batch, step):
        return {"loss": float("inf")}
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    (folder / "methods").mkdir(parents=True)
    (folder / "methods" / "failing.py").write_text(textwrap.dedent(FAILING_METHODS))
    monkeypatch.setenv("FSUDA_PLUGIN_PATH", str(folder))
    return folder


def test_tiny_ray_run_records_everything(tmp_path, plugin_dir, capsys):
    out = tmp_path / "run"
    args = ["run", "--methods", "source_only,oracle,crashes_e2e,diverges_e2e", "--shots", "1", "--directions",
            "mr2ct", "--seeds", "0", "--steps", "3", "--out", str(out), "--verbose"]
    assert main(args) == 1  # two trials failed, so the command reports failure ...
    captured = capsys.readouterr()
    assert "Plan: 4 trials" in captured.out
    assert "deliberate crash in update" in captured.err and "diverged" in captured.err
    # --verbose shows the trials' own lines, as each trial's log.txt holds them
    for method in ("source_only", "oracle"):
        assert f"[synthetic-heart/mr2ct/{method}/1shot/seed0] step 3/3 " in captured.out
    assert "[synthetic-heart/mr2ct/crashes_e2e/1shot/seed0] FAILED: RuntimeError: deliberate crash" in captured.out
    assert len(trial_lines(captured.out, 4)) == 4
    assert "Device: cpu, 1 CPU per trial (auto: the cluster has no GPU); " in captured.out  # the default is auto

    store = ResultsStore(out)
    records = {r["config"]["method"]: r for r in store.records()}
    assert set(records) == {"source_only", "oracle", "crashes_e2e", "diverges_e2e"}  # ... but records all four
    assert records["source_only"]["status"] == "ok" and records["oracle"]["status"] == "ok"
    assert records["crashes_e2e"]["error"] == "RuntimeError: deliberate crash in update"
    assert records["diverges_e2e"]["error"].startswith("TrialDiverged: Trial synthetic-heart/mr2ct/diverges_e2e")
    assert len(records["source_only"]["volumes"]) == 6
    assert all((d / DONE).exists() for d in store.trials.iterdir())  # no trial left unfinished
    logs = {m: (out / "trials" / r["trial_id"] / "log.txt").read_text() for m, r in records.items()}
    assert "Traceback (most recent call last)" in logs["crashes_e2e"]  # a failed trial keeps its log
    assert "FAILED: TrialDiverged" in logs["diverges_e2e"]

    rows = list(csv.DictReader((out / "leaderboards" / "synthetic-heart" / "mr2ct.csv").open()))
    by_method = {r["method"]: r for r in rows}
    assert by_method["source_only"]["seeds_done"] == "1" and by_method["crashes_e2e"]["seeds_failed"] == "1"
    assert by_method["crashes_e2e"]["dice_mean"] == ""
    assert float(by_method["source_only"]["dice_mean"]) == pytest.approx(
        records["source_only"]["summary"]["dice"]["mean"], abs=1e-4)
    assert by_method["crashes_e2e"]["gap_closed"] == ""  # no finished seed, so no gap
    assert (out / "leaderboards" / "synthetic-heart" / "mr2ct.md").exists()

    # the same command again retrains nothing and starts no Ray
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("result.json")}
    assert main(args) == 1
    again = capsys.readouterr().out
    assert "2 already finished, 2 failed earlier" in again and "0 to run" in again
    assert "0 trials run" in again
    assert mtimes == {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("result.json")}

    # leaderboard and publish read the run
    assert main(["leaderboard", str(out)]) == 0
    assert "source_only" in capsys.readouterr().out
    published = tmp_path / "published"
    assert main(["publish", str(out), "--to", str(published)]) == 0
    assert (published / "synthetic-heart" / "mr2ct.csv").exists() and (published / "README.md").exists()
    json.loads((out / "trials" / records["oracle"]["trial_id"] / "result.json").read_text())


def trial_lines(output: str, total: int) -> list[str]:
    """The lines that report a finished or failed trial: ``[k/total] ok ...`` or ``[k/total] FAILED ...``."""
    return [line for line in output.splitlines() if re.match(rf"\[ *\d+/{total}\] (ok|FAILED) ", line)]


def run_to_pipe(*args: str) -> subprocess.CompletedProcess:
    """``python -m benchmark`` with its output to a pipe (not a terminal), stdout and stderr together."""
    return subprocess.run([sys.executable, "-m", "benchmark", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_output_to_a_file_is_plain_lines_and_every_trial_keeps_a_log(tmp_path):
    out = tmp_path / "run"
    res = run_to_pipe("run", "--methods", "source_only,oracle", "--shots", "1", "--directions", "mr2ct",
                      "--seeds", "0", "--steps", "3", "--out", str(out))
    assert res.returncode == 0, res.stdout
    text = res.stdout
    assert "\x1b" not in text  # no colour or cursor codes
    assert "pid=" not in text and "Configuration for experiment" not in text
    assert "tensorboard" not in text.lower() and "View detailed results" not in text
    lines = trial_lines(text, 2)
    assert len(lines) == 2, text
    for method in ("source_only", "oracle"):
        (line,) = [x for x in lines if f"synthetic-heart/mr2ct/{method}/1shot/seed0" in x]
        assert re.search(r"\] ok +\S+  Dice \d\.\d{4}  \(\d+ (s|min)", line), line
    assert "step 3/3" not in text  # the step lines go to the trials' logs
    assert text.index("Plan: 2 trials") < text.index(lines[0]) < text.index("Done in")

    records = {r["config"]["method"]: r for r in ResultsStore(out).records()}
    for method, record in records.items():
        log = (out / "trials" / record["trial_id"] / "log.txt").read_text().splitlines()
        label = f"synthetic-heart/mr2ct/{method}/1shot/seed0"
        assert log[0].startswith("--- ") and label in log[0]
        assert f"[{label}] step 3/3 " in log[1]
        assert log[-1].startswith(f"[{label}] target Dice {record['summary']['dice']['mean']:.4f}")


def test_quiet_prints_only_the_plan_errors_and_the_summary(tmp_path, plugin_dir):
    out = tmp_path / "run"
    res = run_to_pipe("run", "--methods", "source_only,crashes_e2e", "--shots", "1", "--directions", "mr2ct",
                      "--seeds", "0", "--steps", "2", "--out", str(out), "--quiet")
    assert res.returncode == 1, res.stdout
    text = res.stdout
    assert trial_lines(text, 2) == [] and "Progress:" not in text and "Preparing" not in text
    assert "Plan: 2 trials" in text and "Done in" in text and "source_only" in text
    assert "1 trial(s) of this plan failed" in text and "deliberate crash in update" in text
    assert all((out / "trials" / r["trial_id"] / "log.txt").exists() for r in ResultsStore(out).records())


def test_ctrl_c_stops_the_run_without_recording_failures(tmp_path):
    """SIGINT (Ctrl-C) ends the command with 130; the interrupted trial is not recorded as failed and reruns."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = ["run", "--methods", "source_only", "--shots", "1,4", "--directions", "mr2ct", "--seeds", "0",
            "--steps", "5000", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "benchmark", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("trials/*/config.json")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert list(out.glob("trials/*/config.json")), "no trial started within 240 s"
        time.sleep(3)
        # one SIGINT ends the run: by itself within seconds, or by force INTERRUPT_GRACE_S (20 s) later
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            output = None
        assert output is not None, "the run did not stop within 90 s of one SIGINT"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "Interrupted; finished trials are recorded and a new run resumes the others." in output
    store = ResultsStore(out)
    assert not list(out.glob("trials/*/DONE")) and list(store.records()) == []
    plan = subprocess.run([sys.executable, "-m", "benchmark", *args, "--dry-run"], capture_output=True, text=True)
    assert "0 already finished, 0 failed earlier" in plan.stdout and "2 to run" in plan.stdout, plan.stdout


def test_a_run_that_does_not_stop_after_ctrl_c_is_ended_by_force(tmp_path):
    """If the interrupt cannot unwind the run (here: code that swallows it), the process still ends, with 130."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "stuck.py"
    script.write_text(
        "import time\n"
        "from benchmark.runner import bounded_interrupt\n"
        "with bounded_interrupt(grace_s=2.0):\n"
        "    while True:\n"
        "        try:\n"
        "            print('ready', flush=True)\n"
        "            time.sleep(100)\n"
        "        except KeyboardInterrupt:\n"
        "            pass  # a loop that ignores the interrupt\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # into the sleep, where the interrupt is caught and ignored
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        waited = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Interrupted; finished trials are recorded and a new run resumes the others." in err
    assert waited >= 2.0  # not before the grace period


def test_bounded_interrupt_leaves_no_countdown_behind():
    """Leaving the context restores the handlers and cancels a countdown that a caught interrupt started."""
    import os
    import signal
    import threading

    from benchmark.runner import bounded_interrupt

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with bounded_interrupt(grace_s=0.5):
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(5)  # the handler raises here
    assert signal.getsignal(signal.SIGINT) is before
    threading.Event().wait(1.0)  # past the grace period: the process is still alive
    assert not [t for t in threading.enumerate() if t.name == "fsuda-sigint-watch"]
