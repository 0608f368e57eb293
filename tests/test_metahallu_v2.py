"""Meta-Hallucinator version 2: the paired hallucinator, L_trans, the bi-level update of theta and psi, switches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from helpers import B, CLASSES, SIZE, blob_labels, build, make_batch, method_module, params_of, same, step_with_target

MODULE = method_module("metahallu")
REFERENCE_V1 = Path(__file__).with_name("metahallu_v1_reference.json")


def pair(seed: int = 0):
    """Source and target images of different nested-square layouts, with a non-monotone intensity relation."""
    g = torch.Generator().manual_seed(seed)
    ys, yt = blob_labels(B, g), blob_labels(B, g)
    source_levels = torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5])
    target_levels = torch.tensor([-1.0, 2.0, 0.5, 1.5, -0.5])
    xs = source_levels[ys][:, None] + 0.1 * torch.randn(B, 1, SIZE, SIZE, generator=g)
    xt = target_levels[yt][:, None] + 0.1 * torch.randn(B, 1, SIZE, SIZE, generator=g)
    return xs, ys, xt


def objectives(method, batch=None, weight: float = 1.0, torch_seed: int = 7):
    """The paired objectives on ``batch`` (default: nested squares, inverted targets) after a fixed torch seed."""
    batch = make_batch(0, blobs=True, inverted_target=True) if batch is None else batch
    torch.manual_seed(torch_seed)
    return method.paired_objectives(*method.pairs(batch), weight)


# --- building blocks ------------------------------------------------------------------------------------------


def test_mind_ignores_affine_and_inverted_contrast():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, SIZE, SIZE, generator=g)
    ref = MODULE.mind(x)
    assert ref.shape == (2, 4, SIZE, SIZE) and float(ref.amax(1).min()) == pytest.approx(1.0)
    # squared differences scale by a**2 and so does their mean: exp(-D / V) is unchanged, and so under -x
    assert torch.allclose(MODULE.mind(3.0 * x - 2.0), ref, atol=1e-5)
    assert torch.allclose(MODULE.mind(-0.5 * x + 1.0), ref, atol=1e-5)
    assert not torch.allclose(MODULE.mind(x.roll(3, -1)), ref, atol=1e-2)  # it does see structure


def test_intensity_w1_agrees_with_scipy():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 1, 8, 8, generator=g), 2 + 0.5 * torch.randn(3, 1, 8, 8, generator=g)
    expected = np.mean([scipy.stats.wasserstein_distance(a[i].ravel().numpy(), b[i].ravel().numpy())
                        for i in range(3)])
    assert float(MODULE.intensity_w1(a, b)) == pytest.approx(expected, rel=1e-5)


def test_lut_is_piecewise_linear_with_unit_slope_outside():
    knots = torch.tensor([-1.0, 0.0, 1.0])
    values = torch.tensor([[1.0, -1.0, 2.0]])  # non-monotone: swaps the order of dark and mid intensities
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 4.0]).reshape(1, 1, 1, 7)
    out = MODULE.apply_lut(x, knots, values).flatten().tolist()
    assert out == pytest.approx([-1.0, 1.0, 0.0, -1.0, -0.25, 2.0, 5.0])
    assert torch.equal(MODULE.apply_lut(x, knots, knots[None]), x)  # knots to themselves: the identity


def test_paired_hallucinator_bounds_and_identity_appearance_at_init():
    h = MODULE.PairedHallucinator(max_displacement=0.05, max_bias=0.25, max_lut=1.5)
    g = torch.Generator().manual_seed(2)
    x, ref = torch.randn(B, 1, SIZE, SIZE, generator=g), torch.randn(B, 1, SIZE, SIZE, generator=g)
    out = h(x, ref)
    assert torch.equal(out.lut, h.knots.expand(B, -1))  # the remapping starts as the identity
    with torch.no_grad():
        h.head.weight.mul_(1e3)
        h.lut_head.weight.normal_(std=10.0)
    out = h(x, ref, code=100 * torch.randn(B, h.code_channels, 2, 2, generator=g))
    assert 0.05 < out.displacement.abs().max() <= 2 * 0.05 + 1e-6  # saturated, in normalised units
    assert out.bias.abs().max() <= 0.25 + 1e-6
    assert (out.lut - h.knots).abs().max() <= 1.5 + 1e-6 and (out.lut - h.knots).abs().max() > 1.0
    # the reference decides the transform
    assert not torch.allclose(h(x, ref, code=torch.zeros(B, h.code_channels, 2, 2)).displacement,
                              h(x, ref.flip(0), code=torch.zeros(B, h.code_channels, 2, 2)).displacement)


def test_warped_label_lands_where_the_analytic_map_says():
    """A disc under the zoom u(p) = s p (backward warping) becomes a disc of radius r / (1 + s), image and label."""
    n, r, s = 64, 20.0, 0.25
    yy, xx = torch.meshgrid(torch.arange(n) - (n - 1) / 2, torch.arange(n) - (n - 1) / 2, indexing="ij")
    label = ((xx ** 2 + yy ** 2) < r ** 2).long()[None]
    coords = torch.stack([xx, yy]) * 2 / n  # normalised units of the pixel centres
    disp = (s * coords)[None]
    soft, hard = MODULE.warp_labels(label, disp, 2)
    expected = ((xx ** 2 + yy ** 2) < (r / (1 + s)) ** 2).long()
    ring = ((xx ** 2 + yy ** 2).sqrt() - r / (1 + s)).abs() < 1.0  # pixels cut by the boundary
    assert torch.equal(hard[0][~ring], expected[~ring])
    # an image that is a linear function of the label warps exactly like the soft label (bilinear is linear)
    image = (3.0 * label - 1.0).float()[:, None]
    assert torch.allclose(MODULE.warp(image, disp), 3.0 * soft[:, 1:2] - soft.sum(1, keepdim=True), atol=1e-5)


def test_paired_hallucination_moves_image_and_label_together():
    m = build("metahallu")
    xs, ys, xt = pair()
    image = (ys.float() * 0.5 - 1.0)[:, None]
    m.hparams["appearance"] = False
    hal = m.hallucinate(image, ys, reference=xt)
    levels = torch.arange(CLASSES, dtype=torch.float32) * 0.5 - 1.0
    assert torch.allclose(hal.image, (hal.soft_label * levels[None, :, None, None]).sum(1, keepdim=True),
                          atol=1e-5)
    assert torch.equal(hal.label, hal.soft_label.argmax(1)) and (hal.label != ys).any()
    with pytest.raises(ValueError, match="reference"):
        m.hallucinate(image, ys)


# --- L_trans --------------------------------------------------------------------------------------------------


def fit_trans_loss(m, source, labels, target, steps: int, lr: float) -> list[tuple[float, dict]]:
    """Train ``m``'s hallucinator on L_trans alone for ``steps`` Adam steps; (loss, terms) of every step."""
    opt = torch.optim.Adam(m.hallucinator.parameters(), lr)
    history = []
    for step in range(steps):
        torch.manual_seed(step)
        loss, terms = m.trans_loss(m.hallucinate(source, labels, reference=target), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append((float(loss.detach()), terms))
    return history


def test_trans_loss_falls_and_the_intensities_move_towards_the_target():
    m = build("metahallu")
    xs, ys, xt = pair()
    history = fit_trans_loss(m, xs, ys, xt, 300, m.hparams["paired_lr"])
    first, last = history[0], history[-1]
    assert last[0] < 0.7 * first[0]
    assert last[1]["mind"] < first[1]["mind"] and last[1]["appearance"] < 0.6 * first[1]["appearance"]
    torch.manual_seed(0)
    hal = m.hallucinate(xs, ys, reference=xt)
    before = float(MODULE.intensity_w1(xs, xt))
    assert float(MODULE.intensity_w1(hal.image.detach(), xt)) < 0.5 * before


def test_class_appearance_creates_a_contrast_the_source_lacks():
    # source: classes 1 and 2 share one intensity; target (same layout): class 2 is much darker than class 1
    g = torch.Generator().manual_seed(4)
    ys = blob_labels(B, g)
    source = torch.tensor([0.0, 1.0, 1.0, -1.0, 0.5])[ys][:, None]
    target = torch.tensor([0.0, 1.0, -1.0, -1.0, 0.5])[ys][:, None]

    def contrast(class_appearance: bool) -> float:
        torch.manual_seed(0)
        m = build("metahallu", class_appearance=class_appearance, spatial=False)
        fit_trans_loss(m, source, ys, target, 150, 1e-2)
        torch.manual_seed(0)
        image = m.hallucinate(source, ys, reference=target).image.detach()
        return float(image[ys[:, None] == 1].mean() - image[ys[:, None] == 2].mean())

    # a remapping of intensities gives equal intensities equal values (the smooth field barely separates them);
    # a per-class offset moves class 2 towards the target's darker value
    assert abs(contrast(False)) < 0.3 and contrast(True) > 1.0


def test_trans_loss_switch_keeps_only_the_regularisers():
    xs, ys, xt = pair()
    on, off = build("metahallu"), build("metahallu", trans_loss=False)
    torch.manual_seed(0)
    total_on, terms = on.trans_loss(on.hallucinate(xs, ys, reference=xt), xt)
    torch.manual_seed(0)
    total_off, terms_off = off.trans_loss(off.hallucinate(xs, ys, reference=xt), xt)
    hp = on.hparams
    smooth = (hp["smooth_weight"] * terms["velocity_smooth"]
              + hp["appearance_smooth_weight"] * (terms["bias_smooth"] + terms["lut_smooth"]))
    assert float(total_off.detach()) == pytest.approx(smooth, rel=1e-5)
    assert float(total_on.detach()) == pytest.approx(smooth + hp["mind_weight"] * terms["mind"] + hp["intensity_weight"]
                                            * terms["appearance"] + hp["histogram_weight"] * terms["histogram"],
                                            rel=1e-5)
    assert terms_off == terms


# --- the bi-level update --------------------------------------------------------------------------------------


def test_inner_step_changes_psi_functionally():
    m = build("metahallu")
    before = params_of(m.hallucinator)
    obj = objectives(m)
    assert same(params_of(m.hallucinator), before)
    psi = dict(m.hallucinator.named_parameters())
    moved = [k for k in psi if not torch.equal(obj["fast_psi"][k], psi[k])]
    assert "head.weight" in moved and "lut_head.weight" in moved and "encoder.0.weight" in moved
    m_off = build("metahallu", inner_hallucinator=False)
    obj_off = objectives(m_off)
    assert all(obj_off["fast_psi"][k] is p for k, p in m_off.hallucinator.named_parameters())


def _outer(method, batch, psi: dict[str, torch.Tensor]) -> torch.Tensor:
    """The outer objective of psi with psi's weights replaced (and the same random codes)."""
    saved = {k: p.detach().clone() for k, p in method.hallucinator.named_parameters()}
    with torch.no_grad():
        for k, p in method.hallucinator.named_parameters():
            p.copy_(psi[k])
    try:
        obj = objectives(method, batch, torch_seed=3)
        return method.hparams["meta_test_weight"] * (obj["meta_test"] + obj["trans_b"]).detach()
    finally:
        with torch.no_grad():
            for k, p in method.hallucinator.named_parameters():
                p.copy_(saved[k])


def test_meta_gradient_of_psi_matches_finite_differences():
    # L_con's teacher targets and L_trans' intensity MSE hold the deformation fixed by design (stop-gradients a
    # finite difference cannot see), so they are off here; every other path of the outer objective is exact
    # psi_pixels: the whole meta-test objective reaches psi, so a finite difference of it is the reference
    m = build("metahallu", psi_seg_hessian=True, psi_pixels=True, inner_lr=0.1, h_inner_lr=0.1, consistency=False,
              intensity_weight=0.0).double()
    batch = make_batch(0, blobs=True, inverted_target=True)
    for name in ("source_x", "target_x"):
        setattr(batch, name, getattr(batch, name).double())
    obj = objectives(m, batch, torch_seed=3)
    _, h_grads = m.paired_gradients(obj)
    psi = {k: p.detach().clone() for k, p in m.hallucinator.named_parameters()}
    g = torch.Generator().manual_seed(5)
    direction = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in psi.items()}
    analytic = sum(float((gr * direction[k]).sum()) for (k, _), gr in zip(psi.items(), h_grads))
    eps = 1e-8  # ReLUs and bilinear sampling make the objective piecewise smooth: a tiny step stays on one piece
    plus = _outer(m, batch, {k: p + eps * direction[k] for k, p in psi.items()})
    minus = _outer(m, batch, {k: p - eps * direction[k] for k, p in psi.items()})
    numeric = float(plus - minus) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-3)
    # without the curvature of grad_psi L_seg the gradient is an approximation, and it differs
    m.hparams["psi_seg_hessian"] = False
    _, approx = m.paired_gradients(objectives(m, batch, torch_seed=3))
    assert sum(float((gr * direction[k]).sum()) for (k, _), gr in zip(psi.items(), approx)) != pytest.approx(
        numeric, rel=1e-6)


