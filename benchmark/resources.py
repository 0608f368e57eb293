"""What each trial reserves on the Ray cluster: ``--gpus-per-trial auto``, and requests checked before any trial.

A run asks Ray for ``cpus`` CPUs and ``gpus`` GPUs per trial. ``auto`` (the default) means one GPU per trial when
some node of the cluster has one, none otherwise, so ``run --preset paper`` on a GPU machine trains on the GPU
without being told. ``--cpus-per-trial auto`` (the default) is one CPU per trial without GPUs (every core trains a
trial of its own) and, with GPUs, an even share of a GPU node's CPUs among the trials its GPUs hold at once, so a
GPU trial's batch-drawing workers (one per CPU) keep its GPU fed. A request that no single node can meet would leave
Tune waiting for ever (Ray repeats "No available node types can fulfill resource request");
:func:`resolve_placement` refuses it before any trial starts, naming the request and what the cluster's nodes have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import UsageError

AUTO = "auto"
_EPS = 1e-9


def _auto_or_number(value: str, flag: str, unit: str, examples: str) -> float | str:
    """``auto`` or the number ``value`` of ``flag``, refused with a message naming the flag when it is neither."""
    if str(value).strip().lower() == AUTO:
        return AUTO
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r} is neither 'auto' nor a number of {unit}, e.g. {examples}.") from None


def parse_gpus(value: str) -> float | str:
    """``--gpus-per-trial``: ``auto`` or a non-negative number (a fraction packs trials onto one GPU)."""
    gpus = _auto_or_number(value, "--gpus-per-trial", "GPUs", "1 or 0.5")
    if gpus != AUTO and (not math.isfinite(gpus) or gpus < 0):
        raise UsageError(f"--gpus-per-trial {value} is impossible: give 'auto', 0 or a positive number of GPUs.")
    return gpus


def parse_cpus(value: str) -> float | str:
    """``--cpus-per-trial``: ``auto`` or a number of CPUs (:func:`check_trial_request` refuses a non-positive one)."""
    return _auto_or_number(value, "--cpus-per-trial", "CPUs", "1 or 4")


def check_trial_request(cpus_per_trial: float | str, steps: int | None) -> None:
    """``--cpus-per-trial`` and ``--steps`` of ``run`` or ``tune``, refused when impossible."""
    if cpus_per_trial != AUTO and not (math.isfinite(cpus_per_trial) and cpus_per_trial > 0):
        raise UsageError(f"--cpus-per-trial {cpus_per_trial:g} is impossible: give a positive number of CPUs.")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps {steps} is impossible: train for at least one step.")


@dataclass(frozen=True)
class Placement:
    """The resources each trial reserves, the device it trains on and how many trials run at once."""

    cpus: float
    gpus: float
    concurrent: int
    nodes: tuple[Mapping[str, float], ...]
    auto: bool = False
    auto_cpus: bool = False

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"

    def describe(self) -> str:
        """One line for the plan, e.g. ``Device: cuda, 1 GPU and 1 CPU per trial (auto); 2 trials at a time ...``."""
        gpus = f"{self.gpus:g} GPU{'s' if self.gpus != 1 else ''} and " if self.gpus else ""
        why = (" (auto: the cluster has no GPU)" if self.auto and not self.gpus
               else " (auto)" if self.auto or self.auto_cpus else "")
        trials = f"{self.concurrent} trial{'s' if self.concurrent != 1 else ''}"
        return (f"Device: {self.device}, {gpus}{self.cpus:g} CPU{'s' if self.cpus != 1 else ''} per trial{why}; "
                f"{trials} at a time on {describe_nodes(self.nodes)}.")


def describe_nodes(nodes: Sequence[Mapping[str, float]]) -> str:
    """``1 node with 2 CPUs and no GPU`` or ``2 nodes (16 CPUs and 1 GPU; 8 CPUs and no GPU)``."""
    def one(n: Mapping[str, float]) -> str:
        cpus, gpus = n.get("CPU", 0.0), n.get("GPU", 0.0)
        return (f"{cpus:g} CPU{'s' if cpus != 1 else ''} and "
                + (f"{gpus:g} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU"))
    if len(nodes) == 1:
        return f"1 node with {one(nodes[0])}"
    return f"{len(nodes)} nodes ({'; '.join(one(n) for n in nodes)})"


def _fits(cpus: float, gpus: float, node: Mapping[str, float]) -> int:
    """How many trials of this request one node holds at once."""
    by_cpu = math.floor(node.get("CPU", 0.0) / cpus + _EPS)
    by_gpu = math.floor(node.get("GPU", 0.0) / gpus + _EPS) if gpus > 0 else by_cpu
    return max(0, min(by_cpu, by_gpu))


def resolve_placement(cpus: float | str, gpus: float | str, nodes: Sequence[Mapping[str, float]]) -> Placement:
    """The per-trial request for the cluster whose alive nodes have ``nodes`` resources (Ray's ``Resources``).

    ``gpus`` ``auto`` becomes 1 when some node has at least one GPU, else 0. ``cpus`` ``auto`` becomes 1 without
    GPUs and otherwise the whole CPUs of a GPU node divided among the trials its GPUs hold at once (the smallest
    such share over the nodes, so a trial fits on each). Raises :class:`UsageError` when no node can hold one
    trial of the request.
    """
    nodes = tuple(dict(n) for n in nodes)
    auto = gpus == AUTO
    if auto:
        gpus = 1.0 if any(n.get("GPU", 0.0) >= 1 - _EPS for n in nodes) else 0.0
    auto_cpus = cpus == AUTO
    if auto_cpus:
        cpus = _cpu_share(float(gpus), nodes)
    if cpus <= 0:
        raise UsageError(f"--cpus-per-trial {cpus:g} is impossible: each trial needs a positive number of CPUs.")
    concurrent = sum(_fits(cpus, float(gpus), n) for n in nodes)
    if concurrent == 0:
        asked = f"{cpus:g} CPU{'s' if cpus != 1 else ''}" + (f" and {gpus:g} GPU{'s' if gpus != 1 else ''}"
                                                           if gpus else "")
        raise UsageError(f"The request of {asked} per trial (--cpus-per-trial, --gpus-per-trial) fits on no node of "
                         f"the Ray cluster, which has {describe_nodes(nodes) if nodes else 'no alive node'}; ask "
                         f"for at most what one node has.")
    return Placement(cpus, float(gpus), concurrent, nodes, auto, auto_cpus)


def _cpu_share(gpus: float, nodes: Sequence[Mapping[str, float]]) -> float:
    """``--cpus-per-trial auto``: 1 without GPUs, else a GPU node's CPUs over the trials its GPUs hold at once."""
    shares = [math.floor(n.get("CPU", 0.0) / math.floor(n["GPU"] / gpus + _EPS) + _EPS)
              for n in nodes if gpus > 0 and n.get("GPU", 0.0) >= gpus - _EPS]
    return float(max(1, min(shares))) if shares else 1.0


def alive_nodes() -> list[dict[str, Any]]:
    """The ``Resources`` of every alive node of the connected Ray cluster."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive", False)]
