"""A selection study's record of candidates while a trial trains (see :mod:`benchmark.selection`).

Every ``select_every`` steps (and at the last step) the trial's model is scored by the validators
(:class:`benchmark.validators.CandidateScorer`) and on the target test volumes; the candidate is appended to the
trial's ``candidates.json`` (written atomically, so a resumed trial keeps what it scored) and its weights to
``candidates/step<k>.pt``. Only the weights some policy currently picks are kept: the store holds the few
checkpoints the rows need, not all. Scoring runs in evaluation mode with torch's random state restored, so a
study's training is the training it would be without the scoring.

A trial of a search (``python -m benchmark tune``, :mod:`benchmark.tune`) names its validator in
``validation["tune_by"]``; each candidate's score on it, and nothing computed from target labels, is reported to
Ray Tune as ``score_<validator>`` so that the search's scheduler can stop the trial early.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .io import atomic_torch_save, atomic_write_json
from .protocol import TrialSpec
from .selection import POLICIES
from .store import CANDIDATES
from .validators import CandidateScorer

CANDIDATE_WEIGHTS = "candidates"


class StudyRecorder:
    """Scores and keeps candidates of one study trial; :meth:`finish` gives the record's study fields."""

    def __init__(self, spec: TrialSpec, setup, trial_dir: Path, target: str, device: torch.device,
                 evaluate_test: Callable[[], dict[str, Any]],
                 report: Callable[[dict[str, Any]], None] | None = None):
        self.method, self.device = setup.method, device
        self.dir = Path(trial_dir)
        self.every = int(spec.validation["select_every"])
        self.total = int(setup.method.total_steps)
        self._evaluate = evaluate_test  # {"volumes", "summary"} of the target test volumes now
        modality, held = setup.held_out
        self.held_out = {"modality": modality, "slices": int(len(held)),
                         "share": float(spec.validation["source_val"])}
        self.scorer = CandidateScorer(setup.cache, modality, target, setup.adapter.cases(target, "train"), held,
                                      max(setup.adapter.classes.values()) + 1, spec.seed, setup.adapter.name,
                                      int(spec.preset_settings["eval_batch_size"]))
        path = self.dir / CANDIDATES
        self.candidates: dict[int, dict[str, Any]] = (
            {c["step"]: c for c in json.loads(path.read_text())} if path.exists() else {})
        self.seconds = 0.0
        tune_by = spec.validation.get("tune_by")
        self.report = report if tune_by else None
        self.tune_by = tune_by

    def on_step(self, done: int) -> None:
        if done % self.every and done != self.total:
            return
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            scores = self.scorer.score(self.method, self.device)
            # the last step's test metrics are the trial's own final evaluation (:meth:`finish`)
            test = None if done == self.total else self._evaluate()
        self.method.train()
        self.candidates[done] = {"step": done, "scores": scores, "test": test}
        if done != self.total:
            weights = self.dir / CANDIDATE_WEIGHTS / f"step{done}.pt"
            weights.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({"method": self.method.state_dict(), "step": done}, weights)
        self._save()
        self._keep_chosen()
        self.seconds += time.perf_counter() - t0
        if self.report is not None and done != self.total:  # the last step's score waits for the final record
            self.report({"step": done, "total_steps": self.total, "timesteps_total": done,
                         score_key(self.tune_by): float(scores[self.tune_by])})

    def _save(self) -> None:
        atomic_write_json(self.dir / CANDIDATES, [self.candidates[k] for k in sorted(self.candidates)])

    def _chosen(self) -> dict[str, int]:
        scored = [c for c in self.candidates.values() if c["test"] is not None]
        return {name: policy.choose(scored)["step"] for name, policy in POLICIES.items() if scored}

    def _keep_chosen(self) -> dict[str, int]:
        """Delete the candidate weights no policy picks now; returns each policy's pick."""
        chosen = self._chosen()
        keep = set(chosen.values())
        folder = self.dir / CANDIDATE_WEIGHTS
        for f in folder.glob("step*.pt") if folder.is_dir() else ():
            if int(f.stem[4:]) not in keep:  # a candidate that lost once can never be picked again
                f.unlink()
        return chosen

    def finish(self, volumes: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
        """The study's fields of the trial record: its candidates, each policy's pick and the held-out share."""
        last = self.candidates.setdefault(self.total, {"step": self.total, "scores": {}, "test": None})
        last["test"] = {"volumes": volumes, "summary": summary}
        self._save()
        chosen = self._keep_chosen()
        return {"candidates": [self.candidates[k] for k in sorted(self.candidates)],
                "selected": {name: {"step": step, "weights": (f"{CANDIDATE_WEIGHTS}/step{step}.pt"
                                                              if step != self.total else "model.pt")}
                             for name, step in chosen.items()},
                "held_out": self.held_out, "selection_s": round(self.seconds, 3)}


def score_key(validator: str) -> str:
    """The name under which a search's trials report ``validator``'s score to Ray Tune."""
    return "score_" + validator.replace("-", "_")


__all__ = ["StudyRecorder", "CANDIDATES", "score_key"]
