"""GLUA: the switches (both off is source-only, step for step), the translator's parts, the local gap mask."""

from __future__ import annotations

import pytest
import torch

from benchmark.streams import Batch
from helpers import SIZE, build, make_batch, method_module, params_of, same, step_with_target

GLUA = method_module("glua")
AdaINDecoder, ContentEncoder, StyleEncoder = GLUA.AdaINDecoder, GLUA.ContentEncoder, GLUA.StyleEncoder
adain = GLUA.adain


def glua_batch(seed: int) -> Batch:
    """Labeled source images, unlabeled source images and target images of inverted contrast."""
    return make_batch(seed, source_all=True, inverted_target=True)


def test_both_switches_off_is_source_only_step_for_step():
    glua, source_only = build("glua", 0, **{"global": False, "local": False}), build("source_only", 0)
    assert same(params_of(glua.segmenter), params_of(source_only.segmenter))  # same initialisation
    assert len(glua.optimizers) == 1 and not hasattr(glua, "content") and not hasattr(glua, "d_feature")
    for step in range(3):
        batch = glua_batch(step)
        torch.manual_seed(100 + step)
        a = glua.update(batch, step)
        torch.manual_seed(100 + step)
        b = source_only.update(batch, step)
        assert a == {"seg": b["loss"]}
        assert same(params_of(glua.segmenter), params_of(source_only.segmenter))


def test_global_switch_trains_a_translator_and_changes_what_the_segmenter_sees():
    m = build("glua", local=False)
    before = params_of(m.content) + params_of(m.decoder)
    losses = m.update(glua_batch(0), 0)
    assert {"recon", "image_adv", "latent", "image_disc", "seg"} <= set(losses)
    assert not same(params_of(m.content) + params_of(m.decoder), before)
    assert "local_adv" not in losses


def test_local_switch_depends_on_target_images():
    def after(local: bool, target_seed: int) -> list[torch.Tensor]:
        losses, weights = step_with_target(build("glua", **{"global": False, "local": local}), glua_batch(0),
                                           target_seed)
        assert ("local_adv" in losses) == local
        return weights

    assert same(after(False, 1), after(False, 2))
    assert not same(after(True, 1), after(True, 2))


def test_gap_mask_has_mean_one_and_weights_the_surest_target_locations():
    m = build("glua")
    scores = torch.tensor([[[[1.0, 0.5], [0.0, 0.9]]]])  # 1 = "looks like translated source", 0 = "surely target"
    mask = m.gap_mask(scores)
    assert torch.allclose(mask.mean(), torch.tensor(1.0))
    assert mask[0, 0, 1, 0] == mask.max() and mask[0, 0, 0, 0] == mask.min() == 0.0
    assert torch.equal(build("glua", mask=False).gap_mask(scores), torch.ones_like(scores))
    half = build("glua", mask_strength=0.5).gap_mask(scores)
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
    m = build("glua", local=False, translated_fraction=0.5)
    batch = glua_batch(0)
    m.update(batch, 0)
    out = m.render_as_target(batch.source_x, batch.target_x)
    assert out.shape == batch.source_x.shape and torch.isfinite(out).all()
    assert m.translate(batch.source_x).shape == batch.source_x.shape


@pytest.mark.parametrize("overrides", [{}, {"mask": False}])
def test_deterministic_for_a_seed(overrides):
    a, b = build("glua", 3, **overrides), build("glua", 3, **overrides)
    for step in range(2):
        torch.manual_seed(step)
        la = a.update(glua_batch(step), step)
        torch.manual_seed(step)
        assert la == b.update(glua_batch(step), step)
    assert same(params_of(a), params_of(b))
