"""``sifa_lite`` (alias ``sifa``): synergistic image and feature alignment, without SIFA's auxiliary parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.blocks import (ImagePool, OutputDiscriminator, PatchDiscriminator, ResnetGenerator, gan_adam,
                              gan_loss, set_requires_grad)
from benchmark.hparams import HParam, log_uniform, uniform
from benchmark.losses import dice_ce_loss
from benchmark.method import SegmenterMethod
from benchmark.registry import register_method


class SkipDecoder(nn.Module):
    """SIFA's decoder U, narrowed: reconstructs an image from the encoder's features, deepest first.

    One 3x3 convolution (instance norm, ReLU) per level after upsampling and concatenating that level's encoder
    features, then a last upsampling to full resolution and a 3x3 output convolution. It reads only what E
    computed, not the image E encoded (the encoder's first "feature" in segmentation-models-pytorch);
    :class:`SIFALite` adds that image to its output when ``skip`` is on.
    """

    def __init__(self, feature_channels: list[int], width: int, out_channels: int):
        super().__init__()
        deepest, *shallower = reversed(feature_channels)

        def block(cin: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.InstanceNorm2d(width), nn.ReLU(inplace=True))

        self.levels = nn.ModuleList([block((deepest if i == 0 else width) + c) for i, c in enumerate(shallower)])
        self.top = block(width if shallower else deepest)
        self.out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x, *shallower = reversed(features)
        for level, skip in zip(self.levels, shallower):
            x = level(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return self.out(self.top(F.interpolate(x, size=size, mode="nearest")))


@register_method("sifa_lite", aliases=("sifa",))
class SIFALite(SegmenterMethod):
    """Joint image translation and segmentation with a shared encoder (after SIFA; Chen et al. 2019/2020).

    Chen, Dou, Chen, Qin, Heng. "Synergistic Image and Feature Adaptation: Towards Cross-Modality Domain
    Adaptation of Medical Image Segmentation." AAAI 2019; extended in IEEE TMI 39(7), 2020.

    Kept from SIFA: a generator G_t renders source images in the target appearance, judged by an image
    discriminator D_t; the segmenter's encoder E is shared with the target->source path, whose decoder U
    reconstructs source-like images from E's features, judged by an image discriminator D_s; cycle consistency
    through both paths (x_s -> G_t -> E -> U ~ x_s, and x_t -> E -> U -> G_t ~ x_t); the segmenter (E and its
    classifier) is trained on translated source images with their labels; an output-space discriminator D_p
    aligns its predictions on translated source images and real target images. All parts train jointly from the
    start, each with its own optimizer and its own objective, as in SIFA's released training code:

    * G_t: cycle + its adversarial term; U: cycle + its adversarial term. The segmentation loss never reaches
      either (so G_t cannot make its images easier to segment instead of more target-like).
    * E and the classifier: segmentation + ``encoder_translation_weight`` (SIFA: 0.1) x (cycle + U's adversarial
      term) + the output-space adversarial term, whose weight is 0 for the first ``output_adv_delay`` of the
      steps and then rises linearly over a tenth of them (SIFA: 0 for five epochs, full after seven).
    * With ``skip`` (SIFA's released configuration), G_t and U add their input image to their output, so each
      learns a change of appearance; U's input image is the one E encoded.

    Deliberate differences:

    * Dropped ("lite"): the deep-supervision branch on an intermediate layer and the auxiliary discriminator on
      the segmentation of the source-like reconstructions.
    * E and its classifier are the suite's U-Net; U (:class:`SkipDecoder`, ``recon_width`` 16) reads every level
      of E's features, one convolution per level (SIFA's decoder reads only the deepest, a 4x4 grid at 64 pixels).
    * The generator and the image discriminators are narrower and shallower (``gen_width`` 8, ``gen_blocks`` 2,
      for 64-256 pixel slices), and the generator's first and last convolutions are 3x3, not 7x7
      (``gen_outer_kernel``), to keep a step affordable on a CPU.
    * The translation parts learn at 1e-3, not 2e-4, under the trainer's schedule: the budget is hundreds to
      thousands of steps, not SIFA's tens of thousands.
    * No tanh on the images, which the suite normalises per volume rather than to [-1, 1].
    * Dice + cross-entropy as the supervised loss, with the trainer's weight decay in place of SIFA's L2 term.
    """

    version = "4"
    streams = ("source", "target")
    HPARAMS = {
        "g_lr": HParam(1e-3, log_uniform(2e-4, 2e-3), "translation parts' learning rate (SIFA: 2e-4)"),
        "cycle_weight": HParam(10.0, uniform(5.0, 20.0), "cycle-consistency weight (SIFA: 10)"),
        "image_adv_weight": HParam(1.0, uniform(0.5, 2.0), "weight of the two image-level adversarial terms"),
        "encoder_translation_weight": HParam(0.1, log_uniform(0.02, 0.5),
                                             "share of U's translation objective that trains E (SIFA: 0.1)"),
        "output_adv_weight": HParam(0.1, log_uniform(0.01, 0.5), "weight of the output-space adversarial term"),
        "output_adv_delay": HParam(0.2, uniform(0.0, 0.5), "fraction of the steps before output-space alignment"),
        "skip": HParam(True, None, "G_t and U add their input image to their output (SIFA's configuration)"),
        "seg_weight": HParam(1.0, None, "weight of the segmentation loss"),
        "gen_width": HParam(8, None, "generator (and image discriminator) width; SIFA: 32"),
        "gen_outer_kernel": HParam(3, None, "kernel size of the generator's first and last convolutions; SIFA: 7"),
        "recon_width": HParam(16, None, "width of the reconstruction decoder U"),
        "gen_blocks": HParam(2, None, "residual blocks of the generator (SIFA: 9)"),
        "pool_size": HParam(50, None, "image pool size"),
    }

    def __init__(self, ctx, hparams):
        super().__init__(ctx, hparams)
        hp, c = hparams, ctx.in_channels
        self.decoder_u = SkipDecoder(list(self.segmenter.unet.encoder.out_channels[1:]), hp["recon_width"], c)
        self.g_t = ResnetGenerator(c, c, hp["gen_width"], hp["gen_blocks"], residual=hp["skip"],
                                   outer_kernel=hp["gen_outer_kernel"])
        self.d_t = PatchDiscriminator(c, hp["gen_width"])
        self.d_s = PatchDiscriminator(c, hp["gen_width"])
        self.d_p = OutputDiscriminator(ctx.num_classes, hp["gen_width"])
        self.translation_params = list(self.g_t.parameters()) + list(self.decoder_u.parameters())
        self.optimizers += [
            gan_adam(self.translation_params, hp["g_lr"]),
            gan_adam(list(self.d_t.parameters()) + list(self.d_s.parameters()) + list(self.d_p.parameters()),
                     hp["g_lr"]),
        ]
        self.pool_t, self.pool_s = ImagePool(hp["pool_size"], seed=1), ImagePool(hp["pool_size"], seed=2)

    def _reconstruct(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """U: a source-like image from E's features (smp's first "feature" is E's input image itself)."""
        out = self.decoder_u(skips[1:], skips[0].shape[-2:])
        return out + skips[0] if self.hparams["skip"] else out

    def output_adv_ramp(self, step: int) -> float:
        """Weight factor of the output-space adversarial term: 0, then a linear rise over 10 % of the steps."""
        start, length = self.hparams["output_adv_delay"] * self.total_steps, 0.1 * self.total_steps
        return min(max((step - start) / length, 0.0), 1.0) if length > 0 else 1.0

    def update(self, batch, step):
        hp = self.hparams
        opt_seg, opt_gen, opt_d = self.optimizers
        xs, ys, xt = batch.source_x, batch.source_y, batch.target_x
        discriminators = (self.d_t, self.d_s, self.d_p)
        for d in discriminators:
            set_requires_grad(d, False)

        skips_t = self.segmenter.encode(xt)
        fake_s = self._reconstruct(skips_t)                     # target rendered as source (through E)
        # one generator call renders the source images and the source-like ones (instance norm: per image)
        fake_t, cycle_t = self.g_t(torch.cat([xs, fake_s])).split(len(xs))
        skips_ft = self.segmenter.encode(fake_t)                # source rendered as target, seen by E
        cycle = F.l1_loss(self._reconstruct(skips_ft), xs) + F.l1_loss(cycle_t, xt)
        adv_t, adv_s = gan_loss(self.d_t(fake_t), True), gan_loss(self.d_s(fake_s), True)
        logits_t = self.segmenter.head(self.segmenter.decode(skips_t))
        output_adv = gan_loss(self.d_p(logits_t.softmax(1)), True)
        logits_ft = self.segmenter.head(self.segmenter.decode(skips_ft))
        seg = dice_ce_loss(logits_ft, ys, hp["dice_weight"])
        # each part's own objective (SIFA trains each variable group on its own loss): U's is cycle + adv_s,
        # G_t's is cycle + adv_t, and E gets a share of U's beside the segmentation and output-space terms
        u_objective = hp["cycle_weight"] * cycle + hp["image_adv_weight"] * adv_s
        translation = u_objective + hp["image_adv_weight"] * adv_t
        segmenter_side = (hp["seg_weight"] * seg + hp["encoder_translation_weight"] * u_objective
                          + hp["output_adv_weight"] * self.output_adv_ramp(step) * output_adv)
        opt_seg.zero_grad(set_to_none=True)
        opt_gen.zero_grad(set_to_none=True)
        self.backward(segmenter_side, inputs=list(self.segmenter.parameters()), retain_graph=True)
        self.backward(translation, inputs=self.translation_params)
        self.step(opt_seg)
        self.step(opt_gen)

        for d in discriminators:
            set_requires_grad(d, True)
        d_loss = (gan_loss(self.d_t(xt), True) + gan_loss(self.d_t(self.pool_t.query(fake_t)), False)
                  + gan_loss(self.d_s(xs), True) + gan_loss(self.d_s(self.pool_s.query(fake_s)), False)
                  + gan_loss(self.d_p(logits_ft.detach().softmax(1)), True)
                  + gan_loss(self.d_p(logits_t.detach().softmax(1)), False)) / 2
        opt_d.zero_grad(set_to_none=True)
        self.backward(d_loss)
        self.step(opt_d)
        return {"seg": seg.item(), "cycle": cycle.item(), "image_adv": (adv_t + adv_s).item(),
                "output_adv": output_adv.item(), "disc": d_loss.item()}

    def translate(self, images: torch.Tensor) -> torch.Tensor:
        """Source images rendered in the target modality's appearance."""
        return self.g_t(images)
