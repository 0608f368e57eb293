"""Method-specific claims of the image-translation baselines (``sifa_lite``, ``cyclegan_uda``)."""

from __future__ import annotations

from functools import partial

import torch

from helpers import build as build_method
from helpers import params_of, same, tiny_batch

#: these methods train with a four-step budget unless a test sets another
build = partial(build_method, total_steps=4)


def test_sifa_segmentation_loss_never_reaches_the_generator():
    # with every translation loss weighted 0, only the segmentation loss is left: it must move the segmenter
    # (E and the classifier) and leave the generator and the reconstruction decoder exactly as they were
    method = build("sifa_lite", cycle_weight=0.0, image_adv_weight=0.0, output_adv_weight=0.0)
    g_t, dec, seg = params_of(method.g_t), params_of(method.decoder_u), params_of(method.segmenter)
    method.train()
    method.update(tiny_batch(0), 0)
    assert not same(seg, params_of(method.segmenter))
    assert same(g_t, params_of(method.g_t)) and same(dec, params_of(method.decoder_u))
    # with the translation losses on, the same step trains the generator too
    method = build("sifa_lite")
    g_t = params_of(method.g_t)
    method.train()
    method.update(tiny_batch(0), 0)
    assert not same(g_t, params_of(method.g_t))


def test_sifa_one_generator_call_equals_two():
    """Rendering source and source-like images in one call changes nothing: instance norm is per image."""
    method = build("sifa_lite")
    a, b = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    joint = method.g_t(torch.cat([a, b]))
    torch.testing.assert_close(joint, torch.cat([method.g_t(a), method.g_t(b)]), rtol=1e-5, atol=1e-5)


def test_sifa_reconstruction_reads_the_encoder_features_and_adds_the_encoded_image_with_skip():
    plain, skip = build("sifa_lite", skip=False), build("sifa_lite", skip=True)  # same seed, same weights
    plain.eval()
    skip.eval()
    with torch.no_grad():
        skips = plain.segmenter.encode(torch.randn(2, 1, 32, 32))
        out = plain._reconstruct(skips)
        assert out.shape == (2, 1, 32, 32)
        # without skip the encoded image (smp's first "feature") is ignored; every encoder level is read
        blanked = plain._reconstruct([torch.zeros_like(skips[0])] + skips[1:])
        torch.testing.assert_close(blanked, out)
        for level in range(1, len(skips)):
            moved = [s if i != level else s + torch.randn_like(s) for i, s in enumerate(skips)]
            assert not torch.allclose(plain._reconstruct(moved), out), level
        # with skip (SIFA's configuration) U's output is the same change of appearance added to that image
        torch.testing.assert_close(skip._reconstruct(skips), out + skips[0])
        x = torch.randn(2, 1, 32, 32)
        torch.testing.assert_close(skip.g_t(x) - x, plain.g_t(x), rtol=1e-5, atol=1e-5)


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


def test_sifa_each_part_trains_on_its_own_objective():
    """E gets ``encoder_translation_weight`` of the translation loss; G_t and U get all of it and no more."""
    def step(**overrides):
        method = build("sifa_lite", output_adv_weight=0.0, **overrides)
        method.train()
        method.update(tiny_batch(0), 0)
        return method

    base = step(seg_weight=0.0, encoder_translation_weight=0.1)
    doubled = step(seg_weight=0.0, encoder_translation_weight=0.2)
    with_seg = step(seg_weight=1.0, encoder_translation_weight=0.1)
    encoder = [(a, b) for a, b in zip(_grads(base.segmenter.unet.encoder), _grads(doubled.segmenter.unet.encoder))]
    assert encoder and any(bool(a.abs().sum() > 0) for a, _ in encoder)
    for a, b in encoder:                          # E's gradient is linear in the translation share
        torch.testing.assert_close(b, 2 * a, rtol=1e-4, atol=1e-9)
    for module in ("g_t", "decoder_u"):           # the generators' gradients depend on neither weight
        for other in (doubled, with_seg):
            for a, b in zip(_grads(getattr(base, module)), _grads(getattr(other, module))):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_sifa_output_alignment_waits_then_ramps_up_linearly():
    method = build("sifa_lite", total_steps=100, output_adv_delay=0.2)
    assert [method.output_adv_ramp(s) for s in (0, 20, 25, 30, 99)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert build("sifa_lite", total_steps=100, output_adv_delay=0.0).output_adv_ramp(0) == 0.0
    assert build("sifa_lite", total_steps=100, output_adv_delay=0.0).output_adv_ramp(5) == 0.5


def test_cyclegan_stages_and_spans():
    method = build("cyclegan_uda", total_steps=10, translate_ratio=0.5, identity_weight=0.0)
    assert method.translate_steps == 5 and method.total_steps == 15
    assert method.optimizer_spans == [(5, 15), (0, 5), (0, 5)]
    seg = params_of(method.segmenter)
    method.train()
    losses = method.update(tiny_batch(0), 0)
    assert set(losses) == {"g_adv", "cycle", "identity", "disc"} and losses["identity"] == 0.0
    assert same(seg, params_of(method.segmenter))                      # stage 1 never touches the segmenter
    g_st = params_of(method.g_st)
    assert set(method.update(tiny_batch(1), 5)) == {"seg"}
    assert same(g_st, params_of(method.g_st))                          # stage 2 never touches the translator
    with_identity = build("cyclegan_uda", identity_weight=0.5)
    with_identity.train()
    assert with_identity.update(tiny_batch(0), 0)["identity"] > 0


def test_cyclegan_translator_is_shared_by_trials_with_the_same_key(tmp_path):
    key = {"dataset": "d", "direction": "mr2ct", "seed": 0}
    first = build("cyclegan_uda", artifacts=tmp_path, run_key=key, total_steps=4, translate_ratio=0.5)
    first.train()
    for step in range(first.translate_steps):
        first.update(tiny_batch(step), step)
    assert bool(first.translator_ready) and len(list(tmp_path.glob("cyclegan-*.pt"))) == 1

    # another trial with the same key (e.g. another shot count) loads it and skips stage 1
    second = build("cyclegan_uda", seed=5, artifacts=tmp_path, run_key=key, total_steps=4, translate_ratio=0.5)
    assert bool(second.translator_ready)
    for a, b in zip(first.g_st.state_dict().values(), second.g_st.state_dict().values()):
        assert torch.equal(a, b)
    assert second.update(tiny_batch(0), 0) == {"translator_reused": 1.0}

    # a different seed or different translator settings train their own
    assert not bool(build("cyclegan_uda", artifacts=tmp_path, run_key={**key, "seed": 1}, total_steps=4,
                          translate_ratio=0.5).translator_ready)
    assert not bool(build("cyclegan_uda", artifacts=tmp_path, run_key=key, total_steps=4, translate_ratio=0.5,
                          cycle_weight=5.0).translator_ready)
