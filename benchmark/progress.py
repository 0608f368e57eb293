"""The live progress of a run: trials done, running, failed and skipped, with an ETA from measured trial times.

:class:`RunProgress` counts and estimates (no output; its clock can be replaced, so it is testable on made-up
events). :class:`RunDisplay` shows it. On a terminal: one tqdm bar over the trials with the counts and the ETA, and
a line per running trial with its current step. Elsewhere (a file, a pipe): plain lines, one per finished or failed
trial and a summary every ``summary_every`` seconds, with no terminal codes. ``quiet`` shows nothing; ``verbose``
also shows every line the trials log.

Each trial keeps its own log, ``log.txt`` in its store folder: :class:`TrialLog` writes it (from the trial's
process, appending on resume, flushed line by line) and :class:`LogTail` reads what the running trials append.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from .store import TRIAL_LOG

#: A progress report a trial sends between its logged steps carries this key (and no losses); loggers skip it.
HEARTBEAT = "heartbeat"
QUIET, NORMAL, VERBOSE = "quiet", "normal", "verbose"
#: Width of a finished trial's status word (``ok``, ``FAILED``, ``stopped``), so that the labels line up.
STATUS_WIDTH = len("stopped")
MODES = (QUIET, NORMAL, VERBOSE)
#: Running trials shown one per line under the bar; more are counted on the last line.
MAX_TRIAL_LINES = 8


def format_duration(seconds: float) -> str:
    """``45 s``, ``5 min 03 s``, ``2 h 07 min``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass
class _Running:
    label: str
    started: float
    step: int | None = None
    steps: int | None = None

    def fraction(self) -> float | None:
        """The share of its training steps this trial has done, if it has said."""
        if self.step is None or not self.steps:
            return None
        return min(1.0, max(0.0, self.step / self.steps))


class RunProgress:
    """Counts of a run's trials and its ETA, fed with trial events keyed by trial id.

    The ETA takes a trial's time as the mean of the finished trials' times (the successful ones when there are
    any), or, before any trial has finished, extrapolates the running trials' step rates. The remaining work (the
    unfinished share of each running trial's steps, or what is left of a trial's time once it evaluates or before
    it reports a step, plus every waiting trial) is spread over as many parallel slots as the run has used at once,
    and is never shorter than the running trial furthest from its end.
    """

    def __init__(self, to_run: int, skipped: int = 0, clock: Callable[[], float] = time.monotonic):
        self.to_run, self.skipped, self.clock = to_run, skipped, clock
        self.ok = self.failed = 0
        self._running: dict[str, _Running] = {}
        self._times: list[tuple[bool, float]] = []
        self._peak = 0

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def finished(self) -> int:
        return self.ok + self.failed

    @property
    def waiting(self) -> int:
        return max(0, self.to_run - self.finished - self.running)

    def start(self, key: str, label: str) -> None:
        self._running[key] = _Running(label, self.clock())
        self._peak = max(self._peak, len(self._running))

    def step(self, key: str, step: int, steps: int) -> None:
        trial = self._running.get(key)
        if trial is not None:
            trial.step, trial.steps = int(step), int(steps)

    def finish(self, key: str, *, ok: bool, seconds: float | None = None) -> tuple[str, float]:
        """Count a trial as finished (or failed); returns its label and time (measured here unless given)."""
        trial = self._running.pop(key, None)
        if seconds is None:
            seconds = self.clock() - trial.started if trial is not None else 0.0
        self._times.append((ok, seconds))
        self.ok += ok
        self.failed += not ok
        return (trial.label if trial is not None else key), seconds

    def running_trials(self) -> list[tuple[str, int | None, int | None, float]]:
        """(label, step, steps, seconds so far) of each running trial, the longest-running first."""
        now = self.clock()
        return [(r.label, r.step, r.steps, now - r.started)
                for r in sorted(self._running.values(), key=lambda r: r.started)]

    def trial_seconds(self) -> float | None:
        """The expected time of one trial, or None while nothing has been measured."""
        times = [s for ok, s in self._times if ok] or [s for _, s in self._times]
        if times:
            return sum(times) / len(times)
        now = self.clock()
        rates = [(now - r.started) / f for r in self._running.values() if (f := r.fraction())]
        return sum(rates) / len(rates) if rates else None

    def eta(self) -> float | None:
        """Seconds until every trial has finished, or None while there is nothing to estimate from."""
        if not self._running and not self.waiting:
            return 0.0
        per_trial = self.trial_seconds()
        if per_trial is None:
            return None
        now = self.clock()
        rest = []
        for r in self._running.values():
            f = r.fraction()  # None before its first step report, 1 while it evaluates
            rest.append(per_trial * (1 - f) if f is not None and f < 1 else max(0.0, per_trial - (now - r.started)))
        spread = (sum(rest) + self.waiting * per_trial) / max(1, self._peak)
        return max(max(rest, default=0.0), spread)

    def summary(self) -> str:
        """One line: the counts and the ETA."""
        eta = self.eta()
        return (f"{self.ok} done, {self.failed} failed, {self.running} running, {self.waiting} waiting, "
                f"{self.skipped} skipped; ETA {'unknown' if eta is None else format_duration(eta)}")


