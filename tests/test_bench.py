"""``python -m benchmark bench``: the report's fields, its two ratios and clear usage errors (speed is not asserted)."""

from __future__ import annotations

import json
import os

import pytest

from benchmark.cli import main


def test_bench_reports_every_method_and_the_ratios(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--methods", "source_only,metahallu:meta=false", "--steps", "2", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert [r["method"] for r in report["methods"]] == ["source_only", "metahallu:meta=false"]
    assert report["machine"]["device"] == "cpu" and report["machine"]["threads"] == 1
    for row in report["methods"]:
        assert row["steps"] == 2 and row["steps_per_s"] == pytest.approx(1e3 / row["step_ms"])
        assert row["sampler_batches_per_s"] > 0 and row["peak_memory_mib"] > 0 and row["precision"] == "fp32"
        assert row["method"] in out
    bare, ratios = report["bare_loop"], report["ratios"]
    source_only = report["methods"][0]
    assert ratios["source_only_over_bare_loop"] == pytest.approx(source_only["step_ms"] / bare["step_ms"])
    assert ratios["source_only_gflops"] == pytest.approx(bare["gflop_per_step"] / (source_only["step_ms"] / 1e3))
    assert ratios["source_only_of_gemm_rate"] == pytest.approx(ratios["source_only_gflops"]
                                                               / report["machine"]["gemm_gflops"])
    assert "x the bare loop's step time" in out and f"Report: {path}" in out
    pipeline = report["input_pipeline"]
    assert pipeline["workers"] == len(os.sched_getaffinity(0)) and pipeline["batches_per_s"] > 0
    assert ratios["pipeline_over_source_only_step"] == pytest.approx(pipeline["batches_per_s"]
                                                                     * source_only["step_ms"] / 1e3)
    assert f"input pipeline (source_only's batches, {pipeline['workers']} drawing process(es))" in out
    assert report["memory_format"] == "contiguous" and "memory format contiguous" in out


def test_bench_times_the_requested_memory_format(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--methods", "source_only", "--steps", "1", "--memory-format", "channels_last",
                 "--workers", "1", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["memory_format"] == "channels_last" and report["methods"][0]["memory_format"] == "channels_last"
    assert report["input_pipeline"]["workers"] == 1  # --workers 1
    assert "memory format channels_last" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps 0 is impossible: time at least one step."),
    (["--workers", "0"], "--workers 0 is impossible: the input pipeline draws with at least one process."),
    (["--methods", "nosuch"], "Unknown method 'nosuch'"),
    (["--precision", "fp8"], "--precision 'fp8' is not a precision"),
    (["--memory-format", "nhwc"], "--memory-format 'nhwc' is not a memory format; use one of auto, contiguous, "
                                  "channels_last."),
])
def test_bench_usage_errors_exit_2(tmp_path, args, message, capsys):
    assert main(["bench", "--json", str(tmp_path / "b.json"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
