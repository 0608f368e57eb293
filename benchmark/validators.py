"""Checkpoint scores for model selection: held-out source Dice and three label-free validators.

A *study* trial (one whose :class:`benchmark.protocol.TrialSpec` sets ``validation``) holds out a fixed, seeded
share of the slices of its K labeled source volumes (:func:`holdout_slices`; no training batch ever contains
them) and scores its model every ``every`` steps with :class:`CandidateScorer`:

* ``source-val``: Dice of the held-out labeled source slices, per foreground structure over all of them pooled,
  averaged over the structures present, the one label-based rule legal in unsupervised adaptation;
* ``entropy``: minus the mean per-pixel prediction entropy on a fixed seeded subset of target *training* slices
  (higher is better, as for every score here);
* ``im``: information maximisation, the entropy of the mean prediction minus the mean per-pixel entropy (Shi and
  Sha, ICML 2012; as a validator in Musgrave et al., "Benchmarking Validation Methods for Unsupervised Domain
  Adaptation", 2022);
* ``snd``: soft neighbourhood density (Saito et al., "Tune it the Right Way", ICCV 2021): the mean entropy of each
  sample's softmax over its similarities to the other samples, with L2-normalised class-probability vectors as
  the samples and temperature 0.05.

Deliberate differences: segmentation has pixels, not images, as samples, so ``snd`` takes a fixed seeded subset of
:data:`SND_PIXELS` target pixels (its similarity matrix is quadratic in the samples), and ``entropy`` and ``im``
average over every pixel of the target subset. Each candidate's target *test* metrics are recorded beside its
scores, for ``oracle-target`` (an upper bound, never a result) and for validator-quality tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .protocol import _seeded_rng

#: Target training slices scored by the label-free validators (a fixed seeded subset; all if fewer).
TARGET_SLICES = 64
#: Target pixels (from those slices) that soft neighbourhood density compares pairwise.
SND_PIXELS = 1024
SND_TEMPERATURE = 0.05
#: Share of each labeled source volume's slices held out for ``source-val`` when a run asks for a study.
DEFAULT_HOLDOUT = 0.2
_EPS = 1e-12


def holdout_slices(cache, modality: str, cases: list[str], share: float, seed: int, dataset: str) -> np.ndarray:
    """The cache indices of the held-out ``source-val`` slices of ``cases`` (sorted): per volume
    ``round(share * n)`` slices, at least one and never all, chosen by ``(dataset, modality, case, seed)``."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"The source-val share must lie strictly between 0 and 1, not {share}.")
    held = []
    for case in cases:
        r = cache.slice_range(modality, case)
        n = len(r)
        if n < 2:
            raise ValueError(f"Labeled volume {modality}/{case} has {n} slice(s): none can be held out for "
                             f"source-val while it still trains.")
        k = min(n - 1, max(1, int(round(share * n))))
        pick = _seeded_rng("source-val", dataset, modality, case, seed).choice(n, size=k, replace=False)
        held.append(r.start + np.sort(pick))
    return np.sort(np.concatenate(held)).astype(np.int64)


def entropy_score(probs: np.ndarray) -> float:
    """Minus the mean per-pixel entropy (nats) of class probabilities ``(N, C, ...)``."""
    p = np.moveaxis(np.asarray(probs, dtype=np.float64), 1, -1).reshape(-1, probs.shape[1])
    return float(np.mean(np.sum(p * np.log(p + _EPS), axis=1)))


def im_score(probs: np.ndarray) -> float:
    """Information maximisation: entropy of the mean prediction minus the mean per-pixel entropy."""
    p = np.moveaxis(np.asarray(probs, dtype=np.float64), 1, -1).reshape(-1, probs.shape[1])
    mean = p.mean(axis=0)
    return float(-np.sum(mean * np.log(mean + _EPS)) + np.mean(np.sum(p * np.log(p + _EPS), axis=1)))


def snd_score(samples: np.ndarray, temperature: float = SND_TEMPERATURE) -> float:
    """Soft neighbourhood density of ``samples`` (M, C): L2-normalise, cosine similarities without the diagonal,
    a row-wise softmax at ``temperature``, the mean row entropy."""
    x = np.asarray(samples, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
    sim = x @ x.T / temperature
    np.fill_diagonal(sim, -np.inf)
    sim -= sim.max(axis=1, keepdims=True)
    w = np.exp(sim)
    w /= w.sum(axis=1, keepdims=True)
    return float(np.mean(-np.sum(w * np.log(w + _EPS), axis=1)))


def pooled_dice(pred: np.ndarray, label: np.ndarray, num_classes: int) -> float:
    """Mean over the foreground structures present (in the label or the prediction) of the Dice of all the given
    slices pooled; NaN when no slice shows any structure."""
    scores = []
    for c in range(1, num_classes):
        p, t = pred == c, label == c
        denom = p.sum() + t.sum()
        if denom:
            scores.append(2.0 * np.logical_and(p, t).sum() / denom)
    return float(np.mean(scores)) if scores else float("nan")


class CandidateScorer:
    """Scores a model on the held-out source slices and a fixed subset of target training slices."""

    def __init__(self, cache, source: str, target: str, target_cases: list[str], held_out: np.ndarray,
                 num_classes: int, seed: int, dataset: str, batch_size: int):
        self.num_classes, self.batch_size = num_classes, batch_size
        self.source_x = np.asarray(cache.array(source, "images")[held_out], dtype=np.float32)
        self.source_y = np.asarray(cache.array(source, "labels")[held_out], dtype=np.int64)
        pool = np.concatenate([np.arange(cache.slice_range(target, c).start, cache.slice_range(target, c).stop)
                               for c in target_cases])
        rng = _seeded_rng("validators", dataset, target, seed)
        chosen = np.sort(rng.choice(pool, size=min(TARGET_SLICES, len(pool)), replace=False))
        self.target_x = np.asarray(cache.array(target, "images")[chosen], dtype=np.float32)
        n_pixels = self.target_x.size
        self.snd_pixels = np.sort(rng.choice(n_pixels, size=min(SND_PIXELS, n_pixels), replace=False))

    @torch.no_grad()
    def _probs(self, method, images: np.ndarray, device: torch.device) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(images[i:i + self.batch_size])[:, None].to(device)
            out.append(torch.softmax(method.infer(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out)

    def score(self, method, device: torch.device) -> dict[str, Any]:
        """``{"source-val", "entropy", "im", "snd"}`` of ``method`` now (evaluation mode; torch's random state is
        left as it was, so scoring never changes the training that follows)."""
        was_training = method.training
        method.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                src = self._probs(method, self.source_x, device)
                tgt = self._probs(method, self.target_x, device)
        finally:
            method.train(was_training)
        flat = np.moveaxis(tgt, 1, -1).reshape(-1, tgt.shape[1])[self.snd_pixels]
        return {"source-val": pooled_dice(src.argmax(1), self.source_y, self.num_classes),
                "entropy": entropy_score(tgt), "im": im_score(tgt), "snd": snd_score(flat)}


__all__ = ["holdout_slices", "entropy_score", "im_score", "snd_score", "pooled_dice", "CandidateScorer",
           "DEFAULT_HOLDOUT"]