class TrialLog:
    """A trial's ``log.txt``: a callable that appends a line (and echoes it), flushed as it goes.

    Each attempt starts with a header line, so a resumed trial's file reads as the story of its attempts.
    """

    def __init__(self, path: Path, echo: Callable[[str], None] | None = None):
        self.path, self._echo = Path(path), echo
        self._fh = open(self.path, "a", encoding="utf-8")

    def __call__(self, line: str) -> None:
        self.write(line)
        if self._echo is not None:
            self._echo(line)

    def write(self, text: str) -> None:
        """Append ``text`` to the file only (a traceback, a header), ending it with a newline."""
        self._fh.write(text if text.endswith("\n") else text + "\n")
        self._fh.flush()

    def header(self, what: str) -> None:
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.write(f"--- {stamp} {what} (host {socket.gethostname()})")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "TrialLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def append_log_line(path: Path, line: str) -> None:
    """Append one line to a trial's log (for what the driver learns after the trial's process is gone)."""
    with TrialLog(path) as log:
        log.write(line)


class LogTail:
    """New complete lines of files that grow by appending (the running trials' ``log.txt``)."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[Path, int]] = {}

    def watch(self, key: str, path: Path, offset: int = 0) -> None:
        """Follow ``path`` from byte ``offset`` on (what an earlier attempt wrote stays unread)."""
        self._files[key] = (Path(path), offset)

    def read(self, key: str) -> list[str]:
        """The lines completed in ``key``'s file since the last read."""
        if key not in self._files:
            return []
        path, offset = self._files[key]
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._files[key] = (path, offset + end)
        return data[:end].decode("utf-8", errors="replace").splitlines()

    def forget(self, key: str) -> list[str]:
        """Stop following ``key``'s file; returns its last new lines."""
        lines = self.read(key)
        self._files.pop(key, None)
        return lines

    def keys(self) -> list[str]:
        return list(self._files)


