"""``metahallu``: Meta-Hallucinator, a reconstruction from the paper (no official code was ever published)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from benchmark.blocks import EMATeacher, gan_adam, sigmoid_rampup
from benchmark.hparams import HParam, choice, log_uniform, uniform
from benchmark.losses import dice_ce_loss
from benchmark.method import SegmenterMethod
from benchmark.registry import register_method

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


# --- the hallucinator -------------------------------------------------------------------------------------------


@dataclass
class Hallucination:
    """A hallucinated batch and the transform that made it.

    ``displacement`` (B, 2, H, W) is in ``grid_sample``'s normalised units (see :func:`warp`);
    ``None`` fields mean the corresponding transform is off. ``coarse`` holds the bounded low-resolution fields
    (velocity, log-gain, bias) the regularisers act on.
    """

    image: torch.Tensor
    label: torch.Tensor | None = None
    soft_label: torch.Tensor | None = None
    displacement: torch.Tensor | None = None
    gain: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    coarse: dict[str, torch.Tensor] | None = None


class Hallucinator(nn.Module):
    """Maps an image and a random spatial code to a bounded smooth deformation and a gain/bias field.

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
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for i in range(levels):
            out = width * min(2 ** i, 2)
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch = out
        self.encoder = nn.Sequential(*layers)
        self.mix = nn.Sequential(
            nn.Conv2d(ch + code_channels, ch, 3, padding=1), nn.GroupNorm(1, ch), nn.LeakyReLU(0.2),
            nn.Conv2d(ch, ch, 3, padding=1), nn.GroupNorm(1, ch), nn.LeakyReLU(0.2))
        self.head = nn.Conv2d(ch, 4, 1)
        nn.init.normal_(self.head.weight, std=init_scale / math.sqrt(ch))
        nn.init.zeros_(self.head.bias)
        self.levels, self.code_channels = levels, code_channels
        #: maxima in normalised units: a displacement of ``max_displacement`` image sides is 2 * that in [-1, 1]
        self.max_velocity = 2.0 * max_displacement
        self.max_log_gain, self.max_bias, self.integration_steps = max_log_gain, max_bias, integration_steps

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The coarse field grid for an image of ``height`` x ``width`` (each stride-2 layer rounds up)."""
        f = 2 ** self.levels
        return -(-height // f), -(-width // f)

    def sample_code(self, images: torch.Tensor) -> torch.Tensor:
        """A standard normal code (B, code_channels, h, w) on a grid half as fine as the field grid."""
        h, w = self.grid_size(*images.shape[-2:])
        return torch.randn(len(images), self.code_channels, -(-h // 2), -(-w // 2), device=images.device,
                           dtype=images.dtype)

    def coarse_fields(self, images: torch.Tensor, code: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder(images)
        z = F.interpolate(code, size=feats.shape[-2:], mode="bilinear", align_corners=False)
        out = self.head(self.mix(torch.cat([feats, z], 1)))
        return {"velocity": torch.tanh(out[:, :2]) * self.max_velocity,
                "log_gain": torch.tanh(out[:, 2:3]) * self.max_log_gain,
                "bias": torch.tanh(out[:, 3:4]) * self.max_bias}

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int | None = None,
                code: torch.Tensor | None = None, *, spatial: bool = True, appearance: bool = True) -> Hallucination:
        """Hallucinate ``images`` (B, C, H, W) and, when given, their integer ``labels`` (B, H, W)."""
        soft = None
        if labels is not None:
            if num_classes is None:
                raise ValueError("Hallucinator: pass num_classes together with labels.")
            soft = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).to(images.dtype)
        if not (spatial or appearance):
            return Hallucination(images, labels, soft)
        size = images.shape[-2:]
        coarse = self.coarse_fields(images, self.sample_code(images) if code is None else code)
        out, hard, disp, gain, bias = images, labels, None, None, None
        if spatial:
            velocity = F.interpolate(coarse["velocity"], size=size, mode="bilinear", align_corners=False)
            disp = integrate_velocity(velocity, self.integration_steps) if self.integration_steps else velocity
            out = warp(images, disp)
            if labels is not None:
                soft, hard = warp_labels(labels, disp, num_classes)
        if appearance:
            gain = F.interpolate(coarse["log_gain"], size=size, mode="bilinear", align_corners=False).exp()
            bias = F.interpolate(coarse["bias"], size=size, mode="bilinear", align_corners=False)
            out = gain * out + bias
        return Hallucination(out, hard, soft, disp, gain, bias, coarse)


@register_method("metahallu", aliases=("meta_hallucinator",))
class MetaHallucinator(SegmenterMethod):
    """Meta-Hallucinator: meta-learned hallucination with hallucination-consistent self-ensembling.

    Zhao, Zhou, Zeng, Guan, Zhou. "Meta-hallucinator: Towards Few-Shot Cross-Modality Cardiac Image
    Segmentation." MICCAI 2022 (arXiv:2305.06978). The authors published no code, so this is a reconstruction
    from the paper's description; none of the defaults claims to be the paper's. Three components, each a switch:

    1. Hallucination (``spatial``, ``appearance``): :class:`Hallucinator` turns a labeled source image and a random
       code into a smooth bounded deformation, applied to the image and to its label, and a gain and bias field.
    2. Meta-learning (``meta``), as MAML (Finn, Abbeel, Levine, ICML 2017) and MLDG (Li, Yang, Song, Hospedales,
       AAAI 2018): a functional inner SGD step (``torch.func.functional_call``) on the meta-train loss of
       hallucinated pairs gives weights theta'; the segmenter descends the meta-train loss plus the meta-test loss
       at theta', the hallucinator the meta-test loss through the inner step, so it learns to hallucinate examples
       whose training step helps.
    3. Self-ensembling (``consistency``; mean teacher, Tarvainen and Valpola, NeurIPS 2017, in the
       transformation-consistent form of Li et al., IEEE TNNLS 2021): the student's prediction on a hallucinated
       target image is trained towards the EMA teacher's on the real one, warped by the same deformation.

    Choices the paper leaves open, and deliberate differences:

    * Hallucinator input: the image and a Gaussian code on a grid twice coarser than its field grid.
    * Bounds: ``tanh`` times ``max_displacement``, ``max_log_gain``, ``max_bias``; no learned intensity remapping.
    * Deformation: scaling-and-squaring integration (Dalca et al., MICCAI 2018), backward warping, border padding.
    * Labels: one-hot maps warped bilinearly; the soft map is the target, so the loss is differentiable in the warp.
    * Initialisation: the untrained hallucinator already draws transforms of about half their bounds.
    * Regularisers: smoothness of the coarse velocity, log-gain and bias of the meta-train hallucination.
    * Split: the first half of the labeled batch is hallucinated (meta-train), the second stays real (meta-test).
    * Inner step: one SGD step with ``inner_lr`` on the decoder and head (``inner_params="all"``: every weight).
    * Meta-test loss: supervised on the real half plus the weighted consistency loss, both at theta'.
    * The meta-train loss never reaches the hallucinator directly (it would learn to make easy examples).
    * ``first_order``: MAML's first-order approximation for the segmenter; the hallucinator's gradient stays exact.
    * BatchNorm under ``functional_call``: the weights are substituted, the running statistics are the module's.
    * Consistency: mean squared error of probabilities on the whole target batch, after a sigmoid ramp-up.
    * ``meta`` off: both losses at the current weights; the hallucinator stays a random augmenter.
    * Prediction: the student (``predict_with_teacher``: the teacher), as the suite's ``mean_teacher``.
    * The suite's U-Net, augmentation, presets and schedule replace the paper's network and training length.
    """

    streams = ("source", "target")
    HPARAMS: ClassVar[dict[str, HParam]] = {
        # the ablation switches
        "meta": HParam(True, None, "bi-level meta-learning of segmenter and hallucinator (off: plain training "
                                   "on hallucinated + real source; the hallucinator stays at its random init)"),
        "consistency": HParam(True, None, "self-ensembling with hallucination consistency on target images"),
        "spatial": HParam(True, None, "the hallucinator's deformation (off: identity)"),
        "appearance": HParam(True, None, "the hallucinator's gain and bias fields (off: identity)"),
        "first_order": HParam(False, None, "first-order meta-gradient for the segmenter (MAML-FO)"),
        # meta-learning
        "inner_lr": HParam(0.01, log_uniform(1e-3, 1e-1), "SGD learning rate of the functional inner step"),
        "inner_params": HParam("decoder", choice(["decoder", "all"]),
                               "segmenter weights the inner step adapts: decoder + head, or all"),
        "meta_test_weight": HParam(1.0, uniform(0.5, 2.0), "weight of the meta-test loss (MLDG's beta)"),
        "h_lr": HParam(1e-4, log_uniform(3e-5, 1e-3), "Adam learning rate of the hallucinator"),
        # hallucinator
        "max_displacement": HParam(0.06, uniform(0.03, 0.1), "largest displacement, in image sides"),
        "max_log_gain": HParam(0.3, uniform(0.1, 0.5), "gain within [exp(-m), exp(m)]"),
        "max_bias": HParam(0.3, uniform(0.1, 0.5), "bias within [-m, m] (images are z-scored)"),
        "smooth_weight": HParam(0.1, log_uniform(0.01, 1.0), "weight of the deformation smoothness regulariser"),
        "appearance_smooth_weight": HParam(0.1, log_uniform(0.01, 1.0),
                                           "weight of the gain/bias smoothness regulariser"),
        "integration_steps": HParam(5, None, "scaling-and-squaring steps (0: the velocity is the displacement)"),
        "h_width": HParam(16, None, "hallucinator width"),
        "code_channels": HParam(8, None, "channels of the random code"),
        # self-ensembling
        "consistency_weight": HParam(1.0, log_uniform(0.1, 10.0), "consistency weight after ramp-up"),
        "rampup": HParam(0.4, uniform(0.1, 0.6), "fraction of training over which that weight ramps up"),
        "ema_decay": HParam(0.99, uniform(0.95, 0.999), "teacher EMA decay"),
        "target_fraction": HParam(1.0, None, "fraction of the target batch used for consistency (0.5: half, like "
                                             "the source batch's meta-test half)"),
        "predict_with_teacher": HParam(False, None, "evaluate the teacher instead of the student"),
        "dice_weight": HParam(1.0, None, "weight of the soft Dice term beside cross-entropy"),
    }

    def __init__(self, ctx, hparams):
        if hparams["inner_params"] not in ("decoder", "all"):
            raise ValueError(f"metahallu: inner_params must be 'decoder' or 'all', not {hparams['inner_params']!r}.")
        super().__init__(ctx, hparams)
        hp = hparams
        self.hallucinator = Hallucinator(
            ctx.in_channels, hp["h_width"], hp["code_channels"], max_displacement=hp["max_displacement"],
            max_log_gain=hp["max_log_gain"], max_bias=hp["max_bias"], integration_steps=hp["integration_steps"])
        self.teacher = EMATeacher(self.segmenter, hp["ema_decay"])
        self.optimizers.append(gan_adam(self.hallucinator.parameters(), hp["h_lr"]))

    def hallucinate(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                    code: torch.Tensor | None = None) -> Hallucination:
        """Images (and labels) transformed by the hallucinator, with the switches ``spatial``/``appearance``."""
        return self.hallucinator(images, labels, self.ctx.num_classes, code, spatial=self.hparams["spatial"],
                                 appearance=self.hparams["appearance"])

    def regulariser(self, hal: Hallucination) -> torch.Tensor:
        """Smoothness of the hallucinator's coarse fields (the bounds are built into the network)."""
        hp, reg = self.hparams, torch.zeros((), device=hal.image.device)
        if hal.coarse is None:
            return reg
        if hp["spatial"]:
            reg = reg + hp["smooth_weight"] * smoothness(hal.coarse["velocity"])
        if hp["appearance"]:
            reg = reg + hp["appearance_smooth_weight"] * (smoothness(hal.coarse["log_gain"])
                                                          + smoothness(hal.coarse["bias"]))
        return reg

    def _split(self, batch):
        """Meta-train half (to be hallucinated) and meta-test half (kept real) of the labeled source batch."""
        xs, ys = batch.source_x, batch.source_y
        if len(xs) < 2:
            return xs, ys, xs, ys
        half = len(xs) // 2
        return xs[:half], ys[:half], xs[half:], ys[half:]

    def _target_view(self, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A hallucinated target image and the teacher's probabilities warped by the same deformation."""
        with torch.no_grad():
            teacher = self.teacher(xt).softmax(1)
            view = self.hallucinate(xt)
            if view.displacement is not None:
                teacher = warp(teacher, view.displacement)
        return view.image, teacher

    def update(self, batch, step):
        hp = self.hparams
        xa, ya, xb, yb = self._split(batch)
        weight = 0.0
        if hp["consistency"]:
            weight = hp["consistency_weight"] * sigmoid_rampup(step, int(hp["rampup"] * self.ctx.total_steps))
            xt = batch.target_x[:max(1, math.ceil(hp["target_fraction"] * len(batch.target_x)))]
            xt_view, cons_target = self._target_view(xt)
        else:
            xt_view = cons_target = None
        step_fn = self._meta_step if hp["meta"] else self._plain_step
        losses = step_fn(xa, ya, xb, yb, xt_view, cons_target, weight)
        self.teacher.update(self.segmenter, step)
        return {**losses, "consistency_weight": weight}

    def _plain_step(self, xa, ya, xb, yb, xt_view, cons_target, weight):
        """Meta off: meta-train and meta-test losses both at the current weights; the hallucinator is not trained."""
        hp, opt = self.hparams, self.optimizers[0]
        with torch.no_grad():
            hal = self.hallucinate(xa, ya)
        meta_train = dice_ce_loss(self.segmenter(hal.image), hal.soft_label, hp["dice_weight"])
        supervised = dice_ce_loss(self.segmenter(xb), yb, hp["dice_weight"])
        meta_test = supervised
        losses = {"meta_train": meta_train.item(), "supervised": supervised.item()}
        if xt_view is not None:
            cons = F.mse_loss(self.segmenter(xt_view).softmax(1), cons_target)
            meta_test = meta_test + weight * cons
            losses["consistency"] = cons.item()
        opt.zero_grad(set_to_none=True)
        (meta_train + hp["meta_test_weight"] * meta_test).backward()
        opt.step()
        return losses

    def meta_objectives(self, xa, ya, xb, yb, xt_view=None, cons_target=None, weight: float = 0.0):
        """The bi-level objectives of one step, as tensors (used by :meth:`update` and by the tests).

        Returns a dict with ``hallucination``, ``meta_train`` (on the hallucinated half, at the current weights),
        ``meta_train_grads`` (its gradient w.r.t. every segmenter weight, a graph w.r.t. the hallucinator),
        ``fast`` (the inner-updated weights), ``meta_test`` (supervised on the real half plus the weighted
        consistency, at the inner-updated weights), ``supervised``, ``consistency`` and ``regulariser``.
        """
        hp = self.hparams
        params = dict(self.segmenter.named_parameters())
        # first order: the inner gradient is taken at a detached copy of the weights, so the outer gradient of
        # the segmenter skips it (MAML-FO), while it remains a function of the hallucination, which is how the
        # meta-test loss reaches the hallucinator
        base = {k: p.detach().requires_grad_() for k, p in params.items()} if hp["first_order"] else params
        hal = self.hallucinate(xa, ya)
        meta_train = dice_ce_loss(functional_call(self.segmenter, base, (hal.image,)), hal.soft_label,
                                       hp["dice_weight"])
        grads = dict(zip(params, torch.autograd.grad(meta_train, list(base.values()), create_graph=True,
                                                     allow_unused=True)))
        adapt_all = hp["inner_params"] == "all"
        fast = {k: p - hp["inner_lr"] * grads[k] if grads[k] is not None and (adapt_all or not k.startswith(
            "unet.encoder.")) else p for k, p in params.items()}
        supervised = dice_ce_loss(functional_call(self.segmenter, fast, (xb,)), yb, hp["dice_weight"])
        meta_test, cons = supervised, None
        if xt_view is not None:
            cons = F.mse_loss(functional_call(self.segmenter, fast, (xt_view,)).softmax(1), cons_target)
            meta_test = meta_test + weight * cons
        return {"hallucination": hal, "meta_train": meta_train, "meta_train_grads": grads, "fast": fast,
                "meta_test": meta_test, "supervised": supervised, "consistency": cons,
                "regulariser": self.regulariser(hal)}

    def meta_gradients(self, obj: dict) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
        """Gradients for the segmenter and the hallucinator from :meth:`meta_objectives`' output.

        Segmenter: the meta-train gradient (at the current weights) plus the gradient of ``meta_test_weight``
        times the meta-test loss through the inner step (second order unless ``first_order``). Hallucinator: the
        meta-test loss through the inner step plus its regulariser; the meta-train loss itself never reaches it.
        """
        seg_params = list(self.segmenter.parameters())
        h_params = list(self.hallucinator.parameters())
        outer = torch.autograd.grad(self.hparams["meta_test_weight"] * obj["meta_test"] + obj["regulariser"],
                                    seg_params + h_params, allow_unused=True)
        seg_grads = []
        for g_train, g_test in zip(obj["meta_train_grads"].values(), outer[:len(seg_params)]):
            parts = [g.detach() for g in (g_train, g_test) if g is not None]
            seg_grads.append(sum(parts[1:], parts[0]) if parts else None)  # unused weights keep no gradient
        h_grads = [torch.zeros_like(q) if g is None else g for q, g in zip(h_params, outer[len(seg_params):])]
        return seg_grads, h_grads

    def _meta_step(self, xa, ya, xb, yb, xt_view, cons_target, weight):
        """Meta on: one inner step, then both networks take their outer step."""
        opt_seg, opt_h = self.optimizers
        obj = self.meta_objectives(xa, ya, xb, yb, xt_view, cons_target, weight)
        seg_grads, h_grads = self.meta_gradients(obj)
        for p, g in zip(self.segmenter.parameters(), seg_grads):
            p.grad = g
        for q, g in zip(self.hallucinator.parameters(), h_grads):
            q.grad = g
        opt_seg.step()
        opt_h.step()
        losses = {"meta_train": obj["meta_train"].item(), "meta_test": obj["meta_test"].item(),
                  "supervised": obj["supervised"].item(), "regulariser": obj["regulariser"].item()}
        if obj["consistency"] is not None:
            losses["consistency"] = obj["consistency"].item()
        return losses

    def predict(self, images):
        return (self.teacher if self.hparams["predict_with_teacher"] else self.segmenter)(images)
