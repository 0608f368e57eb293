"""Building blocks that two or more adaptation methods share, written once.

* :class:`ResidualBlock`: two reflection-padded 3x3 convolutions with instance norm and a skip (Johnson et al.,
  ECCV 2016), the body of the CycleGAN generator and of GLUA's content encoder.
* :class:`ResnetGenerator`: the image-to-image translator of CycleGAN (Zhu et al., ICCV 2017), after Johnson et
  al. (ECCV 2016): two stride-2 convolutions, residual blocks, two transposed convolutions, instance norm.
* :class:`PatchDiscriminator`: the 70x70 PatchGAN of pix2pix (Isola et al., CVPR 2017), depth configurable.
* :class:`OutputDiscriminator`: the fully convolutional discriminator on softmax outputs of AdaptSegNet
  (Tsai et al., CVPR 2018), also used by ADVENT on entropy maps (Vu et al., CVPR 2019), by SIFA and by GLUA.
* :func:`gan_loss`: least-squares (Mao et al., ICCV 2017) or vanilla (binary cross-entropy) GAN objectives.
* :func:`gan_adam`: Adam with the GAN setting of Radford et al. (ICLR 2016), betas (0.5, 0.999), as CycleGAN.
* :class:`ImagePool`: the history buffer of generated images (Shrivastava et al., CVPR 2017) used by CycleGAN.
* :class:`EMATeacher`: an exponential moving average of a student network (mean teacher; Tarvainen and Valpola,
  NeurIPS 2017).
* :func:`entropy_map`: normalised pixel-wise entropy of a softmax prediction (ADVENT).
* :func:`sigmoid_rampup`: the consistency weight's ramp-up of the mean teacher; :func:`set_requires_grad`.
"""

from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """``x + conv(x)`` with two reflection-padded 3x3 convolutions, instance norm and ReLU between them."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image translator: (B, in_ch, H, W) -> (B, out_ch, H, W); H and W divisible by 4.

    CycleGAN's ResNet generator (Zhu et al., ICCV 2017, after Johnson et al., ECCV 2016): an ``outer_kernel``
    convolution, two stride-2 convolutions, ``blocks`` residual blocks, two transposed convolutions and an
    ``outer_kernel`` output convolution, with instance norm. ``input_skip`` also feeds the input image to the
    output convolution (a long skip, as a U-Net generator has), so that a briefly trained translator keeps the
    anatomy's full-resolution detail.
    ``residual`` adds the input image to the output instead (the generator learns a change of appearance, as
    SIFA's released configuration does); it needs ``in_ch == out_ch``. ``outer_kernel`` is the size of the first
    and last convolutions (7 in CycleGAN; 3 is cheaper, since these thin full-resolution convolutions dominate a
    narrow generator's time).
    """

    def __init__(self, in_ch: int = 1, out_ch: int = 1, width: int = 32, blocks: int = 6, tanh: bool = False,
                 input_skip: bool = False, residual: bool = False, outer_kernel: int = 7):
        super().__init__()
        if outer_kernel % 2 != 1:
            raise ValueError(f"The generator's outer convolutions need an odd kernel size, not {outer_kernel}.")
        pad = outer_kernel // 2
        layers: list[nn.Module] = [nn.ReflectionPad2d(pad), nn.Conv2d(in_ch, width, outer_kernel),
                                   nn.InstanceNorm2d(width), nn.ReLU(inplace=True)]
        ch = width
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.ReLU(inplace=True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(ch // 2), nn.ReLU(inplace=True)]
            ch //= 2
        self.net = nn.Sequential(*layers)
        if residual and in_ch != out_ch:
            raise ValueError(f"A residual generator maps images to images of the same channels, not {in_ch} to "
                             f"{out_ch}.")
        self.input_skip, self.residual = input_skip, residual
        self.out = nn.Sequential(nn.ReflectionPad2d(pad),
                                 nn.Conv2d(ch + (in_ch if input_skip else 0), out_ch, outer_kernel))
        self.tanh = tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net(x)
        out = self.out(torch.cat([features, x], 1) if self.input_skip else features)
        if self.residual:
            out = out + x
        return torch.tanh(out) if self.tanh else out


class PatchDiscriminator(nn.Module):
    """PatchGAN: a map of real/fake scores, one per receptive field (70x70 with ``layers=3``)."""

    def __init__(self, in_ch: int = 1, width: int = 32, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_ch, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for i in range(1, layers + 1):
            nxt = width * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(ch, nxt, 4, stride=stride, padding=1), nn.InstanceNorm2d(nxt),
                    nn.LeakyReLU(0.2, inplace=True)]
            ch = nxt
        seq.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class OutputDiscriminator(nn.Module):
    """Fully convolutional discriminator on (B, classes, H, W) probability or entropy maps."""

    def __init__(self, in_ch: int, width: int = 32, layers: int = 4):
        super().__init__()
        seq: list[nn.Module] = []
        ch = in_ch
        for i in range(layers):
            nxt = width * 2 ** i
            seq += [nn.Conv2d(ch, nxt, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            ch = nxt
        seq.append(nn.Conv2d(ch, 1, 3, stride=1, padding=1))
        self.net = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gan_loss(scores: torch.Tensor, real: bool, kind: str = "lsgan") -> torch.Tensor:
    """GAN objective of discriminator ``scores`` against the label ``real``.

    ``lsgan``: mean squared error to 1 (real) or 0 (fake). ``vanilla``: binary cross-entropy with logits.
    """
    target = torch.full_like(scores, 1.0 if real else 0.0)
    if kind == "lsgan":
        return F.mse_loss(scores, target)
    if kind == "vanilla":
        return F.binary_cross_entropy_with_logits(scores, target)
    raise ValueError(f"Unknown GAN loss {kind!r}; use 'lsgan' or 'vanilla'.")


def gan_adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with betas (0.5, 0.999), the setting of DCGAN (Radford et al., ICLR 2016) that CycleGAN keeps."""
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


class ImagePool:
    """History of generated images: half of each query comes from earlier generator outputs.

    Draws use a torch generator seeded at construction, so a run is reproducible.
    """

    def __init__(self, size: int = 50, seed: int = 0):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand(1, generator=self.rng).item() < 0.5:
                i = int(torch.randint(len(self.images), (1,), generator=self.rng))
                out.append(self.images[i].clone())
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.cat(out)


class EMATeacher(nn.Module):
    """A frozen copy of ``student`` updated as ``teacher = decay * teacher + (1 - decay) * student``."""

    def __init__(self, student: nn.Module, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self.model = copy.deepcopy(student)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int | None = None) -> None:
        """EMA step; with ``step`` the decay ramps up as min(decay, 1 - 1/(step + 1)) (Tarvainen and Valpola)."""
        decay = self.decay if step is None else min(self.decay, 1.0 - 1.0 / (step + 1))
        for t, s in zip(self.model.parameters(), student.parameters()):
            t.mul_(decay).add_(s.detach(), alpha=1 - decay)
        for t, s in zip(self.model.buffers(), student.buffers()):
            t.copy_(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """Pixel-wise weighted self-information -p log p / log C (ADVENT's input to its discriminator)."""
    p = logits.softmax(1)
    return -p * torch.log(p.clamp_min(1e-8)) / math.log(logits.shape[1])


def sigmoid_rampup(step: int, length: int) -> float:
    """exp(-5 (1 - t)^2) for t = step / length in [0, 1] (Laine and Aila, ICLR 2017)."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Switch gradients of every parameter of ``module`` (a discriminator is frozen while its generator steps)."""
    for p in module.parameters():
        p.requires_grad_(flag)
