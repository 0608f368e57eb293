"""AMOS in nnU-Net's raw layout end to end: validate, prepare (a separate process), then a 2-step quick trial."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from realdata_files import write_amos

from benchmark.cli import main
from benchmark.store import ResultsStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_prepare_then_run_on_an_amos_folder(tmp_path, cache_dir, capsys):
    root = tmp_path / "Dataset219_AMOS2022_postChallenge_task2"
    mr_ids = (507, 508, 510, 514, 518)
    write_amos(root, ct_ids=(1, 4, 5, 6, 7), mr_ids=mr_ids, shape=(20, 18, 12))
    assert main(["validate", "amos", "--root", str(root), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "amos: all 10 volumes passed" in out
    assert f"note: split written to {root / 'amos.split.json'} from seed 0" in out
    env = {**os.environ, "FSUDA_CACHE": cache_dir}
    res = subprocess.run([sys.executable, "-m", "benchmark", "prepare", "amos", "--root", str(root), "--workers", "1"],
                         cwd=REPO, capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Slice cache ready" in res.stdout and "(10 volumes" in res.stdout
    caches = sorted((Path(cache_dir) / "amos").iterdir())
    assert len(caches) == 1

    out = tmp_path / "run"
    args = ["run", "--dataset", "amos", "--data-root", str(root), "--methods", "source_only", "--shots", "1",
            "--directions", "ct2mr", "--seeds", "0", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    assert "Preparing" not in capsys.readouterr().out  # the run read the cache that prepare built
    assert sorted((Path(cache_dir) / "amos").iterdir()) == caches
    (record,) = list(ResultsStore(out).records())
    assert record["status"] == "ok" and record["config"]["dataset"] == "amos"
    # the MR test case: the one of smallest SHA-256("0:<case ID>") (ceil(20% of 5) = 1)
    test = min((f"amos_{i:04d}" for i in mr_ids), key=lambda c: hashlib.sha256(f"0:{c}".encode()).hexdigest())
    assert sorted(v["case"] for v in record["volumes"]) == [f"mr_{test}"]
    assert (out / "leaderboards" / "amos" / "ct2mr.csv").exists()