@pytest.mark.parametrize("consistency", [False, True])
def test_meta_test_reaches_psi_through_theta_prime_only_unless_psi_pixels(consistency):
    # with theta' = theta (inner_lr 0) and no L_trans terms, psi's only outer signal would be the meta-test
    # objective through the pixels of its meta-test hallucinations: none by default, some with psi_pixels
    common = dict(inner_lr=0.0, trans_loss=False, smooth_weight=0.0, appearance_smooth_weight=0.0,
                  consistency=consistency, rampup=0.0)
    norms = {}
    for pixels in (False, True):
        m = build("metahallu", psi_pixels=pixels, **common)
        obj = objectives(m)
        assert float(obj["meta_test"].detach()) > 0
        _, h_grads = m.paired_gradients(obj)
        norms[pixels] = sum(float(g.abs().sum()) for g in h_grads)
    assert norms[False] == 0.0 and norms[True] > 0.0


def test_first_order_keeps_psi_learning_with_another_gradient():
    grads = {}
    for first_order in (False, True):
        m = build("metahallu", first_order=first_order)
        seg, hal = m.paired_gradients(objectives(m))
        assert all(torch.isfinite(g).all() for g in seg + hal if g is not None)
        assert sum(float(g.abs().sum()) for g in hal) > 0
        grads[first_order] = hal
    assert not same(grads[False], grads[True])


