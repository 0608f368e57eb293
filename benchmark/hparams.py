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
            *, owner: str = "method", namespace: str = "") -> dict[str, Any]:
    """The concrete hyperparameters for ``sample``, with ``overrides`` applied (unknown names are an error).

    ``namespace`` prefixes the names that seed the draws (a plug-in's ``"cdtg."``), so that a plug-in's ``lr``
    is drawn independently of its host method's ``lr``.
    """
    if sample < 0:
        raise UsageError(f"Hyperparameter sample {sample} is negative; samples are numbered 0, 1, 2, ...")
    values = {name: hp.draw(sample, namespace + name) for name, hp in sorted(declared.items())}
    for name, value in (overrides or {}).items():
        if name not in declared:
            raise UsageError(
                f"{owner} has no hyperparameter {name!r}; its hyperparameters are: {', '.join(sorted(declared))}."
            )
        values[name] = _coerce(value, declared[name].default, name, owner)
    return values


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(value: Any, default: Any, name: str, owner: str) -> Any:
    """A command-line value (a string) as the type of the hyperparameter's default; other values unchanged."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    text = value.strip().lower()
    try:
        if isinstance(default, bool):
            if text not in _TRUE + _FALSE:
                raise ValueError
            return text in _TRUE
        if isinstance(default, int):
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = "true or false" if isinstance(default, bool) else type(default).__name__
        raise UsageError(f"{owner}: hyperparameter {name!r} must be {kind}, not {value!r}.") from None
    return value
