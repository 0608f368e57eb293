"""What a trial's record says about how it was made, and the files the suite refuses to unpickle."""

from __future__ import annotations

import ast
import os
import platform
import pickle
import shutil
from importlib import metadata
from pathlib import Path

import pytest
import torch
from helpers import finished_run

from benchmark import registry
from benchmark.cli import main
from benchmark.errors import DataError
from benchmark.io import load_tensors
from benchmark.protocol import select_labeled
from benchmark.runner import build_grid
from benchmark.store import NUMERIC_PACKAGES
from benchmark.trainer import CHECKPOINT, FINAL_WEIGHTS, run_trial

REPO = Path(__file__).resolve().parent.parent


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what a hostile ``model.pt`` could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def crafted(path: Path, marker: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump({"method": _Payload(marker), "step": 2}, fh, protocol=2)
    return path


def test_a_crafted_pickle_is_refused_in_one_sentence_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = crafted(tmp_path / "model.pt", marker)
    with pytest.raises(DataError) as info:
        load_tensors(path, "the final weights")
    message = str(info.value)
    assert message.startswith(f"Refusing to load the final weights {path}: it is not a plain file of tensors")
    assert "\n" not in message
    assert not marker.exists()
    with pytest.raises(DataError, match="is not a plain file"):
        load_tensors(tmp_path / "model.pt", "x")  # the same file again: still refused, still harmless
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="garbage.pt"):
        load_tensors(tmp_path / "garbage.pt", "the weights")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    """A results store with one finished 2-step source_only trial."""
    out = tmp_path_factory.mktemp("run")
    ((spec, record),) = finished_run(out, cache_dir, ["source_only"], shots=[4], directions=["ct2mr"], seeds=[1])
    return out, spec, record


def test_visualize_refuses_a_crafted_model_file_naming_it(finished, tmp_path, capsys):
    out, spec, _ = finished
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    marker = tmp_path / "ran"
    crafted(copy / "trials" / spec.trial_id / FINAL_WEIGHTS, marker)
    assert main(["visualize", "--trial", spec.trial_id, "--out", str(copy)]) == 1
    err = capsys.readouterr().err
    assert f"Refusing to load the final weights of trial {spec.trial_id}" in err and FINAL_WEIGHTS in err
    assert not marker.exists()


def test_resuming_from_a_crafted_checkpoint_fails_naming_it(finished, tmp_path):
    _, spec, _ = finished
    marker = tmp_path / "ran"
    crafted(tmp_path / CHECKPOINT, marker)
    with pytest.raises(DataError, match="Refusing to load the training checkpoint .*checkpoint.pt"):
        run_trial(spec, tmp_path, log=lambda s: None)
    assert not marker.exists()


def test_the_record_names_labeled_volumes_versions_and_determinism(finished):
    _, spec, record = finished
    adapter = registry.get_dataset("synthetic-heart")
    labeled = select_labeled(adapter.cases("ct", "train"), 4, 1, dataset="synthetic-heart", modality="ct")
    assert record["labeled_volumes"] == {"source": {"modality": "ct", "cases": labeled}}
    assert record["device"] == "cpu"
    det = record["determinism"]
    assert det["deterministic_algorithms"] is False and det["cuda"] is None and det["torch_threads"] >= 1
    assert det["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # Linux: the model name the kernel reports
        names = {line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")}
        assert det["cpu_model"] in names
        first = cpuinfo.read_text().split("\n\n")[0].splitlines()
        value = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in first if ":" in line}
        if "cpu family" in value:  # x86: the numbers that tell CPU generations apart under one model name
            assert det["cpu_id"] == (f"{value['vendor_id']} family {value['cpu family']} model {value['model']} "
                                     f"stepping {value['stepping']}")
        else:
            assert det["cpu_id"] is None
    else:
        assert det["cpu_model"] == (platform.processor() or platform.machine())
    versions = record["versions"]
    assert set(NUMERIC_PACKAGES) <= set(versions)
    for dist in ("torch", "numpy", "scipy", "opencv-python-headless", "albumentations", "nibabel", "timm",
                 "segmentation-models-pytorch", "ray"):
        assert versions[dist] == metadata.version(dist)
    import cv2

    assert versions["opencv-python-headless"].startswith(cv2.__version__)


def test_oracle_records_its_labeled_target_volumes(tmp_path):
    (spec,) = build_grid(dataset="synthetic-heart", methods=["oracle"], shots=[1], directions=["mr2ct"], seeds=[0],
                         preset="quick", preset_overrides={"steps": 1})
    result = run_trial(spec, tmp_path, log=lambda s: None)
    adapter = registry.get_dataset("synthetic-heart")
    cases = select_labeled(adapter.cases("ct", "train"), 1, 0, dataset="synthetic-heart", modality="ct")
    assert result["labeled_volumes"] == {"target_labeled": {"modality": "ct", "cases": cases}}


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for folder in ("benchmark", "methods", "datasets"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == name):
                    found.append((path, node))
    return found


def test_no_code_unpickles_what_it_reads():
    torch_loads = _calls("torch")
    assert [p.relative_to(REPO).as_posix() for p, _ in torch_loads] == ["benchmark/io.py"]
    assert all(any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in call.keywords)
               for _, call in torch_loads)
    np_loads = _calls("np")
    assert np_loads, "the scan finds the numpy loads"
    for path, call in np_loads:
        assert any(k.arg == "allow_pickle" and getattr(k.value, "value", None) is False for k in call.keywords), (
            f"{path.relative_to(REPO)}:{call.lineno} calls np.load without allow_pickle=False")
