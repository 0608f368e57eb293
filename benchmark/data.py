"""Training batches from the slice cache, one per step, for the streams a method reads.

Every stream is a set of volumes (which ones is the protocol's rule, :mod:`benchmark.streams`); a batch draws
slices uniformly from that set's slices. Labels are returned only
for the labeled streams, and target test volumes are never part of any stream. The draw and the augmentation of
step ``t`` depend only on ``(seed, t, stream)``, which makes a resumed run identical to an uninterrupted one
and keeps a stream's batches independent of which other streams a method asks for.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import warnings

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch
import torch.utils.data

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

    def __getstate__(self) -> dict:
        # a drawing process builds its own augmentation pipeline, as a drawing thread does
        return {k: v for k, v in vars(self).items() if k != "_pipelines"}

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self._pipelines = threading.local()

    def _pipeline(self):
        """This thread's augmentation pipeline, built on its first draw (``None`` without augmentation)."""
        if not hasattr(self._pipelines, "augment"):
            self._pipelines.augment = build_augmentation(self.strength)
        return self._pipelines.augment

    def batch(self, step: int, shared: bool = False) -> Batch:
        """The batch of ``step``: a function of ``(seed, step)`` alone, safe to draw from several threads at once.

        ``shared`` is the form a drawing process sends: written straight into shared memory (so sending it copies
        nothing), with uint8 labels (an eighth of the bytes), which :meth:`Batch.to` widens to int64 on the
        device they are moved to.
        """
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
            x = _empty((len(idx), 1, *images.shape[1:]), torch.float32, shared)
            y = None if labels is None else _empty(labels.shape, torch.uint8, shared)
            self._augment(augment, images, labels, x.numpy()[:, 0], None if y is None else y.numpy())
            setattr(out, f"{name}_x", x)
            if y is not None:
                setattr(out, f"{name}_y", y if shared else y.long())
        return out

    @staticmethod
    def _augment(augment, images: np.ndarray, labels: np.ndarray | None, out_x: np.ndarray,
                 out_y: np.ndarray | None) -> None:
        """Augments slice by slice into ``out_x`` / ``out_y``."""
        if augment is None:
            out_x[...] = images
            if labels is not None:
                out_y[...] = labels
            return
        for i in range(len(images)):
            if labels is None:
                out_x[i] = augment(image=images[i])["image"]
            else:
                res = augment(image=images[i], mask=labels[i])
                out_x[i], out_y[i] = res["image"], res["mask"]


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype).share_memory_() if shared else torch.empty(shape, dtype=dtype)


class _Steps(torch.utils.data.Dataset):
    """The sampler's batch of step ``t`` as item ``t``, in the form a DataLoader worker sends back and pins."""

    def __init__(self, sampler: BatchSampler):
        self.sampler = sampler

    def __getitem__(self, step: int) -> dict[str, torch.Tensor | None]:
        return vars(self.sampler.batch(int(step), shared=True))


def _init_worker(_: int) -> None:
    """A drawing process has one core: OpenCV (albumentations' warps) would otherwise start a thread per core."""
    import cv2

    cv2.setNumThreads(1)


def _worker_context():
    """``forkserver`` (spawn where unavailable): a worker starts from a clean process, not a fork of a trial that
    runs Ray's and torch's threads; the server preloads this module, so a worker does not import torch again.
    The sampler travels to it pickled (the cache by its path, reopened there memory-mapped)."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload([__name__])
    return ctx


class Prefetcher:
    """The batches of steps ``start, start + 1, ..., total - 1``, drawn ``depth`` steps ahead of the loop by
    ``workers`` background processes (a :class:`torch.utils.data.DataLoader` over the steps).

    The sampler's step ``t`` depends only on ``(seed, t, stream)``, so every batch is the one
    :meth:`BatchSampler.batch` returns for that step, with or without prefetching and with any number of workers
    (they draw different steps at once; the loader hands them over in order). Processes, not threads: the
    per-slice augmentation holds the GIL for part of each draw, so drawing threads stop scaling after a few
    cores, while processes scale with the cores a trial is given (a batch reaches the loop through shared
    memory, at a small cost per batch). A script that trains through this API must guard its entry point with
    ``if __name__ == "__main__":``, as for any :mod:`multiprocessing` code. The loader draws its workers' base
    seed from a generator of its own, so the trial's torch random state is untouched. ``pin_memory`` pins each
    batch for an asynchronous copy to a GPU. ``depth=0`` draws in the caller's thread (``workers`` is then
    unused). Use it as a context manager: on exit the workers are stopped, also when the loop raised. A worker
    that fails is replaced by drawing in the caller's process, which raises the error itself (or, after a crash
    of the worker alone, draws the same batches and warns).
    """

    def __init__(self, sampler: BatchSampler, start: int, total: int, depth: int = 2, pin_memory: bool = False,
                 workers: int = 1):
        if depth < 0:
            raise ValueError(f"prefetch depth must be at least 0, not {depth}.")
        if depth and workers < 1:
            raise ValueError(f"prefetch workers must be at least 1 to draw ahead, not {workers}.")
        self.sampler, self.total, self.depth, self.pin_memory = sampler, total, depth, pin_memory
        self._next = start
        self._batches = None
        if depth and start < total:
            loader = torch.utils.data.DataLoader(
                _Steps(sampler), batch_size=None, sampler=range(start, total), num_workers=workers,
                prefetch_factor=max(1, -(-depth // workers)), pin_memory=pin_memory, worker_init_fn=_init_worker,
                multiprocessing_context=_worker_context(), generator=torch.Generator())
            self._batches = iter(loader)

    def _draw(self, step: int) -> Batch:
        batch = self.sampler.batch(step)
        if self.pin_memory:
            batch = Batch(**{k: (None if v is None else v.pin_memory()) for k, v in vars(batch).items()})
        return batch

    def batch(self, step: int) -> Batch:
        """The batch of ``step``; steps are asked for in order, each once."""
        if step != self._next or step >= self.total:
            raise ValueError(f"The prefetcher hands out steps {self._next} to {self.total - 1} in order; "
                             f"step {step} was asked for.")
        self._next += 1
        if self._batches is None:
            return self._draw(step)
        try:
            return Batch(**next(self._batches))
        except Exception as exc:  # a worker's error or crash: draw here, which raises the error without the wrapper
            self.close()
            batch = self._draw(step)
            warnings.warn(f"A batch-drawing worker failed at step {step} ({type(exc).__name__}); the trial draws "
                          f"its batches in its own process from here on (the same batches).", RuntimeWarning,
                          stacklevel=2)
            return batch

    def close(self) -> None:
        """Stop the workers (dropping the loader's iterator shuts them down and joins them)."""
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
