"""The evaluation protocol ``fsuda-v2``: tracks, directions, few-shot selection, scoring and trial identity.

* A *track* is (dataset, direction); a direction ``<src>2<tgt>`` names the source and target modality
  (``mr2ct``: labeled MR, unlabeled CT).
* ``shots = K`` labels K source training *volumes*, chosen by the seed from the frozen training split. The choice
  is a seeded permutation of the sorted training IDs, and the K labeled volumes are its first K entries, so for
  the same seed the 1-shot volume is among the 4-shot volumes. The other source training volumes are unlabeled.
  ``shots = "all"`` labels every source training volume.
* Target training volumes are always unlabeled; target test volumes are used only for evaluation. The ``oracle``
  reference labels K *target* training volumes, chosen by the same rule.
* Scoring: Dice, ASSD and HD95 (:mod:`benchmark.metrics`) per structure of each target test volume, on the
  volume's native grid (the grid of its label file, distances in mm with the file's spacing): the slice
  predictions are mapped back through the inverse of the preprocessing (:mod:`benchmark.native`), so a score does
  not depend on the preset's slice size or crop, and ``python -m benchmark evaluate`` scores any model's
  predictions the same way. ``fsuda-v1`` scored on the slice cache's resized grid; its rows are never shown beside
  ``fsuda-v2`` rows.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import UsageError

PROTOCOL = "fsuda-v2"


def parse_direction(direction: str, modalities: Sequence[str] | None = None) -> tuple[str, str]:
    """Split ``"mr2ct"`` into ``("mr", "ct")``, checking the modalities exist in the dataset."""
    parts = direction.split("2")
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise UsageError(
            f"Direction {direction!r} is not of the form <source>2<target> with two different modalities, "
            f"e.g. 'mr2ct' or 'ct2mr'."
        )
    if modalities is not None:
        for m in parts:
            if m not in modalities:
                raise UsageError(
                    f"Direction {direction!r} names modality {m!r}, which this dataset does not have "
                    f"(its modalities: {', '.join(modalities)})."
                )
    return parts[0], parts[1]


def parse_shots(value: str | int) -> int | str:
    """``"4"`` -> 4, ``"all"`` -> ``"all"``; anything else is a usage error."""
    if isinstance(value, int) and not isinstance(value, bool):
        shots = value
    elif isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    else:
        try:
            shots = int(str(value).strip())
        except ValueError:
            raise UsageError(f"Shot count {value!r} is neither a positive integer nor 'all'.") from None
    if shots < 1:
        raise UsageError(f"Shot count {shots} is impossible: at least one labeled volume is needed.")
    return shots


def _seeded_rng(*parts: Any) -> np.random.Generator:
    """A generator seeded from a stable hash of ``parts`` (stable across processes and platforms)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def select_labeled(train_ids: Sequence[str], shots: int | str, seed: int, *, dataset: str, modality: str) -> list[str]:
    """The ``shots`` training volumes labeled for ``seed`` (nested in ``shots`` for a fixed seed)."""
    ordered = sorted(train_ids)
    if shots == "all":
        return ordered
    if not isinstance(shots, int) or shots < 1:
        raise UsageError(f"Shot count {shots!r} is impossible: use a positive integer or 'all'.")
    if shots > len(ordered):
        raise UsageError(
            f"Shot count {shots} is impossible for {dataset} {modality}: its training split has only "
            f"{len(ordered)} volumes."
        )
    perm = _seeded_rng("shots", dataset, modality, seed).permutation(len(ordered))
    return [ordered[i] for i in perm[:shots]]


