"""The on-disk slice cache: shared preprocessing, built once, read by memory-mapping.

Preprocessing, identical for every method: the adapter returns each volume in the canonical orientation; the
volume is optionally cropped to a box found from the image alone (:mod:`benchmark.preprocess`); the volume is
moved so the slicing axis is first; intensities are clipped per volume at a low and a high percentile; slices are
resized to ``size x size`` (area interpolation for images, label maps resized as one-hot channels then arg-maxed,
which keeps thin structures better than nearest-neighbour); and intensities are normalised to zero mean, unit
variance, by default per modality with statistics from its *training* volumes only, or per volume where the
dataset's established protocol does so. The in-plane spacing stored in the index is the spacing on the resized
grid, on which training losses are computed.

Evaluation (protocol ``fsuda-v2``) runs on each test volume's native grid instead: the index keeps, per case, the
crop box, the canonical shape and spacing, and the stored file's grid (:class:`benchmark.native.Grid`), and
``native/`` holds the test volumes' labels on their canonical grid, so :meth:`SliceCache.native` gives all a trial
needs to map its slice predictions back (:class:`benchmark.native.InverseMap`) and score them there.

Each dataset adapter may choose its protocol's clipping, normalisation and crop (``DatasetAdapter.preprocessing``);
:meth:`PreprocessSettings.resolve` fills the fields a caller left unset from that choice, then from the defaults.

A cache directory is named by a hash of the cache layout (:data:`CACHE_FORMAT`), the dataset, its version, its
split, its root and the resolved preprocessing settings. It is built in a temporary directory and renamed into
place in one step, so an interrupted build leaves nothing a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, UsageError
from .native import InverseMap
from .preprocess import body_crop, normalise_volume
from .registry import get_dataset

CACHE_ENV = "FSUDA_CACHE"
INDEX = "index.json"
#: The layout of a cache directory; it keys the cache, so a cache of an older layout is never read as this one.
#: 2: the index keeps each case's native grid and crop box, and ``native/`` holds the test volumes' labels on
#: their canonical native grid (protocol ``fsuda-v2`` scores there).
CACHE_FORMAT = 2
NATIVE = "native"


def cache_root() -> Path:
    """Where slice caches live: ``$FSUDA_CACHE`` or ``~/.cache/fsuda-benchmark``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fsuda-benchmark"


#: What a setting left unset means when the dataset adapter does not choose it either.
DEFAULTS: dict[str, Any] = {"clip_low": 0.5, "clip_high": 99.5, "normalise": "modality", "crop": "none",
                            "crop_fov_mm": None}
#: Settings added after the first caches were built key a cache only when they differ from their default, so
#: every existing cache (and the published synthetic-heart results built on it) keeps its key.
_LATER_FIELDS = ("normalise", "crop", "crop_fov_mm")
NORMALISATIONS = ("modality", "volume", "none")
CROPS = ("none", "body")


def process_map(fn: Any, args: list[tuple[Any, ...]], workers: int) -> list[Any]:
    """``[fn(*a) for a in args]``, in ``workers`` spawned processes when more than one (results in order)."""
    if workers <= 1 or len(args) <= 1:
        return [fn(*a) for a in args]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(fn, *zip(*args)))


@dataclass(frozen=True)
class PreprocessSettings:
    """The preprocessing that defines a cache; ``None`` fields take the adapter's choice, then :data:`DEFAULTS`.

    ``normalise``: "modality" (statistics of the modality's training volumes), "volume" (each volume by its own
    statistics) or "none" (values as stored, e.g. a release that is already normalised). ``crop``: "none" or
    "body" (see :func:`benchmark.preprocess.body_crop`), with ``crop_fov_mm`` a field of view in mm per canonical
    axis (``None`` on an axis: the body's extent).
    """

    size: int = 64
    clip_low: float | None = None
    clip_high: float | None = None
    normalise: str | None = None
    crop: str | None = None
    crop_fov_mm: tuple[float | None, ...] | None = None

    def resolve(self, adapter=None) -> PreprocessSettings:
        """A copy with every unset field filled from ``adapter.preprocessing``, then :data:`DEFAULTS`; checked."""
        chosen = dict(getattr(adapter, "preprocessing", None) or {})
        values = {name: (getattr(self, name) if getattr(self, name) is not None else chosen.get(name, default))
                  for name, default in DEFAULTS.items()}
        if values["crop_fov_mm"] is not None:
            values["crop_fov_mm"] = tuple(None if v is None else float(v) for v in values["crop_fov_mm"])
        values["clip_low"], values["clip_high"] = float(values["clip_low"]), float(values["clip_high"])
        if not 0 <= values["clip_low"] < values["clip_high"] <= 100:
            raise UsageError(f"Clipping percentiles {values['clip_low']}, {values['clip_high']} are impossible: "
                             f"need 0 <= low < high <= 100.")
        if values["normalise"] not in NORMALISATIONS:
            raise UsageError(f"Unknown normalisation {values['normalise']!r}; choose {', '.join(NORMALISATIONS)}.")
        if values["crop"] not in CROPS:
            raise UsageError(f"Unknown crop {values['crop']!r}; choose {', '.join(CROPS)}.")
        return PreprocessSettings(size=self.size, **values)

    def key(self) -> dict[str, Any]:
        data = asdict(self.resolve())  # idempotent: a resolved copy resolves to itself
        for name in _LATER_FIELDS:
            if data[name] == DEFAULTS[name]:
                del data[name]
        if data.get("crop_fov_mm") is not None:
            data["crop_fov_mm"] = list(data["crop_fov_mm"])
        return data


