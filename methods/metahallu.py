"""``metahallu``: Meta-Hallucinator, a reconstruction from the paper (no official code was ever published)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from benchmark.blocks import (
    EMATeacher,
    integrate_velocity,
    sigmoid_rampup,
    smoothness,
    warp,
    warp_labels,
)
from benchmark.hparams import HParam, choice, log_uniform, uniform
from benchmark.losses import dice_ce_loss
from benchmark.method import SegmenterMethod
from benchmark.registry import register_method


def soft_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0,
                      eps: float = 1e-5) -> torch.Tensor:
    """Cross-entropy plus soft Dice (foreground classes) against per-pixel class probabilities ``target``.

    With one-hot ``target`` it equals :func:`benchmark.losses.dice_ce_loss` (up to float rounding); with the
    bilinearly warped one-hot labels of a hallucination it keeps the loss differentiable in the displacement.
    """
    logp = logits.log_softmax(1)
    ce = -(target * logp).sum(1).mean()
    probs = logits.softmax(1)
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)[1:]
    denom = probs.sum(dims)[1:] + target.sum(dims)[1:]
    return ce + dice_weight * (1.0 - ((2 * inter + eps) / (denom + eps)).mean())


@dataclass
class Hallucination:
    """A hallucinated batch and the transform that made it.

    ``displacement`` (B, 2, H, W) is in ``grid_sample``'s normalised units (see :func:`benchmark.blocks.warp`);
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
    from the paper's description; it is the suite's reference implementation, and every choice the description
    leaves open is listed below. None of the default values claims to be the paper's.

    The three components, each switchable:

    1. A hallucinator network (:class:`Hallucinator`) turns a labeled source image and a random code into a
       smooth, bounded deformation, applied to the image (bilinear) and to its label (one-hot, bilinear), and a
       smooth, bounded gain and bias field applied to the deformed image (``spatial``, ``appearance``).
    2. Gradient-based bi-level meta-learning in the manner of MAML (Finn, Abbeel, Levine, ICML 2017) and MLDG
       (Li, Yang, Song, Hospedales, AAAI 2018): the meta-train loss is the segmenter's loss on hallucinated pairs;
       one functional inner SGD step (``torch.func.functional_call``; the real weights are never changed in
       place) gives updated weights theta'; the meta-test loss at theta' is the supervised loss on real labeled
       source images plus an unsupervised target term. The segmenter descends meta-train + meta-test loss (the
       latter through the inner step), the hallucinator descends the meta-test loss through the inner step, so it
       learns to hallucinate examples whose training step helps (``meta``; second order by default,
       ``first_order`` as an option).
    3. Self-ensembling with hallucination consistency (mean teacher: Tarvainen and Valpola, NeurIPS 2017; the
       transformation-consistent form of Li et al., IEEE TNNLS 2021): an EMA teacher predicts on an unlabeled
       target image, the student on its hallucinated version; the teacher's probabilities warped by the same
       deformation are the student's target, under a ramped-up weight (``consistency``).

    Choices the paper's description leaves open, and what was chosen:

    * Hallucinator input: the image and a Gaussian spatial code (8 channels, on a grid 16x coarser than the
      image, upsampled to the 8x coarser field grid, so neighbouring cells are correlated). Outputs depend on both
      code and image. A strided CNN (widths 16, 32, 32), two 3x3 convolutions with group norm and a 1x1 head give
      a velocity field, a log-gain and a bias on that grid.
    * Deformation: each velocity component bounded by ``tanh`` times ``max_displacement`` (0.06 image sides:
      3.8 px at 64x64, 15 px at 256x256), upsampled bilinearly and integrated by scaling and squaring (5 steps;
      diffeomorphic VoxelMorph, Dalca et al., MICCAI 2018), which keeps it invertible and within the same bound.
      Backward warping with ``grid_sample`` (spatial transformer, Jaderberg et al., NeurIPS 2015), border
      padding. Labels: the one-hot maps are warped bilinearly; their arg-max is the hallucinated label map (always
      a valid map), and the soft warped one-hot is the training target (soft Dice + cross-entropy), so the loss
      stays differentiable in the deformation: with a hard label the meta-gradient would push the image relative
      to a label it treats as fixed.
    * Appearance: gain ``exp(l)`` with ``|l| <= 0.3`` and bias ``|b| <= 0.3`` (images are z-scored per
      modality), on the field grid, upsampled bilinearly, applied after the deformation. A learned intensity
      remapping, which could invert contrasts as MR->CT does, was not chosen: it can hallucinate implausible
      images, and the bounded fields keep hallucinations anatomically and radiologically plausible.
    * Initialisation: the head is scaled so the untrained hallucinator already makes random, non-trivial
      transforms (mean displacement about half the bound); with ``meta`` off it stays so, a random augmenter.
    * Regularisers: squared finite differences of the coarse velocity, log-gain and bias (weights 0.1), on the
      meta-train hallucination; the bounds are part of the network.
    * Meta-train / meta-test split: the labeled source batch is halved; the first half is hallucinated
      (meta-train), the second half stays real (meta-test). Meta-testing on the very images that were
      hallucinated would reward near-identity hallucinations; disjoint halves follow MLDG's split and halve the
      cost.
    * Inner step: one SGD step with ``inner_lr`` 0.01 on the decoder and segmentation head only
      (``inner_params="decoder"``; ``"all"`` adapts the encoder too at about 20 % more time per step). The encoder
      still receives meta-gradients through the decoder's inner step.
    * Unsupervised meta-test term: the hallucination-consistency loss itself, at theta' (so the same student
      forward serves components 2 and 3, and the hallucinator learns to help target consistency too); with
      ``consistency`` off the meta-test loss is supervised only. The target's hallucination is drawn without
      gradient: the hallucinator is trained only through the inner step (and by its regulariser).
    * Outer objectives: segmenter ``L_mtr(theta) + beta * L_mte(theta'(theta))`` (``meta_test_weight`` beta = 1);
      hallucinator ``beta * L_mte(theta'(phi)) + reg``. The meta-train loss's direct gradient never reaches the
      hallucinator (it would teach it to make easy examples). Hallucinator: Adam, ``h_lr`` 1e-4, betas
      (0.5, 0.999); it follows the trainer's schedule like every optimizer.
    * First order: the inner gradient is taken at a detached copy of the weights, so the segmenter's meta-test
      gradient is taken at theta' as if it were independent of theta (MAML's first-order approximation). The
      hallucinator's meta-gradient is a mixed second derivative by nature (with a detached inner gradient it
      would receive nothing), so it is kept exact in both modes; the first-order path therefore saves little time.
    * BatchNorm under ``functional_call``: only parameters are substituted; the running statistics are the
      module's own, so each of the three train-mode forward passes (hallucinated half at theta, real half and
      hallucinated target at theta') normalises with its own batch statistics and updates the running statistics
      once, as three ordinary passes would.
    * Self-ensembling: the teacher sees the real target image, the student a hallucination of it (deformation and
      appearance from the hallucinator with a fresh code); mean squared error between probabilities; weight 1
      after a sigmoid ramp-up over the first 40 % of training; EMA decay 0.99 with the mean-teacher warm-up. It
      uses the whole target batch (``target_fraction=1.0``). Half of it (0.5, matching the meta-test's half of
      the source batch) saves about 20 % of a step on a CPU but scored clearly lower on the synthetic heart
      (mr2ct, 4 shots, quick preset, target Dice seeds 0/1: 0.291/0.309 with half, 0.379/0.329 with the whole
      batch).
    * ``meta`` off: ``L_mtr(theta) + beta * L_mte(theta)`` on the same data, no inner step; the hallucinator gets
      no training signal and stays at its random initialisation. With ``consistency`` off as well this is
      source-only training with a random smooth deformation and gain/bias augmentation of half of each batch
      (a test checks the equality step by step).
    * Prediction: the student (``predict_with_teacher`` evaluates the teacher), as the suite's ``mean_teacher``.
      Features for plug-ins: the segmenter's last decoder features.
    * The suite's standard augmentation (affine, brightness/contrast, noise) is applied to every stream before
      the method sees it, as for every method; hallucination comes on top.

    Protocol: the paper studies few-shot cross-modality cardiac segmentation between MR and CT on MM-WHS 2017
    (the field's usual structures: myocardium, left atrium and left ventricle cavities, ascending aorta), where
    only a few labeled source volumes exist and the target modality is unlabeled. Here ``shots`` is that number
    of labeled source volumes (protocol ``fsuda-v1``), all target training volumes are unlabeled, and evaluation
    is 3D on held-out target test volumes, on the embedded ``synthetic-heart`` by default and on MM-WHS through
    its adapter. The suite's U-Net, presets and schedule replace the paper's network and training length, so its
    numbers are not the paper's.

    Cost at the ``quick`` preset (64x64, batch 8, one CPU thread): a step takes about 3.3x the CPU time of a
    ``source_only`` step (half the target batch for consistency 2.8x, first order with it 2.6x,
    ``inner_params="all"`` 3.2x), a trial with its evaluation about 3.2x.
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
                                             "the source batch's meta-test half; faster, scored lower)"),
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
        self.optimizers.append(torch.optim.Adam(self.hallucinator.parameters(), lr=hp["h_lr"], betas=(0.5, 0.999)))

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
        meta_train = soft_dice_ce_loss(self.segmenter(hal.image), hal.soft_label, hp["dice_weight"])
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
        meta_train = soft_dice_ce_loss(functional_call(self.segmenter, base, (hal.image,)), hal.soft_label,
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