@dataclass(frozen=True)
class TrialSpec:
    """Everything that determines a trial's result; its hash names the trial's directory in the results store."""

    dataset: str
    direction: str
    method: str
    shots: int | str
    seed: int
    preset: str
    hparam_sample: int = 0
    hparams: dict[str, Any] = field(default_factory=dict)
    selection: str = "last"
    protocol: str = PROTOCOL
    dataset_version: str = "1"
    method_version: str = "1"
    preset_settings: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    #: Hyperparameters set on the command line for this row, e.g. ``meta=false`` (empty: the defaults or sample).
    variant: str = ""
    #: Plug-ins composed with the method, in order: ``{"name", "version", "hparams"}`` and, when set, ``"variant"``
    #: (the plug-in's command-line settings) and ``"provenance"`` (e.g. the version of the texts it reads).
    plugins: list[dict[str, Any]] = field(default_factory=list)
    #: The training step's requested precision (:mod:`benchmark.precision`); ``auto`` follows the device.
    precision: str = "auto"
    #: The training step's requested memory format (:mod:`benchmark.precision`); ``auto`` follows the device.
    memory_format: str = "auto"
    #: A selection study (:mod:`benchmark.selection`): ``{"source_val": share held out, "select_every": steps}``;
    #: empty for an ordinary trial, which reports its last weights.
    validation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # fields added later are left out at their defaults, so that trials without them keep the hashes they
        # always had
        for key, default in (("variant", ""), ("plugins", []), ("precision", "auto"), ("memory_format", "auto"),
                             ("validation", {})):
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialSpec":
        return cls(**d)

    @property
    def trial_id(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON of the full configuration."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def row_name(self) -> str:
        """The name of the leaderboard row this trial belongs to (see :func:`row_name`)."""
        return row_name(self.method, self.variant, self.plugins, self.hparam_sample)

    @property
    def label(self) -> str:
        """A short human-readable name: ``synthetic-heart/mr2ct/source_only/4shot/seed0``."""
        return f"{self.dataset}/{self.direction}/{self.row_name}/{self.shots}shot/seed{self.seed}"


def row_name(method: str, variant: str = "", plugins: Sequence[dict[str, Any]] = (), hparam_sample: int = 0) -> str:
    """The one spelling of a leaderboard row's method: ``metahallu:meta=false+cdtg:blend=0.3``, then ``@hp<k>``.

    A method's variant (its command-line settings) follows it after ``:``, each plug-in follows after ``+`` with its
    own variant, and a hyperparameter sample ``k != 0`` is appended as ``@hp<k>``.
    """
    parts = [f"{method}:{variant}" if variant else method]
    for p in plugins or ():
        parts.append(f"{p['name']}:{p['variant']}" if p.get("variant") else str(p["name"]))
    return "+".join(parts) + (f"@hp{hparam_sample}" if hparam_sample else "")


def parse_method_variant(text: str, *, entry: str | None = None, what: str = "method"
                         ) -> tuple[str, dict[str, str]]:
    """``"metahallu:meta=false:consistency=0"`` -> ``("metahallu", {"meta": "false", "consistency": "0"})``.

    A method entry of ``--methods`` may set hyperparameters after colons; such a variant is its own leaderboard row
    (an ablation, say). Values stay strings here; :func:`benchmark.hparams.resolve` converts and checks them. A
    piece without ``=`` continues the value before it, so a value may hold colons (``text_encoder=openclip:/w.pt``).
    ``entry`` (the whole ``--methods`` entry) and ``what`` only shape error messages.
    """
    entry = text if entry is None else entry
    name, *settings = text.strip().split(":")
    overrides: dict[str, str] = {}
    last = None
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep and last is not None and item:
            overrides[last] += ":" + item
            continue
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"Method entry {entry!r}: {item!r} is not of the form name=value (e.g. "
                             f"metahallu:meta=false).")
        if key.strip() in overrides:
            raise UsageError(f"Method entry {entry!r} sets {key.strip()!r} twice.")
        last = key.strip()
        overrides[last] = value.strip()
    if not name.strip():
        raise UsageError(f"Method entry {entry!r} names no {what}.")
    return name.strip(), overrides


#: ``+`` separates a method from its plug-ins, except before a digit (so a value like ``1e+3`` stays whole).
_PLUGIN_SEPARATOR = re.compile(r"\+(?!\d)")


def parse_method_entry(text: str) -> tuple[tuple[str, dict[str, str]], list[tuple[str, dict[str, str]]]]:
    """A ``--methods`` entry as (method, settings) and a list of (plug-in, settings).

    ``"metahallu:meta=false+cdtg:blend=0.3"`` -> ``(("metahallu", {"meta": "false"}), [("cdtg", {"blend": "0.3"})])``.
    An entry is a base method and, after ``+``, any number of plug-ins; each part may set its own hyperparameters
    after colons, which bind to the part they follow. The entry is split at every ``+`` not followed by a digit.
    """
    parts = _PLUGIN_SEPARATOR.split(text.strip())
    if any(not p.strip() for p in parts):
        raise UsageError(f"Method entry {text!r} has an empty part around '+'; write METHOD+PLUGIN, e.g. "
                         f"source_only+cdtg.")
    base = parse_method_variant(parts[0], entry=text)
    plugins = [parse_method_variant(p, entry=text, what="plug-in") for p in parts[1:]]
    return base, plugins


def format_variant(overrides: dict[str, Any]) -> str:
    """The canonical text of a variant's settings: sorted, JSON-like values (``meta=false:spatial=false``)."""
    def text(v: Any) -> str:
        return json.dumps(v) if isinstance(v, (bool, int, float)) or v is None else str(v)

    return ":".join(f"{k}={text(v)}" for k, v in sorted(overrides.items()))


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed derived from ``parts`` (used for per-step RNG streams, hyperparameter samples, ...)."""
    return zlib.crc32(json.dumps(parts, sort_keys=True, default=str).encode()) & 0x7FFFFFFF
