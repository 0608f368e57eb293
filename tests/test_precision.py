"""``--precision``: what each request trains in, what is refused, that ``auto`` keeps CPU trials as they were, and
that fp16's loss scaling scales, unscales, skips overflowing steps and resumes exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark import precision, registry
from benchmark.cli import main
from benchmark.errors import UsageError
from benchmark.protocol import TrialSpec
from benchmark.runner import build_grid
from benchmark.trainer import CHECKPOINT, _resume, _save_checkpoint, build_schedulers, run_trial, setup_trial

from helpers import build, make_batch, params_of, same

BOARD_VOLUMES = Path(__file__).resolve().parents[1] / "leaderboards" / "synthetic-heart" / "mr2ct.volumes.csv"


def test_an_unknown_precision_is_refused_naming_the_choices():
    with pytest.raises(UsageError, match=r"--precision 'fp8' is not a precision; use one of auto, fp32, bf16, fp16\."):
        precision.parse_precision("fp8")
    assert [precision.parse_precision(p) for p in ("AUTO", "fp32", " bf16", "FP16")] == ["auto", "fp32", "bf16", "fp16"]


def test_what_each_request_trains_in(monkeypatch):
    registry.discover()
    source_only, metahallu = registry.METHODS.get("source_only"), registry.METHODS.get("metahallu")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.compute_settings("auto", cpu, source_only) == {
        "requested": "auto", "precision": "fp32", "loss_scaling": False, "memory_format": "contiguous", "note": ""}
    assert precision.compute_settings("bf16", cpu, source_only)["precision"] == "bf16"
    fp16 = precision.compute_settings("fp16", cpu, source_only)
    assert fp16["precision"] == "fp16" and fp16["loss_scaling"] is True
    # a GPU with bfloat16 (Ampere or later) trains in bf16; an older one in fp16 with loss scaling
    for supported, used in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(precision, "bf16_supported", lambda device, s=supported: s)
        got = precision.compute_settings("auto", cuda, source_only)
        assert got["precision"] == used and got["memory_format"] == "channels_last"
        assert got["loss_scaling"] is (used == "fp16")
    for requested in ("bf16", "fp16"):
        kept = precision.compute_settings(requested, cpu, metahallu)
        assert kept["precision"] == "fp32" and kept["loss_scaling"] is False
        assert kept["note"].startswith("metahallu trains in float32")
    assert precision.memory_format(got) is torch.channels_last
    assert precision.memory_format(kept) is torch.preserve_format


def test_the_memory_format_follows_the_device_unless_asked():
    registry.discover()
    source_only = registry.METHODS.get("source_only")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.compute_settings("auto", cpu, source_only)["memory_format"] == "contiguous"
    assert precision.compute_settings("auto", cuda, source_only)["memory_format"] == "channels_last"
    assert precision.compute_settings("auto", cpu, source_only, "channels_last")["memory_format"] == "channels_last"
    assert precision.compute_settings("auto", cuda, source_only, "contiguous")["memory_format"] == "contiguous"
    assert precision.parse_memory_format("Channels-Last") == "channels_last"
    with pytest.raises(UsageError, match=r"--memory-format 'nchw' is not a memory format; use one of auto, "
                                         r"contiguous, channels_last\."):
        precision.parse_memory_format("nchw")


def test_a_channels_last_trial_stores_its_model_so_and_has_its_own_id():
    (auto,) = build_grid(dataset="synthetic-heart", methods=["source_only"], shots=[1], directions=["mr2ct"],
                         seeds=[0], preset="quick")
    (spec,) = build_grid(dataset="synthetic-heart", methods=["source_only"], shots=[1], directions=["mr2ct"],
                         seeds=[0], preset="quick", memory_format="channels_last")
    assert "memory_format" not in auto.to_dict() and spec.to_dict()["memory_format"] == "channels_last"
    assert spec.trial_id != auto.trial_id and TrialSpec.from_dict(spec.to_dict()) == spec
    setup = setup_trial(spec, torch.device("cpu"), log=lambda s: None)
    assert setup.compute["memory_format"] == "channels_last"
    kernels = [p for p in setup.method.parameters() if p.ndim == 4]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    assert not all(p.is_contiguous() for p in kernels)  # a 1x1 kernel is both; the 3x3 ones are not
    batch = setup.sampler.batch(0).to(torch.device("cpu"), precision.memory_format(setup.compute))
    assert batch.source_x.is_contiguous(memory_format=torch.channels_last)


def test_auto_keeps_every_published_trial_id():
    # the published board's own trial of source_only, 1 shot, seed 0: the field added for precision changes no hash
    volumes = pd.read_csv(BOARD_VOLUMES, dtype=str)
    published = volumes[(volumes.method == "source_only") & (volumes.shots == "1") & (volumes.seed == "0")]
    (spec,) = build_grid(dataset="synthetic-heart", methods=["source_only"], shots=[1], directions=["mr2ct"],
                         seeds=[0], preset="quick")
    assert spec.precision == "auto" and "precision" not in spec.to_dict()
    assert set(published.trial_id) == {spec.trial_id}
    (bf16,) = build_grid(dataset="synthetic-heart", methods=["source_only"], shots=[1], directions=["mr2ct"],
                         seeds=[0], preset="quick", precision="bf16")
    assert bf16.trial_id != spec.trial_id and bf16.to_dict()["precision"] == "bf16"
    assert TrialSpec.from_dict(bf16.to_dict()) == bf16


def _spec(method: str, requested: str) -> TrialSpec:
    (spec,) = build_grid(dataset="synthetic-heart", methods=[method], shots=[1], directions=["mr2ct"], seeds=[0],
                         preset="quick", preset_overrides={"steps": 3}, precision=requested)
    return spec


def test_bf16_and_fp16_autocast_train_the_step_and_metahallu_keeps_float32(tmp_path):
    runs = {}
    for method, requests in (("source_only", ("auto", "bf16", "fp16")), ("metahallu", ("auto", "bf16"))):
        for requested in requests:
            folder = tmp_path / f"{method}-{requested}"
            folder.mkdir()
            logs: list[str] = []
            runs[method, requested] = (run_trial(_spec(method, requested), folder, log=logs.append), logs)
    plain, bf16 = runs["source_only", "auto"][0], runs["source_only", "bf16"][0]
    assert plain["compute"]["precision"] == "fp32" and bf16["compute"]["precision"] == "bf16"
    assert all(math.isfinite(v) for v in bf16["final_losses"].values())
    assert bf16["final_losses"] != plain["final_losses"]  # the step really ran in bfloat16
    assert "loss_scale" not in plain["compute"] and "loss_scale" not in bf16["compute"]
    fp16 = runs["source_only", "fp16"][0]
    assert fp16["compute"]["precision"] == "fp16" and fp16["compute"]["loss_scaling"] is True
    assert all(math.isfinite(v) for v in fp16["final_losses"].values())
    assert fp16["final_losses"] not in (plain["final_losses"], bf16["final_losses"])
    # the scale starts at 2**16 and halves at each overflow (it grows only after 2000 clean steps)
    skipped = fp16["compute"]["skipped_steps"]
    assert 0 <= skipped < 3 and fp16["compute"]["loss_scale"] == 2.0 ** (16 - skipped)
    (meta_auto, _), (meta_bf16, logs) = runs["metahallu", "auto"], runs["metahallu", "bf16"]
    assert meta_bf16["compute"]["precision"] == "fp32" and meta_bf16["compute"]["requested"] == "bf16"
    assert any("metahallu trains in float32" in line for line in logs)
    assert meta_bf16["final_losses"] == meta_auto["final_losses"]


def test_cli_refuses_an_unknown_precision_before_anything_runs(tmp_path, capsys):
    assert main(["run", "--methods", "source_only", "--precision", "fp8", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "--precision 'fp8' is not a precision" in capsys.readouterr().err
    for requested in ("bf16", "fp16"):
        assert main(["run", "--methods", "source_only", "--precision", requested, "--out", str(tmp_path),
                     "--dry-run"]) == 0
    assert main(["run", "--methods", "source_only", "--memory-format", "nchw", "--out", str(tmp_path),
                 "--dry-run"]) == 2
    assert "--memory-format 'nchw' is not a memory format" in capsys.readouterr().err
    assert main(["run", "--methods", "source_only", "--memory-format", "channels_last", "--out", str(tmp_path),
                 "--dry-run"]) == 0
    assert "on synthetic-heart, preset quick, memory format channels_last." in capsys.readouterr().out


@pytest.mark.parametrize("entry", ["source_only", "source_only+cdtg", "advent", "sifa_lite"])
def test_loss_scaling_in_float32_changes_no_gradient_and_no_weight(entry):
    # scaling by a power of two and back is exact in float arithmetic, so with the scaler on and no autocast a step
    # gives the plain step's gradients and weights bit for bit: each backward is scaled, each step unscales first
    # (a plug-in joining the segmenter's step included), whatever the method's optimizers and backward calls
    plain, scaled = build(entry), build(entry)
    scaled.scale_losses()
    batch = make_batch(0, source_all=True)
    for step in range(2):
        for method in (plain, scaled):
            torch.manual_seed(step)
            method.train_step(batch, step)
        assert same(params_of(plain), params_of(scaled))
        assert all((p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)
                   for p, q in zip(plain.parameters(), scaled.parameters()))
    assert scaled.loss_scaler.scale == 2.0 ** 16 and scaled.loss_scaler.skipped_steps == 0


def test_an_overflowing_step_is_skipped_and_the_scale_halved():
    method = build("source_only")
    method.scale_losses()
    first = next(method.segmenter.parameters())
    hook = first.register_hook(lambda grad: grad * float("inf"))
    before = params_of(method)
    method.train_step(make_batch(0), 0)
    assert same(params_of(method), before)  # the whole optimizer skipped its step
    assert method.loss_scaler.scale == 2.0 ** 15 and method.loss_scaler.skipped_steps == 1
    hook.remove()
    method.train_step(make_batch(1), 1)
    assert not same(params_of(method), before)
    assert method.loss_scaler.scale == 2.0 ** 15 and method.loss_scaler.skipped_steps == 1


def test_a_step_around_the_scaler_is_refused():
    method = build("source_only")
    method.optimizers[0].step()  # without loss scaling, a direct step is allowed
    method.scale_losses()
    with pytest.raises(RuntimeError, match=r"stepped an optimizer \(Adam\) directly under --precision fp16"):
        method.optimizers[0].step()


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
def test_an_fp16_checkpoint_resumes_with_its_loss_scale(tmp_path):
    # the scaler's state is saved with the weights: a trial resumed after an overflow goes on at the halved scale
    # and ends where the uninterrupted one does (a fresh scale of 2**16 would overflow, and skip, again)
    def method():
        m = build("source_only")
        m.scale_losses()
        return m, build_schedulers(m, warmup=1)

    def run(m, schedulers, steps):
        for step in steps:
            torch.manual_seed(step)
            hook = next(m.segmenter.parameters()).register_hook(lambda g: g * float("inf")) if step == 0 else None
            m.train_step(make_batch(step), step)
            if hook is not None:
                hook.remove()
            for sch in schedulers:
                sch.step()

    whole, whole_schedulers = method()
    run(whole, whole_schedulers, range(3))
    cut, cut_schedulers = method()
    run(cut, cut_schedulers, range(2))
    _save_checkpoint(tmp_path / CHECKPOINT, cut, cut_schedulers, 2, 0.0)
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert saved["grad_scaler"]["scale"] == 2.0 ** 15 and saved["skipped_steps"] == 1
    resumed, resumed_schedulers = method()
    assert _resume(tmp_path / CHECKPOINT, resumed, resumed_schedulers, torch.device("cpu")) == (2, 0.0)
    assert (resumed.loss_scaler.scale, resumed.loss_scaler.skipped_steps) == (2.0 ** 15, 1)
    run(resumed, resumed_schedulers, [2])
    assert same(params_of(resumed), params_of(whole)) and resumed.loss_scaler.scale == 2.0 ** 15
