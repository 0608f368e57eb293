"""``advent``: entropy minimisation (MinEnt) and its adversarial variant (AdvEnt)."""

from __future__ import annotations

from benchmark.blocks import entropy_map
from benchmark.hparams import HParam, choice, log_uniform
from benchmark.losses import dice_ce_loss
from benchmark.method import OutputAdversaryMethod
from benchmark.registry import register_method


@register_method("advent")
class Advent(OutputAdversaryMethod):
    """Entropy minimisation on target predictions, direct or adversarial (ADVENT; Vu et al., CVPR 2019).

    Vu, Jain, Bucher, Cord, Pérez. "ADVENT: Adversarial Entropy Minimization for Domain Adaptation in Semantic
    Segmentation." CVPR 2019. ``variant="minent"`` adds ``ent_weight`` times the mean normalised pixel entropy of
    target predictions to the supervised source loss; ``variant="advent"`` (the default) instead trains a
    discriminator on the weighted self-information maps ``-p log p`` of source and target predictions and trains
    the segmenter to make target maps look like source maps.

    Deliberate differences: single-level (the paper also aligns an intermediate output); Dice + cross-entropy as
    the supervised loss; the paper's DeepLab-v2 backbone is the suite's U-Net.
    """

    streams = ("source", "target")
    HPARAMS = {
        "variant": HParam("advent", choice(["advent", "minent"]), "adversarial (advent) or direct (minent)"),
        "ent_weight": HParam(0.001, log_uniform(1e-4, 1e-2), "MinEnt weight (paper: 0.001)"),
        "adv_weight": HParam(0.001, log_uniform(1e-4, 1e-2), "AdvEnt weight (paper: 0.001)"),
    }

    def __init__(self, ctx, hparams):
        if hparams["variant"] not in ("advent", "minent"):
            raise ValueError(f"advent: variant must be 'advent' or 'minent', not {hparams['variant']!r}.")
        super().__init__(ctx, hparams)

    def update(self, batch, step):
        hp = self.hparams
        logits_s = self.segmenter(batch.source_x)
        logits_t = self.segmenter(batch.target_x)
        seg = dice_ce_loss(logits_s, batch.source_y, hp["dice_weight"])
        ent_t = entropy_map(logits_t)
        losses = {"seg": seg.item()}
        if hp["variant"] == "minent":
            ent = ent_t.sum(1).mean()
            opt_s = self.optimizers[0]
            opt_s.zero_grad(set_to_none=True)
            self.backward(seg + hp["ent_weight"] * ent)
            self.step(opt_s)
            return {**losses, "entropy": ent.item()}
        return {**losses, **self.adversarial_step(seg, entropy_map(logits_s.detach()), ent_t, hp["adv_weight"])}
