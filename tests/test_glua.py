"""GLUA: the switches (both off is source-only, step for step), the translator's parts, the local gap mask."""

from __future__ import annotations

import pytest
import torch

from benchmark import registry
from benchmark.blocks import AdaINDecoder, ContentEncoder, StyleEncoder, adain
from benchmark.data import Batch
from benchmark.hparams import resolve
from benchmark.method import MethodContext
from benchmark.models import build_segmenter

registry.discover()
BACKBONE = {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}
SIZE, CLASSES, B = 32, 5, 4


def make_batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (B, SIZE, SIZE), generator=g)
    x = y.float()[:, None] / CLASSES + 0.1 * torch.randn(B, 1, SIZE, SIZE, generator=g)
    return Batch(source_x=x, source_y=y, source_all_x=torch.randn(B, 1, SIZE, SIZE, generator=g),
                 target_x=-x.flip(0) + 0.1 * torch.randn(B, 1, SIZE, SIZE, generator=g))


def build(name: str = "glua", seed: int = 0, **overrides):
    cls = registry.METHODS.get(name)
    ctx = MethodContext(in_channels=1, num_classes=CLASSES, device=torch.device("cpu"), total_steps=10,
                        backbone=lambda classes=CLASSES: build_segmenter(BACKBONE, 1, classes))
    torch.manual_seed(seed)
    method = cls(ctx, resolve(cls.declared_hparams(), 0, overrides))
    method.train()
    return method


def params_of(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_both_switches_off_is_source_only_step_for_step():
    glua, source_only = build("glua", 0, **{"global": False, "local": False}), build("source_only", 0)
    assert same(params_of(glua.segmenter), params_of(source_only.segmenter))  # same initialisation
    assert len(glua.optimizers) == 1 and not hasattr(glua, "content") and not hasattr(glua, "d_feature")
    for step in range(3):
        batch = make_batch(step)
        torch.manual_seed(100 + step)
        a = glua.update(batch, step)
        torch.manual_seed(100 + step)
        b = source_only.update(batch, step)
        assert a == {"seg": b["loss"]}
        assert same(params_of(glua.segmenter), params_of(source_only.segmenter))


def test_global_switch_trains_a_translator_and_changes_what_the_segmenter_sees():
    m = build(local=False)
    before = params_of(m.content) + params_of(m.decoder)
    losses = m.update(make_batch(0), 0)
    assert {"recon", "image_adv", "latent", "image_disc", "seg"} <= set(losses)
    assert not same(params_of(m.content) + params_of(m.decoder), before)
    assert "local_adv" not in losses


def test_local_switch_depends_on_target_images():
    def after(local: bool, target_seed: int) -> list[torch.Tensor]:
        m = build(**{"global": False, "local": local})
        batch = make_batch(0)
        batch.target_x = torch.randn(B, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(target_seed))
        losses = m.update(batch, 0)
        assert ("local_adv" in losses) == local
        return params_of(m.segmenter)

    assert same(after(False, 1), after(False, 2))
    assert not same(after(True, 1), after(True, 2))


def test_gap_mask_has_mean_one_and_weights_the_surest_target_locations():
    m = build()
    scores = torch.tensor([[[[1.0, 0.5], [0.0, 0.9]]]])  # 1 = "looks like translated source", 0 = "surely target"
    mask = m.gap_mask(scores)
    assert torch.allclose(mask.mean(), torch.tensor(1.0))
    assert mask[0, 0, 1, 0] == mask.max() and mask[0, 0, 0, 0] == mask.min() == 0.0
    assert torch.equal(build(mask=False).gap_mask(scores), torch.ones_like(scores))
    half = build(mask_strength=0.5).gap_mask(scores)
    assert torch.allclose(half, 0.5 + 0.5 * mask)


def test_translation_keeps_size_and_follows_the_style_code():
    torch.manual_seed(0)
    content, decoder = ContentEncoder(1, 8, downsample=1, blocks=1), AdaINDecoder(16, 1, 8, upsample=1, blocks=1)
    style = StyleEncoder(1, 8, 8)
    x = torch.randn(2, 1, SIZE, SIZE)
    assert content(x).shape == (2, 16, SIZE // 2, SIZE // 2) and style(x).shape == (2, 8)
    c = content(x)
    a, b = decoder(c, torch.zeros(2, 8)), decoder(c, torch.ones(2, 8))
    assert a.shape == x.shape and not torch.allclose(a, b)  # the style code changes the rendering
    # AdaIN: per image and channel, the output has mean beta and standard deviation 1 + gamma
    feats = torch.randn(3, 4, 8, 8) * 5 + 2
    gamma, beta = torch.full((3, 4), 1.0), torch.full((3, 4), -3.0)
    out = adain(feats, gamma, beta)
    assert torch.allclose(out.mean((2, 3)), beta, atol=1e-4)
    assert torch.allclose(out.std((2, 3), unbiased=False), 1 + gamma, atol=1e-3)


def test_translated_source_keeps_its_labels_and_batch():
    m = build(local=False, translated_fraction=0.5)
    batch = make_batch(0)
    m.update(batch, 0)
    out = m.render_as_target(batch.source_x, batch.target_x)
    assert out.shape == batch.source_x.shape and torch.isfinite(out).all()
    assert m.translate(batch.source_x).shape == batch.source_x.shape


@pytest.mark.parametrize("overrides", [{}, {"mask": False}])
def test_deterministic_for_a_seed(overrides):
    a, b = build(seed=3, **overrides), build(seed=3, **overrides)
    for step in range(2):
        torch.manual_seed(step)
        la = a.update(make_batch(step), step)
        torch.manual_seed(step)
        assert la == b.update(make_batch(step), step)
    assert same(params_of(a), params_of(b))
