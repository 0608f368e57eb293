"""The run's progress: counting and ETA on made-up events, the display's forms, trial logs, step reports."""

from __future__ import annotations

import io

import pytest

from benchmark import registry
from benchmark.presets import get_preset
from benchmark.progress import HEARTBEAT, LogTail, RunDisplay, RunProgress, TrialLog, format_duration
from benchmark.protocol import TrialSpec


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_format_duration():
    assert format_duration(0) == "0 s"
    assert format_duration(59.4) == "59 s"
    assert format_duration(61) == "1 min 01 s"
    assert format_duration(3 * 3600 + 7 * 60 + 5) == "3 h 07 min"
    assert format_duration(-3) == "0 s"


def test_counts_follow_the_events():
    clock = Clock()
    p = RunProgress(5, skipped=2, clock=clock)
    assert (p.ok, p.failed, p.running, p.waiting, p.skipped) == (0, 0, 0, 5, 2)
    p.start("a", "A")
    p.start("b", "B")
    assert (p.running, p.waiting) == (2, 3)
    clock.now += 10
    assert p.finish("a", ok=True) == ("A", 10.0)
    assert p.finish("b", ok=False, seconds=4.0) == ("B", 4.0)
    assert (p.ok, p.failed, p.running, p.waiting, p.finished) == (1, 1, 0, 3, 2)
    assert p.finish("never-started", ok=False) == ("never-started", 0.0)  # Ray can fail a trial before it starts
    assert (p.failed, p.waiting) == (2, 2)
    assert p.summary().startswith("1 done, 2 failed, 0 running, 2 waiting, 2 skipped; ETA ")


def test_eta_from_finished_trials_spreads_the_rest_over_the_slots():
    clock = Clock()
    p = RunProgress(4, clock=clock)
    assert p.eta() is None  # nothing measured yet
    p.start("a", "A")
    p.start("b", "B")
    assert p.eta() is None  # running, but no step reported
    clock.now += 10
    p.finish("a", ok=True)  # one trial takes 10 s
    p.step("b", 5, 10)  # b is half way: 5 s left
    p.start("c", "C")  # c just started: 10 s left; d waits: 10 s
    assert p.eta() == pytest.approx((5 + 10 + 10) / 2)  # two slots were used at once
    clock.now += 4
    p.step("c", 10, 10)  # c trained all its steps and evaluates: what is left of its 10 s
    assert p.eta() == pytest.approx((5 + 6 + 10) / 2)


def test_eta_is_never_shorter_than_the_longest_running_trial():
    clock = Clock()
    p = RunProgress(3, clock=clock)
    for key in "abc":
        p.start(key, key)
    clock.now += 10
    p.finish("a", ok=True)
    p.finish("b", ok=True)
    p.step("c", 1, 10)  # 9 s left on one slot, nothing waiting
    assert p.eta() == pytest.approx(9.0)


def test_eta_before_any_trial_finished_extrapolates_step_rates():
    clock = Clock()
    p = RunProgress(2, clock=clock)
    p.start("a", "A")
    clock.now += 30
    p.step("a", 25, 100)  # 30 s for a quarter: 120 s a trial, 90 s left, then 120 s for the waiting one
    assert p.trial_seconds() == pytest.approx(120.0)
    assert p.eta() == pytest.approx(90.0 + 120.0)


def test_failed_trials_do_not_set_the_pace_once_one_succeeded():
    clock = Clock()
    p = RunProgress(3, clock=clock)
    p.start("x", "X")
    p.finish("x", ok=False, seconds=1.0)
    assert p.trial_seconds() == pytest.approx(1.0)
    p.start("y", "Y")
    p.finish("y", ok=True, seconds=50.0)
    assert p.trial_seconds() == pytest.approx(50.0)
    assert p.eta() == pytest.approx(50.0)


def test_eta_is_zero_when_everything_finished():
    p = RunProgress(1, clock=Clock())
    p.start("a", "A")
    p.finish("a", ok=True, seconds=3.0)
    assert p.eta() == 0.0


def run_events(display: RunDisplay, clock: Clock) -> None:
    display.begin(3, skipped=1)
    display.started("a", "ds/mr2ct/m/1shot/seed0")
    display.started("b", "ds/mr2ct/m/1shot/seed1")
    display.stepped("a", 50, 100)
    display.echo("[ds/mr2ct/m/1shot/seed0] step 50/100 loss=1.0000 (3s)")
    clock.now += 61
    display.tick()
    display.finished("a", dice=0.51234)
    display.failed("b", error="RuntimeError: boom\nmore lines", log_path="trials/b/log.txt")
    display.close()


