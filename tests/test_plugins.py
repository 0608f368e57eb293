"""The plug-in mechanism: composing ``METHOD+PLUGIN`` on the command line, trial identity and leaderboard names,
hosting rules and their errors, and how a plug-in joins its host's optimizer step of the segmenter."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import sys
from typing import ClassVar

import pytest
import torch

from benchmark import registry
from benchmark.errors import PluginHostError, UnknownNameError, UsageError
from benchmark.hparams import HParam, resolve
from benchmark.leaderboard import build_rows, method_label
from benchmark.losses import dice_ce_loss
from benchmark.method import Method, Plugin
from benchmark.protocol import PROTOCOL, TrialSpec, parse_method_entry, row_name
from benchmark.registry import Entry
from benchmark.runner import build_grid
from benchmark.streams import Batch
from helpers import B, SIZE, build, context, params_of, tiny_batch

registry.discover()


# --- parsing ----------------------------------------------------------------------------------------------------


def test_parse_method_entry():
    assert parse_method_entry("source_only") == (("source_only", {}), [])
    assert parse_method_entry("metahallu+cdtg") == (("metahallu", {}), [("cdtg", {})])
    assert parse_method_entry(" metahallu:meta=false + cdtg:blend=0.5+other ") == (
        ("metahallu", {"meta": "false"}), [("cdtg", {"blend": "0.5"}), ("other", {})])
    # '+' before a digit is part of a value, and a value may hold colons (a path)
    assert parse_method_entry("source_only:lr=1e+3+cdtg:text_encoder=openclip:/w/m.bin") == (
        ("source_only", {"lr": "1e+3"}), [("cdtg", {"text_encoder": "openclip:/w/m.bin"})])
    for bad, fault in [("+cdtg", "empty part"), ("source_only+", "empty part"), ("a+b:x", "not of the form"),
                       ("a+:x=1", "names no plug-in"), ("a+b:x=1:x=2", "sets 'x' twice")]:
        with pytest.raises(UsageError, match=fault):
            parse_method_entry(bad)


def test_composed_name():
    assert row_name("metahallu") == "metahallu"
    assert row_name("metahallu", "meta=false", [{"name": "cdtg"}, {"name": "x", "variant": "a=1"}]) == (
        "metahallu:meta=false+cdtg+x:a=1")


# --- trial identity, labels, leaderboards -------------------------------------------------------------------------


def test_specs_without_plugins_keep_their_hashes():
    spec = TrialSpec(dataset="synthetic-heart", direction="mr2ct", method="metahallu", shots=1, seed=0,
                     preset="quick", hparams={"lr": 0.001, "meta": True}, preset_settings={"steps": 300, "size": 64},
                     protocol="fsuda-v1", dataset_version="1")
    assert "plugins" not in spec.to_dict()
    assert spec.trial_id == "5ef17dad6a4b53d2"  # computed before plug-ins existed
    # the full grid of the reference rows hashes as it did before plug-ins existed
    specs = build_grid(dataset="synthetic-heart", methods=["source_only", "oracle", "source_only:lr=0.003"],
                       shots=[1, 4], directions=["mr2ct"], seeds=[0], preset="quick")
    # under the protocol and dataset version of the time (fsuda-v1, synthetic heart 1)
    specs = [dataclasses.replace(s, protocol="fsuda-v1", dataset_version="1") for s in specs]
    assert [s.trial_id for s in specs] == ["bc970b4f841449c9", "566b208b442fb61b", "ab415ce71bb47bfb",
                                           "3e05e37ab1e4f272", "19a9796f8b2587ba", "446ae1aa8867fe2d"]
    assert all("plugins" not in s.to_dict() for s in specs)


def test_build_grid_composes_plugins():
    specs = build_grid(dataset="synthetic-heart", methods=["metahallu+cdtg", "source_only+cdtg",
                                                           "source_only+cdtg:blend=0.5", "source_only",
                                                           "metahallu:meta=false+cdtg", "source_only+cdtg"],
                       shots=[1], directions=["mr2ct"], seeds=[0], preset="quick")
    labels = [s.label.split("/")[2] for s in specs]
    assert labels == ["metahallu+cdtg", "source_only+cdtg", "source_only+cdtg:blend=0.5", "source_only",
                      "metahallu:meta=false+cdtg"]  # repeats collapse
    assert len({s.trial_id for s in specs}) == len(specs)
    plug = specs[1].plugins[0]
    cdtg = registry.PLUGINS.get("cdtg")
    assert plug["name"] == "cdtg" and plug["version"] == cdtg.version and "variant" not in plug
    assert plug["hparams"] == resolve(cdtg.declared_hparams(), 0)  # every hyperparameter is in the config
    assert plug["provenance"] == {"descriptions": "synthetic_heart.classes.json v2", "encoder": "minilm"}
    assert specs[2].plugins[0]["variant"] == "blend=0.5" and specs[2].plugins[0]["hparams"]["blend"] == 0.5
    assert specs[0].hparams == specs[4].hparams | {"meta": True}
    round_trip = TrialSpec.from_dict(specs[0].to_dict())
    assert round_trip.trial_id == specs[0].trial_id and round_trip.plugins == specs[0].plugins
    assert [method_label(s.to_dict()) for s in specs] == labels


def test_plugin_hparam_samples_are_drawn_apart_from_the_method():
    spec = build_grid(dataset="synthetic-heart", methods=["source_only+cdtg"], shots=[1], directions=["mr2ct"],
                      seeds=[0], preset="quick", hparam_samples=[1])[0]
    assert spec.plugins[0]["hparams"]["lr"] != spec.hparams["lr"]  # seeded from "cdtg.lr", not "lr"
    assert spec.plugins[0]["hparams"]["text_encoder"] == "minilm"  # no search distribution: the default


def test_composition_errors():
    grid = dict(shots=[1], directions=["mr2ct"], seeds=[0], preset="quick", dataset="synthetic-heart")
    with pytest.raises(UnknownNameError, match="Unknown plugin 'cdtgg'. Did you mean 'cdtg'"):
        build_grid(methods=["source_only+cdtgg"], **grid)
    with pytest.raises(UnknownNameError, match="Unknown method 'sourceonly'"):
        build_grid(methods=["sourceonly+cdtg"], **grid)
    with pytest.raises(UsageError, match="composes plug-in 'cdtg' twice"):
        build_grid(methods=["source_only+cdtg+cdtg"], **grid)
    with pytest.raises(UsageError, match="Plug-in 'cdtg' has no hyperparameter 'nope'"):
        build_grid(methods=["source_only+cdtg:nope=1"], **grid)
    with pytest.raises(UsageError, match="hyperparameter 'blend' must be float"):
        build_grid(methods=["source_only+cdtg:blend=much"], **grid)


def test_leaderboard_rows_show_the_composed_name():
    def record(method: str, plugins: list, dice: float, seed: int) -> dict:
        config = {"dataset": "synthetic-heart", "direction": "mr2ct", "method": method, "shots": 1, "seed": seed,
                  "selection": "last", "preset": "quick", "protocol": PROTOCOL, "dataset_version": "1",
                  "method_version": "2", "hparam_sample": 0}
        if plugins:
            config["plugins"] = plugins
        summary = {m: {"MYO": dice, "mean": dice} for m in ("dice", "assd_mm", "hd95_mm")}
        return {"status": "ok", "config": config, "summary": summary, "structures": ["MYO"], "commit": "abc"}

    cdtg = [{"name": "cdtg", "version": "1", "hparams": {}}]
    cdtg2 = [{"name": "cdtg", "version": "2", "hparams": {}, "provenance": {"descriptions": "x v2",
                                                                             "encoder": "openclip-ViT-B-16"}}]
    rows = build_rows([record("metahallu", [], 0.5, 0), record("metahallu", cdtg, 0.6, 0),
                       record("metahallu", cdtg, 0.7, 1), record("source_only", cdtg2, 0.4, 0)])
    by_method = {r["method"]: r for _, r in rows.iterrows()}
    assert set(by_method) == {"metahallu", "metahallu+cdtg", "source_only+cdtg"}
    assert by_method["metahallu+cdtg"]["seeds_done"] == 2
    assert math.isclose(by_method["metahallu+cdtg"]["dice_mean"], 0.65)
    assert by_method["metahallu+cdtg"]["method_version"] == "2 cdtg-1"
    assert by_method["metahallu"]["method_version"] == "2"
    assert by_method["source_only+cdtg"]["method_version"] == "2 cdtg-2[openclip-ViT-B-16]"  # the encoder it read


def test_ls_lists_plugins(capsys):
    from benchmark.cli import main

    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    plugins = out.split("plugins:")[1].split("datasets:")[0]
    assert "cdtg" in plugins and "methods/cdtg.py" in plugins


# --- hosting and joining the host's step --------------------------------------------------------------------------


class Shrink(Plugin):
    """Test plug-in: pulls the host's features towards zero with a learned scale; a head adds a constant."""

    name: ClassVar[str] = "shrink"
    HPARAMS: ClassVar[dict[str, HParam]] = {"weight": HParam(0.5), "head": HParam(0.0)}

    def __init__(self, ctx, hparams, feature_channels):
        super().__init__(ctx, hparams, feature_channels)
        self.scale = torch.nn.Parameter(torch.ones(feature_channels))

    def loss(self, features, labels, step, head):
        loss = self.hparams["weight"] * (features * self.scale[:, None, None]).pow(2).mean()
        return loss, {"shrink": loss.item()}

    @property
    def has_head(self):
        return self.hparams["head"] != 0

    def blend(self, logits, features):
        return logits + self.hparams["head"]


