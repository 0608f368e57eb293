"""``metahallu``: Meta-Hallucinator, a reconstruction from the paper and its framework figure (no official code)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from benchmark.blocks import EMATeacher, gan_adam, sigmoid_rampup
from benchmark.hparams import HParam, choice, log_uniform, uniform
from benchmark.losses import dice_ce_loss
from benchmark.method import SegmenterMethod
from benchmark.registry import register_method

from ._hallucination import (Hallucination, Hallucinator, PairedHallucinator, apply_lut, integrate_velocity,
                             intensity_w1, mind, smoothness, translation_losses, warp, warp_labels)
from ._metahallu_paired import PairedMetaStep

__all__ = ["Hallucination", "Hallucinator", "MetaHallucinator", "PairedHallucinator", "apply_lut",
           "integrate_velocity", "intensity_w1", "mind", "smoothness", "translation_losses", "warp", "warp_labels"]


@register_method("metahallu", aliases=("meta_hallucinator",))
class MetaHallucinator(PairedMetaStep, SegmenterMethod):
    """Meta-Hallucinator: a target-conditioned hallucinator meta-learned with the segmenter, and self-ensembling.

    Zhao, Zhou, Zeng, Guan, Zhou. "Meta-hallucinator: Towards Few-Shot Cross-Modality Cardiac Image
    Segmentation." MICCAI 2022 (arXiv:2305.06978); its framework figure (``assets/archi.png`` of
    jacobzhaoziyuan/Meta-Hallucinator) is what version 2 follows. No code was published, so this is a
    reconstruction; none of the defaults claims to be the paper's. Component by component (figure; choice):

    * Hallucinator psi (figure: an encoder-decoder fed a meta-train pair D_s, D_t): :class:`PairedHallucinator`,
      a source image, a target image and a random code to a diffeomorphic deformation (scaling and squaring,
      Dalca et al., MICCAI 2018) and an appearance transform, a learned intensity remapping plus a smooth additive
      field, as learned-transformation augmentation (Zhao et al., CVPR 2019); the label moves with the deformation.
      ``class_appearance`` adds an intensity offset per structure of the warped label (the suite's addition, off:
      a remapping cannot create a contrast between structures the source shows alike).
    * L_trans (figure: a loss of psi's own, at both levels; the paper leaves its form open):
      :func:`translation_losses`, MIND (Heinrich et al., MedIA 2012) for the deformation, MSE with the
      deformation fixed and a 1D Wasserstein intensity term for the appearance, smoothness of both fields.
    * Inner step (figure: psi -> psi' along grad_psi L_seg + grad_psi L_trans, theta -> theta' along
      grad_theta L_seg): one functional SGD step of each (``torch.func.functional_call``; MAML, Finn et al., ICML
      2017), ``inner_lr`` for the decoder and head of theta (``inner_params="all"``: every weight), ``h_inner_lr``
      for psi; ``psi_seg_hessian`` off keeps grad_psi L_seg a constant of the step (no second derivative there).
    * Meta-test (figure: psi' hallucinates the meta-test pairs, theta' is judged on L_seg + L_trans + L_con):
      the second halves of the source and target batches; theta descends the meta-train L_seg plus
      ``meta_test_weight`` times that objective at theta' (MLDG, Li et al., AAAI 2018), psi the same objective
      and L_trans at psi', through both inner steps; second order, ``first_order`` drops the Hessian terms.
      As drawn, the meta-test L_seg and L_con reach psi through theta' and through the pixels of the meta-test
      hallucinations; the second path rewards hallucinations that are merely easy for theta'. ``psi_pixels`` off
      keeps only the first: psi is then judged by how much training on its meta-train hallucination helped theta'
      (the abstract's "examples that lead to good segmentation performance").
    * L_con (figure: the EMA teacher on meta-test images, its prediction through psi', against the student on the
      hallucinated input): on source and on target meta-test images (a target image is hallucinated towards
      another target image of the batch), the teacher's probabilities warped by the same deformation, mean
      squared error after a sigmoid ramp-up (mean teacher, Tarvainen and Valpola, NeurIPS 2017).
    * ``meta`` off: no inner step; psi learns from L_trans alone and the segmenter trains on its hallucinations.
    * BatchNorm under ``functional_call``: the weights are substituted, the running statistics are the module's.
    * Prediction: the student (``predict_with_teacher``: the teacher), as the suite's ``mean_teacher``.
    * The suite's U-Net, augmentation, presets and schedule replace the paper's network and training length.

    ``hallucinator=random`` is version 1 unchanged, step for step: :class:`Hallucinator` draws a deformation and a
    gain/bias field from one source image and a random code, has no loss of its own and never takes the inner step;
    the first half of the source batch is hallucinated (meta-train), the second stays real (meta-test); the
    meta-train loss never reaches psi; consistency uses the whole target batch.
    """

    version = "2"
    streams = ("source", "target")
    mixed_precision = False  # second-order meta-gradients (create_graph) train in float32
    HPARAMS: ClassVar[dict[str, HParam]] = {
        # the ablation switches
        "hallucinator": HParam("paired", None, "paired: source + target to a transform with its own loss L_trans, "
                                               "meta-learned at both levels; random: version 1's random augmenter"),
        "trans_loss": HParam(True, None, "the paired hallucinator's similarity to the target (MIND, intensity MSE "
                                         "and W1); off: psi learns from the meta-gradient only"),
        "inner_hallucinator": HParam(True, None, "psi takes the inner step too (off: only theta does)"),
        "meta": HParam(True, None, "bi-level meta-learning of segmenter and hallucinator (off: plain training on "
                                   "hallucinations; psi learns from L_trans alone, or, random, stays at its init)"),
        "consistency": HParam(True, None, "self-ensembling with hallucination consistency on target images"),
        "spatial": HParam(True, None, "the hallucinator's deformation (off: identity)"),
        "appearance": HParam(True, None, "the hallucinator's appearance transform (off: identity)"),
        "first_order": HParam(False, None, "first-order meta-gradient (MAML-FO)"),
        "psi_seg_hessian": HParam(True, None, "differentiate through grad_psi L_seg of psi's inner step (off: it "
                                              "is a constant of the step)"),
        "psi_pixels": HParam(True, None, "psi descends the meta-test L_seg and L_con through the pixels of its "
                                         "meta-test hallucinations too (off: only through theta')"),
        # meta-learning
        "inner_lr": HParam(0.01, log_uniform(1e-3, 1e-1), "SGD learning rate of the functional inner step"),
        "h_inner_lr": HParam(0.01, log_uniform(1e-3, 1e-1), "SGD learning rate of psi's inner step (paired)"),
        "inner_params": HParam("decoder", choice(["decoder", "all"]),
                               "segmenter weights the inner step adapts: decoder + head, or all"),
        "meta_test_weight": HParam(1.0, uniform(0.5, 2.0), "weight of the meta-test loss (MLDG's beta)"),
        "h_lr": HParam(1e-4, log_uniform(3e-5, 1e-3), "Adam learning rate of the random hallucinator"),
        "paired_lr": HParam(1e-3, log_uniform(1e-4, 3e-3), "Adam learning rate of the paired hallucinator"),
        # hallucinator
        "max_displacement": HParam(0.06, uniform(0.03, 0.1), "largest displacement, in image sides"),
        "max_log_gain": HParam(0.3, uniform(0.1, 0.5), "gain within [exp(-m), exp(m)] (random)"),
        "max_bias": HParam(0.3, uniform(0.1, 0.5), "bias within [-m, m] (images are z-scored)"),
        "max_lut": HParam(2.0, uniform(1.0, 3.0), "intensity remapping offsets within [-m, m] (paired)"),
        "class_appearance": HParam(False, None, "also one intensity offset per structure of the warped source label "
                                                "(paired; off: remapping and smooth field only)"),
        "lut_knots": HParam(16, None, "knots of the intensity remapping over [-3, 3] (paired)"),
        "smooth_weight": HParam(0.1, log_uniform(0.01, 1.0), "weight of the deformation smoothness regulariser"),
        "appearance_smooth_weight": HParam(0.1, log_uniform(0.01, 1.0),
                                           "weight of the appearance smoothness regulariser"),
        "mind_weight": HParam(10.0, log_uniform(1.0, 100.0), "weight of L_trans' MIND term (paired)"),
        "intensity_weight": HParam(1.0, log_uniform(0.1, 10.0), "weight of L_trans' intensity MSE (paired)"),
        "histogram_weight": HParam(1.0, log_uniform(0.1, 10.0), "weight of L_trans' intensity W1 (paired)"),
        "integration_steps": HParam(5, None, "scaling-and-squaring steps (0: the velocity is the displacement)"),
        "h_width": HParam(16, None, "hallucinator width"),
        "code_channels": HParam(8, None, "channels of the random code"),
        # self-ensembling
        "consistency_weight": HParam(1.0, log_uniform(0.1, 10.0), "consistency weight after ramp-up"),
        "rampup": HParam(0.4, uniform(0.1, 0.6), "fraction of training over which that weight ramps up"),
        "ema_decay": HParam(0.99, uniform(0.95, 0.999), "teacher EMA decay"),
        "target_fraction": HParam(1.0, None, "fraction of the target batch used for consistency (random)"),
        "predict_with_teacher": HParam(False, None, "evaluate the teacher instead of the student"),
    }

    def __init__(self, ctx, hparams):
        if hparams["inner_params"] not in ("decoder", "all"):
            raise ValueError(f"metahallu: inner_params must be 'decoder' or 'all', not {hparams['inner_params']!r}.")
        if hparams["hallucinator"] not in ("paired", "random"):
            raise ValueError(f"metahallu: hallucinator must be 'paired' or 'random', not "
                             f"{hparams['hallucinator']!r}.")
        super().__init__(ctx, hparams)
        hp = hparams
        self.paired = hp["hallucinator"] == "paired"
        if self.paired:
            self.hallucinator = PairedHallucinator(
                ctx.in_channels, hp["h_width"], hp["code_channels"], max_displacement=hp["max_displacement"],
                max_bias=hp["max_bias"], lut_knots=hp["lut_knots"], max_lut=hp["max_lut"],
                integration_steps=hp["integration_steps"],
                class_offsets=ctx.num_classes if hp["class_appearance"] else 0)
        else:
            self.hallucinator = Hallucinator(
                ctx.in_channels, hp["h_width"], hp["code_channels"], max_displacement=hp["max_displacement"],
                max_log_gain=hp["max_log_gain"], max_bias=hp["max_bias"],
                integration_steps=hp["integration_steps"])
        self.teacher = EMATeacher(self.segmenter, hp["ema_decay"])
        self.optimizers.append(torch.optim.Adam(self.hallucinator.parameters(), hp["paired_lr"]) if self.paired
                               else gan_adam(self.hallucinator.parameters(), hp["h_lr"]))

    def hallucinate(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                    code: torch.Tensor | None = None, reference: torch.Tensor | None = None) -> Hallucination:
        """Images (and labels) transformed by the hallucinator, with the switches ``spatial``/``appearance``.

        The paired hallucinator needs ``reference``, the target images to hallucinate towards (one per image).
        """
        hp = self.hparams
        if not self.paired:
            return self.hallucinator(images, labels, self.ctx.num_classes, code, spatial=hp["spatial"],
                                     appearance=hp["appearance"])
        if reference is None:
            raise ValueError("metahallu: the paired hallucinator needs reference (target) images.")
        return self.hallucinator(images, reference, labels, self.ctx.num_classes, code, spatial=hp["spatial"],
                                 appearance=hp["appearance"])

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
        if self.paired:
            return self.paired_update(batch, step)
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
        self.backward(meta_train + hp["meta_test_weight"] * meta_test)
        self.step(opt)
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
        obj = self.meta_objectives(xa, ya, xb, yb, xt_view, cons_target, weight)
        self.apply_gradients(*self.meta_gradients(obj))
        losses = {"meta_train": obj["meta_train"].item(), "meta_test": obj["meta_test"].item(),
                  "supervised": obj["supervised"].item(), "regulariser": obj["regulariser"].item()}
        if obj["consistency"] is not None:
            losses["consistency"] = obj["consistency"].item()
        return losses

    def predict(self, images):
        return (self.teacher if self.hparams["predict_with_teacher"] else self.segmenter)(images)
