"""Method-specific claims of the image-translation baselines (``sifa_lite``, ``cyclegan_uda``)."""

from __future__ import annotations

import torch

from benchmark import registry
from benchmark.hparams import resolve
from benchmark.method import MethodContext
from benchmark.models import build_segmenter

from test_methods_conformance import BACKBONE, CLASSES, tiny_batch

registry.discover()


def build(name: str, seed: int = 0, artifacts=None, run_key=None, total_steps: int = 4, **overrides):
    cls = registry.METHODS.get(name)
    ctx = MethodContext(in_channels=1, num_classes=CLASSES, device=torch.device("cpu"), total_steps=total_steps,
                        backbone=lambda classes=CLASSES: build_segmenter(BACKBONE, 1, classes),
                        artifacts=artifacts, run_key=run_key or {"seed": seed})
    torch.manual_seed(seed)
    return cls(ctx, {**resolve(cls.declared_hparams(), 0), **overrides})


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_sifa_segmentation_loss_never_reaches_the_generator():
    # with every translation loss weighted 0, only the segmentation loss is left: it must move the segmenter
    # (E and the classifier) and leave the generator and the reconstruction decoder exactly as they were
    method = build("sifa_lite", cycle_weight=0.0, image_adv_weight=0.0, output_adv_weight=0.0)
    g_t, dec, seg = snapshot(method.g_t), snapshot(method.decoder_u), snapshot(method.segmenter)
    method.train()
    method.update(tiny_batch(0), 0)
    assert changed(seg, method.segmenter)
    assert not changed(g_t, method.g_t) and not changed(dec, method.decoder_u)
    # with the translation losses on, the same step trains the generator too
    method = build("sifa_lite")
    g_t = snapshot(method.g_t)
    method.train()
    method.update(tiny_batch(0), 0)
    assert changed(g_t, method.g_t)


def test_sifa_one_generator_call_equals_two():
    """Rendering source and source-like images in one call changes nothing: instance norm is per image."""
    method = build("sifa_lite")
    a, b = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    joint = method.g_t(torch.cat([a, b]))
    torch.testing.assert_close(joint, torch.cat([method.g_t(a), method.g_t(b)]), rtol=1e-5, atol=1e-5)


def test_sifa_reconstruction_reads_the_encoder_features_not_the_input_image():
    method = build("sifa_lite")
    method.eval()
    with torch.no_grad():
        skips = method.segmenter.encode(torch.randn(2, 1, 32, 32))
        out = method._reconstruct(skips)
        assert out.shape == (2, 1, 32, 32)
        # the input image (smp's first "feature") is ignored; every encoder level is read
        blanked = method._reconstruct([torch.zeros_like(skips[0])] + skips[1:])
        torch.testing.assert_close(blanked, out)
        for level in range(1, len(skips)):
            moved = [s if i != level else s + torch.randn_like(s) for i, s in enumerate(skips)]
            assert not torch.allclose(method._reconstruct(moved), out), level


def test_cyclegan_stages_and_spans():
    method = build("cyclegan_uda", total_steps=10, translate_ratio=0.5, identity_weight=0.0)
    assert method.translate_steps == 5 and method.total_steps == 15
    assert method.optimizer_spans == [(5, 15), (0, 5), (0, 5)]
    seg = snapshot(method.segmenter)
    method.train()
    losses = method.update(tiny_batch(0), 0)
    assert set(losses) == {"g_adv", "cycle", "identity", "disc"} and losses["identity"] == 0.0
    assert not changed(seg, method.segmenter)                  # stage 1 never touches the segmenter
    g_st = snapshot(method.g_st)
    assert set(method.update(tiny_batch(1), 5)) == {"seg"}
    assert not changed(g_st, method.g_st)                      # stage 2 never touches the translator
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
