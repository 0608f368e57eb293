"""The trainer without Ray: determinism, resumption, divergence, evaluation shape."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from benchmark import registry
from benchmark.errors import TrialDiverged
from benchmark.presets import get_preset
from benchmark.protocol import TrialSpec
from benchmark.trainer import CHECKPOINT, run_trial


def make_spec(method: str = "source_only", steps: int = 6, **kw) -> TrialSpec:
    registry.discover()
    cls = registry.METHODS.get(method)
    settings = get_preset("quick", steps=steps, log_every=3, checkpoint_every=3)
    hparams = {k: v.default for k, v in cls.declared_hparams().items()}
    return TrialSpec(dataset="synthetic-heart", direction="mr2ct", method=method, shots=1, seed=kw.pop("seed", 0),
                     preset="quick", hparams=hparams, preset_settings=settings, **kw)


class Stop(Exception):
    pass


def test_same_seed_same_numbers_and_resume_is_exact(tmp_path):
    spec = make_spec(steps=6)
    dirs = [tmp_path / n for n in "abc"]
    for d in dirs:
        d.mkdir()
    a = run_trial(spec, dirs[0], log=lambda s: None)
    b = run_trial(spec, dirs[1], log=lambda s: None)
    assert a["summary"] == b["summary"] and a["final_losses"] == b["final_losses"]
    assert len(a["volumes"]) == 6 and a["structures"] == ["MYO", "LAC", "LVC", "AA"]
    for v in a["volumes"]:
        assert set(v["metrics"]) == {"MYO", "LAC", "LVC", "AA"}
        assert all(np.isfinite(x) for m in v["metrics"].values() for x in m.values())

    # killed right after the checkpoint of step 3, then run again: identical to the uninterrupted run
    def die_at_3(line):
        if "step 3/6" in line:
            raise Stop

    with pytest.raises(Stop):
        run_trial(spec, dirs[2], log=die_at_3)
    assert torch.load(dirs[2] / CHECKPOINT, weights_only=True)["step"] == 3
    logs = []
    resumed = run_trial(spec, dirs[2], log=logs.append)
    assert any("resuming from step 3" in line for line in logs)
    assert not any("step 3/6" in line for line in logs)
    assert resumed["summary"] == a["summary"] and resumed["final_losses"] == a["final_losses"]


def test_prefetching_changes_no_number(tmp_path, monkeypatch):
    # the GPU's input pipeline (batches drawn ahead by two processes), forced on the CPU: the same trial, bit for bit
    from benchmark import trainer

    spec = make_spec("metahallu", steps=4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = run_trial(spec, tmp_path / "a", log=lambda s: None)
    assert plain["input_pipeline"] == {"prefetch": 0, "pin_memory": False, "workers": 0}
    monkeypatch.setattr(trainer, "input_pipeline", lambda device: {"prefetch": 3, "pin_memory": False, "workers": 2})
    ahead = run_trial(spec, tmp_path / "b", log=lambda s: None)
    assert ahead["input_pipeline"]["prefetch"] == 3
    assert ahead["final_losses"] == plain["final_losses"] and ahead["summary"] == plain["summary"]
    a = torch.load(tmp_path / "a" / trainer.FINAL_WEIGHTS, weights_only=True)["method"]
    b = torch.load(tmp_path / "b" / trainer.FINAL_WEIGHTS, weights_only=True)["method"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_different_seed_gives_different_weights(tmp_path):
    r0 = run_trial(make_spec(steps=2, seed=0), tmp_path, log=lambda s: None)
    r1 = run_trial(make_spec(steps=2, seed=1), tmp_path, log=lambda s: None)
    assert r0["final_losses"] != r1["final_losses"]


def test_nan_loss_raises_diverged(tmp_path, monkeypatch):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "nan_method.py").write_text(textwrap.dedent('''
        from benchmark.method import SupervisedMethod
        from benchmark.registry import register_method

        @register_method("nan_for_trainer_test")
        class NanMethod(SupervisedMethod):
            """Reports a NaN loss at step 1."""
            def update(self, batch, step):
                return {"loss": float("nan") if step == 1 else 1.0}
    '''))
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(tmp_path))
    registry.discover()
    with pytest.raises(TrialDiverged, match=r"nan_for_trainer_test/1shot/seed0 diverged: loss loss=nan at step 1"):
        run_trial(make_spec("nan_for_trainer_test", steps=4), tmp_path, log=lambda s: None)


def test_lr_lambda_spans_warm_up_decay_and_are_zero_outside():
    from benchmark.trainer import lr_lambda

    f = lr_lambda(warmup=2, total=6, start=4)
    assert [f(s) for s in range(4)] == [0.0] * 4          # before the span
    assert f(4) == 0.5 and f(5) == 1.0                    # warm-up: (k + 1) / warmup
    assert f(6) == 1.0 and f(7) == pytest.approx(0.75 ** 0.9)  # decay over the remaining total - warmup steps
    assert f(9) == pytest.approx(0.25 ** 0.9) and f(10) == 0.0 and f(50) == 0.0
    assert lr_lambda(2, 6)(0) == 0.5                      # start defaults to 0


def test_two_stage_method_runs_its_own_steps_and_schedules(tmp_path):
    """cyclegan_uda adds translation steps before the preset's; each stage gets its own schedule."""
    spec = make_spec("cyclegan_uda", steps=4)
    spec.hparams["translate_ratio"] = 0.5
    logs: list[str] = []
    result = run_trial(spec, tmp_path, log=logs.append)
    assert any("step 6/6" in line for line in logs)       # 2 translation + 4 segmentation steps
    assert set(result["final_losses"]) == {"seg"}
    cls = registry.METHODS.get("cyclegan_uda")
    from benchmark.method import MethodContext
    from benchmark.models import build_segmenter

    ctx = MethodContext(in_channels=1, num_classes=5, device=torch.device("cpu"), total_steps=4,
                        backbone=lambda classes=5: build_segmenter(spec.preset_settings["backbone"], 1, classes))
    method = cls(ctx, spec.hparams)
    assert method.total_steps == 6 and method.optimizer_spans == [(2, 6), (0, 2), (0, 2)]
