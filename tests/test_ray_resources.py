"""GPU packing on a CPU machine, with Ray's logical GPU resources."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from benchmark.runner import choose_device, make_tuner, ray_session

pytestmark = pytest.mark.slow


def _probe(config):
    """Records which GPUs Ray gave the trial, the device the suite would pick, and when it ran."""
    import ray
    import torch
    from ray import tune

    start = time.time()
    time.sleep(1.5)
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


def test_fractional_gpus_pack_two_trials_per_gpu(tmp_path):
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module
    with ray_session(tmp_path, address=None, num_cpus=4, num_gpus=2) as resources:
        assert resources["GPU"] == 2
        results = {}
        for gpus, name in ((0.5, "half"), (1.0, "whole")):
            out = tmp_path / name
            out.mkdir()
            make_tuner(_probe, {"spec": list(range(4)), "out": str(out)}, tmp_path / name, 1, gpus).fit()
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
