"""``--precision``: what each request trains in, what is refused, and that ``auto`` keeps CPU trials as they were."""

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
from benchmark.trainer import run_trial

BOARD_VOLUMES = Path(__file__).resolve().parents[1] / "leaderboards" / "synthetic-heart" / "mr2ct.volumes.csv"


@pytest.mark.parametrize("text, message", [
    ("fp8", "--precision 'fp8' is not a precision; use one of auto, fp32, bf16, fp16."),
    ("fp16", "--precision fp16 is not supported: float16 training needs a gradient scaler"),
])
def test_unsupported_precisions_are_refused_with_the_reason(text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(".", r"\.")):
        precision.parse_precision(text)
    assert [precision.parse_precision(p) for p in ("AUTO", "fp32", " bf16")] == ["auto", "fp32", "bf16"]


def test_what_each_request_trains_in(monkeypatch):
    registry.discover()
    source_only, metahallu = registry.METHODS.get("source_only"), registry.METHODS.get("metahallu")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.compute_settings("auto", cpu, source_only) == {
        "requested": "auto", "precision": "fp32", "memory_format": "contiguous", "note": ""}
    assert precision.compute_settings("bf16", cpu, source_only)["precision"] == "bf16"
    for supported, used in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "bf16_supported", lambda device, s=supported: s)
        got = precision.compute_settings("auto", cuda, source_only)
        assert got["precision"] == used and got["memory_format"] == "channels_last"
    kept = precision.compute_settings("bf16", cpu, metahallu)
    assert kept["precision"] == "fp32" and kept["note"].startswith("metahallu trains in float32")
    assert precision.memory_format(got) is torch.channels_last
    assert precision.memory_format(kept) is torch.preserve_format


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


def test_bf16_autocast_trains_the_step_and_metahallu_keeps_float32(tmp_path):
    runs = {}
    for method in ("source_only", "metahallu"):
        for requested in ("auto", "bf16"):
            folder = tmp_path / f"{method}-{requested}"
            folder.mkdir()
            logs: list[str] = []
            runs[method, requested] = (run_trial(_spec(method, requested), folder, log=logs.append), logs)
    plain, bf16 = runs["source_only", "auto"][0], runs["source_only", "bf16"][0]
    assert plain["compute"]["precision"] == "fp32" and bf16["compute"]["precision"] == "bf16"
    assert all(math.isfinite(v) for v in bf16["final_losses"].values())
    assert bf16["final_losses"] != plain["final_losses"]  # the step really ran in bfloat16
    (meta_auto, _), (meta_bf16, logs) = runs["metahallu", "auto"], runs["metahallu", "bf16"]
    assert meta_bf16["compute"]["precision"] == "fp32" and meta_bf16["compute"]["requested"] == "bf16"
    assert any("metahallu trains in float32" in line for line in logs)
    assert meta_bf16["final_losses"] == meta_auto["final_losses"]


def test_cli_refuses_fp16_before_anything_runs(tmp_path, capsys):
    assert main(["run", "--methods", "source_only", "--precision", "fp16", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "float16 training needs a gradient scaler" in capsys.readouterr().err
    assert main(["run", "--methods", "source_only", "--precision", "bf16", "--out", str(tmp_path), "--dry-run"]) == 0
