"""Uncertainty and significance statistics for leaderboard rows: hierarchical bootstrap intervals, paired tests,
Holm adjustment and bootstrap rank stability.

What and why
------------
A leaderboard row aggregates trials: one trial per seed, each scored on the same target test volumes. Mean +- std
over a handful of seeds does not tell a reader which differences between methods are noise. The functions here
turn the per-(seed, volume) scores of one metric into

* a confidence interval for a method's mean (:func:`hierarchical_ci`),
* a paired comparison of two methods on the same (seed, volume) grid: mean difference, its interval and a
  Wilcoxon signed-rank p-value (:func:`paired_comparison`),
* Holm-Bonferroni adjusted p-values for a family of comparisons (:func:`holm`),
* bootstrap rank stability of several methods, with the rank samples for a "blob plot" (:func:`bootstrap_ranks`).

Ranking many methods by a single mean and reading small gaps as meaningful is the failure mode documented by
Maier-Hein et al., "Why rankings of biomedical image analysis competitions should be interpreted with care",
Nat. Commun. 9:5217 (2018); the bootstrap rank analysis and blob plot follow challengeR: Wiesenfarth et al.,
"Methods and open-source toolkit for analyzing and visualizing challenge results", Sci. Rep. 11:2369 (2021).
Multiple comparisons are adjusted with Holm, "A simple sequentially rejective multiple test procedure",
Scand. J. Stat. 6:65-70 (1979). The two-level resampling is the hierarchical bootstrap, e.g. Saravanan, Berman &
Sober, "Application of the hierarchical bootstrap to multi-level data in neuroscience", Neurons, Behavior, Data
analysis and Theory 3(5) (2020).

Input convention
----------------
Every statistic takes 2-D float arrays ``values[seed_index, volume_index]`` of one metric (per volume already
averaged over structures, or for one structure). All methods of a board share splits and test volumes, so two
arrays of the same shape are *paired* entry by entry: row ``i`` is the same seed, column ``j`` the same test
volume. :func:`pair_arrays` builds such aligned arrays from ``(seed, case) -> value`` mappings. Empty arrays and
non-finite entries (NaN, inf) raise :class:`ValueError`; the suite's metrics are always finite (an empty mask gets
a finite distance by convention), so a non-finite value signals a bug upstream rather than a score.

Deliberate choices
------------------
* **Two-level resampling.** Scores from one seed share one trained model, so the volumes of a seed are not
  independent draws; resampling all (seed, volume) pairs as if they were would understate the uncertainty that
  comes from training. Each bootstrap replicate resamples seeds with replacement and then, independently within
  every resampled seed, the volumes with replacement. With one seed only the volumes are resampled (the seed level
  then contributes no variability, and the interval is about that one model).
* **Percentile intervals.** The percentile interval is the standard companion of the hierarchical bootstrap.
  ``scipy.stats.bootstrap`` (which offers BCa) resamples a single level only, so it cannot be used here. With very
  few seeds every bootstrap interval is only approximate; read it as a guide, not a guarantee.
* **Wilcoxon over all pairs.** :func:`paired_comparison` reports the two-sided Wilcoxon signed-rank test over all
  (seed, volume) pairs. That test treats the pairs as independent, which pairs from one seed's model are not
  fully; the hierarchical interval of the mean difference is the statistic that respects both levels. Both are
  reported so that a reader can see when they disagree.
* **Shared resampling for ranks.** Each replicate of :func:`bootstrap_ranks` draws one set of indices shared by all
  methods, keeping the pairing, as challengeR does. Ranks are 1 = best; ties take the minimum rank.
* **Determinism.** Every random function takes ``rng`` (a :class:`numpy.random.Generator`, or an integer seed for
  one); the result is a pure function of the inputs and the generator state. ``rng=None`` is refused, so a result
  can never silently depend on fresh entropy.
* **Vectorised.** Replicates are drawn as index arrays of shape ``(n_boot, n_seeds, n_volumes)``; for
  leaderboard sizes (a few seeds, tens of volumes, a few thousand replicates) a call takes milliseconds.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import scipy.stats

__all__ = [
    "bootstrap_ranks",
    "hierarchical_bootstrap_means",
    "hierarchical_ci",
    "holm",
    "paired_comparison",
    "pair_arrays",
]


# ---------------------------------------------------------------------------------------------------------------
# validation helpers


def _as_grid(values, name: str = "values") -> np.ndarray:
    """``values`` as a finite, non-empty 2-D float64 array (seeds x volumes), or ValueError."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array values[seed, volume]; got {arr.ndim} dimension(s), "
                         f"shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); need at least one seed and one volume")
    if np.isnan(arr).any():
        bad = [tuple(int(i) for i in ix) for ix in np.argwhere(np.isnan(arr))[:5]]
        raise ValueError(f"{name} contains NaN at [seed, volume] index {bad}"
                         f"{' ...' if np.isnan(arr).sum() > 5 else ''}")
    if not np.isfinite(arr).all():
        bad = [tuple(int(i) for i in ix) for ix in np.argwhere(~np.isfinite(arr))[:5]]
        raise ValueError(f"{name} contains inf at [seed, volume] index {bad}")
    return arr


