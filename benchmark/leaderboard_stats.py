"""The statistics of a leaderboard table, computed from its per-volume metrics (:mod:`benchmark.stats`).

Every trial of a track is scored on the same target test volumes, and the rows of one group (same shots,
selection, preset and dataset version) share their seeds' splits, so rows are compared *paired* over (seed, test
volume). Per row: the 95% confidence interval of each metric's mean (overall and per structure) by a hierarchical
bootstrap over seeds, then volumes; its rank by mean Dice in its group with a bootstrap 95% rank interval
(resampling seeds and volumes jointly for the group, as challenge reports do); and its paired comparison with the
group's ``source_only`` row: the mean difference with its bootstrap interval and a Wilcoxon signed-rank p-value,
Holm-corrected over the comparisons under one preset and selection of the table.

Each bootstrap draws from a generator seeded by what it computes (the row's identity, the metric, the
structure), so a table's numbers do not depend on the other rows or their order, and publishing a row never
moves another row's interval.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from . import stats
from .leaderboard_schema import BASELINE, CI_STATS, METRICS, ROW_KEY, normalize_shots, structures_of
from .protocol import derive_seed

#: Bootstrap replicates of every interval.
N_BOOT = 2000
#: The columns that group rows for ranks and comparisons (besides the track).
GROUP = ("shots", "selection", "preset", "dataset_version")
#: A per-volume mean over structures is kept under this structure name.
MEAN = "mean"

Values = dict[tuple[int, str], float]


def row_key(row) -> tuple:
    """A row's identity within its table, from a row or a per-volume line (see :data:`ROW_KEY`)."""
    return tuple(normalize_shots(row[c]) if c == "shots" else str(row[c]) for c in ROW_KEY)


def _group(key: tuple) -> tuple:
    return tuple(key[ROW_KEY.index(c)] for c in GROUP)


def row_values(volumes: pd.DataFrame, structures: Iterable[str]) -> dict[tuple, dict[str, dict[str, Values]]]:
    """Row key -> metric -> structure (or ``"mean"``) -> {(seed, case): value}."""
    structures = list(structures)
    out: dict[tuple, dict[str, dict[str, Values]]] = {}
    if volumes.empty:
        return out
    for key, lines in volumes.groupby(list(ROW_KEY), sort=False):
        key = row_key(dict(zip(ROW_KEY, key)))
        per_metric: dict[str, dict[str, Values]] = {}
        for metric in METRICS:
            by_structure: dict[str, Values] = {}
            for seed, case, structure, value in zip(lines["seed"], lines["case"], lines["structure"],
                                                    lines[metric]):
                by_structure.setdefault(str(structure), {})[(int(seed), str(case))] = float(value)
            pairs = set.intersection(*(set(by_structure.get(s, {})) for s in structures)) if structures else set()
            by_structure[MEAN] = {p: float(np.mean([by_structure[s][p] for s in structures])) for p in sorted(pairs)}
            per_metric[metric] = by_structure
        out[key] = per_metric
    return out


def _grid(values: Values) -> np.ndarray:
    """(seeds x cases) array of a row's values; every seed must have the same cases."""
    seeds = sorted({s for s, _ in values})
    cases = sorted({c for _, c in values})
    if len(values) != len(seeds) * len(cases):
        raise ValueError("the seeds of a row were scored on different test volumes")
    return np.array([[values[(s, c)] for c in cases] for s in seeds], dtype=np.float64)


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng(derive_seed("leaderboard-bootstrap", *map(str, parts)))


def _intervals(key: tuple, data: dict[str, dict[str, Values]], structures: list[str]) -> dict[str, float]:
    cells: dict[str, float] = {}
    for metric in METRICS:
        for structure in [MEAN, *structures]:
            values = data[metric].get(structure)
            if not values:
                continue
            low, high = stats.hierarchical_ci(_grid(values), n_boot=N_BOOT, rng=_rng(*key, metric, structure))
            suffix = "" if structure == MEAN else f"_{structure}"
            cells[f"{metric}_{CI_STATS[0]}{suffix}"], cells[f"{metric}_{CI_STATS[1]}{suffix}"] = low, high
    return cells


