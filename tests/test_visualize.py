"""``python -m benchmark visualize``: a finished trial's final weights drawn as a PNG grid; clear usage errors."""

from __future__ import annotations

import pytest
from helpers import finished_run

import torch

from benchmark import trainer
from benchmark.cli import main
from benchmark.store import ResultsStore
from benchmark.trainer import CHECKPOINT, FINAL_WEIGHTS
from benchmark.visualize import DPI, PANEL_INCHES, initial_method, load_trial_method


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cache_dir):
    """A results store with two finished 2-step trials (metahallu, source_only) of the quick preset."""
    out = tmp_path_factory.mktemp("run")
    store = ResultsStore(out)
    for spec, _ in finished_run(out, cache_dir, ["metahallu", "source_only"], shots=[1], directions=["mr2ct"],
                                seeds=[0]):
        trial = store.trial_dir(spec)
        assert (trial / FINAL_WEIGHTS).exists() and not (trial / CHECKPOINT).exists()
    return out


def png_shape(path):
    import matplotlib.image

    return matplotlib.image.imread(path).shape[:2]


@pytest.mark.parametrize("method, columns", [("metahallu", 6), ("source_only", 3)])
def test_visualize_writes_the_grid(run_dir, method, columns, capsys):
    png = run_dir / f"{method}.png"
    code = main(["visualize", method, "--out", str(run_dir), "--direction", "mr2ct", "--shots", "1", "--seed", "0",
                 "--rows", "2", "--png", str(png)])
    assert code == 0, capsys.readouterr().err
    assert png.exists()
    assert png_shape(png) == (round(2 * PANEL_INCHES * DPI), round(columns * PANEL_INCHES * DPI))
    out = capsys.readouterr().out
    assert f"Saved {png} (2 rows:" in out
    if method == "metahallu":
        assert "hallucination at step 0, hallucination + warped label" in out


def test_visualize_by_trial_id_to_the_default_place(run_dir, capsys):
    trial_id = next(r["trial_id"] for r in ResultsStore(run_dir).records() if r["config"]["method"] == "metahallu")
    assert main(["visualize", "--trial", trial_id, "--out", str(run_dir), "--rows", "1"]) == 0
    written = list((run_dir / "figures").glob(f"metahallu_mr2ct_1shot_seed0_{trial_id}.png"))
    assert len(written) == 1 and png_shape(written[0]) == (round(PANEL_INCHES * DPI), round(6 * PANEL_INCHES * DPI))


def test_step_0_is_the_state_the_trainer_started_from(run_dir, tmp_path, cache_dir, monkeypatch):
    # the trainer's method as train() receives it, for the same trial spec, against visualize's rebuild
    started = {}

    def capture(spec, method, *args, **kwargs):
        started.update({k: v.detach().clone() for k, v in method.state_dict().items()})
        return {}, 0.0

    monkeypatch.setattr(trainer, "train", capture)
    store = ResultsStore(run_dir)
    record = next(r for r in store.records() if r["config"]["method"] == "metahallu")
    trained, spec, adapter, cache = load_trial_method(store, record)
    monkeypatch.setenv("FSUDA_CACHE", cache_dir)
    trainer.run_trial(spec, tmp_path)
    initial = initial_method(spec, adapter, cache).state_dict()
    assert started.keys() == initial.keys()
    assert all(torch.equal(started[k], initial[k]) for k in initial)
    # and training moved the hallucinator away from it
    assert any(not torch.equal(v, initial[k]) for k, v in trained.state_dict().items() if k.startswith("hallucinator."))


@pytest.mark.parametrize("args, message", [
    (["metahallu", "--seed", "7"], "No finished trial in"),
    (["--trial", "0123456789abcdef"], "No finished trial '0123456789abcdef'"),
    (["adaptseg"], "holds no finished adaptseg trial"),
    (["nosuch"], "Unknown method 'nosuch'"),
    ([], "Name a method"),
])
def test_visualize_usage_errors_exit_2(run_dir, args, message, capsys):
    assert main(["visualize", *args, "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_visualize_needs_a_run_directory(tmp_path, capsys):
    assert main(["visualize", "metahallu", "--out", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
