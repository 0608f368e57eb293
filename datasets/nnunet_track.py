"""The track an nnU-Net raw folder describes: its ``dataset.json``, the ``fsuda.json`` beside it, the split rule.

A module of the ``nnunet`` adapter (``datasets/nnunet.py``), not an adapter: it registers nothing. Its name has no
leading ``_`` so that it keys only the caches of the adapters built on it (``nnunet``, ``amos``), whose fingerprint
includes it, and not those of every adapter of this folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import DataError, UsageError

CONFIG_FILE = "fsuda.json"
SPLIT_FILE = "fsuda.split.json"
DESCRIPTIONS_FILE = "fsuda.classes.json"
#: The split rule's defaults: per modality this share of the cases (rounded up, at least one, never all) is test.
TEST_FRACTION = 0.2
SPLIT_SEED = 0
ENDINGS = (".nii.gz", ".nii")
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
#: Preprocessing unless ``fsuda.json`` says otherwise: the abdominal tracks' label-free body crop, per-volume scaling.
DEFAULT_PREPROCESSING: dict[str, Any] = {"crop": "body", "normalise": "volume"}
PREPROCESSING_KEYS = ("crop", "crop_fov_mm", "clip_low", "clip_high", "normalise")
CONFIG_KEYS = ("about", "version", "modalities", "classes", "slice_axis", "field_of_view_mm", "preprocessing",
               "split", "descriptions")
RULE_KEYS = ("channel", "id_range", "id_pattern", "cases")
_MODALITY = re.compile(r"^[a-z][a-z013-9_]*$")  # no "2": directions are spelled <source>2<target>
_CLASS = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
LAYOUT = ("ROOT/dataset.json and ROOT/fsuda.json, ROOT/imagesTr/<case>_<XXXX>.nii.gz (XXXX the channel index), "
          "ROOT/labelsTr/<case>.nii.gz (nnU-Net v2 raw format)")
EXAMPLE = ('{"modalities": {"ct": {"id_range": [1, 500]}, "mr": {"id_range": [501, 600]}}, '
           '"classes": ["liver", "spleen"]}')


def _fail(where: Path | str, message: str) -> DataError:
    return DataError(f"{where}: {message}")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a missing, unreadable or non-object file raises a DataError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(path, "the file is missing.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not readable JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise _fail(path, "expected a JSON object.")
    return data


# -- dataset.json ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetJson:
    """What the suite reads from nnU-Net's ``dataset.json``: label name -> raw values (several for a region-based
    label), channel index -> name, the file ending, and the descriptive fields."""

    path: Path
    labels: dict[str, tuple[int, ...]]
    channels: dict[int, str]
    file_ending: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def declared(self) -> tuple[int, ...]:
        return tuple(sorted({v for values in self.labels.values() for v in values}))

    def names(self) -> dict[int, str]:
        """Raw value -> label name, for the single-value labels."""
        return {values[0]: name for name, values in self.labels.items() if len(values) == 1}


def _labels(raw: Any, path: Path) -> dict[str, tuple[int, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, "'labels' must be a non-empty object of label name -> value.")
    if all(str(k).strip().isdigit() for k in raw) and all(isinstance(v, str) for v in raw.values()):
        return {v: (int(k),) for k, v in raw.items()}  # Decathlon / nnU-Net v1 style: value -> name
    out = {}
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise _fail(path, f"label {name!r} has value {value!r}; values are whole numbers >= 0.")
        out[str(name)] = tuple(values)
    if 0 not in {v for vs in out.values() for v in vs}:
        raise _fail(path, "no label has value 0; nnU-Net's format needs the background at 0.")
    return out


def read_dataset_json(path: Path) -> DatasetJson:
    """Parse nnU-Net v2's ``dataset.json`` (v1's value -> name ``labels`` and ``modality`` are read too)."""
    meta = read_json(path)
    labels = _labels(meta.get("labels"), path)
    raw = meta.get("channel_names", meta.get("modality"))
    if not isinstance(raw, dict) or not raw or not all(str(k).isdigit() for k in raw):
        raise _fail(path, "'channel_names' must be an object of channel index -> name, e.g. {\"0\": \"CT\"}.")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in ENDINGS:
        raise _fail(path, f"file_ending {ending!r} is not supported; the suite reads NIfTI ({', '.join(ENDINGS)}).")
    return DatasetJson(path, labels, {int(k): str(v) for k, v in raw.items()}, ending, meta)


# -- the track a configuration describes ----------------------------------------------------------------------
@dataclass(frozen=True)
class ModalityRule:
    """Which cases belong to a modality, and which channel's file is its image.

    ``id_range`` (inclusive, on the last run of digits of the case ID), ``id_pattern`` (a regular expression the
    whole case ID matches) or ``cases`` (a list) select cases by ID; without any of them a case belongs to the
    modality when it has a file of the modality's ``channel``.
    """

    channel: int
    id_range: tuple[int, int] | None = None
    id_pattern: str | None = None
    cases: tuple[str, ...] | None = None

    @property
    def by_id(self) -> bool:
        return self.id_range is not None or self.id_pattern is not None or self.cases is not None

    def takes(self, case_id: str, channels: set[int]) -> bool:
        if self.id_range is not None:
            digits = re.findall(r"\d+", case_id)
            return bool(digits) and self.id_range[0] <= int(digits[-1]) <= self.id_range[1]
        if self.id_pattern is not None:
            return re.fullmatch(self.id_pattern, case_id) is not None
        if self.cases is not None:
            return case_id in self.cases
        return self.channel in channels


@dataclass(frozen=True)
class Track:
    """Everything the adapter knows besides the files: modality rules, class -> index, raw value -> class index,
    every raw value the label files may hold, the channels dataset.json declares, slicing, preprocessing, the
    split's file and rule, and where the class descriptions are (None: beside the adapter)."""

    modalities: dict[str, ModalityRule]
    classes: dict[str, int]
    mapping: dict[int, int]
    declared: tuple[int, ...]
    channels: tuple[int, ...] = (0,)
    file_ending: str = ".nii.gz"
    slice_axis: int = 2
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    split_file: str = SPLIT_FILE
    split_seed: int = SPLIT_SEED
    test_fraction: float = TEST_FRACTION
    descriptions: str | None = None
    labels_source: str = "dataset.json"
    version: str = "1"

    def key(self) -> str:
        """What changes the arrays read from the same files (the rest keys the cache by itself)."""
        return json.dumps({"mapping": sorted(self.mapping.items()), "declared": list(self.declared),
                           "channels": {m: r.channel for m, r in self.modalities.items()},
                           "ending": self.file_ending}, sort_keys=True)


