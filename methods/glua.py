"""``glua``: Global-Local Union Alignment, style transfer plus a gap-weighted feature alignment."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from benchmark.blocks import (AdaINDecoder, ContentEncoder, OutputDiscriminator, PatchDiscriminator, StyleEncoder,
                              gan_loss, set_requires_grad)
from benchmark.hparams import HParam, log_uniform, uniform
from benchmark.losses import dice_ce_loss
from benchmark.method import SegmenterMethod
from benchmark.registry import register_method


@register_method("glua")
class GLUA(SegmenterMethod):
    """Global alignment by disentangled style transfer, local alignment by a gap-weighted feature adversary.

    Su et al. "Mind the Gap: Alleviating Local Imbalance for Unsupervised Cross-Modality Medical Image
    Segmentation." IEEE Journal of Biomedical and Health Informatics, 2023 (arXiv:2205.11888, 2022). No code of
    the paper was available here; this is a reconstruction from its description of the two parts.

    Global alignment (``global``): a style-transfer module with disentangled content and style, as in MUNIT
    (Huang et al., ECCV 2018) on which the paper builds: one content encoder shared by both modalities (instance
    normalised, so it keeps anatomy and drops appearance), a style encoder per modality giving an 8-d style code,
    and an AdaIN decoder that renders a content map in the appearance of a style code. Losses, as MUNIT's: image
    reconstruction (L1, weight ``recon_weight`` 10) of each image from its own content and style; cross-translation
    adversarial terms (least-squares GAN, weight 1) from one PatchGAN discriminator per modality on source
    content rendered with a target style and vice versa; and the cycle on the latent codes (L1, weight
    ``latent_weight`` 1): the content encoder must recover the content from a translation, and the style encoder
    of the rendered modality its style. The translations of the labeled source images, rendered with the styles
    of target images of the same batch, are target-like source images that keep their labels; the segmenter is
    trained on them and on the original source images (Dice + cross-entropy).

    Local alignment (``local``): a fully convolutional discriminator on the segmenter's features (its last decoder
    features, the input of the classifier) learns to tell target features from translated-source features
    (source features when ``global`` is off), and the segmenter is trained to make target features indistinguishable
    from them (least squares). The local feature mask weights that adversarial term per location towards the places
    with the largest domain gap: the gap at a location is the discriminator's per-location adversarial loss on the
    target features (how surely it still recognises them as target), detached; the mask is that gap divided by its
    mean over the image (mean 1, so the mask moves weight between locations without changing the total), mixed with
    uniform weights by ``mask_strength`` (``mask`` off: uniform weights, a plain feature-level adversary). The paper
    describes a mask that prioritises the local features with a larger domain gap, combined with the global
    alignment; how it measures the gap is reconstructed here from the discriminator, as stated.

    ``global=false, local=false`` is exactly ``source_only`` (same initialisation, optimizer and loss, step for step
    under the same seed; a test checks it).

    Deliberate differences: the translator is small (``gen_width`` 8, 3x3 instead of 7x7 and 5x5 full-resolution
    convolutions, one residual block in the content encoder and one AdaIN residual block in the decoder; MUNIT: 64
    wide, 4 blocks each) and keeps its content map at full resolution (MUNIT: a quarter): trained for the few
    hundred steps of the ``quick`` preset, a half-resolution content map gave ghosted translations that had lost
    the anatomy the labels describe, while at full resolution the anatomy stays and the appearance moves partway
    towards the target's. The translator trains jointly with the segmenter from the first step rather than in a
    stage before it, at learning rate 1e-3 with the trainer's schedule, on 4 source and 4 target images per step
    (``translator_batch``; MUNIT: 1); the styles of translations are encoded from target images of the batch
    (example-guided translation) rather than drawn from a prior, so every translation has a real target appearance;
    the translator learns from every source training volume (``source_all``: unlabeled source volumes are part of
    the protocol), the segmenter from the K labeled ones; half of each labeled batch is replaced by its translation
    (``translated_fraction``), which keeps the segmenter's batch size, and its cost, those of ``source_only``;
    the feature discriminator is AdaptSegNet's fully convolutional one (Tsai et al., CVPR 2018) with Adam 1e-4.

    Cost at the ``quick`` preset (64x64, batch 8, one CPU thread): a step takes about 3.2x the CPU time of a
    ``source_only`` step (translator about 2x, local alignment about 1x; with a half-resolution content map and two
    blocks 3.5x, with MUNIT's 7x7 kernels 3.9x).
    """

    version = "1"
    streams = ("source", "source_all", "target")
    HPARAMS: ClassVar[dict[str, HParam]] = {
        # the ablation switches
        "global": HParam(True, None, "global alignment: train the segmenter on style-transferred source images"),
        "local": HParam(True, None, "local alignment: adversarial feature alignment weighted by the gap mask"),
        "mask": HParam(True, None, "weight the feature alignment by the local gap mask (off: uniform weights)"),
        # global alignment
        "g_lr": HParam(1e-3, log_uniform(2e-4, 2e-3), "Adam learning rate of the translator and its discriminators"),
        "recon_weight": HParam(10.0, uniform(5.0, 20.0), "weight of the image reconstruction loss (MUNIT: 10)"),
        "latent_weight": HParam(1.0, uniform(0.5, 2.0), "weight of the content and style reconstruction losses"),
        "gan_weight": HParam(1.0, uniform(0.5, 2.0), "weight of the cross-translation adversarial losses"),
        "translated_fraction": HParam(0.5, uniform(0.25, 1.0), "share of the labeled batch seen translated"),
        "style_dim": HParam(8, None, "style code size (MUNIT: 8)"),
        "gen_width": HParam(8, None, "translator width at full resolution (MUNIT: 64)"),
        "gen_downsample": HParam(0, None, "stride-2 layers of the content encoder (MUNIT: 2)"),
        "gen_blocks": HParam(1, None, "residual blocks of the content encoder and of the decoder (MUNIT: 4)"),
        "gen_kernel": HParam(3, None, "kernel of the translator's full-resolution convolutions (MUNIT: 7 and 5)"),
        "translator_batch": HParam(4, None, "source and target images per translator step (MUNIT: 1)"),
        # local alignment
        "local_weight": HParam(0.01, log_uniform(1e-3, 1e-1), "weight of the feature-level adversarial loss"),
        "mask_strength": HParam(1.0, uniform(0.5, 1.0), "mask = (1 - s) + s * normalised gap"),
        "d_lr": HParam(1e-4, log_uniform(3e-5, 3e-4), "Adam learning rate of the feature discriminator"),
        "dice_weight": HParam(1.0, None, "weight of the soft Dice term beside cross-entropy"),
    }

    def __init__(self, ctx, hparams):
        super().__init__(ctx, hparams)
        hp, c = hparams, ctx.in_channels
        adam = lambda params, lr, betas=(0.5, 0.999): torch.optim.Adam(params, lr=lr, betas=betas)  # noqa: E731
        if hp["global"]:
            k = hp["gen_kernel"]
            self.content = ContentEncoder(c, hp["gen_width"], hp["gen_downsample"], hp["gen_blocks"], in_kernel=k)
            self.style_source = StyleEncoder(c, hp["gen_width"], hp["style_dim"], in_kernel=k)
            self.style_target = StyleEncoder(c, hp["gen_width"], hp["style_dim"], in_kernel=k)
            self.decoder = AdaINDecoder(self.content.out_channels, c, hp["style_dim"], hp["gen_downsample"],
                                        hp["gen_blocks"], up_kernel=k, out_kernel=k)
            self.d_source = PatchDiscriminator(c, 2 * hp["gen_width"])
            self.d_target = PatchDiscriminator(c, 2 * hp["gen_width"])
            translator = [self.content, self.style_source, self.style_target, self.decoder]
            self.optimizers += [adam([p for m in translator for p in m.parameters()], hp["g_lr"]),
                                adam(list(self.d_source.parameters()) + list(self.d_target.parameters()), hp["g_lr"])]
            #: running mean of the target style codes, the style :meth:`translate` renders with
            self.register_buffer("target_style", torch.zeros(hp["style_dim"]))
        if hp["local"]:
            self.d_feature = OutputDiscriminator(self.segmenter.feature_channels, 32, layers=3)
            self.optimizers.append(adam(self.d_feature.parameters(), hp["d_lr"], (0.9, 0.99)))

    # -- global alignment -------------------------------------------------------------------------------------
    def _translator_step(self, xs: torch.Tensor, xt: torch.Tensor) -> dict[str, float]:
        """One step of the disentangled translator on source images ``xs`` and target images ``xt``."""
        hp = self.hparams
        opt_g, opt_d = self.optimizers[1], self.optimizers[2]
        set_requires_grad(self.d_source, False)
        set_requires_grad(self.d_target, False)
        n, m = len(xs), len(xt)
        content = self.content(torch.cat([xs, xt]))
        c_s, c_t = content[:n], content[n:]
        s_s, s_t = self.style_source(xs), self.style_target(xt)
        s_t_for_s, s_s_for_t = s_t[torch.arange(n) % m], s_s[torch.arange(m) % n]  # example-guided styles
        images = self.decoder(torch.cat([c_s, c_t, c_s, c_t]), torch.cat([s_s, s_t, s_t_for_s, s_s_for_t]))
        rec_s, rec_t, x_st, x_ts = images.split([n, m, n, m])
        recon = F.l1_loss(rec_s, xs) + F.l1_loss(rec_t, xt)
        adv = gan_loss(self.d_target(x_st), True) + gan_loss(self.d_source(x_ts), True)
        content_back = self.content(torch.cat([x_st, x_ts]))
        latent = (F.l1_loss(content_back[:n], c_s) + F.l1_loss(content_back[n:], c_t)
                  + F.l1_loss(self.style_target(x_st), s_t_for_s.detach())
                  + F.l1_loss(self.style_source(x_ts), s_s_for_t.detach()))
        loss = hp["recon_weight"] * recon + hp["gan_weight"] * adv + hp["latent_weight"] * latent
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        with torch.no_grad():
            self.target_style.mul_(0.99).add_(s_t.detach().mean(0), alpha=0.01)

        set_requires_grad(self.d_source, True)
        set_requires_grad(self.d_target, True)
        d_loss = 0.5 * (gan_loss(self.d_target(xt), True) + gan_loss(self.d_target(x_st.detach()), False)
                        + gan_loss(self.d_source(xs), True) + gan_loss(self.d_source(x_ts.detach()), False))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        return {"recon": recon.item(), "image_adv": adv.item(), "latent": latent.item(), "image_disc": d_loss.item()}

    @torch.no_grad()
    def render_as_target(self, xs: torch.Tensor, xt: torch.Tensor | None = None) -> torch.Tensor:
        """Source images ``xs`` rendered in target appearance: with the styles of ``xt`` (paired by index), or
        with the running mean target style."""
        if xt is None:
            style = self.target_style.expand(len(xs), -1)
        else:
            style = self.style_target(xt)[torch.arange(len(xs)) % len(xt)]
        return self.decoder(self.content(xs), style)

    def translate(self, images: torch.Tensor) -> torch.Tensor:
        """Source images rendered in the target modality's appearance (the running mean target style)."""
        if not self.hparams["global"]:
            return images
        return self.render_as_target(images)

    # -- local alignment --------------------------------------------------------------------------------------
    def gap_mask(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-location weights (B, 1, h, w) of mean 1 per image from the discriminator's ``scores`` on target
        features: larger where the discriminator still surely tells target from (translated) source."""
        hp = self.hparams
        if not hp["mask"]:
            return torch.ones_like(scores)
        gap = (scores.detach() - 1.0).pow(2)
        normalised = gap / gap.mean((2, 3), keepdim=True).clamp_min(1e-8)
        return (1 - hp["mask_strength"]) + hp["mask_strength"] * normalised

    # -- training ---------------------------------------------------------------------------------------------
    def update(self, batch, step):
        hp = self.hparams
        xs, ys = batch.source_x, batch.source_y
        losses: dict[str, float] = {}
        n_translated = 0
        if hp["global"]:
            k = hp["translator_batch"]
            losses.update(self._translator_step(batch.source_all_x[:k], batch.target_x[:k]))
            n_translated = max(1, round(hp["translated_fraction"] * len(xs)))
            keep = len(xs) - n_translated
            xs = torch.cat([xs[:keep], self.render_as_target(xs[keep:], batch.target_x)])
        opt = self.optimizers[0]
        logits, feats = self.segmenter.forward_features(xs)
        seg = dice_ce_loss(logits, ys, hp["dice_weight"])
        total = seg
        if hp["local"]:
            set_requires_grad(self.d_feature, False)
            feats_t = self.segmenter.forward_features(batch.target_x)[1]
            scores = self.d_feature(feats_t)
            mask = self.gap_mask(scores)
            local = (mask * (scores - 1.0).pow(2)).mean()  # target features labelled "source" (1)
            total = total + hp["local_weight"] * local
            losses.update({"local_adv": local.item(), "mask_max": mask.amax().item()})
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses["seg"] = seg.item()
        if hp["local"]:
            set_requires_grad(self.d_feature, True)
            source_feats = feats[len(feats) - n_translated:] if n_translated else feats
            d_loss = 0.5 * (gan_loss(self.d_feature(source_feats.detach()), True)
                            + gan_loss(self.d_feature(feats_t.detach()), False))
            opt_d = self.optimizers[-1]
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            losses["feature_disc"] = d_loss.item()
        return losses
