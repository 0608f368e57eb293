"""Protocol rules: directions, shot selection, splits, hyperparameter samples, trial identity."""

from __future__ import annotations

import pytest

import benchmark
from benchmark.errors import UsageError
from benchmark.hparams import HParam, log_uniform, resolve, uniform
from benchmark.protocol import TrialSpec, parse_direction, parse_shots, select_labeled

IDS = [f"{i:03d}" for i in range(18)]


def test_parse_direction():
    assert parse_direction("mr2ct", ("mr", "ct")) == ("mr", "ct")
    with pytest.raises(UsageError, match="not of the form"):
        parse_direction("mrct")
    with pytest.raises(UsageError, match="modality 'pet'"):
        parse_direction("pet2ct", ("mr", "ct"))
    with pytest.raises(UsageError):
        parse_direction("ct2ct")


def test_parse_shots():
    assert parse_shots("4") == 4 and parse_shots("all") == "all" and parse_shots(2) == 2
    with pytest.raises(UsageError, match="impossible"):
        parse_shots("0")
    with pytest.raises(UsageError, match="neither a positive integer"):
        parse_shots("four")


def test_shot_selection_is_seeded_nested_and_stable():
    one = select_labeled(IDS, 1, 0, dataset="d", modality="mr")
    four = select_labeled(IDS, 4, 0, dataset="d", modality="mr")
    assert len(one) == 1 and len(four) == 4 and len(set(four)) == 4
    assert one[0] in four
    assert four[:1] == one
    assert select_labeled(list(reversed(IDS)), 4, 0, dataset="d", modality="mr") == four  # order-independent
    seeds = {tuple(select_labeled(IDS, 4, s, dataset="d", modality="mr")) for s in range(5)}
    assert len(seeds) == 5  # different seeds choose different volumes
    assert select_labeled(IDS, "all", 0, dataset="d", modality="mr") == IDS


def test_impossible_shot_counts():
    with pytest.raises(UsageError, match="only 18 volumes"):
        select_labeled(IDS, 19, 0, dataset="d", modality="mr")
    with pytest.raises(UsageError):
        select_labeled(IDS, 0, 0, dataset="d", modality="mr")


def test_synthetic_split_is_frozen_and_leak_free():
    ds = benchmark.get_dataset("synthetic-heart")
    for m in ("mr", "ct"):
        train, test = ds.cases(m, "train"), ds.cases(m, "test")
        assert train == [f"{i:03d}" for i in range(18)]
        assert test == [f"{i:03d}" for i in range(18, 24)]
    # the exact labeled volumes (frozen: changing them would change every published number)
    frozen = {("mr", 0): ["003", "007", "002", "012"], ("mr", 1): ["003", "006", "007", "004"],
              ("ct", 0): ["005", "013", "011", "006"], ("ct", 2): ["003", "004", "016", "000"]}
    for (m, seed), ids in frozen.items():
        assert select_labeled(ds.cases(m, "train"), 4, seed, dataset="synthetic-heart", modality=m) == ids
        assert select_labeled(ds.cases(m, "train"), 1, seed, dataset="synthetic-heart", modality=m) == ids[:1]


def test_streams_follow_the_protocol():
    from benchmark.streams import build_streams

    ds = benchmark.get_dataset("synthetic-heart")
    spec = TrialSpec(dataset="synthetic-heart", direction="mr2ct", method="x", shots=4, seed=1, preset="quick")
    streams = build_streams(ds, spec, ("source", "source_unlabeled", "target", "target_labeled"))
    labeled = select_labeled(ds.cases("mr", "train"), 4, 1, dataset="synthetic-heart", modality="mr")
    assert streams["source"].modality == "mr" and streams["source"].cases == labeled and streams["source"].labeled
    assert sorted(streams["source_unlabeled"].cases + labeled) == ds.cases("mr", "train")
    assert not streams["source_unlabeled"].labeled
    assert streams["target"].modality == "ct" and streams["target"].cases == ds.cases("ct", "train")
    assert not streams["target"].labeled
    assert len(streams["target_labeled"].cases) == 4
    test_ids = set(ds.cases("ct", "test")) | set(ds.cases("mr", "test"))
    for s in streams.values():
        assert not set(s.cases) & test_ids, "a test volume leaked into training"


def test_hparam_samples_are_independent_per_name():
    a = {"lr": HParam(1e-3, log_uniform(1e-4, 1e-2)), "w": HParam(0.5, uniform(0, 1))}
    b = dict(a, extra=HParam(1, uniform(0, 10)))
    assert resolve(a, 0) == {"lr": 1e-3, "w": 0.5}
    s1a, s1b = resolve(a, 1), resolve(b, 1)
    assert s1a["lr"] == s1b["lr"] and s1a["w"] == s1b["w"]  # adding a parameter changes no other value
    assert s1a != resolve(a, 2)
    assert 1e-4 <= s1a["lr"] <= 1e-2
    assert resolve(a, 0, {"lr": "0.01"})["lr"] == 0.01
    with pytest.raises(UsageError, match="has no hyperparameter 'nope'"):
        resolve(a, 0, {"nope": 1})


def test_trial_id_hashes_the_full_configuration():
    base = dict(dataset="d", direction="mr2ct", method="m", shots=4, seed=0, preset="quick")
    a, b = TrialSpec(**base), TrialSpec(**base)
    assert a.trial_id == b.trial_id and len(a.trial_id) == 16
    assert TrialSpec(**dict(base, seed=1)).trial_id != a.trial_id
    assert TrialSpec(**base, hparams={"lr": 1e-3}).trial_id != a.trial_id
    assert TrialSpec.from_dict(a.to_dict()) == a
    assert a.label == "d/mr2ct/m/4shot/seed0"
