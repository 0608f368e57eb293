"""Method variants on the command line (``metahallu:meta=false``): parsing, trial identity, leaderboard rows."""

from __future__ import annotations

import pytest

from benchmark.errors import UsageError
from benchmark.leaderboard import method_label
from benchmark.protocol import TrialSpec, format_variant, parse_method_variant
from benchmark.runner import build_grid


def test_parse_method_variant():
    assert parse_method_variant("source_only") == ("source_only", {})
    assert parse_method_variant(" metahallu:meta=false:consistency = 0 ") == (
        "metahallu", {"meta": "false", "consistency": "0"})
    for bad, fault in [("metahallu:meta", "not of the form name=value"), ("metahallu:=1", "not of the form"),
                       ("metahallu:meta=", "not of the form"), (":meta=1", "names no method"),
                       ("m:a=1:a=2", "sets 'a' twice")]:
        with pytest.raises(UsageError, match=fault):
            parse_method_variant(bad)
    assert format_variant({"spatial": False, "lr": 0.003, "inner_params": "all"}) == (
        "inner_params=all:lr=0.003:spatial=false")


def test_trials_without_a_variant_keep_their_hash():
    spec = TrialSpec(dataset="d", direction="mr2ct", method="m", shots=1, seed=0, preset="quick")
    assert "variant" not in spec.to_dict()
    assert TrialSpec.from_dict(spec.to_dict()).trial_id == spec.trial_id
    other = TrialSpec(dataset="d", direction="mr2ct", method="m", shots=1, seed=0, preset="quick", variant="a=1")
    assert other.to_dict()["variant"] == "a=1" and other.trial_id != spec.trial_id
    assert other.label == "d/mr2ct/m:a=1/1shot/seed0"


def test_build_grid_makes_each_variant_its_own_row():
    specs = build_grid(dataset="synthetic-heart", methods=["source_only", "source_only:lr=0.003",
                                                           "source_only:lr=3e-3", "source_only"],
                       shots=[4], directions=["mr2ct"], seeds=[0], preset="quick")
    assert [s.variant for s in specs] == ["", "lr=0.003"]  # repeats and equal settings collapse
    assert specs[0].hparams["lr"] == 1e-3 and specs[1].hparams["lr"] == 0.003
    assert specs[0].trial_id != specs[1].trial_id
    assert [method_label(s.to_dict()) for s in specs] == ["source_only", "source_only:lr=0.003"]
    with pytest.raises(UsageError, match="hyperparameter 'lr' must be float, not 'fast'"):
        build_grid(dataset="synthetic-heart", methods=["source_only:lr=fast"], shots=[4], directions=["mr2ct"],
                   seeds=[0], preset="quick")
    with pytest.raises(UsageError, match="has no hyperparameter 'nope'"):
        build_grid(dataset="synthetic-heart", methods=["source_only:nope=1"], shots=[4], directions=["mr2ct"],
                   seeds=[0], preset="quick")
