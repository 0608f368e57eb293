"""Meta-Hallucinator version 1 (``hallucinator=random``): transforms, bi-level gradients, self-ensembling, switches.

The paired hallucinator of version 2 is tested in ``test_metahallu_v2.py``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from benchmark.losses import dice_ce_loss
from benchmark.streams import Batch
from helpers import B, CLASSES, SIZE, blob_labels, build, make_batch, method_module, params_of, same, step_with_target

MODULE = method_module("metahallu")
Hallucinator, integrate_velocity, warp, warp_labels = (MODULE.Hallucinator, MODULE.integrate_velocity, MODULE.warp,
                                                       MODULE.warp_labels)


def build_v1(seed: int = 0, **overrides):
    """metahallu with version 1's random hallucinator."""
    return build("metahallu", seed, hallucinator="random", **overrides)


def metahallu_batch(seed: int) -> Batch:
    """Labeled source images of nested squares and noise target images."""
    return make_batch(seed, blobs=True)


def train(method, steps: int = 2, batch_seed: int = 0) -> list[dict[str, float]]:
    out = []
    for step in range(steps):
        torch.manual_seed(100 + step)
        out.append(method.update(metahallu_batch(batch_seed + step), step))
    return out


def objectives(method, batch_seed: int = 0, weight: float = 1.0):
    batch = metahallu_batch(batch_seed)
    xa, ya, xb, yb = method._split(batch)
    view, target = method._target_view(batch.target_x) if method.hparams["consistency"] else (None, None)
    return method.meta_objectives(xa, ya, xb, yb, view, target, weight)


# --- the hallucinator's transforms ------------------------------------------------------------------------------


def test_integer_translation_moves_image_and_label_together():
    g = torch.Generator().manual_seed(0)
    y = blob_labels(2, g)
    x = torch.randn(2, 1, SIZE, SIZE, generator=g)
    disp = torch.zeros(2, 2, SIZE, SIZE)
    disp[:, 0] = 3 * 2 / SIZE  # 3 pixels along x: out[..., j] = in[..., j + 3]
    disp[:, 1] = -2 * 2 / SIZE  # -2 pixels along y: out[..., i, :] = in[..., i - 2, :]
    wx = warp(x, disp)
    soft, hard = warp_labels(y, disp, CLASSES)
    assert torch.allclose(wx[..., 2:, :-3], x[..., :-2, 3:], atol=1e-5)
    assert torch.equal(hard[:, 2:, :-3], y[:, :-2, 3:])
    assert torch.allclose(soft.sum(1), torch.ones(2, SIZE, SIZE))


def test_warped_label_stays_a_valid_label_map():
    g = torch.Generator().manual_seed(1)
    y = blob_labels(B, g)
    h = Hallucinator(max_displacement=0.1)
    code = 3 * torch.randn(B, h.code_channels, 2, 2, generator=g)
    out = h(torch.randn(B, 1, SIZE, SIZE, generator=g), y, CLASSES, code)
    assert out.label.dtype == torch.int64 and out.label.shape == y.shape
    assert out.label.min() >= 0 and out.label.max() < CLASSES
    assert torch.equal(out.label, out.soft_label.argmax(1))
    assert torch.allclose(out.soft_label.sum(1), torch.ones(B, SIZE, SIZE), atol=1e-5)
    assert (out.label != y).float().mean() > 0.01  # it did move
    # a deformation changes the layout, not the label set: no class appears from nowhere
    for i in range(B):
        assert set(out.label[i].unique().tolist()) <= set(y[i].unique().tolist())


@pytest.mark.parametrize("steps", [0, 5])
def test_hallucinator_bounds(steps):
    h = Hallucinator(max_displacement=0.05, max_log_gain=0.2, max_bias=0.25, integration_steps=steps)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, 1, SIZE, SIZE, generator=g)
    out = h(x, code=100 * torch.randn(B, h.code_channels, 2, 2, generator=g))  # saturates every tanh
    bound = 2 * 0.05  # in normalised units: 0.05 image sides
    assert out.displacement.abs().max() <= bound + 1e-6
    assert out.displacement.abs().max() > 0.5 * bound
    assert out.gain.min() >= math.exp(-0.2) - 1e-6 and out.gain.max() <= math.exp(0.2) + 1e-6
    assert out.bias.abs().max() <= 0.25 + 1e-6


def test_scaling_and_squaring_of_a_constant_field_is_that_translation():
    v = torch.full((1, 2, 8, 8), 0.1)
    assert torch.allclose(integrate_velocity(v, 5), v, atol=1e-6)


