"""``adaptseg``: output-space adversarial alignment."""

from __future__ import annotations


from benchmark.blocks import gan_loss, set_requires_grad
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
        "dice_weight": HParam(1.0, None, "weight of the soft Dice term beside cross-entropy"),
    }

    def update(self, batch, step):
        opt_s, opt_d = self.optimizers
        hp = self.hparams
        # segmenter: supervised on source, fool the discriminator on target
        set_requires_grad(self.discriminator, False)
        logits_s = self.segmenter(batch.source_x)
        logits_t = self.segmenter(batch.target_x)
        seg = dice_ce_loss(logits_s, batch.source_y, hp["dice_weight"])
        adv = gan_loss(self.discriminator(logits_t.softmax(1)), real=True, kind=hp["gan"])
        opt_s.zero_grad(set_to_none=True)
        (seg + hp["adv_weight"] * adv).backward()
        opt_s.step()
        # discriminator: source maps are "real", target maps "fake"
        set_requires_grad(self.discriminator, True)
        d_loss = 0.5 * (gan_loss(self.discriminator(logits_s.detach().softmax(1)), real=True, kind=hp["gan"])
                        + gan_loss(self.discriminator(logits_t.detach().softmax(1)), real=False, kind=hp["gan"]))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        return {"seg": seg.item(), "adv": adv.item(), "disc": d_loss.item()}