def _resize_slices(volume: np.ndarray, size: int, *, labels: int | None = None) -> np.ndarray:
    """Resize (N, H, W) slices to (N, size, size); ``labels`` = number of classes for a label map."""
    import cv2

    n, h, w = volume.shape
    if (h, w) == (size, size):
        return volume.copy()
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    if labels is None:
        return np.stack([cv2.resize(s, (size, size), interpolation=interp) for s in volume]).astype(np.float32)
    out = np.empty((n, size, size), dtype=np.uint8)
    for i, s in enumerate(volume):
        scores = [cv2.resize((s == c).astype(np.float32), (size, size), interpolation=interp) for c in range(labels)]
        out[i] = np.argmax(np.stack(scores), axis=0)
    return out


def preprocess_volume(image: np.ndarray, spacing, axis: int, settings: PreprocessSettings,
                      label: np.ndarray | None = None, n_labels: int = 0) -> dict[str, Any]:
    """One canonical volume through the shared preprocessing (crop, slicing axis first, clip, resize, per-volume
    normalisation), with what its inverse needs (see :class:`benchmark.native.InverseMap`).

    Returns ``image`` (slices, size, size) float32, ``label`` (uint8, or None), the cache-grid ``spacing`` (slice
    axis first), ``crop`` (canonical ``[start, stop]`` per axis; the whole axis without a crop) and, when a label
    was given and the crop leaves part of it out, ``label_voxels_outside_crop``. Modality normalisation is applied
    by the caller, with the statistics of the modality's training volumes.
    """
    extra: dict[str, Any] = {}
    box = (body_crop(image, spacing, settings.crop_fov_mm) if settings.crop == "body"
           else tuple(slice(0, n) for n in image.shape))
    image = image[box]
    if label is not None:
        kept = label[box]
        outside = int(np.count_nonzero(label) - np.count_nonzero(kept))
        if outside:
            extra["label_voxels_outside_crop"] = outside
        label = kept
    image = np.moveaxis(image.astype(np.float32, copy=False), axis, 0)
    lo, hi = np.percentile(image, [settings.clip_low, settings.clip_high])
    image = np.clip(image, lo, hi)
    in_plane = [spacing[i] for i in range(3) if i != axis]
    _, h, w = image.shape
    grid_spacing = (float(spacing[axis]), in_plane[0] * h / settings.size, in_plane[1] * w / settings.size)
    if label is not None:
        label = _resize_slices(np.moveaxis(label, axis, 0), settings.size, labels=n_labels)
    image = _resize_slices(image, settings.size)
    if settings.normalise == "volume":
        image = normalise_volume(image)
    return {"image": image, "label": label, "spacing": grid_spacing, "crop": [[b.start, b.stop] for b in box],
            **extra}


def _preprocess_one(dataset: str, root: str | None, modality: str, case_id: str,
                    settings: PreprocessSettings, keep_native: bool = False) -> dict[str, Any]:
    """One case of the cache; ``keep_native`` also returns its label volume on the canonical grid (test cases)."""
    adapter = get_dataset(dataset, root)
    case = adapter.load_case(modality, case_id)
    out = preprocess_volume(case.image, case.spacing, adapter.slice_axis, settings, case.label,
                            max(adapter.classes.values()) + 1)
    grid = case.stored_grid()
    out["native"] = {"shape": list(case.image.shape), "spacing": [float(s) for s in case.spacing],
                     "grid": grid.to_dict()}
    out["raw_shape"] = list(case.image.shape)
    out["native_label"] = case.label if keep_native else None
    return out