def test_hallucinator_is_random_at_init_and_a_function_of_its_code():
    torch.manual_seed(0)
    h = Hallucinator(max_displacement=0.06)
    x = torch.randn(B, 1, SIZE, SIZE)
    torch.manual_seed(5)
    a = h(x)
    torch.manual_seed(5)
    b = h(x)
    c = h(x)
    assert torch.equal(a.image, b.image)
    assert not torch.allclose(a.displacement, c.displacement, atol=1e-3)
    bound = 2 * 0.06
    assert a.displacement.abs().mean() > 0.2 * bound  # a real augmentation, not a near-identity
    assert (a.gain - 1).abs().mean() > 0.02 and a.bias.abs().mean() > 0.02


def test_identity_when_spatial_and_appearance_are_off():
    m = build_v1(spatial=False, appearance=False)
    batch = metahallu_batch(0)
    out = m.hallucinate(batch.source_x, batch.source_y)
    assert torch.equal(out.image, batch.source_x) and torch.equal(out.label, batch.source_y)
    assert out.displacement is None and out.gain is None


def test_spatial_and_appearance_switches_change_what_they_claim():
    batch = metahallu_batch(0)
    x, y = batch.source_x, batch.source_y
    spatial_only = build_v1(appearance=False)
    torch.manual_seed(3)
    s = spatial_only.hallucinate(x, y)
    assert s.gain is None and s.bias is None and s.displacement.abs().max() > 0
    assert torch.equal(s.image, warp(x, s.displacement))  # geometry only
    assert not torch.equal(s.label, y)
    appearance_only = build_v1(spatial=False)
    torch.manual_seed(3)
    a = appearance_only.hallucinate(x, y)
    assert a.displacement is None and torch.equal(a.label, y)  # labels untouched
    assert torch.equal(a.image, a.gain * x + a.bias) and (a.gain - 1).abs().max() > 0


def test_soft_loss_on_one_hot_labels_is_dice_ce():
    g = torch.Generator().manual_seed(4)
    logits, y = torch.randn(2, CLASSES, 8, 8, generator=g), torch.randint(0, CLASSES, (2, 8, 8), generator=g)
    onehot = torch.nn.functional.one_hot(y, CLASSES).permute(0, 3, 1, 2).float()
    assert torch.allclose(dice_ce_loss(logits, onehot), dice_ce_loss(logits, y), atol=1e-6)


# --- the bi-level meta-learning -------------------------------------------------------------------------------


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_test_loss_reaches_the_hallucinator_only_through_the_inner_step(first_order):
    m = build_v1(first_order=first_order, smooth_weight=0.0, appearance_smooth_weight=0.0)
    obj = objectives(m)
    _, h_grads = m.meta_gradients(obj)
    assert sum(g.abs().sum() for g in h_grads) > 0
    # with a zero inner learning rate the updated weights equal the current ones: nothing reaches the hallucinator,
    # although the meta-train loss was computed on its output (it is not part of the hallucinator's objective)
    m0 = build_v1(first_order=first_order, smooth_weight=0.0, appearance_smooth_weight=0.0, inner_lr=0.0)
    obj0 = objectives(m0)
    assert obj0["meta_train"].requires_grad and any(
        g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(
            obj0["meta_train"], list(m0.hallucinator.parameters()), retain_graph=True, allow_unused=True))
    _, h0 = m0.meta_gradients(obj0)
    assert all(torch.count_nonzero(g) == 0 for g in h0)


def test_meta_train_loss_alone_does_not_update_the_hallucinator():
    m = build_v1(meta_test_weight=0.0, smooth_weight=0.0, appearance_smooth_weight=0.0, consistency=False)
    h0, s0 = params_of(m.hallucinator), params_of(m.segmenter)
    train(m, 2)
    assert same(params_of(m.hallucinator), h0) and not same(params_of(m.segmenter), s0)
    m = build_v1(consistency=False)
    train(m, 2)
    assert not same(params_of(m.hallucinator), h0)


