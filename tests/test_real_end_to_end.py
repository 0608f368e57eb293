"""A real-format dataset end to end: validate, prepare (a separate process), then a run that uses that cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from realdata_files import write_mmwhs

from benchmark.cli import main
from benchmark.store import ResultsStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_prepare_then_run_on_an_mmwhs_folder(tmp_path, cache_dir, capsys):
    root = tmp_path / "MM-WHS"
    write_mmwhs(root, shape=(18, 16, 14))
    env = {**os.environ, "FSUDA_CACHE": cache_dir}
    res = subprocess.run([sys.executable, "-m", "benchmark", "validate", "mmwhs", "--root", str(root)], cwd=REPO,
                         capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "mmwhs: all 40 volumes passed" in res.stdout
    res = subprocess.run([sys.executable, "-m", "benchmark", "prepare", "mmwhs", "--root", str(root)], cwd=REPO,
                         capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Slice cache ready" in res.stdout and "(40 volumes" in res.stdout
    caches = sorted((Path(cache_dir) / "mmwhs").iterdir())
    assert len(caches) == 1

    out = tmp_path / "run"
    args = ["run", "--dataset", "mmwhs", "--data-root", str(root), "--methods", "source_only", "--shots", "1",
            "--directions", "mr2ct", "--seeds", "0", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    assert "Preparing" not in capsys.readouterr().out  # the run read the cache that prepare built
    assert sorted((Path(cache_dir) / "mmwhs").iterdir()) == caches
    (record,) = list(ResultsStore(out).records())
    assert record["status"] == "ok" and record["config"]["dataset"] == "mmwhs"
    assert sorted(v["case"] for v in record["volumes"]) == ["ct_1003", "ct_1008", "ct_1014", "ct_1019"]
    assert (out / "leaderboards" / "mmwhs" / "mr2ct.csv").exists()