def test_plain_display_writes_a_line_per_trial_and_a_periodic_summary():
    clock, out = Clock(), io.StringIO()
    run_events(RunDisplay(stream=out, tty=False, clock=clock), clock)
    lines = out.getvalue().splitlines()
    assert lines == [
        "Progress: 0 done, 0 failed, 2 running, 1 waiting, 1 skipped; ETA 2 min 02 s",
        "[1/3] ok      ds/mr2ct/m/1shot/seed0  Dice 0.5123  (1 min 01 s)",
        "[2/3] FAILED  ds/mr2ct/m/1shot/seed1  RuntimeError: boom; log: trials/b/log.txt  (1 min 01 s)",
    ]
    assert "\x1b" not in out.getvalue()


def test_ok_failed_and_stopped_lines_start_their_labels_in_one_column():
    clock, out = Clock(), io.StringIO()
    display = RunDisplay(stream=out, tty=False, clock=clock)
    display.begin(3)
    for key in "abc":
        display.started(key, f"ds/mr2ct/m/1shot/seed-{key}")
    clock.now += 5
    display.finished("a", dice=0.5)
    display.failed("b", error="RuntimeError: boom")
    display.stopped("c", step=2, steps=4)
    display.close()
    lines = [line for line in out.getvalue().splitlines() if line.startswith("[")]
    assert [line.index("ds/") for line in lines] == [14, 14, 14]
    assert lines[2].startswith("[3/3] stopped ds/mr2ct/m/1shot/seed-c  stopped early by the scheduler at step 2/4")


def test_quiet_display_writes_nothing_and_verbose_adds_the_trials_lines():
    clock, out = Clock(), io.StringIO()
    run_events(RunDisplay(mode="quiet", stream=out, tty=False, clock=clock), clock)
    assert out.getvalue() == ""
    clock, out = Clock(), io.StringIO()
    run_events(RunDisplay(mode="verbose", stream=out, tty=False, clock=clock), clock)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[ds/mr2ct/m/1shot/seed0] step 50/100 loss=1.0000 (3s)" and len(lines) == 4


def test_terminal_display_shows_a_bar_with_counts_and_the_running_steps():
    clock, out = Clock(), io.StringIO()
    display = RunDisplay(stream=out, tty=True, clock=clock)
    display.begin(3, skipped=1)
    display.started("a", "ds/mr2ct/m/1shot/seed0")
    display.stepped("a", 50, 100)
    shown = out.getvalue()
    assert "0/3" in shown and "1 running, 1 skipped" in shown
    assert "ds/mr2ct/m/1shot/seed0  step 50/100" in shown
    display.finished("a", dice=0.5)
    display.close()
    assert "[1/3] ok      ds/mr2ct/m/1shot/seed0  Dice 0.5000" in out.getvalue()
    assert "1/3" in out.getvalue().rsplit("Dice 0.5000", 1)[1]  # the bar moved on


def test_unknown_display_mode_is_named():
    with pytest.raises(ValueError, match="Display mode 'loud' does not exist"):
        RunDisplay(mode="loud")


def test_trial_log_appends_and_the_tail_reads_only_complete_new_lines(tmp_path):
    path = tmp_path / "log.txt"
    echoed = []
    with TrialLog(path, echo=echoed.append) as log:
        log.header("first attempt")
        log("step 1")
    offset = path.stat().st_size
    with TrialLog(path) as log:  # a resumed trial appends
        log.header("second attempt")
        log("step 2")
        log.write("Traceback (most recent call last):\n  a frame\n")
    text = path.read_text().splitlines()
    assert text[0].startswith("--- ") and "first attempt (host " in text[0] and "second attempt" in text[2]
    assert text[1:2] == ["step 1"] and text[3:] == ["step 2", "Traceback (most recent call last):", "  a frame"]
    assert echoed == ["step 1"]  # header and file-only text are not echoed

    tail = LogTail()
    tail.watch("t", path, offset)
    assert tail.read("t")[1:] == ["step 2", "Traceback (most recent call last):", "  a frame"]
    assert tail.read("t") == []
    with open(path, "a") as fh:
        fh.write("half a li")
    assert tail.read("t") == []  # an unfinished line waits
    with open(path, "a") as fh:
        fh.write("ne\n")
    assert tail.forget("t") == ["half a line"] and tail.keys() == []
    missing = LogTail()
    missing.watch("m", tmp_path / "not-yet.txt")
    assert missing.read("m") == []


