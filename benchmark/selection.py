"""Model-selection policies: which kept checkpoint of a study trial a leaderboard row reports.

A study trial (``validation`` set in its configuration) records a *candidate* every ``every`` steps: its scores
(:mod:`benchmark.validators`) and its target test metrics. A policy picks one candidate per trial, so one set of
trials yields a row per policy without retraining (``run --selection last,source-val,snd,oracle-target``). The
classes follow DomainBed's ``model_selection.py`` (Gulrajani and Lopez-Paz, ICLR 2021): a name and a score per
candidate, the highest score wins, ties go to the later step.

``oracle-target`` reads target test labels: it bounds what selection could buy and is never a result; boards mark
its rows so.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Sequence

from .errors import UsageError


class SelectionPolicy:
    """Picks the candidate with the highest :meth:`score` (NaN scores never win, and with no score at all the last
    candidate is kept; ties go to the later step)."""

    name = ""
    #: Whether the policy reads target test labels (an upper bound, never a result).
    oracle = False

    def score(self, candidate: dict[str, Any]) -> float:
        raise NotImplementedError

    def choose(self, candidates: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not candidates:
            raise ValueError(f"Selection policy {self.name!r} has no candidates to choose from.")
        ordered = sorted(candidates, key=lambda c: c["step"])
        best, best_score = None, -math.inf
        for cand in ordered:
            s = self.score(cand)
            if s == s and (best is None or s >= best_score):
                best, best_score = cand, s
        return ordered[-1] if best is None else best  # no candidate scored: the last one


class Last(SelectionPolicy):
    """The final weights (the suite's default; every non-study row uses it)."""

    name = "last"

    def score(self, candidate):
        return float(candidate["step"])


class ValidatorPolicy(SelectionPolicy):
    """The candidate with the best value of one recorded validator score."""

    def __init__(self, name: str):
        self.name = name

    def score(self, candidate):
        value = candidate["scores"].get(self.name)
        return math.nan if value is None else float(value)


class OracleTarget(SelectionPolicy):
    """Best mean target test Dice among the kept candidates: an upper bound, never a result."""

    name = "oracle-target"
    oracle = True

    def score(self, candidate):
        return float(candidate["test"]["summary"]["dice"]["mean"])


#: The label-free validators, in the order tables list them.
LABEL_FREE = ("entropy", "im", "snd")
POLICIES: dict[str, SelectionPolicy] = {p.name: p for p in (
    Last(), ValidatorPolicy("source-val"), *(ValidatorPolicy(n) for n in LABEL_FREE), OracleTarget())}


def parse_selection(text: str | Sequence[str]) -> list[str]:
    """``"last,source-val,snd"`` as a checked list of policy names (order kept, duplicates dropped)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise UsageError(f"--selection names no policy; the policies are {', '.join(POLICIES)}.")
    for n in names:
        if n not in POLICIES:
            raise UsageError(f"Unknown selection policy {n!r}; the policies are {', '.join(POLICIES)}.")
    return list(dict.fromkeys(names))


def is_study(record: dict[str, Any]) -> bool:
    return bool(record.get("config", {}).get("validation")) and bool(record.get("candidates"))


def expand_selections(records: Iterable[dict[str, Any]], policies: Sequence[str] | None = None
                      ) -> list[dict[str, Any]]:
    """Every record, with each ``ok`` study record replaced by one record per policy (default: all of
    :data:`POLICIES`): its ``config["selection"]`` names the policy and its volumes and summary are those of the
    chosen candidate. Other records pass unchanged; a failed study record stays once, as ``last``."""
    names = list(POLICIES) if policies is None else list(policies)
    out = []
    for rec in records:
        if rec.get("status") != "ok" or not is_study(rec):
            out.append(rec)
            continue
        for name in names:
            chosen = POLICIES[name].choose(rec["candidates"])
            view = copy.copy(rec)
            view["config"] = {**rec["config"], "selection": name}
            view["volumes"], view["summary"] = chosen["test"]["volumes"], chosen["test"]["summary"]
            view["selected_step"] = chosen["step"]
            view["candidates"] = None  # a view is never expanded again
            out.append(view)
    return out


__all__ = ["SelectionPolicy", "POLICIES", "LABEL_FREE", "parse_selection", "expand_selections", "is_study"]