def _ranks(keys: list[tuple], data: dict[tuple, dict]) -> tuple[dict[tuple, tuple[float, float, float]], dict]:
    """Observed rank and 95% interval of each row of one group sharing the group's most common (seed, case)
    set, with the bootstrap rank samples."""
    grids = {k: frozenset(data[k]["dice"][MEAN]) for k in keys if k in data and data[k]["dice"][MEAN]}
    if not grids:
        return {}, {}
    common = max(set(grids.values()), key=lambda g: (sum(v == g for v in grids.values()), len(g)))
    kept = [k for k in keys if grids.get(k) == common]
    arrays = {"|".join(map(str, k)): _grid(data[k]["dice"][MEAN]) for k in kept}
    result = stats.bootstrap_ranks(arrays, higher_is_better=True, n_boot=N_BOOT, rng=_rng("ranks", *_group(kept[0])))
    names = dict(zip(arrays, kept))
    ranks = {names[n]: (float(result["rank"][n]), float(result["low"][n]), float(result["high"][n]))
             for n in arrays}
    return ranks, {names[n]: result["samples"][n] for n in arrays}


def compare(a: Values, b: Values, rng: np.random.Generator) -> dict[str, float]:
    """Paired comparison of two rows' per-volume values (a minus b) over the pairs both have."""
    x, y = stats.pair_arrays(a, b)
    return stats.paired_comparison(x, y, n_boot=N_BOOT, rng=rng)


def add_statistics(rows: pd.DataFrame, volumes: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (one track's table) with the interval, rank and comparison columns computed from ``volumes``
    (its per-volume table); rows without per-volume metrics keep empty cells."""
    return table_statistics(rows, volumes)[0]


def table_statistics(rows: pd.DataFrame, volumes: pd.DataFrame
                     ) -> tuple[pd.DataFrame, dict[tuple, dict[str, np.ndarray]]]:
    """:func:`add_statistics`' table, and per group of the table each ranked row's bootstrap rank samples by row
    name (for the blob plot), from one pass of the bootstraps."""
    out = rows.copy()
    structures = structures_of(rows)
    data = row_values(volumes, structures)
    keys = [row_key(r) for _, r in out.iterrows()]
    cells: dict[tuple, dict[str, float]] = {k: _intervals(k, data[k], structures) for k in keys if k in data}
    groups: dict[tuple, list[tuple]] = {}
    for k in keys:
        groups.setdefault(_group(k), []).append(k)
    families: dict[tuple, list[tuple]] = {}
    samples: dict[tuple, dict[str, np.ndarray]] = {}
    for group, members in groups.items():
        ranks, group_samples = _ranks(members, data)
        if group_samples:
            samples[group] = {k[0]: v for k, v in group_samples.items()}
        for k, (rank, low, high) in ranks.items():
            cells[k].update(rank=rank, rank_low=low, rank_high=high)
        baselines = [k for k in members if k[0] == BASELINE and k in data]
        for k in members:
            if k[0] == BASELINE or k not in data or not baselines:
                continue
            result = compare(data[k]["dice"][MEAN], data[baselines[0]]["dice"][MEAN], _rng("vs", *k, *baselines[0]))
            cells[k].update(vs_source_only_dice=result["diff"], vs_source_only_ci_low=result["ci_low"],
                            vs_source_only_ci_high=result["ci_high"], _p=result["p_value"])
            families.setdefault((k[2], k[3]), []).append(k)  # preset, selection
    for members in families.values():
        adjusted = stats.holm([cells[k].pop("_p") for k in members])
        for k, p in zip(members, adjusted):
            cells[k]["vs_source_only_p_holm"] = float(p)
    for i, k in enumerate(keys):
        for column, value in cells.get(k, {}).items():
            out.at[i, column] = value
    return out, samples


def pairwise(rows: pd.DataFrame, volumes: pd.DataFrame, baseline: str | None = None,
             metrics: Iterable[str] = METRICS) -> pd.DataFrame:
    """Every paired comparison of two rows of one group (or of each row with ``baseline``), per metric: the mean
    difference (a minus b) with its bootstrap 95% interval, the Wilcoxon p-value and its Holm correction over the
    whole table printed."""
    data = row_values(volumes, structures_of(rows))
    keys = [row_key(r) for _, r in rows.iterrows() if row_key(r) in data]
    lines = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:] if baseline is None else keys:
            if _group(a) != _group(b) or a == b or (baseline is not None and b[0] != baseline) or (
                    baseline is not None and a[0] == baseline):
                continue
            for metric in metrics:
                r = compare(data[a][metric][MEAN], data[b][metric][MEAN], _rng("pair", *a, *b, metric))
                lines.append({"shots": a[1], "selection": a[2], "preset": a[3], "a": a[0], "b": b[0],
                              "metric": metric, "diff": r["diff"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                              "p": r["p_value"], "pairs": r["n_pairs"]})
    table = pd.DataFrame(lines, columns=["shots", "selection", "preset", "a", "b", "metric", "diff", "ci_low",
                                         "ci_high", "p", "p_holm", "pairs"])
    if not table.empty:
        table["p_holm"] = stats.holm(table["p"].to_numpy())
    return table