def _rule(name: str, spec: Any, meta: DatasetJson, where: Path) -> ModalityRule:
    if not isinstance(spec, dict) or set(spec) - set(RULE_KEYS):
        raise _fail(where, f"modality {name!r} must be an object with some of {', '.join(RULE_KEYS)}.")
    channel = spec.get("channel")
    if channel is None:
        if len(meta.channels) != 1:
            raise _fail(where, f"modality {name!r} needs a \"channel\": {meta.path.name} declares "
                               f"{len(meta.channels)} ({meta.channels}).")
        channel = next(iter(meta.channels))
    elif isinstance(channel, str) and channel in meta.channels.values():
        channel = next(k for k, v in meta.channels.items() if v == channel)
    elif isinstance(channel, bool) or channel not in meta.channels:
        raise _fail(where, f"modality {name!r}: channel {channel!r} is not in {meta.path.name}'s channel_names "
                           f"{meta.channels}.")
    chosen = [k for k in RULE_KEYS[1:] if k in spec]
    if len(chosen) > 1:
        raise _fail(where, f"modality {name!r} gives {' and '.join(chosen)}; give at most one rule on case IDs.")
    lo_hi, pattern, cases = spec.get("id_range"), spec.get("id_pattern"), spec.get("cases")
    if lo_hi is not None and not (isinstance(lo_hi, list) and len(lo_hi) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in lo_hi) and lo_hi[0] <= lo_hi[1]):
        raise _fail(where, f"modality {name!r}: id_range must be [first, last], two whole numbers.")
    if pattern is not None:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise _fail(where, f"modality {name!r}: id_pattern {pattern!r} is not a regular expression ({exc}).")
    if cases is not None and not (isinstance(cases, list) and cases and all(isinstance(c, str) for c in cases)):
        raise _fail(where, f"modality {name!r}: cases must be a non-empty list of case IDs.")
    return ModalityRule(int(channel), tuple(lo_hi) if lo_hi else None, pattern,
                        tuple(cases) if cases is not None else None)