class SliceCache:
    """Read access to a built cache: per-modality slice arrays opened with ``mmap_mode="r"``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.index = json.loads((self.path / INDEX).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"The slice cache {self.path} is unreadable ({exc}); delete it and run again.") from None
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        # sent to a batch-drawing process by its path: the arrays are reopened there, memory-mapped
        return {"path": self.path, "index": self.index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.index, self._arrays = state["path"], state["index"], {}

    def array(self, modality: str, kind: str) -> np.ndarray:
        """``kind`` is "images" (float32) or "labels" (uint8), shape (slices, size, size)."""
        key = f"{modality}_{kind}"
        if key not in self._arrays:
            path = self.path / f"{key}.npy"
            try:
                self._arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"The slice cache file {path} is missing or corrupt ({exc}); delete {self.path} "
                                f"and run `python -m benchmark prepare` again.") from None
        return self._arrays[key]

    def case_info(self, modality: str, case_id: str) -> dict[str, Any]:
        try:
            return self.index["cases"][modality][case_id]
        except KeyError:
            raise DataError(f"Case {modality}/{case_id} is not in the slice cache {self.path}.") from None

    def slice_range(self, modality: str, case_id: str) -> range:
        info = self.case_info(modality, case_id)
        return range(info["start"], info["stop"])

    def native(self, modality: str, case_id: str) -> tuple[InverseMap, np.ndarray, tuple[float, ...]]:
        """A test case's inverse map, its label volume on the canonical native grid and that grid's spacing."""
        info = self.case_info(modality, case_id)
        path = self.path / NATIVE / f"{modality}_{case_id}.npy"
        try:
            label = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"The native label volume {path} of the slice cache is missing or corrupt ({exc}); "
                            f"delete {self.path} and run `python -m benchmark prepare` again.") from None
        inverse = InverseMap.from_index(info, self.index["slice_axis"], self.index["settings"]["size"])
        return inverse, label, tuple(info["native"]["spacing"])

    def volume(self, modality: str, case_id: str) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...]]:
        """Slices of one case (slices, H, W), its labels and its spacing (slice axis first)."""
        r = self.slice_range(modality, case_id)
        labels = self.array(modality, "labels")[r.start:r.stop] if self.index["has_labels"][modality] else None
        return np.asarray(self.array(modality, "images")[r.start:r.stop]), (
            None if labels is None else np.asarray(labels)), tuple(self.case_info(modality, case_id)["spacing"])


def cache_key(adapter, settings: PreprocessSettings) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "dataset": adapter.name, "version": adapter.version,
                       "split": adapter.split,
                       "root": str(adapter.root.resolve()) if adapter.root else None,
                       "classes": adapter.classes, "slice_axis": adapter.slice_axis,
                       "fingerprint": adapter.fingerprint(),
                       "settings": settings.resolve(adapter).key()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(adapter, settings: PreprocessSettings, root: Path | None = None) -> Path:
    return (root or cache_root()) / adapter.name / cache_key(adapter, settings)


def prepare(adapter, settings: PreprocessSettings, *, root: Path | None = None, workers: int | None = None,
            log=print) -> SliceCache:
    """Build the slice cache for ``adapter`` once (returns the existing one when present)."""
    settings = settings.resolve(adapter)
    final = cache_path(adapter, settings, root)
    if (final / INDEX).exists():
        return SliceCache(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(m, c, s) for m in adapter.modalities for s in ("train", "test") for c in adapter.cases(m, s)]
    workers = workers or min(len(jobs), max(1, (os.cpu_count() or 1)))
    log(f"Preparing the {adapter.name} slice cache ({len(jobs)} volumes, {settings.size}x{settings.size} slices, "
        f"{workers} processes) in {final}")
    args = [(adapter.name, str(adapter.root) if adapter.root else None, m, c, settings, s == "test")
            for m, c, s in jobs]
    results = process_map(_preprocess_one, args, workers)

    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        index: dict[str, Any] = {"dataset": adapter.name, "version": adapter.version, "settings": settings.key(),
                                 "format": CACHE_FORMAT, "slice_axis": adapter.slice_axis,
                                 "classes": adapter.classes, "cases": {}, "stats": {}, "has_labels": {}}
        (tmp / NATIVE).mkdir()
        for modality in adapter.modalities:
            entries = [(c, s, r) for (m, c, s), r in zip(jobs, results) if m == modality]
            train = [r["image"] for _, s, r in entries if s == "train"]
            if not train:
                raise DataError(f"{adapter.name}: modality {modality!r} has no training volumes in its split.")
            if settings.normalise == "modality":
                flat = np.concatenate([t.ravel() for t in train]).astype(np.float64)
                mean, std = float(flat.mean()), float(flat.std()) or 1.0
            else:  # per volume (done in _preprocess_one) or not at all
                mean, std = 0.0, 1.0
            index["stats"][modality] = {"mean": mean, "std": std}
            has_labels = all(r["label"] is not None for _, _, r in entries)
            index["has_labels"][modality] = has_labels
            images = np.concatenate([(r["image"] - mean) / std for _, _, r in entries]).astype(np.float32)
            np.save(tmp / f"{modality}_images.npy", images)
            if has_labels:
                np.save(tmp / f"{modality}_labels.npy", np.concatenate([r["label"] for _, _, r in entries]))
            cases, start = {}, 0
            for c, s, r in entries:
                n = r["image"].shape[0]
                cases[c] = {"start": start, "stop": start + n, "split": s, "spacing": r["spacing"],
                            "raw_shape": r["raw_shape"], "crop": r["crop"], "native": r["native"],
                            **{k: r[k] for k in ("label_voxels_outside_crop",) if k in r}}
                if r["native_label"] is not None:
                    np.save(tmp / NATIVE / f"{modality}_{c}.npy", np.ascontiguousarray(r["native_label"]))
                if r.get("label_voxels_outside_crop"):
                    log(f"Warning: the crop of {modality} case {c} leaves out {r['label_voxels_outside_crop']} "
                        f"labelled voxels; a model never sees them, and on a test volume they count as missed.")
                start += n
            index["cases"][modality] = cases
        (tmp / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / INDEX).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same cache first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SliceCache(final)
