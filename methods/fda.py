"""``fda``: Fourier domain adaptation."""

from __future__ import annotations

import torch

from benchmark.hparams import HParam, log_uniform, uniform
from benchmark.losses import dice_ce_loss
from benchmark.method import SupervisedMethod
from benchmark.registry import register_method


def low_frequency_swap(source: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Source images with the low-frequency amplitude spectrum of target images (phase kept).

    The centred square ``[c - b, c + b]`` (inclusive, ``b = floor(beta * min(H, W))``) of the shifted amplitude
    spectrum is replaced, as in Yang and Soatto's FDA. The square is symmetric about the zero frequency, so the
    mixed spectrum stays Hermitian and the result is a real image.
    """
    fs = torch.fft.fftshift(torch.fft.fft2(source.float()), dim=(-2, -1))
    ft = torch.fft.fftshift(torch.fft.fft2(target.float()), dim=(-2, -1))
    amp_s, pha_s, amp_t = fs.abs(), fs.angle(), ft.abs()
    h, w = source.shape[-2:]
    b = int(beta * min(h, w))
    if b >= 0 and beta > 0:
        ch, cw = h // 2, w // 2
        amp_s = amp_s.clone()
        amp_s[..., ch - b:ch + b + 1, cw - b:cw + b + 1] = amp_t[..., ch - b:ch + b + 1, cw - b:cw + b + 1]
    mixed = torch.polar(amp_s, pha_s)
    return torch.fft.ifft2(torch.fft.ifftshift(mixed, dim=(-2, -1))).real.to(source.dtype)


@register_method("fda")
class FDA(SupervisedMethod):
    """Fourier amplitude swap with target entropy minimisation (FDA; Yang and Soatto, CVPR 2020).

    Yang, Soatto. "FDA: Fourier Domain Adaptation for Semantic Segmentation." CVPR 2020. Each labeled source image
    takes the low-frequency amplitude spectrum of a random unlabeled target image (its phase, and so its content
    and label, are kept); the segmenter is trained on these target-styled images with their source labels plus
    ``ent_weight`` times the Charbonnier-penalised entropy ``(entropy^2 + 0.001^2)^eta`` of its target
    predictions.

    Deliberate differences: one model with one ``beta`` (the paper averages the predictions of three models
    trained with beta in {0.01, 0.05, 0.09} and adds self-supervised pseudo-label rounds); the swap runs on the
    suite's normalised single-channel slices rather than mean-subtracted RGB.
    """

    streams = ("source", "target")
    labeled_stream = "source"
    HPARAMS = {
        "beta": HParam(0.05, uniform(0.01, 0.09), "half-width of the swapped band, fraction of the image size"),
        "ent_weight": HParam(0.005, log_uniform(1e-3, 3e-2), "weight of the target entropy term (paper: 0.005)"),
        "eta": HParam(2.0, uniform(1.0, 3.0), "Charbonnier exponent of the entropy penalty (paper: 2.0)"),
    }

    def update(self, batch, step):
        hp, opt = self.hparams, self.optimizers[0]
        styled = low_frequency_swap(batch.source_x, batch.target_x, hp["beta"])
        seg = dice_ce_loss(self.segmenter(styled), batch.source_y, hp["dice_weight"])
        p = self.segmenter(batch.target_x).softmax(1)
        ent = -(p * torch.log(p.clamp_min(1e-8))).sum(1)
        ent_loss = ((ent ** 2 + 1e-6) ** hp["eta"]).mean()
        opt.zero_grad(set_to_none=True)
        self.backward(seg + hp["ent_weight"] * ent_loss)
        self.step(opt)
        return {"seg": seg.item(), "entropy": ent_loss.item()}
