"""GPU packing on a CPU machine, with Ray's logical GPU resources; Ray printing nothing; loggers and a tracker."""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from benchmark.progress import HEARTBEAT
from benchmark.runner import choose_device, make_tuner, ray_session

pytestmark = pytest.mark.slow


def _probe(config):
    """Records which GPUs Ray gave the trial, the device the suite would pick, and when it ran."""
    import ray
    import torch
    from ray import tune

    start = time.time()
    print("a trial's own output")  # stays in the worker: trials write their log.txt instead
    # stay running until ``together`` trials have started (or 60 s passed), so that trials Ray runs side by side
    # overlap however slowly their workers start on a busy machine
    Path(config["out"], f"started-{config['spec']}").touch()
    deadline = start + 60
    while len(list(Path(config["out"]).glob("started-*"))) < config["together"] and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    ids = [str(i) for i in ray.get_gpu_ids()]
    info = {"ids": ids, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time(),
            "device": choose_device(ids, torch.cuda.is_available())}
    Path(config["out"], f"{config['spec']}.json").write_text(json.dumps(info))
    tune.report({"done": 1})


def _overlap(infos) -> int:
    """The largest number of trials running at one moment."""
    events = sorted([(i["start"], 1) for i in infos] + [(i["end"], -1) for i in infos])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def test_choose_device():
    assert choose_device(["0"], cuda_available=True) == "cuda:0"
    assert choose_device(["0"], cuda_available=False) == "cpu"
    assert choose_device([], cuda_available=True) == "cpu"


def _reporter(config):
    """Reports like a trial: a heartbeat, a logged step with its loss, a heartbeat, the last logged step."""
    from ray import tune

    tune.report({"step": 0, "total_steps": 2, "timesteps_total": 0, HEARTBEAT: 1})
    tune.report({"step": 1, "total_steps": 2, "timesteps_total": 1, "loss": 0.5})
    tune.report({"step": 2, "total_steps": 2, "timesteps_total": 2, HEARTBEAT: 1})
    tune.report({"step": 2, "total_steps": 2, "timesteps_total": 2, "loss": 0.25})


def test_fractional_gpus_pack_two_trials_per_gpu(tmp_path, capfd):
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module
    with ray_session(tmp_path, address=None, num_cpus=4, num_gpus=2) as resources:
        assert resources["GPU"] == 2
        results = {}
        for gpus, name, together in ((0.5, "half", 4), (1.0, "whole", 2)):
            out = tmp_path / name
            out.mkdir()
            make_tuner(_probe, {"spec": list(range(4)), "out": str(out), "together": together}, tmp_path / name, 1,
                       gpus).fit()
            results[name] = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]

    half, whole = results["half"], results["whole"]
    assert len(half) == len(whole) == 4
    for info in half + whole:
        assert len(info["ids"]) == 1 and info["ids"][0] in {"0", "1"}
        assert info["visible"] == info["ids"][0]  # Ray restricts CUDA to the assigned GPU
        assert info["device"] == "cpu"  # no CUDA on this machine: the trial falls back to the CPU
    assert sorted(Counter(i["ids"][0] for i in half).values()) == [2, 2]  # two half-GPU trials per GPU
    assert _overlap(half) == 4  # all four ran at once on two GPUs
    assert _overlap(whole) <= 2  # whole-GPU trials: at most one per GPU at a time
    printed = "".join(capfd.readouterr())
    assert "a trial's own output" not in printed and "pid=" not in printed
    assert "Configuration for experiment" not in printed and "tensorboard" not in printed.lower()


def test_loggers_and_a_tracker_record_the_logged_steps_only(tmp_path, capfd):
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with ray_session(tmp_path, address=None, num_cpus=1):
        make_tuner(_reporter, {"spec": [0]}, tmp_path, 1, 0, tracker="tensorboard").fit()
    (trial_dir,) = [d for d in (tmp_path / "ray_results" / "fsuda").iterdir() if d.is_dir()]
    rows = list(csv.DictReader((trial_dir / "progress.csv").open()))
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "0.5"), ("2", "0.25")]
    assert HEARTBEAT not in rows[0]
    events = list(trial_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    printed = "".join(capfd.readouterr())
    assert "Configuration for experiment" not in printed and "tensorboard --logdir" not in printed
