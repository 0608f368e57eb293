"""``--gpus-per-trial auto``, ``--cpus-per-trial auto`` and resource requests checked against the cluster before any
trial starts."""

from __future__ import annotations

import re

import pytest

from benchmark.cli import main
from benchmark.errors import UsageError
from benchmark.resources import AUTO, check_trial_request, parse_cpus, parse_gpus, resolve_placement
from benchmark.store import ResultsStore

CPU_ONLY = [{"CPU": 2.0, "memory": 1e10}]
ONE_GPU = [{"CPU": 16.0, "GPU": 1.0}]


def test_parse_gpus():
    assert parse_gpus("auto") == AUTO and parse_gpus("AUTO") == AUTO
    assert parse_gpus("0.5") == 0.5 and parse_gpus("0") == 0.0
    with pytest.raises(UsageError, match=r"--gpus-per-trial -1 is impossible"):
        parse_gpus("-1")
    with pytest.raises(UsageError, match=r"--gpus-per-trial 'one' is neither 'auto' nor a number"):
        parse_gpus("one")


def test_auto_is_no_gpu_on_a_cpu_cluster_and_one_per_trial_with_gpus():
    cpu = resolve_placement(1.0, AUTO, CPU_ONLY)
    assert (cpu.gpus, cpu.device, cpu.concurrent) == (0.0, "cpu", 2)
    assert cpu.describe() == ("Device: cpu, 1 CPU per trial (auto: the cluster has no GPU); 2 trials at a time on "
                              "1 node with 2 CPUs and no GPU.")
    gpu = resolve_placement(1.0, AUTO, ONE_GPU)
    assert (gpu.gpus, gpu.device, gpu.concurrent) == (1.0, "cuda", 1)
    assert gpu.describe() == ("Device: cuda, 1 GPU and 1 CPU per trial (auto); 1 trial at a time on 1 node with "
                              "16 CPUs and 1 GPU.")
    two_nodes = resolve_placement(2.0, AUTO, [{"CPU": 16.0, "GPU": 4.0}, {"CPU": 8.0}])
    assert (two_nodes.gpus, two_nodes.concurrent) == (1.0, 4)  # the CPU-only node can hold no GPU trial


def test_parse_cpus():
    assert parse_cpus("auto") == AUTO and parse_cpus(" Auto ") == AUTO and parse_cpus("2") == 2.0
    with pytest.raises(UsageError, match=r"--cpus-per-trial 'many' is neither 'auto' nor a number of CPUs"):
        parse_cpus("many")
    for bad in ("0", "-2", "nan"):
        with pytest.raises(UsageError, match=rf"--cpus-per-trial {bad} is impossible: give a positive number"):
            check_trial_request(parse_cpus(bad), None)
    check_trial_request(AUTO, 5)  # auto is resolved against the cluster later


def test_auto_cpus_are_one_per_trial_without_gpus_and_a_gpu_nodes_share_with_them():
    cpu = resolve_placement(AUTO, AUTO, CPU_ONLY)
    assert (cpu.cpus, cpu.gpus, cpu.concurrent) == (1.0, 0.0, 2)  # every core trains a trial, as before
    assert cpu.describe().startswith("Device: cpu, 1 CPU per trial (auto: the cluster has no GPU); 2 trials")
    gpu = resolve_placement(AUTO, AUTO, ONE_GPU)
    assert (gpu.cpus, gpu.gpus, gpu.concurrent) == (16.0, 1.0, 1)  # the whole node feeds its one GPU trial
    assert gpu.describe() == ("Device: cuda, 1 GPU and 16 CPUs per trial (auto); 1 trial at a time on 1 node with "
                              "16 CPUs and 1 GPU.")
    quarter = resolve_placement(AUTO, 0.25, ONE_GPU)
    assert (quarter.cpus, quarter.concurrent) == (4.0, 4)  # four trials share the GPU and the 16 CPUs
    assert resolve_placement(AUTO, 0.25, ONE_GPU).describe().startswith(
        "Device: cuda, 0.25 GPUs and 4 CPUs per trial (auto); 4 trials at a time")
    # the smallest GPU node's share, so a trial fits on every GPU node; the CPU-only node takes no GPU trial
    mixed = resolve_placement(AUTO, 1.0, [{"CPU": 32.0, "GPU": 4.0}, {"CPU": 12.0, "GPU": 2.0}, {"CPU": 64.0}])
    assert (mixed.cpus, mixed.concurrent) == (6.0, 6)
    assert resolve_placement(AUTO, 1.0, [{"CPU": 2.0, "GPU": 4.0}]).cpus == 1.0  # at least one CPU
    assert resolve_placement(AUTO, 0.0, ONE_GPU).cpus == 1.0  # a CPU-only run on a GPU node: one core per trial


def test_fractions_pack_trials_onto_one_gpu():
    p = resolve_placement(2.0, 0.25, ONE_GPU)
    assert (p.gpus, p.concurrent) == (0.25, 4)
    assert resolve_placement(4.0, 0.25, ONE_GPU).concurrent == 4  # 16 CPUs / 4 = 4 = 1 GPU / 0.25
    assert resolve_placement(8.0, 0.25, ONE_GPU).concurrent == 2  # now the CPUs are the limit


@pytest.mark.parametrize("cpus, gpus, asked", [(1.0, 0.5, "1 CPU and 0.5 GPUs"), (4.0, 0.0, "4 CPUs"),
                                               (1.0, 2.0, "1 CPU and 2 GPUs")])
def test_a_request_no_node_can_meet_is_refused(cpus, gpus, asked):
    nodes = CPU_ONLY if gpus < 2 else ONE_GPU
    have = "1 node with 2 CPUs and no GPU" if gpus < 2 else "1 node with 16 CPUs and 1 GPU"
    with pytest.raises(UsageError) as err:
        resolve_placement(cpus, gpus, nodes)
    assert str(err.value) == (f"The request of {asked} per trial (--cpus-per-trial, --gpus-per-trial) fits on no "
                              f"node of the Ray cluster, which has {have}; ask for at most what one node has.")


@pytest.mark.slow
def test_run_with_an_impossible_gpu_request_exits_2_before_any_trial(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    out = tmp_path / "run"
    code = main(["run", "--methods", "source_only", "--shots", "1", "--seeds", "0", "--directions", "mr2ct",
                 "--steps", "1", "--gpus-per-trial", "0.5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(r"The request of 1 CPU and 0\.5 GPUs per trial .* fits on no node of the Ray cluster, which has "
                     r"1 node with \d+ CPUs? and no GPU", err)
    assert list(ResultsStore(out).records()) == []
    assert not (out / "trials").exists() or not any((out / "trials").iterdir())