def test_meta_off_trains_psi_on_trans_loss_alone():
    m = build("metahallu", meta=False)
    obj = objectives(m)
    assert obj["fast_psi"] is not None and all(obj["fast_psi"][k] is p for k, p in m.hallucinator.named_parameters())
    h_params = list(m.hallucinator.parameters())
    assert all(g is None for g in torch.autograd.grad(obj["meta_train"] + obj["meta_test"], h_params,
                                                       retain_graph=True, allow_unused=True))
    expected = torch.autograd.grad(obj["trans_a"] + obj["trans_b"], h_params, retain_graph=True)
    _, h_grads = m.paired_gradients(obj)
    assert all(torch.allclose(a, b) for a, b in zip(h_grads, expected))


def test_consistency_switch_decides_whether_target_images_matter():
    def after(consistency: bool, target_seed: int) -> list[torch.Tensor]:
        m = build("metahallu", consistency=consistency, rampup=0.0, spatial=False, appearance=False)
        losses, weights = step_with_target(m, make_batch(0, blobs=True), target_seed, step=3, torch_seed=100)
        assert ("consistency" in losses) == consistency
        return weights

    # with both transforms off the target images are not hallucinated towards: they reach theta through L_con only
    assert same(after(False, 1), after(False, 2))
    assert not same(after(True, 1), after(True, 2))


