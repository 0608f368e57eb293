"""Conformance tests every registered method passes (a new method file is tested for free).

Composed methods (a method with plug-ins, ``source_only+cdtg``) run the same tests through ``train_step`` and
``infer``, which for a method without plug-ins are ``update`` and ``predict``.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from benchmark import registry
from benchmark.method import Method
from benchmark.protocol import parse_method_entry
from benchmark.streams import STREAMS
from helpers import CLASSES, SIZE, build, tiny_batch

registry.discover()
#: every registered method, and compositions with plug-ins that exercise the plug-in mechanism
METHOD_NAMES = registry.METHODS.names() + ["source_only+cdtg", "metahallu+cdtg"]


def train(method: Method, steps: int = 2) -> list[dict[str, float]]:
    out = []
    for step in range(steps):
        torch.manual_seed(1000 + step)
        method.train()
        out.append(method.train_step(tiny_batch(step), step))
    return out


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_contract(name):
    cls = registry.METHODS.get(parse_method_entry(name)[0][0])
    assert issubclass(cls, Method) and cls.__doc__
    assert set(cls.streams) <= set(STREAMS)
    method = build(name)
    assert method.optimizers, "a method lists its optimizers so the trainer can schedule them"
    for losses in train(method):
        assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses.values())
    method.eval()
    x = torch.randn(3, 1, SIZE, SIZE)
    with torch.no_grad():
        assert method.infer(x).shape == (3, CLASSES, SIZE, SIZE)
        feats = method.features(x)
    assert feats.ndim == 4 and feats.shape[0] == 3


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_deterministic_for_a_seed(name):
    a, b = build(name, seed=3), build(name, seed=3)
    assert train(a) == train(b)
    x = torch.randn(2, 1, SIZE, SIZE)
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a.infer(x), b.infer(x))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_checkpoint_round_trip(name):
    a = build(name, seed=1)
    train(a, 1)
    buf = io.BytesIO()
    torch.save({"method": a.state_dict(), "optimizers": [o.state_dict() for o in a.optimizers]}, buf)
    buf.seek(0)
    b = build(name, seed=2)
    state = torch.load(buf, weights_only=True)
    b.load_state_dict(state["method"])
    for opt, s in zip(b.optimizers, state["optimizers"]):
        opt.load_state_dict(s)
    # identical after restoring, and identical after one more step
    assert train(a, 1) == train(b, 1)
    x = torch.randn(2, 1, SIZE, SIZE)
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a.infer(x), b.infer(x))