def _rng(rng) -> np.random.Generator:
    if rng is None:
        raise ValueError("rng is required (a numpy.random.Generator or an integer seed) so that results are "
                         "reproducible")
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator or an integer seed, not {type(rng).__name__}")


def _check_n_boot(n_boot) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    return int(n_boot)


def _check_confidence(confidence) -> float:
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return c


def _draw_indices(n_seeds: int, n_volumes: int, n_boot: int, rng: np.random.Generator):
    """Hierarchical resampling indices: seeds ``(n_boot, n_seeds, 1)`` then volumes ``(n_boot, n_seeds, n_volumes)``.

    ``grid[seed_idx, vol_idx]`` has shape ``(n_boot, n_seeds, n_volumes)``: replicate ``r`` row ``i`` is resampled
    seed ``seed_idx[r, i]`` with its own independently resampled volumes. With one seed the seed level is not drawn.
    """
    if n_seeds == 1:
        seed_idx = np.zeros((n_boot, 1, 1), dtype=np.intp)
    else:
        seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds, 1), dtype=np.intp)
    vol_idx = rng.integers(0, n_volumes, size=(n_boot, n_seeds, n_volumes), dtype=np.intp)
    return seed_idx, vol_idx


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(samples, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------------------------
# bootstrap of one array


def hierarchical_bootstrap_means(values, n_boot: int, rng) -> np.ndarray:
    """Hierarchical bootstrap replicates of the grand mean of ``values[seed, volume]``.

    Each replicate resamples the seeds (rows) with replacement, then, independently within each resampled seed,
    the volumes (columns) with replacement, and returns the mean over all resampled entries. With one seed only
    the volumes are resampled. Returns an array of shape ``(n_boot,)``. Deterministic given ``rng``.
    """
    grid = _as_grid(values)
    n_boot = _check_n_boot(n_boot)
    gen = _rng(rng)
    seed_idx, vol_idx = _draw_indices(grid.shape[0], grid.shape[1], n_boot, gen)
    return grid[seed_idx, vol_idx].mean(axis=(1, 2))


def hierarchical_ci(values, *, confidence: float = 0.95, n_boot: int = 2000, rng) -> tuple[float, float]:
    """Percentile confidence interval ``(low, high)`` of the mean of ``values[seed, volume]``.

    The interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles (linear interpolation) of
    :func:`hierarchical_bootstrap_means`. The percentile interval is the standard choice for the hierarchical
    bootstrap; ``scipy.stats.bootstrap`` (BCa and friends) resamples one level only and so cannot be used for
    (seed, volume) data.
    """
    confidence = _check_confidence(confidence)
    boots = hierarchical_bootstrap_means(values, n_boot, rng)
    return _percentile_interval(boots, confidence)


# ---------------------------------------------------------------------------------------------------------------
# paired comparison and multiplicity


def paired_comparison(a, b, *, confidence: float = 0.95, n_boot: int = 2000, rng) -> dict:
    """Compare two methods scored on the same (seed, volume) grid.

    ``a`` and ``b`` are same-shape arrays ``[seed, volume]``, paired entry by entry. Returns a dict with

    ``diff``
        mean of ``a - b`` (positive: ``a`` is larger; whether that is better depends on the metric);
    ``ci_low``, ``ci_high``
        percentile interval of the hierarchical bootstrap (:func:`hierarchical_ci`) of the paired differences
        ``a - b``;
    ``p_value``
        two-sided Wilcoxon signed-rank test of ``a.ravel()`` against ``b.ravel()`` (``scipy.stats.wilcoxon`` with
        its defaults, so ``zero_method="wilcox"`` drops zero differences). When every difference is zero the
        p-value is 1.0 (scipy would reject that input);
    ``n_pairs``
        number of (seed, volume) pairs, zero differences included.

    The Wilcoxon test treats all pairs as independent, which pairs from one seed's model are not fully, so its
    p-value is optimistic when seeds differ much; the hierarchical interval is the statistic that respects the two
    levels.
    """
    ga = _as_grid(a, "a")
    gb = _as_grid(b, "b")
    if ga.shape != gb.shape:
        raise ValueError(f"a and b must have the same shape [seed, volume] to be paired; got {ga.shape} and "
                         f"{gb.shape}")
    confidence = _check_confidence(confidence)
    d = ga - gb
    low, high = hierarchical_ci(d, confidence=confidence, n_boot=n_boot, rng=rng)
    if np.all(d == 0.0):
        p = 1.0
    else:
        p = float(scipy.stats.wilcoxon(ga.ravel(), gb.ravel()).pvalue)
    return {"diff": float(d.mean()), "ci_low": low, "ci_high": high, "p_value": p, "n_pairs": int(d.size)}


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the order given.

    With the ``m`` non-NaN p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the
    ``i``-th (1-based) is ``min(1, max_{j <= i} (m - j + 1) p_(j))``: step-down and monotone non-decreasing in the
    sorted order. NaN entries are returned as NaN and do not count in ``m``. Accepts any shape; the result has the
    input's shape. Raw p-values outside [0, 1] raise ValueError.
    """
    p = np.asarray(p_values, dtype=np.float64)
    flat = p.ravel()
    out = np.full(flat.shape, np.nan)
    keep = np.flatnonzero(~np.isnan(flat))
    raw = flat[keep]
    if raw.size and ((raw < 0.0) | (raw > 1.0)).any():
        raise ValueError(f"p-values must lie in [0, 1]; got {raw[(raw < 0.0) | (raw > 1.0)].tolist()}")
    m = raw.size
    if m:
        order = np.argsort(raw, kind="stable")
        scaled = (m - np.arange(m)) * raw[order]
        adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
        out[keep[order]] = adjusted
    return out.reshape(p.shape)


# ---------------------------------------------------------------------------------------------------------------
# ranking


def bootstrap_ranks(values_by_name: Mapping[str, np.ndarray], *, higher_is_better: bool = True,
                    n_boot: int = 2000, confidence: float = 0.95, rng) -> dict:
    """Bootstrap rank stability of several methods (challengeR's bootstrap ranking).

    ``values_by_name`` maps each method to its ``[seed, volume]`` array; all arrays have the same shape and are
    aligned (same seeds, same volumes). Each replicate draws ONE set of hierarchical indices (seeds, then volumes
    within each seed, as in :func:`hierarchical_bootstrap_means`) shared by all methods, computes each method's
    mean and ranks the methods: rank 1 is best (largest mean when ``higher_is_better``, else smallest); ties get
    the minimum rank (``scipy.stats.rankdata(method="min")``). Only exactly equal means tie.

    Returns ``{"rank": {name: observed rank}, "low": {...}, "high": {...}, "samples": {name: ranks}}``: the
    observed rank comes from the observed means; ``samples[name]`` is an integer array ``(n_boot,)`` of ranks in
    ``1..k`` (input for a blob plot); ``low`` and ``high`` are the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` percentiles of the samples, taken with ``method="lower"`` and ``method="higher"`` so
    that they are ranks that occurred and the interval errs on the wide side. All ranks are Python ints.
    """
    if not values_by_name:
        raise ValueError("values_by_name is empty; need at least one method")
    names = list(values_by_name)
    grids = [_as_grid(values_by_name[n], f"values_by_name[{n!r}]") for n in names]
    shapes = {g.shape for g in grids}
    if len(shapes) != 1:
        detail = ", ".join(f"{n!r}: {g.shape}" for n, g in zip(names, grids))
        raise ValueError(f"all arrays must have the same shape [seed, volume] to be ranked together; got {detail}")
    n_boot = _check_n_boot(n_boot)
    confidence = _check_confidence(confidence)
    gen = _rng(rng)

    stack = np.stack(grids)  # (k, seeds, volumes)
    n_seeds, n_volumes = stack.shape[1:]
    seed_idx, vol_idx = _draw_indices(n_seeds, n_volumes, n_boot, gen)
    # (k, n_boot, seeds, volumes) -> (n_boot, k); every method is reduced along the same path, so identical
    # arrays give bit-identical means and tie exactly.
    boot_means = stack[:, seed_idx, vol_idx].mean(axis=(2, 3)).T
    sign = -1.0 if higher_is_better else 1.0
    boot_ranks = scipy.stats.rankdata(sign * boot_means, method="min", axis=1).astype(np.int64)
    observed = scipy.stats.rankdata(sign * stack.mean(axis=(1, 2)), method="min").astype(np.int64)

    alpha = 1.0 - confidence
    low = np.percentile(boot_ranks, 100.0 * alpha / 2.0, axis=0, method="lower")
    high = np.percentile(boot_ranks, 100.0 * (1.0 - alpha / 2.0), axis=0, method="higher")
    return {
        "rank": {n: int(r) for n, r in zip(names, observed)},
        "low": {n: int(v) for n, v in zip(names, low)},
        "high": {n: int(v) for n, v in zip(names, high)},
        "samples": {n: boot_ranks[:, i].copy() for i, n in enumerate(names)},
    }


# ---------------------------------------------------------------------------------------------------------------
# alignment


def pair_arrays(a: Mapping[tuple[int, str], float],
                b: Mapping[tuple[int, str], float]) -> tuple[np.ndarray, np.ndarray]:
    """Aligned ``(seeds x volumes)`` arrays from two ``(seed, case) -> value`` mappings.

    Keeps the (seed, case) pairs both mappings have. Seeds present in only one mapping are dropped; every kept
    seed must then keep the same set of cases, otherwise the grid would be unbalanced and ValueError names the
    missing (seed, case) entries and which mapping lacks them. Cases present in neither mapping for any kept seed
    simply do not appear. Rows are the kept seeds sorted, columns the kept cases sorted. Raises ValueError when
    nothing is shared.
    """
    common = set(a) & set(b)
    seeds = sorted({s for s, _ in a} & {s for s, _ in b})
    if not seeds or not common:
        raise ValueError(f"a and b share no (seed, case) pairs (seeds in a: {sorted({s for s, _ in a})}, "
                         f"seeds in b: {sorted({s for s, _ in b})})")
    cases_by_seed = {s: {c for s2, c in common if s2 == s} for s in seeds}
    all_cases = sorted(set().union(*cases_by_seed.values()))
    missing = []
    for s in seeds:
        for c in all_cases:
            if c not in cases_by_seed[s]:
                in_a, in_b = (s, c) in a, (s, c) in b
                where = "a and b" if not (in_a or in_b) else ("a" if not in_a else "b")
                missing.append(f"(seed {s}, case {c!r}) missing from {where}")
    if missing:
        raise ValueError("unbalanced grid: after intersecting a and b every seed must keep the same cases; "
                         + "; ".join(missing))
    arr_a = np.array([[a[(s, c)] for c in all_cases] for s in seeds], dtype=np.float64)
    arr_b = np.array([[b[(s, c)] for c in all_cases] for s in seeds], dtype=np.float64)
    return arr_a, arr_b
