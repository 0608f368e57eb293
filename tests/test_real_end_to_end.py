"""A real-format dataset end to end: validate, prepare (a separate process), then a run that uses that cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import prepare_then_run
from realdata_files import write_mmwhs


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
    record = prepare_then_run("mmwhs", root, "mr2ct", 40, cache_dir, tmp_path / "run", capsys)
    assert sorted(v["case"] for v in record["volumes"]) == ["ct_1003", "ct_1008", "ct_1014", "ct_1019"]
