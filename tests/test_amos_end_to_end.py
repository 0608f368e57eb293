"""AMOS in nnU-Net's raw layout end to end: validate, prepare (a separate process), then a 2-step quick trial."""

from __future__ import annotations

import hashlib

import pytest
from helpers import prepare_then_run
from realdata_files import write_amos

from benchmark.cli import main

pytestmark = pytest.mark.slow


def test_prepare_then_run_on_an_amos_folder(tmp_path, cache_dir, capsys):
    root = tmp_path / "Dataset219_AMOS2022_postChallenge_task2"
    mr_ids = (507, 508, 510, 514, 518)
    write_amos(root, ct_ids=(1, 4, 5, 6, 7), mr_ids=mr_ids, shape=(20, 18, 12))
    assert main(["validate", "amos", "--root", str(root), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "amos: all 10 volumes passed" in out
    assert f"note: split written to {root / 'amos.split.json'} from seed 0" in out
    record = prepare_then_run("amos", root, "ct2mr", 10, cache_dir, tmp_path / "run", capsys, workers=1)
    # the MR test case: the one of smallest SHA-256("0:<case ID>") (ceil(20% of 5) = 1)
    test = min((f"amos_{i:04d}" for i in mr_ids), key=lambda c: hashlib.sha256(f"0:{c}".encode()).hexdigest())
    assert sorted(v["case"] for v in record["volumes"]) == [f"mr_{test}"]
