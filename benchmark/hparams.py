"""Hyperparameters declared beside each method: a default and a search distribution.

Sample 0 is the defaults. Sample ``i > 0`` draws each hyperparameter from its own generator, seeded from
``(i, name)``, so adding a hyperparameter never changes the values the others get (the DomainBed convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import UsageError
from .protocol import derive_seed

Sampler = Callable[[np.random.Generator], Any]


@dataclass(frozen=True)
class HParam:
    """A hyperparameter: its default, its search distribution and a one-line meaning."""

    default: Any
    search: Sampler | None = None
    doc: str = ""

    def draw(self, sample: int, name: str) -> Any:
        if sample == 0 or self.search is None:
            return self.default
        value = self.search(np.random.default_rng(derive_seed("hparam", sample, name)))
        return value.item() if isinstance(value, np.generic) else value


def log_uniform(low: float, high: float) -> Sampler:
    """10**U(log10 low, log10 high)."""
    lo, hi = math.log10(low), math.log10(high)
    return lambda rng: float(10 ** rng.uniform(lo, hi))


def uniform(low: float, high: float) -> Sampler:
    return lambda rng: float(rng.uniform(low, high))


def choice(options: Sequence[Any]) -> Sampler:
    opts = list(options)
    return lambda rng: opts[int(rng.integers(len(opts)))]


def resolve(declared: Mapping[str, HParam], sample: int = 0, overrides: Mapping[str, Any] | None = None,
            *, owner: str = "method") -> dict[str, Any]:
    """The concrete hyperparameters for ``sample``, with ``overrides`` applied (unknown names are an error)."""
    if sample < 0:
        raise UsageError(f"Hyperparameter sample {sample} is negative; samples are numbered 0, 1, 2, ...")
    values = {name: hp.draw(sample, name) for name, hp in sorted(declared.items())}
    for name, value in (overrides or {}).items():
        if name not in declared:
            raise UsageError(
                f"{owner} has no hyperparameter {name!r}; its hyperparameters are: {', '.join(sorted(declared))}."
            )
        default = declared[name].default
        if isinstance(default, bool) and isinstance(value, str):
            value = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
            value = type(default)(float(value)) if isinstance(default, int) else float(value)
        values[name] = value
    return values
