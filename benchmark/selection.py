"""Model-selection policies: which kept checkpoint of a study trial a leaderboard row reports.

A study trial (``validation`` set in its configuration) records a *candidate* every ``every`` steps: its scores
(:mod:`benchmark.validators`) and its target test metrics. A policy picks one candidate per trial, so one set of
trials yields a row per policy without retraining (``run --selection last,source-val,snd,oracle-target``). The
classes follow DomainBed's ``model_selection.py`` (Gulrajani and Lopez-Paz, ICLR 2021): a name and a score per
candidate, the highest score wins, ties go to the later step.

``oracle-target`` reads target test labels: it bounds what selection could buy and is never a result; boards mark
its rows so.

The trials of a hyperparameter search (``python -m benchmark tune``; ``validation["search"]`` set) give one row
per seed instead: :func:`expand_tuned` picks, over every candidate of every sample the search ran (the trials its
scheduler stopped early included), the one with the best score on the search's validator, and reports it as
selection ``tuned-<validator>``.
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


def is_search(record: dict[str, Any]) -> bool:
    """Whether ``record`` is a trial of a hyperparameter search (``tune``)."""
    return bool((record.get("config", {}).get("validation") or {}).get("search"))


def tuned_label(validator: str) -> str:
    return f"tuned-{validator}"


def expand_tuned(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A search's records (``ok`` and ``stopped`` trials of every hyperparameter sample) as one record per search
    and seed: that of the candidate with the highest score on the search's validator (``validation["tune_by"]``;
    ties go to the lower sample, then the later step), with ``config["selection"]`` ``tuned-<validator>``,
    ``config["hparam_sample"]`` 0 (the row is the search's, not one sample's) and the chosen sample and step in
    ``tuned_sample`` and ``selected_step``. Failed records pass unchanged (a failed sample keeps its own row)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        c = rec["config"]
        key = repr({k: v for k, v in c.items() if k not in ("hparam_sample", "hparams", "plugins")}
                   | {"plugins": [{k: v for k, v in p.items() if k not in ("hparams", "hparam_sample")}
                                  for p in c.get("plugins", ())]})
        groups.setdefault(key, []).append(rec)
    out = []
    for recs in groups.values():
        scored = [(rec, cand) for rec in recs if rec.get("status") in ("ok", "stopped")
                  for cand in rec.get("candidates") or () if cand.get("test") is not None]
        out.extend(r for r in recs if r.get("status") == "failed")  # failed samples stay on the board as such
        if not scored:
            continue
        name = recs[0]["config"]["validation"]["tune_by"]
        policy = POLICIES[name]

        def rank(pair):
            rec, cand = pair
            value = policy.score(cand)  # NaN (no score) never wins
            return -math.inf if value != value else value, -int(rec["config"].get("hparam_sample", 0)), cand["step"]

        rec, cand = max(scored, key=rank)
        view = copy.copy(rec)
        view["config"] = {**rec["config"], "selection": tuned_label(name), "hparam_sample": 0}
        view["status"] = "ok"
        view["volumes"], view["summary"] = cand["test"]["volumes"], cand["test"]["summary"]
        view["selected_step"], view["tuned_sample"] = cand["step"], int(rec["config"].get("hparam_sample", 0))
        view["candidates"] = None
        out.append(view)
    return out


def expand_selections(records: Iterable[dict[str, Any]], policies: Sequence[str] | None = None
                      ) -> list[dict[str, Any]]:
    """Every record, with each ``ok`` study record replaced by one record per policy (default: all of
    :data:`POLICIES`): its ``config["selection"]`` names the policy and its volumes and summary are those of the
    chosen candidate. The records of a search become one record per search and seed (:func:`expand_tuned`).
    Other records pass unchanged; a failed study record stays once, as ``last``."""
    names = list(POLICIES) if policies is None else list(policies)
    records = list(records)
    searches = [r for r in records if is_search(r) and (r.get("candidates") is not None or r["status"] == "failed")]
    out = expand_tuned(searches) if searches else []
    taken = {id(r) for r in searches}
    for rec in records:
        if id(rec) in taken:
            continue
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


__all__ = ["SelectionPolicy", "POLICIES", "LABEL_FREE", "parse_selection", "expand_selections", "expand_tuned",
           "is_study", "is_search", "tuned_label"]