@pytest.mark.parametrize("overrides", [{}, {"first_order": True}, {"meta": False}])
def test_deterministic_for_a_seed(overrides):
    runs = []
    for _ in range(2):
        m = build("metahallu", 3, **overrides)
        losses = []
        for step in range(2):
            torch.manual_seed(100 + step)
            losses.append(m.update(make_batch(step, blobs=True), step))
        runs.append((losses, params_of(m)))
    assert runs[0][0] == runs[1][0] and same(runs[0][1], runs[1][1])
    assert all(math.isfinite(v) for v in runs[0][0][-1].values())


def test_random_hallucinator_reproduces_version_1_step_for_step():
    reference = json.loads(REFERENCE_V1.read_text())
    for case, overrides in reference["overrides"].items():
        m = build("metahallu", 3, total_steps=6, hallucinator="random", **overrides)
        for step, expected in enumerate(reference["cases"][case]["losses"]):
            torch.manual_seed(100 + step)
            losses = m.update(make_batch(step, blobs=True), step)
            assert losses.keys() == expected.keys(), case
            # the reference was recorded on another CPU: oneDNN picks kernels by CPU, which moves the last float
            # bits, and six Adam steps through second-order gradients amplify them to ~4e-4 relative; a changed
            # draw or formula moves the losses by percent
            assert losses == pytest.approx(expected, rel=1e-3, abs=1e-6), (case, step)
        weights = sum(float(p.detach().double().abs().sum()) for p in m.parameters())
        assert weights == pytest.approx(reference["cases"][case]["weights_abs_sum"], rel=1e-5), case
