"""The hallucinators of ``metahallu`` and the transformation loss of the paired one (a helper, not a plugin).

* :class:`Hallucinator` (``hallucinator=random``, metahallu version 1): an image and a random code to a bounded
  smooth deformation and a gain/bias field; no loss of its own.
* :class:`PairedHallucinator` (``hallucinator=paired``): a source image and a target image (and an optional random
  code) to a diffeomorphic deformation and an appearance transform, a learned intensity remapping plus a smooth
  additive field, trained with its own transformation loss (:func:`translation_losses`).

Both follow learned-transformation augmentation (Zhao, Balakrishnan, Durand, Guttag, Dalca, "Data augmentation
using learned transformations for one-shot medical image segmentation", CVPR 2019): a spatial transform that also
moves the label, and an appearance transform that leaves it alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# --- spatial transformer (Jaderberg et al., NeurIPS 2015) -------------------------------------------------------
# A displacement field ``u`` is (B, 2, H, W) in normalised coordinates (channel 0: x, along the width; channel 1: y),
# the convention of ``F.grid_sample`` with ``align_corners=False``: a pixel is 2 / W wide, and the warped image
# at p is the input at p + u(p) (backward warping).


def warp(x: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``x`` (B, C, H, W) sampled at p + u(p); outside the image the border value is repeated."""
    b, _, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).unsqueeze(0).expand(b, 2, 3)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False) + displacement.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def warp_labels(labels: torch.Tensor, displacement: torch.Tensor,
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp an integer label map (B, H, W): the one-hot maps are warped bilinearly, then arg-maxed.

    Returns ``(soft, hard)``: the warped one-hot probabilities (B, classes, H, W), which sum to 1 at every pixel,
    and their arg-max (B, H, W) int64, a valid label map. Warping the one-hot maps rather than the integers keeps
    thin structures better than nearest-neighbour sampling and never invents a label between two others.
    """
    onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).to(displacement.dtype)
    soft = warp(onehot, displacement)
    return soft, soft.argmax(1)


def integrate_velocity(velocity: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Displacement of the flow of a stationary velocity field by scaling and squaring (Arsigny et al. 2006).

    As in diffeomorphic VoxelMorph (Dalca et al., MICCAI 2018): u = v / 2**steps, then ``steps`` times
    u <- u + u o (id + u). Each component of the result is bounded by the largest value of that component of
    ``v`` (bilinear interpolation is a convex combination), and the transform stays invertible for smooth ``v``.
    """
    u = velocity / (2 ** steps)
    for _ in range(steps):
        u = u + warp(u, u)
    return u


def smoothness(field: torch.Tensor) -> torch.Tensor:
    """Mean squared finite difference of a (B, C, H, W) field along both axes (a diffusion regulariser)."""
    dy = field[:, :, 1:, :] - field[:, :, :-1, :]
    dx = field[:, :, :, 1:] - field[:, :, :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()


# --- image similarity across modalities -------------------------------------------------------------------------


def mind(images: torch.Tensor, radius: int = 2, patch: int = 3) -> torch.Tensor:
    """The 2D modality independent neighbourhood descriptor (Heinrich et al., Medical Image Analysis 2012).

    For each of the four neighbours at ``radius`` pixels, the patch distance D(p, r) is the mean over a
    ``patch`` x ``patch`` box of the squared difference between the image and its shift by r; with V(p) the mean of
    D(p, .) over the neighbours (clamped to [1e-3, 1e3] times its image mean, as in MIND-SSC implementations),
    the descriptor is exp(-D / V), divided by its largest channel. It is (B, 4 C, H, W) and depends on local
    structure, not on intensities, so an MR-like and a CT-like slice of the same anatomy have nearly the same one.
    """
    b, c, h, w = images.shape
    x = F.pad(images, (radius,) * 4, mode="replicate")
    shifts = ((0, radius), (0, -radius), (radius, 0), (-radius, 0))
    d = torch.cat([(images - x[..., radius + dy:radius + dy + h, radius + dx:radius + dx + w]).pow(2)
                   for dy, dx in shifts], 1)
    d = F.avg_pool2d(d, patch, stride=1, padding=patch // 2, count_include_pad=False)
    v = d.mean(1, keepdim=True)
    mean_v = v.mean((1, 2, 3), keepdim=True)
    v = torch.minimum(torch.maximum(v, 1e-3 * mean_v), 1e3 * mean_v).clamp_min(1e-12)
    m = torch.exp(-d / v)
    return m / m.amax(1, keepdim=True)


def intensity_w1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean 1-Wasserstein distance between the intensity distributions of paired images (B, C, H, W).

    In one dimension W1 is the mean absolute difference of the sorted values (the quantile functions); it needs no
    alignment of the two images, so it measures appearance only, and it is differentiable in ``a``.
    """
    return (a.flatten(1).sort(1).values - b.flatten(1).sort(1).values).abs().mean()


def apply_lut(x: torch.Tensor, knots: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A piecewise-linear intensity remapping of ``x`` (B, C, H, W): ``knots`` (K,) ascending go to ``values`` (B, K).

    Between knots the map is linear; outside ``[knots[0], knots[-1]]`` it continues with slope 1 from the end
    values, so a bounded table never clips an image. The map may be non-monotone: it can swap the order of two
    tissues' intensities, as between MR and CT.
    """
    b, k = values.shape
    flat = x.reshape(b, -1)
    idx = torch.bucketize(flat.detach(), knots).clamp(1, k - 1)
    k0, k1 = knots[idx - 1], knots[idx]
    v0, v1 = values.gather(1, idx - 1), values.gather(1, idx)
    t = ((flat - k0) / (k1 - k0)).clamp(0.0, 1.0)
    outside = flat - flat.clamp(float(knots[0]), float(knots[-1]))
    return (v0 + t * (v1 - v0) + outside).reshape(x.shape)


# --- the hallucinators --------------------------------------------------------------------------------------------


@dataclass
class Hallucination:
    """A hallucinated batch and the transform that made it.

    ``displacement`` (B, 2, H, W) is in ``grid_sample``'s normalised units (see :func:`warp`); ``None`` fields mean
    the corresponding transform is off. ``coarse`` holds the bounded low-resolution fields (velocity, log-gain,
    bias) the regularisers act on; ``warped`` the deformed image before the appearance transform, ``knots`` (K,)
    and ``lut`` (B, K) the intensity remapping (paired hallucinator only).
    """

    image: torch.Tensor
    label: torch.Tensor | None = None
    soft_label: torch.Tensor | None = None
    displacement: torch.Tensor | None = None
    gain: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    coarse: dict[str, torch.Tensor] | None = None
    warped: torch.Tensor | None = None
    lut: torch.Tensor | None = None
    knots: torch.Tensor | None = None


def _encoder(in_channels: int, width: int, levels: int) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    ch = in_channels
    for i in range(levels):
        out = width * min(2 ** i, 2)
        layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = out
    return nn.Sequential(*layers), ch


def _mixer(in_channels: int, ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, ch, 3, padding=1), nn.GroupNorm(1, ch), nn.LeakyReLU(0.2),
        nn.Conv2d(ch, ch, 3, padding=1), nn.GroupNorm(1, ch), nn.LeakyReLU(0.2))


def _one_hot(labels: torch.Tensor | None, num_classes: int | None, like: torch.Tensor) -> torch.Tensor | None:
    if labels is None:
        return None
    if num_classes is None:
        raise ValueError("Hallucinator: pass num_classes together with labels.")
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).to(like.dtype)


class _FieldHallucinator(nn.Module):
    """What both hallucinators share: a strided encoder to a coarse grid, a random code, bounded coarse fields."""

    def __init__(self, in_channels: int, width: int, code_channels: int, levels: int, max_displacement: float,
                 integration_steps: int, outputs: int, init_scale: float):
        super().__init__()
        self.encoder, ch = _encoder(in_channels, width, levels)
        self.mix = _mixer(ch + code_channels, ch)
        self.head = nn.Conv2d(ch, outputs, 1)
        nn.init.normal_(self.head.weight, std=init_scale / math.sqrt(ch))
        nn.init.zeros_(self.head.bias)
        self.levels, self.code_channels, self.channels = levels, code_channels, ch
        #: maxima in normalised units: a displacement of ``max_displacement`` image sides is 2 * that in [-1, 1]
        self.max_velocity = 2.0 * max_displacement
        self.integration_steps = integration_steps

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The coarse field grid for an image of ``height`` x ``width`` (each stride-2 layer rounds up)."""
        f = 2 ** self.levels
        return -(-height // f), -(-width // f)

    def sample_code(self, images: torch.Tensor) -> torch.Tensor:
        """A standard normal code (B, code_channels, h, w) on a grid half as fine as the field grid."""
        h, w = self.grid_size(*images.shape[-2:])
        return torch.randn(len(images), self.code_channels, -(-h // 2), -(-w // 2), device=images.device,
                           dtype=images.dtype)

    def _features(self, inputs: torch.Tensor, code: torch.Tensor | None) -> torch.Tensor:
        feats = self.encoder(inputs)
        if self.code_channels:
            code = self.sample_code(inputs) if code is None else code
            feats = torch.cat([feats, F.interpolate(code, size=feats.shape[-2:], mode="bilinear",
                                                    align_corners=False)], 1)
        return self.mix(feats)

    def _deform(self, coarse_velocity: torch.Tensor, size) -> torch.Tensor:
        velocity = F.interpolate(coarse_velocity, size=size, mode="bilinear", align_corners=False)
        return integrate_velocity(velocity, self.integration_steps) if self.integration_steps else velocity


class Hallucinator(_FieldHallucinator):
    """Maps an image and a random spatial code to a bounded smooth deformation and a gain/bias field (version 1).

    A strided CNN reads the image down to a grid ``2**levels`` times coarser; a Gaussian code drawn on a grid
    twice coarser still (so that neighbouring cells are correlated) is upsampled and concatenated; two 3x3
    convolutions with group norm and a 1x1 head give four coarse maps: a velocity field (2), a log-gain and a bias.
    Each is bounded by ``tanh`` times its maximum. The velocity is upsampled bilinearly to full resolution and
    integrated by scaling and squaring (no folding, and every component stays within ``max_displacement``); the
    gain ``exp(log_gain)`` and the bias are upsampled bilinearly. The head's initial weights are scaled so that
    the untrained hallucinator already draws transforms of about half their bounds (the outputs depend on the
    code, and on the image): a random augmenter of the intended strength.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, code_channels: int = 8, levels: int = 3,
                 max_displacement: float = 0.06, max_log_gain: float = 0.3, max_bias: float = 0.3,
                 integration_steps: int = 5, init_scale: float = 0.8):
        super().__init__(in_channels, width, code_channels, levels, max_displacement, integration_steps, 4,
                         init_scale)
        self.max_log_gain, self.max_bias = max_log_gain, max_bias

    def coarse_fields(self, images: torch.Tensor, code: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self._features(images, code))
        return {"velocity": torch.tanh(out[:, :2]) * self.max_velocity,
                "log_gain": torch.tanh(out[:, 2:3]) * self.max_log_gain,
                "bias": torch.tanh(out[:, 3:4]) * self.max_bias}

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int | None = None,
                code: torch.Tensor | None = None, *, spatial: bool = True, appearance: bool = True) -> Hallucination:
        """Hallucinate ``images`` (B, C, H, W) and, when given, their integer ``labels`` (B, H, W)."""
        soft = _one_hot(labels, num_classes, images)
        if not (spatial or appearance):
            return Hallucination(images, labels, soft)
        size = images.shape[-2:]
        coarse = self.coarse_fields(images, self.sample_code(images) if code is None else code)
        out, hard, disp, gain, bias = images, labels, None, None, None
        if spatial:
            disp = self._deform(coarse["velocity"], size)
            out = warp(images, disp)
            if labels is not None:
                soft, hard = warp_labels(labels, disp, num_classes)
        if appearance:
            gain = F.interpolate(coarse["log_gain"], size=size, mode="bilinear", align_corners=False).exp()
            bias = F.interpolate(coarse["bias"], size=size, mode="bilinear", align_corners=False)
            out = gain * out + bias
        return Hallucination(out, hard, soft, disp, gain, bias, coarse)