class RunDisplay:
    """What ``run`` shows while trials run; see the module docstring for the forms it takes."""

    def __init__(self, *, mode: str = NORMAL, stream: TextIO | None = None, tty: bool | None = None,
                 summary_every: float = 60.0, clock: Callable[[], float] = time.monotonic):
        if mode not in MODES:
            raise ValueError(f"Display mode {mode!r} does not exist; modes are {', '.join(MODES)}.")
        self.mode, self.stream, self.clock = mode, stream or sys.stdout, clock
        self.tty = self.stream.isatty() if tty is None else tty
        self.summary_every = summary_every
        self.progress = RunProgress(0, clock=clock)
        self._bar: Any = None
        self._lines: list[Any] = []
        self._last_summary = self._last_refresh = clock()

    def begin(self, to_run: int, skipped: int = 0) -> None:
        """Start showing a run of ``to_run`` trials (``skipped`` more were already recorded)."""
        self.progress = RunProgress(to_run, skipped, clock=self.clock)
        self._last_summary = self.clock()
        if self.tty and self.mode != QUIET:
            from tqdm import tqdm

            sized = _columns(self.stream) > 0  # a terminal of unknown size (0 columns) gets a fixed width
            self._bar = tqdm(total=to_run, desc="trials", unit="trial", file=self.stream, dynamic_ncols=sized,
                             ncols=None if sized else 100,
                             bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}]{postfix}")
            self._refresh()

    def started(self, key: str, label: str) -> None:
        self.progress.start(key, label)
        self._refresh()

    def stepped(self, key: str, step: int, steps: int) -> None:
        self.progress.step(key, step, steps)
        self._refresh()

    def finished(self, key: str, *, dice: float | None, seconds: float | None = None) -> None:
        """A trial finished and was recorded: one line with its Dice and time."""
        label, seconds = self.progress.finish(key, ok=True, seconds=seconds)
        detail = "Dice n/a" if dice is None else f"Dice {dice:.4f}"
        self._trial_line("ok", label, detail, seconds)

    def stopped(self, key: str, *, step: int | None, steps: int | None, seconds: float | None = None) -> None:
        """A search's scheduler stopped a trial early (it counts as finished): one line with the step it reached."""
        label, seconds = self.progress.finish(key, ok=True, seconds=seconds)
        at = f" at step {step}/{steps}" if step is not None and steps is not None else ""
        self._trial_line("stopped", label, f"stopped early by the scheduler{at}", seconds)

    def failed(self, key: str, *, error: str, seconds: float | None = None, log_path: Path | None = None) -> None:
        """A trial failed: one line with the first line of its error (and where its log is)."""
        label, seconds = self.progress.finish(key, ok=False, seconds=seconds)
        detail = error.splitlines()[0][:300] if error else "no error recorded"
        self._trial_line("FAILED", label, detail + (f"; log: {log_path}" if log_path else ""), seconds)

    def echo(self, line: str) -> None:
        """A line a trial logged (shown only in verbose mode)."""
        if self.mode == VERBOSE:
            self._write(line)

    def tick(self) -> None:
        """Called often while the run goes on: refreshes the bar, or writes the periodic summary line."""
        now = self.clock()
        if self._bar is not None and now - self._last_refresh >= 1.0:
            self._refresh()
        elif self._bar is None and self.mode != QUIET and now - self._last_summary >= self.summary_every:
            self._last_summary = now
            self._write(f"Progress: {self.progress.summary()}")

    def close(self) -> None:
        """Remove the live lines (the bar stays as the run's last state)."""
        for line in self._lines:
            line.close()
        self._lines = []
        if self._bar is not None:
            self._refresh()
            self._bar.close()
            self._bar = None

    def _trial_line(self, status: str, label: str, detail: str, seconds: float) -> None:
        p = self.progress
        width = len(str(p.to_run))
        self._write(f"[{p.finished:>{width}}/{p.to_run}] {status:<{STATUS_WIDTH}} {label}  {detail}  "
                    f"({format_duration(seconds)})")
        self._refresh()

    def _write(self, text: str) -> None:
        if self.mode == QUIET:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _refresh(self) -> None:
        """Redraw the bar and the running trials' lines (terminal only)."""
        if self._bar is None:
            return
        from tqdm import tqdm

        self._last_refresh = self.clock()
        p = self.progress
        self._bar.n = p.finished
        eta = p.eta()
        self._bar.set_postfix_str(f"{p.ok} done, {p.failed} failed, {p.running} running, {p.skipped} skipped, "
                                  f"ETA {'?' if eta is None else format_duration(eta)}", refresh=False)
        texts = [_running_text(*t) for t in p.running_trials()]
        if len(texts) > MAX_TRIAL_LINES:
            texts = texts[:MAX_TRIAL_LINES - 1] + [f"  ... and {len(texts) - MAX_TRIAL_LINES + 1} more running"]
        width = (_columns(self.stream) or 100) - 1
        while len(self._lines) < len(texts):
            self._lines.append(tqdm(total=0, file=self.stream, bar_format="{desc}", position=len(self._lines) + 1,
                                    leave=False))
        for i, line in enumerate(self._lines):
            line.set_description_str(texts[i][:width] if i < len(texts) else "", refresh=True)
        self._bar.refresh()


def _columns(stream: TextIO) -> int:
    """The width of the terminal ``stream`` writes to (0 when it cannot tell)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def _running_text(label: str, step: int | None, steps: int | None, seconds: float) -> str:
    where = f"step {step}/{steps}" if step is not None and steps else "starting"
    return f"  {label}  {where}  ({format_duration(seconds)})"


__all__ = ["HEARTBEAT", "MODES", "TRIAL_LOG", "RunProgress", "RunDisplay", "TrialLog", "LogTail", "append_log_line",
           "format_duration"]
