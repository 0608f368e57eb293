"""``glua``: Global-Local Union Alignment, style transfer plus a gap-weighted feature alignment."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.blocks import (OutputDiscriminator, PatchDiscriminator, ResidualBlock, gan_adam, gan_loss,
                              set_requires_grad)
from benchmark.hparams import HParam, log_uniform, uniform
from benchmark.losses import dice_ce_loss
from benchmark.method import SegmenterMethod
from benchmark.registry import register_method

# --- disentangled content/style translation (MUNIT; Huang, Liu, Belongie, Kautz, ECCV 2018) ---------------------


def adain(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance normalisation: ``x`` (B, C, H, W) normalised per image and channel, then scaled by
    ``1 + gamma`` and shifted by ``beta`` (B, C) (Huang and Belongie, ICCV 2017; the ``1 +`` starts at identity)."""
    mean = x.mean((2, 3), keepdim=True)
    std = (x.var((2, 3), keepdim=True, unbiased=False) + eps).sqrt()
    return (x - mean) / std * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class ContentEncoder(nn.Module):
    """Image -> content map (B, width * 2**downsample, H / 2**downsample, W / 2**downsample).

    MUNIT's content encoder: a 7x7 convolution (``in_kernel``), ``downsample`` stride-2 4x4 convolutions and
    ``blocks`` residual blocks, all with instance normalisation, which removes per-image style statistics from the
    content.
    """

    def __init__(self, in_ch: int = 1, width: int = 16, downsample: int = 2, blocks: int = 2, in_kernel: int = 7):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(in_kernel // 2), nn.Conv2d(in_ch, width, in_kernel),
                                   nn.InstanceNorm2d(width), nn.ReLU(inplace=True)]
        ch = width
        for _ in range(downsample):
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(ch, ch * 2, 4, stride=2), nn.InstanceNorm2d(ch * 2),
                       nn.ReLU(inplace=True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(blocks)]
        self.net = nn.Sequential(*layers)
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class StyleEncoder(nn.Module):
    """Image -> style code (B, style_dim): strided convolutions without normalisation, global average pooling.

    MUNIT's style encoder (a 7x7 convolution, ``in_kernel``, then stride-2 4x4 ones; no instance normalisation,
    which would remove the very statistics that make style).
    """

    def __init__(self, in_ch: int = 1, width: int = 16, style_dim: int = 8, downsample: int = 3, in_kernel: int = 7):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(in_kernel // 2), nn.Conv2d(in_ch, width, in_kernel),
                                   nn.ReLU(inplace=True)]
        ch = width
        for i in range(downsample):
            nxt = width * min(2 ** (i + 1), 4)
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(ch, nxt, 4, stride=2), nn.ReLU(inplace=True)]
            ch = nxt
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, style_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class _AdaINResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3))
        self.conv2 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3))

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        g1, b1, g2, b2 = params.chunk(4, dim=1)
        h = F.relu(adain(self.conv1(x), g1, b1))
        return x + adain(self.conv2(h), g2, b2)