class PairedHallucinator(_FieldHallucinator):
    """Maps a source image, a target image and an optional random code to a deformation and an appearance transform.

    The encoder reads the two images stacked as channels down to the coarse grid, the code is concatenated as in
    :class:`Hallucinator`, and the head gives a bounded coarse velocity field (integrated by scaling and squaring,
    so the deformation is diffeomorphic) and a bounded coarse bias field (upsampled bilinearly, hence smooth). The
    mixed features, averaged over the image, give the offsets of a K-knot intensity remapping (:func:`apply_lut`)
    over ``[-lut_range, lut_range]`` (images are z-scored), each within ``max_lut``. The hallucination is
    ``lut(source o phi) + bias``: the label moves with phi only. A small initial head (``init_scale``) starts the
    hallucinator near the identity deformation, with code-driven variation, and the identity remapping.

    ``class_offsets`` (the number of classes, 0: off) adds one intensity offset per class of the warped label,
    from the same pooled features and within ``max_lut``: a remapping of intensities alone cannot separate two
    structures the source shows alike (a contrast the target has and the source lacks), a per-structure offset
    can, as label-driven synthesis does (SynthSeg, Billot et al., MedIA 2023). Images hallucinated without labels
    get no such offset.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, code_channels: int = 8, levels: int = 3,
                 max_displacement: float = 0.06, max_bias: float = 0.3, lut_knots: int = 16,
                 lut_range: float = 3.0, max_lut: float = 2.0, integration_steps: int = 5, init_scale: float = 0.3,
                 class_offsets: int = 0):
        super().__init__(2 * in_channels, width, code_channels, levels, max_displacement, integration_steps, 3,
                         init_scale)
        self.lut_head = nn.Linear(self.channels, lut_knots)
        nn.init.zeros_(self.lut_head.weight)  # the appearance transform starts as the identity
        nn.init.zeros_(self.lut_head.bias)
        self.class_head = nn.Linear(self.channels, class_offsets) if class_offsets else None
        if self.class_head is not None:
            nn.init.zeros_(self.class_head.weight)
            nn.init.zeros_(self.class_head.bias)
        self.register_buffer("knots", torch.linspace(-lut_range, lut_range, lut_knots), persistent=False)
        self.max_bias, self.max_lut = max_bias, max_lut

    def forward(self, images: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None = None,
                num_classes: int | None = None, code: torch.Tensor | None = None, *, spatial: bool = True,
                appearance: bool = True) -> Hallucination:
        """Hallucinate ``images`` (B, C, H, W) towards ``reference`` (same shape), and their ``labels`` (B, H, W)."""
        soft = _one_hot(labels, num_classes, images)
        if not (spatial or appearance):
            return Hallucination(images, labels, soft, warped=images)
        feats = self._features(torch.cat([images, reference], 1), code)
        out = self.head(feats)
        coarse = {"velocity": torch.tanh(out[:, :2]) * self.max_velocity,
                  "bias": torch.tanh(out[:, 2:3]) * self.max_bias}
        warped, hard, disp, bias, lut = images, labels, None, None, None
        if spatial:
            disp = self._deform(coarse["velocity"], images.shape[-2:])
            warped = warp(images, disp)
            if labels is not None:
                soft, hard = warp_labels(labels, disp, num_classes)
        image = warped
        if appearance:
            offsets = torch.tanh(self.lut_head(feats.mean((2, 3)))) * self.max_lut
            coarse["lut_offsets"] = offsets
            lut = self.knots + offsets
            bias = F.interpolate(coarse["bias"], size=images.shape[-2:], mode="bilinear", align_corners=False)
            if self.class_head is not None and soft is not None:
                coarse["class_offsets"] = torch.tanh(self.class_head(feats.mean((2, 3)))) * self.max_lut
            image = self.appear(warped, lut, bias, coarse.get("class_offsets"), soft)
        return Hallucination(image, hard, soft, disp, None, bias, coarse, warped, lut, self.knots)

    def appear(self, warped: torch.Tensor, lut: torch.Tensor, bias: torch.Tensor,
               class_offsets: torch.Tensor | None = None, soft_label: torch.Tensor | None = None) -> torch.Tensor:
        """:func:`appearance_transform` over this hallucinator's knots."""
        return appearance_transform(warped, self.knots, lut, bias, class_offsets, soft_label)