def shrink(**hparams) -> tuple[type[Plugin], dict]:
    """The test plug-in with ``hparams`` over its defaults, ready for :func:`helpers.build`."""
    return Shrink, resolve(Shrink.declared_hparams(), 0, hparams)


def host_batch(seed: int) -> Batch:
    """Noise source images, random source labels, noise target images."""
    return tiny_batch(seed, ("source", "target"), batch_size=B)


def test_plugin_loss_joins_the_host_optimizer_step():
    """source_only+shrink: the one Adam step of the segmenter applies d(host loss + plug-in loss) to the segmenter
    and the plug-in's weights together."""
    method = build("source_only", plugins=[shrink()])
    assert len(method.optimizers) == 1  # no second optimizer: the plug-in is a parameter group of the segmenter's
    groups = method.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["params"][0] is method.plugins["shrink"].scale
    seen: list[list[torch.Tensor]] = []
    # registered after the plug-ins' hook, so it sees the gradients the optimizer is about to apply
    method.optimizers[0].register_step_pre_hook(
        lambda opt, *_: seen.append([p.grad.clone() for g in opt.param_groups for p in g["params"]]))
    for step in range(2):
        batch = host_batch(step)
        reference = copy.deepcopy(method.segmenter)
        scale = method.plugins["shrink"].scale.detach().clone().requires_grad_()
        losses = method.train_step(batch, step)
        assert set(losses) == {"loss", "shrink_shrink"}
        logits, feats = reference.forward_features(batch.source_x)
        total = dice_ce_loss(logits, batch.source_y) + 0.5 * (feats * scale[:, None, None]).pow(2).mean()
        expected = torch.autograd.grad(total, list(reference.parameters()) + [scale])
        assert len(seen[-1]) == len(expected)
        for got, want in zip(seen[-1], expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_a_plugin_without_weight_leaves_metahallu_training_unchanged():
    """The plug-in adds to metahallu's own meta-gradients in its own step; a zero loss changes nothing."""
    plain, composed = build("metahallu", 3), build("metahallu", 3, plugins=[shrink(weight=0.0)])
    for step in range(2):
        torch.manual_seed(100 + step)
        a = plain.train_step(host_batch(step), step)
        torch.manual_seed(100 + step)
        b = composed.train_step(host_batch(step), step)
        assert b.pop("shrink_shrink") == 0.0 and a == b
    for x, y in zip(params_of(plain.segmenter), params_of(composed.segmenter)):
        assert torch.equal(x, y)
    # and a plug-in with a weight does change the segmenter
    other = build("metahallu", 3, plugins=[shrink(weight=10.0)])
    torch.manual_seed(100)
    other.train_step(host_batch(0), 0)
    assert not all(torch.equal(x, y) for x, y in zip(params_of(build("metahallu", 3).segmenter),
                                                     params_of(other.segmenter)))


def test_infer_blends_plugin_heads_and_is_predict_without_them():
    x = torch.randn(2, 1, SIZE, SIZE)
    plain, no_head = build("source_only"), build("source_only", plugins=[shrink()])
    head = build("source_only", plugins=[shrink(head=2.0)])
    for m in (plain, no_head, head):
        m.eval()
    with torch.no_grad():
        assert torch.equal(plain.infer(x), plain.predict(x))
        assert torch.equal(no_head.infer(x), no_head.predict(x))
        assert torch.equal(head.infer(x), head.predict(x) + 2.0)


def test_checkpoint_holds_the_plugin():
    a = build("source_only", 1, plugins=[shrink()])
    a.train_step(host_batch(0), 0)
    state = a.state_dict()
    assert "plugins.shrink.scale" in state
    assert len(a.optimizers[0].state_dict()["param_groups"]) == 2
    buf = io.BytesIO()
    torch.save({"method": state, "optimizers": [o.state_dict() for o in a.optimizers]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    b = build("source_only", 2, plugins=[shrink()])
    b.load_state_dict(saved["method"])
    b.optimizers[0].load_state_dict(saved["optimizers"][0])
    assert torch.equal(a.plugins["shrink"].scale, b.plugins["shrink"].scale)
    assert a.train_step(host_batch(1), 1) == b.train_step(host_batch(1), 1)
    assert torch.equal(a.plugins["shrink"].scale, b.plugins["shrink"].scale)


def test_update_outside_train_step_is_refused_with_plugins():
    method = build("source_only", plugins=[shrink()])
    with pytest.raises(RuntimeError, match="outside train_step"):
        method.update(host_batch(0), 0)


def test_multi_stage_host_trains_the_plugin_only_with_its_segmenter():
    method = build("cyclegan_uda", plugins=[shrink()], translate_ratio=0.2)  # 2 translator steps, then segmentation
    assert method.optimizer_spans[0] == (2, 12)
    batch = host_batch(0)
    batch.source_all_x = batch.source_x
    scale = params_of(method.plugins["shrink"])
    assert "shrink_shrink" not in method.train_step(batch, 0)
    assert torch.equal(params_of(method.plugins["shrink"])[0], scale[0])
    assert "shrink_shrink" in method.train_step(batch, 2)


class NoFeatures(Method):
    """Test method: a segmenter that never exposes its features."""

    streams = ("source",)

    def __init__(self, ctx, hparams):
        super().__init__(ctx, hparams)
        self.segmenter = ctx.backbone()
        self.optimizers = [torch.optim.Adam(self.segmenter.parameters())]

    def segmenter_optimizer(self):
        return self.optimizers[0]

    def predict(self, images):
        return self.segmenter(images)

    def logits_from_features(self, features):
        return self.segmenter.head(features)


class NoHead(NoFeatures):
    """Test method: features, but no head to compute logits from them."""

    logits_from_features = Method.logits_from_features

    def features(self, images):
        return self.segmenter.forward_features(images)[1]


class RaisingFeatures(NoFeatures):
    """Test method: features() overridden but not implemented."""

    def features(self, images):
        raise NotImplementedError


class NoSegmenterOptimizer(NoFeatures):
    """Test method: features, but no optimizer named as the segmenter's."""

    def features(self, images):
        return self.segmenter.forward_features(images)[1]

    def segmenter_optimizer(self):
        return None


@pytest.mark.parametrize("cls, problem", [
    (NoFeatures, "does not expose its segmenter's features"),
    (RaisingFeatures, "its features\\(\\) is not implemented"),
    (NoSegmenterOptimizer, "no optimizer that steps a segmenter"),
    (NoHead, "does not expose its segmenter's head \\(its logits_from_features\\(\\) is not implemented\\)"),
])
def test_a_method_that_cannot_host_fails_naming_method_and_plugin(cls, problem, monkeypatch):
    monkeypatch.setattr(cls, "name", "tiny")
    method = cls(context(), {})
    with pytest.raises(PluginHostError, match=f"Plug-in 'shrink' cannot attach to method 'tiny' \\(tiny\\+shrink\\): "
                                              f".*{problem}.*e.g. source_only\\+shrink"):
        method.attach_plugins([(Shrink, resolve(Shrink.declared_hparams(), 0))])
    assert "plugins" not in method._modules


def test_build_grid_refuses_a_host_that_cannot_host(monkeypatch):
    source = sys.modules[__name__].__file__
    monkeypatch.setitem(registry.METHODS._entries, "tiny", Entry("tiny", NoFeatures, (), source))
    with pytest.raises(PluginHostError, match="Plug-in 'cdtg' cannot attach to method 'tiny'"):
        build_grid(dataset="synthetic-heart", methods=["tiny+cdtg"], shots=[1], directions=["mr2ct"], seeds=[0],
                   preset="quick")


class Stop(Exception):
    pass


@pytest.mark.slow
def test_a_composed_trial_resumes_exactly_with_the_plugin_in_its_checkpoint(tmp_path):
    from benchmark.trainer import CHECKPOINT, FINAL_WEIGHTS, run_trial

    spec = build_grid(dataset="synthetic-heart", methods=["source_only+cdtg"], shots=[1], directions=["mr2ct"],
                      seeds=[0], preset="quick",
                      preset_overrides={"steps": 4, "log_every": 2, "checkpoint_every": 2})[0]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    logs: list[str] = []
    a = run_trial(spec, whole, log=logs.append)
    assert {"loss", "cdtg_seg"} <= set(a["final_losses"])
    assert any("source_only+cdtg" in line for line in logs)
    assert any(k.startswith("plugins.cdtg.") for k in torch.load(whole / FINAL_WEIGHTS, weights_only=True)["method"])

    def die_at_2(line):
        if "step 2/4" in line:
            raise Stop

    with pytest.raises(Stop):
        run_trial(spec, cut, log=die_at_2)
    state = torch.load(cut / CHECKPOINT, weights_only=True)
    assert {"plugins.cdtg.unit.attention.in_proj_weight", "plugins.cdtg.prototypes"} <= set(state["method"])
    assert len(state["optimizers"][0]["param_groups"]) == 2
    resumed = run_trial(spec, cut, log=lambda s: None)
    assert resumed["final_losses"] == a["final_losses"] and resumed["summary"] == a["summary"]
