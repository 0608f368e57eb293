"""Model selection: the validators' formulas worked by hand, the policies' picks, held-out slices that never
train, a study trial's record and rows, and the shared ``dice_weight`` declaration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark import registry
from benchmark.cli import main
from benchmark.errors import UsageError
from benchmark.leaderboard import build_rows, preset_label
from benchmark.method import SegmenterMethod
from benchmark.presets import get_preset
from benchmark.protocol import TrialSpec
from benchmark.selection import POLICIES, expand_selections, parse_selection
from benchmark.trainer import run_trial, setup_trial
from benchmark.validators import entropy_score, holdout_slices, im_score, pooled_dice, snd_score

STUDY = {"source_val": 0.2, "select_every": 2}


def study_spec(steps: int = 6, method: str = "source_only", **kw) -> TrialSpec:
    registry.discover()
    cls = registry.METHODS.get(method)
    return TrialSpec(dataset="synthetic-heart", direction="mr2ct", method=method, shots=kw.pop("shots", 1),
                     seed=kw.pop("seed", 0), preset="quick",
                     hparams={k: v.default for k, v in cls.declared_hparams().items()},
                     preset_settings=get_preset("quick", steps=steps, log_every=3, checkpoint_every=3),
                     validation=kw.pop("validation", STUDY), **kw)


# ---- the validators, by hand ------------------------------------------------------------------------------------

def test_entropy_of_uniform_and_certain_predictions():
    uniform = np.full((2, 4, 3, 3), 0.25)
    assert entropy_score(uniform) == pytest.approx(-math.log(4))
    certain = np.zeros((1, 2, 2, 2))
    certain[:, 0] = 1.0
    assert entropy_score(certain) == pytest.approx(0.0, abs=1e-9)


def test_information_maximisation_by_hand():
    # two pixels, each certain, of different classes: H(mean) = ln 2, mean H = 0
    p = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, C=2, 1, 2)
    assert im_score(p) == pytest.approx(math.log(2))
    # two pixels both at (0.5, 0.5): H(mean) = ln 2 = mean H, so IM = 0
    assert im_score(np.full((1, 2, 1, 2), 0.5)) == pytest.approx(0.0, abs=1e-9)
    # pixels (0.9, 0.1) and (0.5, 0.5): mean (0.7, 0.3)
    q = np.array([[[[0.9, 0.5]], [[0.1, 0.5]]]])
    h = lambda v: -sum(x * math.log(x) for x in v)  # noqa: E731
    assert im_score(q) == pytest.approx(h([0.7, 0.3]) - (h([0.9, 0.1]) + h([0.5, 0.5])) / 2)


def test_soft_neighbourhood_density_by_hand():
    # samples e1, e1, e2 at temperature 1: rows 0 and 1 see similarities (1, 0) to the others, row 2 sees (0, 0)
    samples = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # the norm is taken out
    e = math.e
    row = math.log(1 + e) - e / (1 + e)
    assert snd_score(samples, temperature=1.0) == pytest.approx((2 * row + math.log(2)) / 3)
    # at the paper's temperature, near-identical neighbours concentrate each row: density near zero for a
    # perfectly clustered set of two points per cluster
    clustered = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert snd_score(clustered) == pytest.approx(0.0, abs=1e-6)


def test_pooled_dice_by_hand():
    label = np.array([[[0, 1, 1, 2]], [[0, 0, 2, 2]]])
    pred = np.array([[[0, 1, 0, 2]], [[0, 1, 2, 2]]])
    # class 1: |P|=2, |T|=2, overlap 1 -> 0.5; class 2: |P|=3, |T|=3, overlap 3 -> 1; class 3 absent
    assert pooled_dice(pred, label, num_classes=4) == pytest.approx(0.75)
    assert math.isnan(pooled_dice(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), 3))


# ---- the policies -----------------------------------------------------------------------------------------------

def candidate(step, dice, **scores):
    return {"step": step, "scores": scores,
            "test": {"summary": {"dice": {"mean": dice}}, "volumes": [{"case": f"c{step}"}]}}


def test_policies_pick_exactly():
    cands = [candidate(2, 0.30, **{"source-val": 0.8, "snd": 1.0, "entropy": -0.2, "im": float("nan")}),
             candidate(4, 0.55, **{"source-val": 0.6, "snd": 1.0, "entropy": -0.5, "im": 0.1}),
             candidate(6, 0.40, **{"source-val": 0.7, "snd": 0.5, "entropy": -0.4, "im": 0.05})]
    picks = {name: policy.choose(cands)["step"] for name, policy in POLICIES.items()}
    # oracle-target: the highest test Dice; snd ties at steps 2 and 4 go to the later; NaN never wins
    assert picks == {"last": 6, "source-val": 2, "entropy": 2, "im": 4, "snd": 4, "oracle-target": 4}
    assert POLICIES["oracle-target"].oracle and not POLICIES["snd"].oracle


def test_unknown_policy_is_named():
    assert parse_selection("last, snd,last") == ["last", "snd"]
    with pytest.raises(UsageError, match=r"Unknown selection policy 'sndd'; the policies are last, source-val"):
        parse_selection("last,sndd")


def test_plan_names_the_study(capsys):
    assert main(["run", "--methods", "source_only", "--shots", "4", "--selection", "last,snd,oracle-target",
                 "--select-every", "50", "--dry-run"]) == 0
    assert ("Selection study: rows for last, snd, oracle-target; 20% of the labeled slices held out for source-val, "
            "candidates every 50 steps.") in capsys.readouterr().out


def test_selection_flag_errors_exit_2(capsys):
    assert main(["run", "--selection", "best", "--dry-run"]) == 2
    assert "Unknown selection policy 'best'" in capsys.readouterr().err
    assert main(["run", "--select-every", "50", "--dry-run"]) == 2
    assert "--select-every sets a selection study" in capsys.readouterr().err
    assert main(["run", "--selection", "last,snd", "--select-every", "0", "--dry-run"]) == 2
    assert "--select-every 0 is impossible" in capsys.readouterr().err


# ---- held-out slices and a study trial --------------------------------------------------------------------------

def test_source_val_slices_never_reach_a_training_batch():
    """Every batch of a whole quick trial (300 steps), read from the cache through a recorder: no held-out index."""
    spec = study_spec(steps=300)
    setup = setup_trial(spec, __import__("torch").device("cpu"), log=lambda s: None)
    modality, held = setup.held_out
    cache = setup.cache
    per_case = {c: len(cache.slice_range(modality, c)) for c in setup.streams["source"].cases}
    assert len(held) == sum(min(n - 1, max(1, round(0.2 * n))) for n in per_case.values())
    assert np.array_equal(held, holdout_slices(cache, modality, list(per_case), 0.2, 0, "synthetic-heart"))
    seen: set[int] = set()

    class Recorder:
        def __init__(self, arr, record):
            self.arr, self.record = arr, record

        def __getitem__(self, idx):
            if self.record:
                seen.update(int(i) for i in np.atleast_1d(idx))
            return self.arr[idx]

    class Spy:
        def array(self, m, kind):
            return Recorder(cache.array(m, kind), m == modality)

    setup.sampler.cache = Spy()
    for step in range(300):
        setup.sampler.batch(step)
    assert seen and not seen & set(held.tolist())
    # and the held-out slices are all among what source-val scores: the labeled volumes' own slices
    labeled = set().union(*(range(cache.slice_range(modality, c).start, cache.slice_range(modality, c).stop)
                            for c in per_case))
    assert set(held.tolist()) <= labeled and seen & labeled


def test_study_trial_records_candidates_and_keeps_only_picked_weights(tmp_path):
    spec = study_spec(steps=6)
    result = run_trial(spec, tmp_path, log=lambda s: None)
    steps = [c["step"] for c in result["candidates"]]
    assert steps == [2, 4, 6]
    assert set(result["candidates"][0]["scores"]) == {"source-val", "entropy", "im", "snd"}
    # the last candidate's test metrics are the trial's own final evaluation
    assert result["candidates"][-1]["test"]["summary"] == result["summary"]
    chosen = {name: pick["step"] for name, pick in result["selected"].items()}
    oracle_best = max(result["candidates"], key=lambda c: (c["test"]["summary"]["dice"]["mean"], c["step"]))
    assert chosen["oracle-target"] == oracle_best["step"] and chosen["last"] == 6
    kept = sorted(p.name for p in (tmp_path / "candidates").glob("*.pt"))
    assert kept == sorted({f"step{s}.pt" for s in chosen.values() if s != 6})
    # scoring does not change training: the study's last weights equal a study that scores only at the end
    lone = run_trial(study_spec(steps=6, validation={"source_val": 0.2, "select_every": 6}), tmp_path / "b",
                     log=lambda s: None)
    assert lone["summary"] == result["summary"]


def test_study_rows_one_per_policy_on_their_own_preset_label(tmp_path):
    spec = study_spec(steps=4)
    rec = {"status": "ok", "config": spec.to_dict(), "commit": "x", "trial_id": spec.trial_id,
           **run_trial(spec, tmp_path, log=lambda s: None)}
    views = expand_selections([rec], ["last", "oracle-target"])
    assert [v["config"]["selection"] for v in views] == ["last", "oracle-target"]
    assert expand_selections(views) == views  # a view is never expanded again
    rows = build_rows([rec])
    assert sorted(rows["selection"]) == sorted(POLICIES)
    assert set(rows["preset"]) == {preset_label(spec.to_dict())}
    assert "source_val=0.2" in preset_label(spec.to_dict()) and "select_every=2" in preset_label(spec.to_dict())
    best = max(rec["candidates"], key=lambda c: (c["test"]["summary"]["dice"]["mean"], c["step"]))
    oracle_row = rows[rows["selection"] == "oracle-target"].iloc[0]
    assert oracle_row["dice_mean"] == pytest.approx(best["test"]["summary"]["dice"]["mean"], abs=1e-4)
    from benchmark.leaderboard import render_markdown

    assert render_markdown(rows).count("oracle-target (upper bound, not a result)") == 1


def test_ordinary_trials_keep_their_identity():
    plain = study_spec(validation={})
    assert "validation" not in plain.to_dict()
    assert study_spec().trial_id != plain.trial_id


def test_dice_weight_is_declared_once_and_searchable_everywhere():
    registry.discover()
    base = SegmenterMethod.HPARAMS["dice_weight"]
    for entry in registry.METHODS:
        cls = registry.METHODS.get(entry.name)
        if issubclass(cls, SegmenterMethod):
            assert cls.declared_hparams()["dice_weight"] is base, entry.name
            assert not any("dice_weight" in vars(k).get("HPARAMS", {}) for k in cls.__mro__
                           if k is not SegmenterMethod), entry.name


def test_validator_table_rank_correlations_by_hand():
    from benchmark.leaderboard_validators import validator_table

    config = study_spec().to_dict()

    def rec(seed, rows):
        return {"status": "ok", "config": {**config, "seed": seed},
                "candidates": [candidate(s, d, **{"snd": v, "entropy": -v, "source-val": 0.5, "im": i})
                               for s, d, v, i in rows]}

    records = [rec(0, [(2, 0.1, 1.0, 0.3), (4, 0.2, 2.0, 0.1)]), rec(1, [(2, 0.3, 3.0, 0.2), (4, 0.4, 4.0, 0.4)]),
               {"status": "failed", "config": config, "candidates": None}]
    table = validator_table(records).set_index("validator")
    assert list(table.index) == ["source-val", "entropy", "im", "snd"]
    assert table.loc["snd", "spearman"] == pytest.approx(1.0) and table.loc["snd", "kendall"] == pytest.approx(1.0)
    assert table.loc["entropy", "spearman"] == pytest.approx(-1.0)
    # im ranks (3, 1, 2, 4) against Dice ranks (1, 2, 3, 4): Spearman 1 - 6*(4+1+1+0)/(4*15) = 0.4,
    # Kendall (4 concordant - 2 discordant pairs) / 6 = 1/3
    assert table.loc["im", "spearman"] == pytest.approx(0.4) and table.loc["im", "kendall"] == pytest.approx(1 / 3)
    assert math.isnan(table.loc["source-val", "spearman"])  # a constant validator ranks nothing
    assert set(table["candidates"]) == {4} and set(table["trials"]) == {2}


def test_run_and_publish_write_the_validator_table_beside_the_board(tmp_path, capsys):
    import pandas as pd
    from scipy import stats

    from benchmark.leaderboard import write_leaderboards
    from benchmark.store import ResultsStore

    spec = study_spec(steps=4)
    store = ResultsStore(tmp_path / "run")
    store.start(spec)
    store.write_result(spec, run_trial(spec, store.trial_dir(spec), log=lambda s: None))
    rec = next(iter(store.records()))
    write_leaderboards(list(store.records()), tmp_path / "boards", ["last", "snd"])
    board = tmp_path / "boards" / "synthetic-heart"
    assert sorted(pd.read_csv(board / "mr2ct.csv")["selection"]) == ["last", "snd"]
    table = pd.read_csv(board / "mr2ct.validators.csv").set_index("validator")
    dice = [c["test"]["summary"]["dice"]["mean"] for c in rec["candidates"]]
    snd = [c["scores"]["snd"] for c in rec["candidates"]]
    assert table.loc["snd", "kendall"] == pytest.approx(stats.kendalltau(snd, dice).statistic, abs=1e-4)
    assert table.loc["snd", "candidates"] == 2 and table.loc["snd", "method_version"] == 1

    published = tmp_path / "published"
    assert main(["publish", str(tmp_path / "run"), "--to", str(published), "--dry-run", "--allow-dirty"]) == 0
    out = capsys.readouterr().out
    assert "would add validator correlations mr2ct.validators.csv: source_only 1 1 " in out
    assert "source_only 1-shot, selection snd, preset" in out  # each policy's row is named apart
    assert not published.exists()
    assert main(["publish", str(tmp_path / "run"), "--to", str(published), "--allow-dirty"]) == 0
    path = published / "synthetic-heart" / "mr2ct.validators.csv"
    first = path.read_text()
    assert first == (board / "mr2ct.validators.csv").read_text()
    readme = (published / "README.md").read_text()
    assert "## Validator quality" in readme and "| synthetic-heart/mr2ct | 1 |" in readme
    # another group joins the file; publishing the same trial again replaces its group, named, and changes nothing
    other = pd.read_csv(path, dtype=str, keep_default_na=False).assign(shots="4")
    path.write_text(other.to_csv(index=False, lineterminator="\n") + first.split("\n", 1)[1])
    assert main(["publish", str(tmp_path / "run"), "--to", str(published), "--allow-dirty"]) == 0
    assert "replace validator correlations mr2ct.validators.csv: source_only 1 1 " in capsys.readouterr().out
    lines = pd.read_csv(path, dtype={"shots": str})
    assert sorted(set(lines["shots"])) == ["1", "4"] and len(lines) == 8