class AdaINDecoder(nn.Module):
    """(content map, style code) -> image: AdaIN residual blocks, then upsampling back to full resolution.

    MUNIT's decoder: an MLP maps the style code to the scale and shift of every AdaIN layer of ``blocks``
    residual blocks; then ``upsample`` times nearest-neighbour x2 upsampling and a 5x5 convolution (``up_kernel``)
    with layer normalisation; a 7x7 output convolution (``out_kernel``; linear output: images here are z-scored,
    not in [-1, 1]).
    """

    def __init__(self, in_ch: int, out_ch: int = 1, style_dim: int = 8, upsample: int = 2, blocks: int = 2,
                 mlp_width: int = 64, up_kernel: int = 5, out_kernel: int = 7):
        super().__init__()
        self.blocks = nn.ModuleList(_AdaINResBlock(in_ch) for _ in range(blocks))
        self.mlp = nn.Sequential(nn.Linear(style_dim, mlp_width), nn.ReLU(inplace=True),
                                 nn.Linear(mlp_width, 4 * in_ch * blocks))
        layers: list[nn.Module] = []
        ch = in_ch
        for _ in range(upsample):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(up_kernel // 2),
                       nn.Conv2d(ch, ch // 2, up_kernel), nn.GroupNorm(1, ch // 2), nn.ReLU(inplace=True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(out_kernel // 2), nn.Conv2d(ch, out_ch, out_kernel)]
        self.up = nn.Sequential(*layers)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        params = self.mlp(style).chunk(len(self.blocks), dim=1)
        x = content
        for block, p in zip(self.blocks, params):
            x = block(x, p)
        return self.up(x)


@register_method("glua")
class GLUA(SegmenterMethod):
    """Global alignment by disentangled style transfer, local alignment by a gap-weighted feature adversary.

    Su et al. "Mind the Gap: Alleviating Local Imbalance for Unsupervised Cross-Modality Medical Image
    Segmentation." IEEE Journal of Biomedical and Health Informatics, 2023 (arXiv:2205.11888, 2022). No code of
    the paper was available; this is a reconstruction from its description of the two parts.

    Global alignment (``global``), as MUNIT (Huang et al., ECCV 2018), on which the paper builds: a content encoder
    shared by both modalities (instance normalised: it keeps anatomy, drops appearance), a style encoder per
    modality and an AdaIN decoder; MUNIT's losses (image reconstruction, L1 x ``recon_weight``; least-squares GAN
    terms on cross-translations from one PatchGAN per modality; L1 cycle on the content and style codes). Labeled
    source images rendered with the styles of the batch's target images keep their labels, and the segmenter
    trains on them and on the originals (Dice + cross-entropy).

    Local alignment (``local``): a discriminator on the segmenter's last decoder features tells target features
    from translated-source ones, and the segmenter learns to fool it (least squares). The paper's local feature
    mask weights that term towards the locations with the largest domain gap; the gap is reconstructed here as the
    discriminator's detached per-location loss on the target features, divided by its mean (:meth:`gap_mask`).
    ``global=false, local=false`` is exactly ``source_only``, step for step (a test checks it).

    Deliberate differences from the paper and MUNIT:

    * A small translator: ``gen_width`` 8 (MUNIT: 64), 3x3 full-resolution convolutions (7x7 and 5x5), one
      residual block in the content encoder and one AdaIN block in the decoder (4 each).
    * A full-resolution content map (MUNIT: a quarter), which keeps the anatomy through a short training.
    * The translator trains jointly with the segmenter from the first step, at 1e-3 under the trainer's
      schedule, on ``translator_batch`` 4 source and 4 target images per step (MUNIT: 1).
    * Translation styles are encoded from target images of the batch (example-guided), not drawn from a prior.
    * The translator learns from every source training volume (``source_all``), the segmenter from the K labeled.
    * ``translated_fraction`` of each labeled batch is replaced by its translation, keeping the batch size.
    * The feature discriminator is AdaptSegNet's (Tsai et al., CVPR 2018), with Adam 1e-4.
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
    }

    def __init__(self, ctx, hparams):
        super().__init__(ctx, hparams)
        hp, c = hparams, ctx.in_channels
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
            self.optimizers += [gan_adam([p for m in translator for p in m.parameters()], hp["g_lr"]),
                                gan_adam(list(self.d_source.parameters()) + list(self.d_target.parameters()),
                                         hp["g_lr"])]
            #: running mean of the target style codes, the style :meth:`translate` renders with
            self.register_buffer("target_style", torch.zeros(hp["style_dim"]))
        if hp["local"]:
            self.d_feature = OutputDiscriminator(self.segmenter.feature_channels, 32, layers=3)
            self.optimizers.append(torch.optim.Adam(self.d_feature.parameters(), lr=hp["d_lr"], betas=(0.9, 0.99)))

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
        self.backward(loss)
        self.step(opt_g)
        with torch.no_grad():
            self.target_style.mul_(0.99).add_(s_t.detach().mean(0), alpha=0.01)

        set_requires_grad(self.d_source, True)
        set_requires_grad(self.d_target, True)
        d_loss = 0.5 * (gan_loss(self.d_target(xt), True) + gan_loss(self.d_target(x_st.detach()), False)
                        + gan_loss(self.d_source(xs), True) + gan_loss(self.d_source(x_ts.detach()), False))
        opt_d.zero_grad(set_to_none=True)
        self.backward(d_loss)
        self.step(opt_d)
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
        self.backward(total)
        self.step(opt)
        losses["seg"] = seg.item()
        if hp["local"]:
            set_requires_grad(self.d_feature, True)
            source_feats = feats[len(feats) - n_translated:] if n_translated else feats
            d_loss = 0.5 * (gan_loss(self.d_feature(source_feats.detach()), True)
                            + gan_loss(self.d_feature(feats_t.detach()), False))
            opt_d = self.optimizers[-1]
            opt_d.zero_grad(set_to_none=True)
            self.backward(d_loss)
            self.step(opt_d)
            losses["feature_disc"] = d_loss.item()
        return losses
