"""Training batches from the slice cache, one per step, for the streams a method reads.

Every stream is a set of volumes (which ones is the protocol's rule, :mod:`benchmark.streams`); a batch draws
slices uniformly from that set's slices. Labels are returned only
for the labeled streams, and target test volumes are never part of any stream. The draw and the augmentation of
step ``t`` depend only on ``(seed, t, stream)``, which makes a resumed run identical to an uninterrupted one
and keeps a stream's batches independent of which other streams a method asks for.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch

from .cache import SliceCache
from .protocol import derive_seed
from .streams import STREAMS, Batch, Stream


def build_augmentation(strength: str = "standard"):
    """Albumentations pipeline for 2D slices (geometric + mild intensity); ``"none"`` disables it."""
    import albumentations as A

    if strength == "none":
        return None
    return A.Compose([
        A.Affine(scale=(0.9, 1.1), rotate=(-15, 15), translate_percent=(-0.06, 0.06), shear=(-5, 5),
                 interpolation=1, mask_interpolation=0, border_mode=0, fill=0, fill_mask=0, p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.15, p=0.5),
        A.GaussNoise(std_range=(0.0, 0.05), p=0.3),
    ], seed=0)


class BatchSampler:
    """Draws the batch for step ``t`` of a trial from the streams a method needs."""

    def __init__(self, cache: SliceCache, streams: dict[str, Stream], batch_size: int, seed: int,
                 augment: str = "standard", exclude: dict[str, np.ndarray] | None = None):
        for name, stream in streams.items():
            if name not in STREAMS:
                raise ValueError(f"Unknown stream {name!r}; streams are {', '.join(STREAMS)}.")
            if not stream.cases:
                raise ValueError(f"Stream {name!r} has no volumes.")
        #: The slice indices (into the modality's cache arrays) each stream draws from.
        self.slices = {name: np.concatenate([np.arange(r.start, r.stop) for r in
                                             (cache.slice_range(stream.modality, c) for c in stream.cases)])
                       for name, stream in streams.items()}
        # slices held out of training (a selection study's source-val slices) leave every stream of their modality
        for name, stream in streams.items():
            if exclude and stream.modality in exclude:
                self.slices[name] = np.setdiff1d(self.slices[name], exclude[stream.modality])
        self.cache, self.streams, self.batch_size, self.seed = cache, streams, batch_size, seed
        self.strength = augment
        # an albumentations pipeline is reseeded before each draw, so each drawing thread needs its own
        self._pipelines = threading.local()
        self._pipelines.augment = build_augmentation(augment)  # the constructing thread's, built (and checked) now

    def _pipeline(self):
        """This thread's augmentation pipeline, built on its first draw (``None`` without augmentation)."""
        if not hasattr(self._pipelines, "augment"):
            self._pipelines.augment = build_augmentation(self.strength)
        return self._pipelines.augment

    def batch(self, step: int) -> Batch:
        """The batch of ``step``: a function of ``(seed, step)`` alone, safe to draw from several threads at once."""
        out = Batch()
        augment = self._pipeline()
        for name, stream in self.streams.items():
            # each stream draws from its own generator, so adding a stream never changes another's batches
            rng = np.random.default_rng(derive_seed("batch", self.seed, step, name))
            if augment is not None:
                augment.set_random_seed(derive_seed("augment", self.seed, step, name))
            slices = self.slices[name]
            idx = np.sort(rng.choice(slices, size=self.batch_size, replace=len(slices) < self.batch_size))
            images = np.asarray(self.cache.array(stream.modality, "images")[idx], dtype=np.float32)
            labels = (np.asarray(self.cache.array(stream.modality, "labels")[idx], dtype=np.uint8)
                      if STREAMS[name] else None)
            images, labels = self._augment(augment, images, labels)
            setattr(out, f"{name}_x", torch.from_numpy(images[:, None]))
            if labels is not None:
                setattr(out, f"{name}_y", torch.from_numpy(labels.astype(np.int64)))
        return out

    @staticmethod
    def _augment(augment, images: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        if augment is None:
            return images, labels
        out_x, out_y = np.empty_like(images), None if labels is None else np.empty_like(labels)
        for i in range(len(images)):
            if labels is None:
                out_x[i] = augment(image=images[i])["image"]
            else:
                res = augment(image=images[i], mask=labels[i])
                out_x[i], out_y[i] = res["image"], res["mask"]
        return out_x, out_y


class Prefetcher:
    """The batches of steps ``start, start + 1, ...`` drawn ``depth`` steps ahead of the loop by ``workers``
    background threads.

    The sampler's step ``t`` depends only on ``(seed, t, stream)``, and each thread augments with its own pipeline,
    so every batch is the one :meth:`BatchSampler.batch` returns for that step, with or without prefetching and
    with any number of workers (they draw different steps at once; the loop takes them in order). The threads touch
    no torch random state (the loop's per-step seeding is unchanged). ``pin_memory`` pins each batch for an
    asynchronous copy to a GPU. ``depth=0`` draws in the caller's thread (``workers`` is then unused). Use it as a
    context manager: on exit the pending draws are cancelled and the threads are joined, also when the loop raised.
    """

    def __init__(self, sampler: BatchSampler, start: int, total: int, depth: int = 2, pin_memory: bool = False,
                 workers: int = 1):
        if depth < 0:
            raise ValueError(f"prefetch depth must be at least 0, not {depth}.")
        if depth and workers < 1:
            raise ValueError(f"prefetch workers must be at least 1 to draw ahead, not {workers}.")
        self.sampler, self.total, self.depth, self.pin_memory = sampler, total, depth, pin_memory
        self._next = start
        self._pending: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fsuda-batches") if depth else None

    def _draw(self, step: int) -> Batch:
        batch = self.sampler.batch(step)
        if self.pin_memory:
            batch = Batch(**{k: (None if v is None else v.pin_memory()) for k, v in vars(batch).items()})
        return batch

    def batch(self, step: int) -> Batch:
        """The batch of ``step`` (steps are asked for in order); queues the next ``depth`` steps' draws."""
        if self._pool is None:
            return self._draw(step)
        for stale in [k for k in self._pending if k < step]:
            self._pending.pop(stale).cancel()
        self._next = max(self._next, step)
        while self._next < min(step + 1 + self.depth, self.total):
            self._pending[self._next] = self._pool.submit(self._draw, self._next)
            self._next += 1
        future = self._pending.pop(step, None)
        return self._draw(step) if future is None else future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
