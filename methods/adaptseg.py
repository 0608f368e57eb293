"""``adaptseg``: output-space adversarial alignment."""

from __future__ import annotations

from benchmark.hparams import HParam, choice, log_uniform
from benchmark.losses import dice_ce_loss
from benchmark.method import OutputAdversaryMethod
from benchmark.registry import register_method


@register_method("adaptseg")
class AdaptSeg(OutputAdversaryMethod):
    """Output-space adversarial adaptation (AdaptSegNet; Tsai et al., CVPR 2018).

    Tsai, Hung, Schulter, Sohn, Yang, Chandraker. "Learning to Adapt Structured Output Space for Semantic
    Segmentation." CVPR 2018. A fully convolutional discriminator learns to tell the segmenter's softmax maps on
    source images from those on target images; the segmenter is trained with its supervised loss on the labeled
    source images plus ``adv_weight`` times the adversarial loss that makes target maps look like source maps.

    Deliberate differences: single-level alignment on the final output (the paper's multi-level variant adds a
    second discriminator on an intermediate classifier; the U-Net backbone has no such auxiliary head);
    Dice + cross-entropy instead of cross-entropy alone, as everywhere in this suite; the GAN objective is a
    hyperparameter (the paper uses binary cross-entropy, ``vanilla``).
    """

    streams = ("source", "target")
    HPARAMS = {
        "adv_weight": HParam(0.001, log_uniform(1e-4, 1e-2), "weight of the adversarial term (paper: 0.001)"),
        "gan": HParam("vanilla", choice(["vanilla", "lsgan"]), "GAN objective"),
    }

    def update(self, batch, step):
        hp = self.hparams
        logits_s = self.segmenter(batch.source_x)
        logits_t = self.segmenter(batch.target_x)
        seg = dice_ce_loss(logits_s, batch.source_y, hp["dice_weight"])
        # the discriminator learns source softmax maps as "real", target ones as "fake"; the segmenter, to fool it
        adv = self.adversarial_step(seg, logits_s.detach().softmax(1), logits_t.softmax(1), hp["adv_weight"],
                                    hp["gan"])
        return {"seg": seg.item(), **adv}