def test_loggers_skip_heartbeats():
    from benchmark.tune_callbacks import _SkipHeartbeats

    class Recorder:
        def __init__(self):
            self.rows = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.rows.append(result)

    class Logger(_SkipHeartbeats, Recorder):
        pass

    logger = Logger()
    logger.on_trial_result(1, [], None, {"step": 1, "total_steps": 6, HEARTBEAT: 1})
    logger.on_trial_result(2, [], None, {"step": 3, "total_steps": 6, "loss": 0.5})
    assert logger.rows == [{"step": 3, "total_steps": 6, "loss": 0.5}]


def _spec(steps: int) -> TrialSpec:
    registry.discover()
    cls = registry.METHODS.get("source_only")
    return TrialSpec(dataset="synthetic-heart", direction="mr2ct", method="source_only", shots=1, seed=0,
                     preset="quick", hparams={k: v.default for k, v in cls.declared_hparams().items()},
                     preset_settings=get_preset("quick", steps=steps, log_every=3, checkpoint_every=3))


def test_step_reports_carry_losses_at_logged_steps_and_heartbeats_between(tmp_path, monkeypatch):
    import benchmark.trainer as trainer

    spec = _spec(6)
    (tmp_path / "quiet").mkdir()
    (tmp_path / "reported").mkdir()
    plain = trainer.run_trial(spec, tmp_path / "quiet", log=lambda s: None)
    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", 0.0)  # a heartbeat after every step
    reports: list[dict] = []
    reported = trainer.run_trial(spec, tmp_path / "reported", log=lambda s: None, report=reports.append)
    assert [r["step"] for r in reports] == [0, 1, 2, 3, 4, 5, 6]
    assert all(r["total_steps"] == 6 and r["timesteps_total"] == r["step"] for r in reports)
    assert [r["step"] for r in reports if r.get(HEARTBEAT)] == [0, 1, 2, 4, 5]
    with_losses = [r for r in reports if not r.get(HEARTBEAT)]
    assert [r["step"] for r in with_losses] == [3, 6] and all("loss" in r for r in with_losses)
    assert with_losses[-1]["loss"] == plain["final_losses"]["loss"]
    assert reported["summary"] == plain["summary"] and reported["final_losses"] == plain["final_losses"]


class Interrupted(BaseException):
    """Stands in for Ctrl-C: not an error a trial records."""


def test_execute_trial_writes_its_log_and_appends_on_resume(tmp_path):
    from benchmark.runner import execute_trial
    from benchmark.store import ResultsStore

    spec = _spec(6)
    store = ResultsStore(tmp_path)

    def stop_after_step_3(line: str) -> None:
        if "step 3/6" in line:
            raise Interrupted

    with pytest.raises(Interrupted):
        execute_trial(spec, store, log=stop_after_step_3)
    log_path = store.trial_dir(spec) / "log.txt"
    first = log_path.read_text()
    assert f"[{spec.label}] step 3/6" in first and store.status(spec) == "incomplete"
    echoed: list[str] = []
    record = execute_trial(spec, store, log=echoed.append)
    assert record["status"] == "ok"
    text = log_path.read_text()
    assert text.startswith(first)  # the first attempt's lines stay, the second attempt's follow
    assert text.count("--- ") == 2 and f"[{spec.label}] resuming from step 3" in text
    assert f"[{spec.label}] step 6/6" in text and f"[{spec.label}] target Dice" in text
    assert echoed == [line for line in text[len(first):].splitlines() if not line.startswith("--- ")]


def test_a_dead_workers_error_is_told_by_its_gist(tmp_path):
    from benchmark.tune_callbacks import _ray_error

    class Trial:
        def __init__(self, error_file=None, stored=None):
            self.error_file, self._stored = error_file, stored

        def get_error(self):
            if isinstance(self._stored, Exception):
                raise self._stored
            return self._stored

    saved = tmp_path / "error.txt"
    saved.write_text("Failure # 1 (occurred at 2026-01-01_00-00-00)\nThe actor died unexpectedly before finishing "
                     "this task.\n\tclass_name: ImplicitFunc\nThe actor is dead because its worker process has died.\n")
    assert _ray_error(Trial(str(saved))) == "The actor died unexpectedly before finishing this task."
    traceback_text = ("Failure # 1 (occurred at x)\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                      "ray.exceptions.RayTaskError(ValueError): boom\nValueError: boom\n")
    assert _ray_error(Trial(None, traceback_text)) == "ValueError: boom"
    assert _ray_error(Trial(str(tmp_path / "absent.txt"), None)) == "the trial's worker stopped"
    assert _ray_error(Trial(None, OSError("storage unreachable"))) == "the trial's worker stopped"
