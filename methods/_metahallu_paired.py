"""The bi-level step of ``metahallu`` with the paired hallucinator (a helper of ``metahallu.py``, not a plugin).

A mixin for :class:`MetaHallucinator`: it uses the method's ``segmenter``, ``hallucinator``, ``teacher``,
``optimizers``, ``hparams``, ``ctx`` and ``_split``. The method's docstring says what each part follows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from benchmark.blocks import sigmoid_rampup
from benchmark.losses import dice_ce_loss

from ._hallucination import Hallucination, translation_losses, warp


def _cycle(x: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """``count`` items of ``x`` from ``start`` on, wrapping around (a target batch smaller than the source's)."""
    return x[(torch.arange(count, device=x.device) + start) % len(x)]


class PairedMetaStep:
    """Meta-train and meta-test pairs, the inner steps of theta and psi, and both outer gradients."""

    def trans_loss(self, hal: Hallucination, reference: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """L_trans of one paired hallucination: the weighted similarity terms plus the smoothness regularisers."""
        hp = self.hparams
        terms = translation_losses(hal, reference, spatial=hp["spatial"], appearance=hp["appearance"])
        weights = {"velocity_smooth": hp["smooth_weight"], "bias_smooth": hp["appearance_smooth_weight"],
                   "lut_smooth": hp["appearance_smooth_weight"]}
        if hp["trans_loss"]:
            weights.update(mind=hp["mind_weight"], appearance=hp["intensity_weight"],
                           histogram=hp["histogram_weight"])
        total = sum((weights[k] * v for k, v in terms.items() if k in weights),
                    torch.zeros((), device=reference.device))
        return total, {k: float(v.detach()) for k, v in terms.items()}

    def pairs(self, batch) -> tuple[torch.Tensor, ...]:
        """Meta-train (xa, ya, ta) and meta-test (xb, yb, tb): halves of the source batch, each with target images."""
        xa, ya, xb, yb = self._split(batch)
        return xa, ya, _cycle(batch.target_x, 0, len(xa)), xb, yb, _cycle(batch.target_x, len(xa), len(xb))

    def _hallucinate(self, psi: dict[str, torch.Tensor], images, reference, labels=None) -> Hallucination:
        hp = self.hparams
        return functional_call(self.hallucinator, psi, (images, reference),
                               {"labels": labels, "num_classes": self.ctx.num_classes, "spatial": hp["spatial"],
                                "appearance": hp["appearance"]})

    def _inner_psi(self, psi, seg_grads, trans_a):
        """psi' = psi - h_inner_lr (grad_psi L_seg + grad_psi L_trans), functionally."""
        hp = self.hparams
        if not (hp["meta"] and hp["inner_hallucinator"]):
            return psi
        trans_grads = torch.autograd.grad(trans_a, list(psi.values()), create_graph=not hp["first_order"],
                                          retain_graph=True, allow_unused=True) if trans_a.requires_grad else [None]
        trans_grads = list(trans_grads) + [None] * (len(psi) - len(trans_grads))
        fast = {}
        for (name, p), g_seg, g_trans in zip(psi.items(), seg_grads, trans_grads):
            if g_seg is not None and (hp["first_order"] or not hp["psi_seg_hessian"]):
                g_seg = g_seg.detach()
            if g_trans is not None and hp["first_order"]:
                g_trans = g_trans.detach()
            parts = [g for g in (g_seg, g_trans) if g is not None]
            fast[name] = p - hp["h_inner_lr"] * sum(parts[1:], parts[0]) if parts else p
        return fast

    def _consistency(self, seg, psi, xb, logits_b, hal_b, tb) -> torch.Tensor:
        """L_con on the meta-test source and target images: student on the hallucination, teacher warped alike."""
        with torch.no_grad():
            teacher_s = self.teacher(xb).softmax(1)
            teacher_t = self.teacher(tb).softmax(1)
        hal_t = self._hallucinate(psi, tb, tb.roll(1, 0))
        image_t = hal_t.image if self.hparams["meta"] and self.hparams["psi_pixels"] else hal_t.image.detach()
        if hal_b.displacement is not None:
            teacher_s = warp(teacher_s, hal_b.displacement.detach())
        if hal_t.displacement is not None:
            teacher_t = warp(teacher_t, hal_t.displacement.detach())
        student_t = functional_call(self.segmenter, seg, (image_t,)).softmax(1)
        return 0.5 * (F.mse_loss(logits_b.softmax(1), teacher_s) + F.mse_loss(student_t, teacher_t))

    def paired_objectives(self, xa, ya, ta, xb, yb, tb, weight: float = 0.0) -> dict[str, Any]:
        """The bi-level objectives of one step with the paired hallucinator, as tensors (for the step and tests).

        Keys: ``hal_a``/``hal_b`` (meta-train / meta-test hallucinations), ``meta_train`` (L_seg of the
        meta-train hallucination at theta), ``meta_train_grads`` (its gradient w.r.t. every segmenter weight),
        ``fast``/``fast_psi`` (theta', psi'), ``trans_a``/``trans_b`` (L_trans at psi and psi'), ``supervised``
        (L_seg of the meta-test hallucination at theta'), ``consistency`` and ``meta_test``
        (``supervised + weight * consistency``), and ``terms`` (the meta-train L_trans terms, as floats).
        """
        hp, meta = self.hparams, self.hparams["meta"]
        seg = dict(self.segmenter.named_parameters())
        psi = dict(self.hallucinator.named_parameters())
        base = {k: p.detach().requires_grad_() for k, p in seg.items()} if hp["first_order"] else seg
        hal_a = self._hallucinate(psi, xa, ta, ya)
        trans_a, terms = self.trans_loss(hal_a, ta)
        image_a, soft_a = (hal_a.image, hal_a.soft_label) if meta else (hal_a.image.detach(), hal_a.soft_label.detach())
        meta_train = dice_ce_loss(functional_call(self.segmenter, base, (image_a,)), soft_a, hp["dice_weight"])
        fast, fast_psi, grads = seg, psi, {k: None for k in seg}
        if meta:
            wrt = list(base.values()) + list(psi.values())
            all_grads = torch.autograd.grad(meta_train, wrt, create_graph=True, allow_unused=True)
            grads = dict(zip(seg, all_grads[:len(seg)]))
            adapt_all = hp["inner_params"] == "all"
            fast = {k: p - hp["inner_lr"] * grads[k] if grads[k] is not None and (
                adapt_all or not k.startswith("unet.encoder.")) else p for k, p in seg.items()}
            fast_psi = self._inner_psi(psi, all_grads[len(seg):], trans_a)
        hal_b = self._hallucinate(fast_psi, xb, tb, yb)
        trans_b, _ = self.trans_loss(hal_b, tb)
        pixels = meta and hp["psi_pixels"]
        image_b, soft_b = ((hal_b.image, hal_b.soft_label) if pixels
                           else (hal_b.image.detach(), hal_b.soft_label.detach()))
        logits_b = functional_call(self.segmenter, fast, (image_b,))
        supervised = dice_ce_loss(logits_b, soft_b, hp["dice_weight"])
        cons = self._consistency(fast, fast_psi, xb, logits_b, hal_b, tb) if hp["consistency"] else None
        meta_test = supervised if cons is None else supervised + weight * cons
        return {"hal_a": hal_a, "hal_b": hal_b, "meta_train": meta_train, "meta_train_grads": grads, "fast": fast,
                "fast_psi": fast_psi, "trans_a": trans_a, "trans_b": trans_b, "supervised": supervised,
                "consistency": cons, "meta_test": meta_test, "terms": terms}

    def paired_gradients(self, obj: dict[str, Any]) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
        """Gradients for theta and psi from :meth:`paired_objectives`' output.

        ``meta`` on: theta gets the meta-train gradient plus that of ``meta_test_weight`` times the meta-test
        objective through theta'; psi gets that of ``meta_test_weight`` times (meta-test objective + L_trans at
        psi') through theta' and psi' (the meta-test objective reaches psi through theta' only, unless
        ``psi_pixels``: then also through the meta-test hallucinations). ``meta`` off: theta gets the gradient of
        meta-train plus weighted meta-test losses at theta, psi that of L_trans on both halves (its images reach
        the segmenter detached).
        """
        hp = self.hparams
        seg_params = list(self.segmenter.parameters())
        h_params = list(self.hallucinator.parameters())
        beta = hp["meta_test_weight"]
        if hp["meta"]:
            outer = torch.autograd.grad(beta * (obj["meta_test"] + obj["trans_b"]), seg_params + h_params,
                                        allow_unused=True)
            seg_grads = []
            for g_train, g_test in zip(obj["meta_train_grads"].values(), outer[:len(seg_params)]):
                parts = [g.detach() for g in (g_train, g_test) if g is not None]
                seg_grads.append(sum(parts[1:], parts[0]) if parts else None)
            h_out = outer[len(seg_params):]
        else:
            seg_grads = list(torch.autograd.grad(obj["meta_train"] + beta * obj["meta_test"], seg_params,
                                                 allow_unused=True))
            trans = obj["trans_a"] + obj["trans_b"]
            h_out = torch.autograd.grad(trans, h_params, allow_unused=True) if trans.requires_grad else [None] * len(
                h_params)
        h_grads = [torch.zeros_like(q) if g is None else g for q, g in zip(h_params, h_out)]
        return seg_grads, h_grads

    def apply_gradients(self, seg_grads, h_grads) -> None:
        """Set the segmenter's and the hallucinator's gradients and step both optimizers (both versions' step)."""
        for p, g in zip(self.segmenter.parameters(), seg_grads):
            p.grad = g
        for q, g in zip(self.hallucinator.parameters(), h_grads):
            q.grad = g
        opt_seg, opt_h = self.optimizers[:2]
        self.step(opt_seg)
        self.step(opt_h)

    def paired_update(self, batch, step: int) -> dict[str, float]:
        """One training step: objectives, gradients, both optimizers, the teacher's EMA."""
        hp = self.hparams
        weight = 0.0
        if hp["consistency"]:
            weight = hp["consistency_weight"] * sigmoid_rampup(step, int(hp["rampup"] * self.ctx.total_steps))
        obj = self.paired_objectives(*self.pairs(batch), weight)
        seg_grads, h_grads = self.paired_gradients(obj)
        self.apply_gradients(seg_grads, h_grads)
        self.teacher.update(self.segmenter, step)
        losses = {"meta_train": obj["meta_train"].item(), "meta_test": obj["meta_test"].item(),
                  "supervised": obj["supervised"].item(), "trans": obj["trans_a"].item(),
                  "consistency_weight": weight, **{f"trans_{k}": v for k, v in obj["terms"].items()}}
        if obj["consistency"] is not None:
            losses["consistency"] = obj["consistency"].item()
        return losses