def _modalities(spec: Any, meta: DatasetJson, where: Path) -> dict[str, ModalityRule]:
    if not isinstance(spec, dict) or len(spec) < 2:
        raise _fail(where, f"\"modalities\" must name two or more modalities and their rules, e.g. {EXAMPLE}.")
    bad = [m for m in spec if not _MODALITY.match(m)]
    if bad:
        raise _fail(where, f"modality names {bad} must be lower-case letters, digits and '_' without a '2' "
                           f"(directions are spelled <source>2<target>).")
    rules = {m: _rule(m, s, meta, where) for m, s in spec.items()}
    for a in rules:
        for b in rules:
            if a < b and rules[a].channel == rules[b].channel and not (rules[a].by_id and rules[b].by_id):
                raise _fail(where, f"modalities {a!r} and {b!r} read the same channel {rules[a].channel}, so each "
                                   f"needs a rule on case IDs (id_range, id_pattern or cases).")
    return rules


def _class_name(label: str) -> str:
    name = re.sub(r"[^0-9A-Za-z]+", "_", label).strip("_").lower()
    return name if name[:1].isalpha() else f"label_{name}"


def _value(ref: Any, meta: DatasetJson, where: Path) -> int:
    if isinstance(ref, int) and not isinstance(ref, bool):
        if ref == 0 or ref not in meta.declared:
            raise _fail(where, f"label value {ref} is not a foreground label of {meta.path} "
                               f"(declared: {list(meta.declared)}).")
        return ref
    folded = {k.lower(): k for k in meta.labels}
    key = ref if ref in meta.labels else folded.get(str(ref).lower())
    if key is None:
        raise _fail(where, f"label {ref!r} is not in {meta.path}'s labels ({', '.join(meta.labels)}).")
    if len(meta.labels[key]) != 1 or meta.labels[key] == (0,):
        raise _fail(where, f"label {key!r} of {meta.path} is the background or region-based; choose "
                           f"single-value foreground labels.")
    return meta.labels[key][0]


def _classes(spec: Any, meta: DatasetJson, where: Path) -> tuple[dict[str, int], dict[int, int]]:
    """Benchmark class -> index (1, 2, ... in the order given) and raw value -> index."""
    names = meta.names()
    if spec is None:
        spec = [n for n, v in meta.labels.items() if len(v) == 1 and v != (0,) and n != "ignore"]
    if isinstance(spec, list):
        spec = {_class_name(names.get(ref, str(ref)) if isinstance(ref, int) else str(ref)): ref for ref in spec}
    if not isinstance(spec, dict) or not spec:
        raise _fail(where, "\"classes\" must be a list of dataset.json label names (or values), or an object of "
                           "benchmark class name -> label name or value.")
    classes, mapping = {}, {}
    for name, ref in spec.items():
        if not _CLASS.match(name) or name == "background":
            raise _fail(where, f"class name {name!r} must start with a letter and use letters, digits and '_' "
                               f"(and not be 'background').")
        value = _value(ref, meta, where)
        if value in mapping:
            raise _fail(where, f"label value {value} is chosen twice in \"classes\".")
        classes[name] = mapping[value] = len(classes) + 1
    return classes, mapping


def _preprocessing(config: dict[str, Any], where: Path) -> dict[str, Any]:
    from benchmark.cache import PreprocessSettings

    given = config.get("preprocessing", {})
    if not isinstance(given, dict) or set(given) - set(PREPROCESSING_KEYS):
        raise _fail(where, f"\"preprocessing\" may set {', '.join(PREPROCESSING_KEYS)}.")
    chosen = {**DEFAULT_PREPROCESSING, **given}
    fov = config.get("field_of_view_mm", chosen.get("crop_fov_mm"))
    if fov is not None:
        if not (isinstance(fov, list) and len(fov) == 3 and all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0) for v in fov)):
            raise _fail(where, "field_of_view_mm must be three sizes in mm per RAS+ axis (null: the body's extent).")
        chosen.update(crop="body", crop_fov_mm=tuple(None if v is None else float(v) for v in fov))
    try:
        PreprocessSettings(**chosen).resolve()
    except (UsageError, TypeError, ValueError) as exc:
        raise _fail(where, f"\"preprocessing\": {exc}") from None
    return chosen


