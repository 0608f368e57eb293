"""The slice cache and the batch sampler."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import numpy as np
import pytest
import torch

import benchmark
from benchmark import cache as cache_mod
from benchmark.cache import PreprocessSettings, SliceCache, cache_path, prepare
from benchmark.data import BatchSampler, Prefetcher
from benchmark.streams import Stream, build_streams
from benchmark.protocol import TrialSpec


@pytest.fixture(scope="module")
def adapter():
    return benchmark.get_dataset("synthetic-heart")


@pytest.fixture
def cache(adapter):
    return prepare(adapter, PreprocessSettings(size=64), workers=2, log=lambda s: None)


def test_cache_layout_and_normalisation(adapter, cache):
    index = cache.index
    assert index["dataset"] == "synthetic-heart" and index["settings"]["size"] == 64
    for m in ("mr", "ct"):
        images, labels = cache.array(m, "images"), cache.array(m, "labels")
        assert isinstance(images, np.memmap) and images.dtype == np.float32 and labels.dtype == np.uint8
        assert images.shape[1:] == (64, 64) and labels.shape == images.shape
        cases = index["cases"][m]
        assert sorted(cases) == sorted(adapter.cases(m, "train") + adapter.cases(m, "test"))
        assert {c["split"] for c in cases.values()} == {"train", "test"}
        # statistics from the training volumes only: they have mean 0 and std 1, test volumes need not
        train = np.concatenate([images[c["start"]:c["stop"]].ravel() for c in cases.values() if c["split"] == "train"])
        assert abs(train.mean()) < 1e-4 and abs(train.std() - 1) < 1e-4
        assert set(np.unique(labels)) == {0, 1, 2, 3, 4}


def test_cache_spacing_is_the_resized_grid(adapter, cache):
    from benchmark.phantom import generate_case

    raw = generate_case("ct", 0)
    info = cache.case_info("ct", "000")
    x, y, z = raw.image.shape
    assert info["raw_shape"] == [x, y, z]
    assert info["stop"] - info["start"] == z
    assert info["spacing"] == pytest.approx([raw.spacing[2], raw.spacing[0] * x / 64, raw.spacing[1] * y / 64])


def test_resize_keeps_label_volumes_close(adapter):
    """Per-class physical volume survives the 64x64 resize within a few percent."""
    from benchmark.phantom import generate_case

    raw = generate_case("mr", 1)
    labels = np.moveaxis(raw.label, 2, 0)
    small = cache_mod._resize_slices(labels, 64, labels=5)
    scale = (labels.shape[1] / 64) * (labels.shape[2] / 64)
    for c in range(1, 5):
        before, after = (labels == c).sum(), (small == c).sum() * scale
        assert after == pytest.approx(before, rel=0.08), c


def test_prepare_is_atomic(adapter, tmp_path, monkeypatch):
    """A prepare that fails halfway leaves no cache directory and no temporary files behind."""
    calls = {"n": 0}
    real = cache_mod._preprocess_one

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(cache_mod, "_preprocess_one", flaky)
    settings = PreprocessSettings(size=32)
    with pytest.raises(OSError, match="disk full"):
        prepare(adapter, settings, root=tmp_path, workers=1, log=lambda s: None)
    assert not cache_path(adapter, settings, tmp_path).exists()
    assert list((tmp_path / "synthetic-heart").iterdir()) == []


def test_unreadable_cache_index_is_reported(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(benchmark.errors.DataError, match="unreadable"):
        SliceCache(tmp_path)


def test_corrupt_cache_array_is_reported(tmp_path, cache):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cache.path, copy)
    (copy / "ct_images.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(benchmark.errors.DataError, match="ct_images.npy is missing or corrupt"):
        SliceCache(copy).array("ct", "images")


def test_batches_are_deterministic_per_step_and_labeled_only_where_allowed(adapter, cache):
    spec = TrialSpec(dataset="synthetic-heart", direction="mr2ct", method="x", shots=1, seed=0, preset="quick")
    streams = build_streams(adapter, spec, ("source", "target"))
    sampler = BatchSampler(cache, streams, batch_size=4, seed=0)
    b1, b2, b3 = sampler.batch(7), sampler.batch(7), sampler.batch(8)
    assert b1.source_x.shape == (4, 1, 64, 64) and b1.source_y.shape == (4, 64, 64)
    assert b1.target_x.shape == (4, 1, 64, 64)
    assert b1.target_labeled_y is None and b1.source_unlabeled_x is None
    assert str(b1.source_y.dtype) == "torch.int64" and int(b1.source_y.max()) <= 4
    assert (b1.source_x == b2.source_x).all() and (b1.source_y == b2.source_y).all()
    assert not (b1.source_x == b3.source_x).all()
    # the labeled source slices come only from the one labeled volume
    (case,) = streams["source"].cases
    r = cache.slice_range("mr", case)
    assert set(sampler.slices["source"].tolist()) == set(range(r.start, r.stop))


def test_streams_are_independent_of_each_other(adapter, cache):
    spec = TrialSpec(dataset="synthetic-heart", direction="ct2mr", method="x", shots=4, seed=2, preset="quick")
    both = BatchSampler(cache, build_streams(adapter, spec, ("source", "target")), batch_size=4, seed=2).batch(3)
    alone = BatchSampler(cache, build_streams(adapter, spec, ("target",)), batch_size=4, seed=2).batch(3)
    assert both.target_x.equal(alone.target_x)


def test_unknown_stream_is_rejected(cache):
    with pytest.raises(ValueError, match="Unknown stream 'bogus'"):
        BatchSampler(cache, {"bogus": Stream("mr", ["000"], True)}, batch_size=2, seed=0)


def _same_batch(a, b) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
               for x, y in zip(vars(a).values(), vars(b).values()))


def _quick_sampler(adapter, cache, seed: int, streams=("source", "target"), shots: int = 4) -> BatchSampler:
    spec = TrialSpec(dataset="synthetic-heart", direction="mr2ct", method="x", shots=shots, seed=seed,
                     preset="quick")
    return BatchSampler(cache, build_streams(adapter, spec, streams), batch_size=4, seed=seed)


@pytest.mark.parametrize("depth, workers", [(0, 1), (1, 1), (3, 1), (8, 2)])
def test_prefetching_changes_no_batch(adapter, cache, depth, workers):
    sampler = _quick_sampler(adapter, cache, seed=3)
    direct = [sampler.batch(step) for step in range(50)]
    rng = torch.get_rng_state()
    with Prefetcher(sampler, 0, 50, depth, workers=workers) as batches:
        assert len(multiprocessing.active_children()) == (workers if depth else 0)
        ahead = [batches.batch(step).to("cpu") for step in range(50)]
    assert multiprocessing.active_children() == []  # the drawing processes are joined on exit
    assert torch.equal(torch.get_rng_state(), rng)  # the loader seeded its workers without the trial's generator
    assert all(_same_batch(a, b) for a, b in zip(direct, ahead))
    assert ahead[0].source_y.dtype == torch.int64  # compact uint8 labels are widened by Batch.to
    # a resumed loop starts further on and gets that step's batches
    with Prefetcher(sampler, 20, 50, depth, workers=workers) as batches:
        assert all(_same_batch(direct[step], batches.batch(step).to("cpu")) for step in range(20, 30))


def test_a_shared_batch_is_the_batch_with_compact_labels(adapter, cache):
    sampler = _quick_sampler(adapter, cache, seed=4)
    plain, shared = sampler.batch(6), sampler.batch(6, shared=True)
    assert shared.source_x.is_shared() and shared.source_y.is_shared() and shared.source_y.dtype == torch.uint8
    assert not plain.source_x.is_shared() and plain.source_y.dtype == torch.int64
    assert _same_batch(plain, shared.to("cpu"))


def test_a_failing_worker_raises_its_own_error(adapter, cache, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cache.path, copy)
    sampler = _quick_sampler(adapter, SliceCache(copy), seed=0, streams=("source",))
    (copy / "mr_images.npy").unlink()  # the workers open the arrays on their first draw
    with pytest.raises(benchmark.errors.DataError) as err:
        with Prefetcher(sampler, 0, 10, 2, workers=1) as batches:
            batches.batch(0)
    # the error the caller's own draw raises, not the loader's wrapping of the worker's traceback
    assert str(err.value).startswith(f"The slice cache file {copy / 'mr_images.npy'} is missing or corrupt")
    assert "DataLoader worker" not in str(err.value)
    assert multiprocessing.active_children() == []


def test_a_crashed_worker_is_replaced_by_drawing_in_the_loop(adapter, cache):
    sampler = _quick_sampler(adapter, cache, seed=1)
    direct = [sampler.batch(step) for step in range(12)]
    got = []
    with pytest.warns(RuntimeWarning, match=r"A batch-drawing worker failed at step \d+ \(RuntimeError\); the "
                                            r"trial draws its batches in its own process from here on"):
        with Prefetcher(sampler, 0, 12, 2, workers=1) as batches:
            got.append(batches.batch(0).to("cpu"))
            (worker,) = multiprocessing.active_children()
            os.kill(worker.pid, signal.SIGKILL)
            worker.join()
            got += [batches.batch(step).to("cpu") for step in range(1, 12)]
    assert all(_same_batch(a, b) for a, b in zip(direct, got))


def test_threads_drawing_at_once_get_the_batches_of_their_steps(adapter, cache):
    # four threads draw the same 40 steps in different orders at the same time: each gets exactly the batch of its
    # step, so no thread's draw leaks into another's (each augments with its own pipeline)
    spec = TrialSpec(dataset="synthetic-heart", direction="mr2ct", method="x", shots=4, seed=5, preset="quick")
    sampler = BatchSampler(cache, build_streams(adapter, spec, ("source", "target")), batch_size=4, seed=5)
    direct = [sampler.batch(step) for step in range(40)]
    orders = [list(range(40)), list(range(39, -1, -1)), list(range(0, 40, 2)) + list(range(1, 40, 2)),
              [int(i) for i in np.random.default_rng(0).permutation(40)]]
    got: dict[tuple[int, int], object] = {}
    barrier = threading.Barrier(len(orders))

    def draw(k: int) -> None:
        barrier.wait()
        for step in orders[k]:
            got[k, step] = sampler.batch(step)

    workers = [threading.Thread(target=draw, args=(k,)) for k in range(len(orders))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert all(_same_batch(direct[step], got[k, step]) for k in range(len(orders)) for step in range(40))


def test_prefetcher_stops_its_workers_when_the_loop_raises(adapter, cache):
    sampler = _quick_sampler(adapter, cache, seed=0, streams=("source",), shots=1)
    with pytest.raises(KeyboardInterrupt):
        with Prefetcher(sampler, 0, 100, 4, workers=2) as batches:
            batches.batch(0)
            raise KeyboardInterrupt
    assert multiprocessing.active_children() == []
    with pytest.raises(ValueError, match="prefetch depth must be at least 0, not -1"):
        Prefetcher(sampler, 0, 10, -1)
    with pytest.raises(ValueError, match="prefetch workers must be at least 1 to draw ahead, not 0"):
        Prefetcher(sampler, 0, 10, 2, workers=0)
    with Prefetcher(sampler, 3, 10, 0) as batches:
        with pytest.raises(ValueError, match=r"The prefetcher hands out steps 3 to 9 in order; step 4 was asked for"):
            batches.batch(4)