def appearance_transform(warped: torch.Tensor, knots: torch.Tensor, lut: torch.Tensor, bias: torch.Tensor,
                         class_offsets: torch.Tensor | None = None,
                         soft_label: torch.Tensor | None = None) -> torch.Tensor:
    """The paired hallucinator's appearance transform: the remapping of ``knots`` to ``lut`` (B, K), the additive
    ``bias``, and with ``class_offsets`` (B, C) each class's offset where the (soft) label (B, C, H, W) has it."""
    out = apply_lut(warped, knots, lut) + bias
    if class_offsets is not None:
        out = out + (class_offsets[:, :, None, None] * soft_label).sum(1, keepdim=True)
    return out


def translation_losses(hal: Hallucination, reference: torch.Tensor, *, spatial: bool,
                       appearance: bool) -> dict[str, torch.Tensor]:
    """The terms of L_trans between a paired hallucination and its ``reference`` (the target image).

    ``mind``: mean squared difference of :func:`mind` descriptors between the deformed source (before the
    appearance transform) and the reference, a modality-independent similarity that trains the deformation only.
    ``appearance``: mean squared error between the reference and the appearance transform applied to the deformed
    source with the deformation held fixed (the warped label too, for per-class offsets), so that a
    cross-modality intensity error never bends the anatomy.
    ``histogram``: :func:`intensity_w1` between the hallucination and the reference, a similarity of appearance
    that needs no alignment. ``velocity_smooth``, ``bias_smooth`` and ``lut_smooth``: :func:`smoothness` of the
    coarse velocity and bias, and the mean squared second difference of the remapping's offsets.
    """
    out: dict[str, torch.Tensor] = {}
    if spatial and hal.displacement is not None:
        out["mind"] = F.mse_loss(mind(hal.warped), mind(reference))
        out["velocity_smooth"] = smoothness(hal.coarse["velocity"])
    if appearance and hal.lut is not None:
        moved = hal.displacement is not None
        offsets = hal.coarse.get("class_offsets")
        soft = None if offsets is None else hal.soft_label.detach() if moved else hal.soft_label
        image = appearance_transform(hal.warped.detach() if moved else hal.warped, hal.knots, hal.lut, hal.bias,
                                     offsets, soft)
        out["appearance"] = F.mse_loss(image, reference)
        out["histogram"] = intensity_w1(hal.image, reference)
        out["bias_smooth"] = smoothness(hal.coarse["bias"])
        offsets = hal.coarse["lut_offsets"]
        out["lut_smooth"] = (offsets[:, 2:] - 2 * offsets[:, 1:-1] + offsets[:, :-2]).pow(2).mean()
    return out