def _split_options(spec: Any, where: Path) -> dict[str, Any]:
    spec = {} if spec is None else spec
    if not isinstance(spec, dict) or set(spec) - {"seed", "test_fraction", "file"}:
        raise _fail(where, "\"split\" may set seed, test_fraction and file.")
    seed, fraction = spec.get("seed", SPLIT_SEED), spec.get("test_fraction", TEST_FRACTION)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _fail(where, f"split seed {seed!r} must be a whole number >= 0.")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise _fail(where, f"split test_fraction {fraction!r} must lie between 0 and 1.")
    if not isinstance(spec.get("file", SPLIT_FILE), str):
        raise _fail(where, "split file must be a path (relative to the dataset folder, or absolute).")
    return {"split_seed": seed, "test_fraction": float(fraction), "split_file": spec.get("file", SPLIT_FILE)}


def load_track(root: Path) -> tuple[Track, DatasetJson]:
    """The track ``ROOT/fsuda.json`` describes on ``ROOT/dataset.json``; every fault names the file and key."""
    if not root.is_dir():
        raise _fail(root, f"the dataset folder does not exist (expected layout: {LAYOUT}).")
    meta = read_dataset_json(root / "dataset.json")
    where = root / CONFIG_FILE
    if not where.is_file():
        raise _fail(where, f"the file is missing; the nnunet adapter reads which cases are which modality from "
                           f"it, e.g. {EXAMPLE}.")
    config = read_json(where)
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise _fail(where, f"unknown keys {unknown} (known: {', '.join(CONFIG_KEYS)}).")
    classes, mapping = _classes(config.get("classes"), meta, where)
    axis = config.get("slice_axis", 2)
    axis = AXES.get(axis, axis) if isinstance(axis, str) else axis
    if axis not in (0, 1, 2) or isinstance(axis, bool):
        raise _fail(where, f"slice_axis {config.get('slice_axis')!r} must be 0, 1, 2 or {', '.join(AXES)}.")
    descriptions = config.get("descriptions", DESCRIPTIONS_FILE)
    version = config.get("version", "1")
    if not isinstance(descriptions, str) or not isinstance(version, str):
        raise _fail(where, "\"descriptions\" (a file name) and \"version\" must be strings.")
    track = Track(modalities=_modalities(config.get("modalities"), meta, where), classes=classes,
                  mapping=mapping, declared=meta.declared, channels=tuple(sorted(meta.channels)),
                  file_ending=meta.file_ending, slice_axis=axis, preprocessing=_preprocessing(config, where),
                  descriptions=str(root / descriptions), labels_source=str(meta.path), version=version,
                  **_split_options(config.get("split"), where))
    return track, meta


# -- the split ------------------------------------------------------------------------------------------------
def seeded_split(cases: dict[str, list[str]], seed: int, fraction: float) -> dict[str, dict[str, list[str]]]:
    """The split rule: cases ordered by the SHA-256 of ``"<seed>:<case ID>"``; per modality the first
    ``ceil(fraction * n)`` (at least one, never all) are test. A case ID in two modalities (two channels of one
    scan) is test in both when it is test in either, so no test scan is ever a training input."""
    def rank(case_id: str) -> str:
        return hashlib.sha256(f"{seed}:{case_id}".encode()).hexdigest()

    test: set[str] = set()
    for modality, ids in cases.items():
        if len(ids) < 2:
            raise DataError(f"Modality {modality!r} has {len(ids)} case(s); a split needs at least two.")
        k = min(len(ids) - 1, max(1, math.ceil(fraction * len(ids) - 1e-9)))
        test.update(sorted(ids, key=rank)[:k])
    out = {m: {"train": [c for c in ids if c not in test], "test": [c for c in ids if c in test]}
           for m, ids in cases.items()}
    for modality, parts in out.items():
        if not parts["train"]:
            raise DataError(f"Modality {modality!r} keeps no training case once the cases shared with another "
                            f"modality's test set are test too.")
    return out