def test_first_and_second_order_gradients():
    key = "unet.segmentation_head.0.weight"
    grads = {}
    for name, first_order in (("so", False), ("fo", True)):
        m = build_v1(first_order=first_order, inner_lr=0.1)
        torch.manual_seed(7)
        obj = objectives(m)
        # the meta-test gradient at the updated weights, as if they were independent weights
        at_fast = torch.autograd.grad(m.hparams["meta_test_weight"] * obj["meta_test"], obj["fast"][key],
                                      retain_graph=True)[0]
        seg, hal = m.meta_gradients(obj)
        assert all(torch.isfinite(g).all() for g in seg if g is not None)
        assert sum(g.abs().sum() for g in hal) > 0  # the hallucinator learns on both paths
        k = [n for n, _ in m.segmenter.named_parameters()].index(key)
        grads[name] = (seg[k], obj["meta_train_grads"][key].detach() + at_fast)
        assert all(math.isfinite(v) for v in train(m, 1)[0].values())
    # first order (MAML-FO): meta-train gradient + meta-test gradient at the updated weights, no Hessian term
    assert torch.allclose(grads["fo"][0], grads["fo"][1], atol=1e-6)
    # second order: the Hessian term makes a difference
    assert not torch.allclose(grads["so"][0], grads["so"][1], atol=1e-6)


def test_inner_step_is_functional_and_adapts_only_the_chosen_weights():
    m = build_v1(inner_params="decoder")
    before = params_of(m.segmenter)
    obj = objectives(m)
    assert same(params_of(m.segmenter), before)  # the real weights are untouched by the inner step
    params = dict(m.segmenter.named_parameters())
    for name, fast in obj["fast"].items():
        if name.startswith("unet.encoder."):
            assert fast is params[name]
        elif obj["meta_train_grads"][name] is not None:
            assert fast is not params[name] and not torch.equal(fast, params[name])
    obj_all = objectives(build_v1(inner_params="all"))
    assert not torch.equal(obj_all["fast"]["unet.encoder.conv1.weight"], params["unet.encoder.conv1.weight"])
    with pytest.raises(ValueError, match="inner_params"):
        build_v1(inner_params="encoder")


# --- self-ensembling and the switches ---------------------------------------------------------------------------


def test_teacher_is_an_ema_of_the_student():
    m = build_v1(ema_decay=0.9)
    train(m, 3)
    before = params_of(m.teacher.model)
    torch.manual_seed(11)
    m.update(metahallu_batch(5), 20)  # decay min(0.9, 1 - 1/21) = 0.9
    for t, t0, s in zip(m.teacher.model.parameters(), before, m.segmenter.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s.detach(), atol=1e-6)
        assert not t.requires_grad


def test_consistency_switch_decides_whether_target_images_matter():
    def after(consistency: bool, target_seed: int) -> list[torch.Tensor]:
        m = build_v1(consistency=consistency, rampup=0.0)
        losses, weights = step_with_target(m, metahallu_batch(0), target_seed, step=3, torch_seed=100)
        assert ("consistency" in losses) == consistency
        return weights

    assert same(after(False, 1), after(False, 2))
    assert not same(after(True, 1), after(True, 2))


def test_meta_switch():
    m = build_v1(meta=False)
    h0 = params_of(m.hallucinator)
    losses = train(m, 2)
    assert same(params_of(m.hallucinator), h0)  # no meta-objective, no hallucinator training
    assert "meta_test" not in losses[-1] and "meta_train" in losses[-1]
    m = build_v1(meta=True)
    losses = train(m, 2)
    assert not same(params_of(m.hallucinator), h0) and "meta_test" in losses[-1]


def test_reduces_to_source_only_with_random_augmentation():
    """meta and consistency off: exactly a Dice + CE step on (frozen-init hallucination, real) source halves."""
    m = build_v1(meta=False, consistency=False)
    frozen = copy.deepcopy(m.hallucinator)
    reference = copy.deepcopy(m.segmenter)
    opt = torch.optim.Adam(reference.parameters(), lr=m.hparams["lr"], weight_decay=m.hparams["weight_decay"])
    for step in range(3):
        batch = metahallu_batch(step)
        torch.manual_seed(100 + step)
        m.update(batch, step)
        # the reference: source-only training on the real half plus a random augmentation of the other half
        torch.manual_seed(100 + step)
        with torch.no_grad():
            aug = frozen(batch.source_x[:B // 2], batch.source_y[:B // 2], CLASSES)
        loss = (dice_ce_loss(reference(aug.image), aug.soft_label)
                + 1.0 * dice_ce_loss(reference(batch.source_x[B // 2:]), batch.source_y[B // 2:]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        assert same(params_of(m.segmenter), params_of(reference))
    assert same(params_of(m.hallucinator), params_of(frozen))


@pytest.mark.parametrize("overrides", [{}, {"first_order": True}])
def test_deterministic_for_a_seed(overrides):
    a, b = build_v1(3, **overrides), build_v1(3, **overrides)
    assert train(a) == train(b)
    assert same(params_of(a), params_of(b))
