"""Ray Tune callbacks of a run: the live progress display, and the loggers (Ray's own files and the trackers).

:class:`ProgressCallback` turns Tune's trial events in the driver into :class:`benchmark.progress.RunDisplay`
calls and, in verbose mode, echoes the lines the running trials append to their ``log.txt``. The loggers skip the
heartbeat reports a trial sends between its logged steps, so files and trackers hold one row per logged step.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

from .progress import HEARTBEAT, TRIAL_LOG, VERBOSE, LogTail, RunDisplay
from .protocol import TrialSpec
from .store import ResultsStore
from .tracking import check_tracker, mlflow_uri, wandb_settings


class ProgressCallback(Callback):
    """Feeds a run's :class:`RunDisplay` from Ray Tune's trial events (in the driver, never in a trial)."""

    def __init__(self, display: RunDisplay, store: ResultsStore, log_offsets: dict[str, int] | None = None,
                 poll_s: float = 0.5):
        self.display, self.store, self.poll_s = display, store, poll_s
        self._offsets = log_offsets or {}
        self._specs: dict[str, TrialSpec] = {}
        self._tail = LogTail()
        self._last_poll = 0.0
        self.stopped: set[str] = set()  # the trials a search's scheduler stopped (their trial ids)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run configuration into the experiment folder; the live display stays in this process
        return {}

    def _spec(self, trial) -> TrialSpec:
        if trial.trial_id not in self._specs:
            self._specs[trial.trial_id] = TrialSpec.from_dict(trial.config["spec"])
        return self._specs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        spec = self._spec(trial)
        self.display.started(spec.trial_id, spec.label)
        if self.display.mode == VERBOSE:
            self._tail.watch(spec.trial_id, self.store.trial_dir(spec) / TRIAL_LOG,
                             self._offsets.get(spec.trial_id, 0))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if "step" in result and "total_steps" in result:
            self.display.stepped(self._spec(trial).trial_id, result["step"], result["total_steps"])

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        spec = self._spec(trial)
        self._echo(spec.trial_id, final=True)
        result = trial.last_result or {}
        if result.get("status") == "ok":
            self.display.finished(spec.trial_id, dice=result.get("dice_mean"))
            return
        if "status" not in result and result.get("done"):  # a scheduler's STOP marks the last report done
            self.stopped.add(spec.trial_id)
            self.display.stopped(spec.trial_id, step=result.get("step"), steps=result.get("total_steps"))
            return
        record = self.store.read(spec) or {}
        self.display.failed(spec.trial_id, error=record.get("error") or "the trial recorded no error",
                            log_path=self.store.trial_dir(spec) / TRIAL_LOG)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        spec = self._spec(trial)
        self._echo(spec.trial_id, final=True)
        self.display.failed(spec.trial_id, error=f"Ray reported: {_ray_error(trial)}",
                            log_path=self.store.trial_dir(spec) / TRIAL_LOG)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        now = time.monotonic()
        if now - self._last_poll >= self.poll_s:
            self._last_poll = now
            for key in self._tail.keys():
                self._echo(key)
        self.display.tick()

    def on_experiment_end(self, trials: list, **info) -> None:
        for key in self._tail.keys():
            self._echo(key, final=True)

    def _echo(self, key: str, final: bool = False) -> None:
        for line in (self._tail.forget(key) if final else self._tail.read(key)):
            self.display.echo(line)


def _ray_error(trial) -> str:
    """The gist of the error Ray saved for ``trial``: its exception line, else its first line."""
    try:
        local = trial.error_file
        text = Path(local).read_text() if local and Path(local).exists() else trial.get_error()
    except Exception:  # noqa: BLE001 - the error file may not have been written yet
        text = None
    lines = [line.strip() for line in (text or "").splitlines() if line.strip() and not line.startswith("Failure #")]
    exceptions = [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)]
    return exceptions[-1] if exceptions else (lines or ["the trial's worker stopped"])[0]


class _SkipHeartbeats:
    """Passes every result to the logger except a trial's heartbeats (step counts without losses)."""

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if not result.get(HEARTBEAT):
            super().on_trial_result(iteration, trials, trial, result, **info)


class CSVLogger(_SkipHeartbeats, CSVLoggerCallback):
    """Ray's ``progress.csv`` per trial, one row per logged step."""


class JsonLogger(_SkipHeartbeats, JsonLoggerCallback):
    """Ray's ``result.json`` per trial, one line per logged step."""


class TensorBoardLogger(_SkipHeartbeats, TBXLoggerCallback):
    """TensorBoard event files beside Ray's trial folders."""


class MLflowLogger(_SkipHeartbeats, MLflowLoggerCallback):
    """One MLflow run per trial."""


class WandbLogger(_SkipHeartbeats, WandbLoggerCallback):
    """One wandb run per trial."""


def logger_callbacks(tracker: str | None, out: Path) -> list[Callback]:
    """Ray's own result files, plus the tracker's logger if one is asked for (its package checked first)."""
    callbacks: list[Callback] = [CSVLogger(), JsonLogger()]
    if tracker is None:
        return callbacks
    check_tracker(tracker)
    if tracker == "tensorboard":
        callbacks.append(TensorBoardLogger())
    elif tracker == "mlflow":
        callbacks.append(MLflowLogger(tracking_uri=mlflow_uri(out), experiment_name="fsuda-benchmark"))
    else:
        settings = wandb_settings(out)
        os.environ.setdefault("WANDB_MODE", settings["mode"])  # Ray asks for an API key unless wandb is offline
        callbacks.append(WandbLogger(**settings))
    return callbacks


__all__ = ["ProgressCallback", "logger_callbacks"]
