"""Shared building blocks of the adaptation methods, written once.

* :class:`ResnetGenerator`: the image-to-image translator of CycleGAN (Zhu et al., ICCV 2017), after Johnson et
  al. (ECCV 2016): two stride-2 convolutions, residual blocks, two transposed convolutions, instance norm.
* :class:`PatchDiscriminator`: the 70x70 PatchGAN of pix2pix (Isola et al., CVPR 2017), depth configurable.
* :class:`OutputDiscriminator`: the fully convolutional discriminator on softmax outputs of AdaptSegNet
  (Tsai et al., CVPR 2018), also used by ADVENT on entropy maps (Vu et al., CVPR 2019) and by SIFA.
* :func:`gan_loss`: least-squares (Mao et al., ICCV 2017) or vanilla (binary cross-entropy) GAN objectives.
* :class:`ImagePool`: the history buffer of generated images (Shrivastava et al., CVPR 2017) used by CycleGAN.
* :class:`EMATeacher`: an exponential moving average of a student network (mean teacher; Tarvainen and Valpola,
  NeurIPS 2017).
* :func:`grad_reverse`: the gradient reversal layer (Ganin and Lempitsky, ICML 2015).
* :func:`entropy_map`: normalised pixel-wise entropy of a softmax prediction (ADVENT).
* :func:`warp`, :func:`warp_labels`, :func:`integrate_velocity`, :func:`smoothness`: spatial-transformer warping of
  images and label maps by a dense displacement field (Jaderberg et al., NeurIPS 2015), scaling-and-squaring
  integration of a velocity field (Dalca et al., MICCAI 2018) and a diffusion regulariser.
* :class:`ContentEncoder`, :class:`StyleEncoder`, :class:`AdaINDecoder`, :func:`adain`: the disentangled
  content/style translator of MUNIT (Huang et al., ECCV 2018), with adaptive instance normalisation (Huang and
  Belongie, ICCV 2017) injecting a style code into the decoder.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


class _ResBlock(nn.Module):
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
    and last convolutions (7 in CycleGAN; 3 costs about a third as much on CPU, where these thin full-resolution
    convolutions dominate a narrow generator's time).
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
        layers += [_ResBlock(ch) for _ in range(blocks)]
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


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-scale`` backward."""
    return _GradReverse.apply(x, scale)


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
    for p in module.parameters():
        p.requires_grad_(flag)


# --- spatial transformer helpers (Jaderberg et al., NeurIPS 2015), used by learned-augmentation methods ----------
# A displacement field ``u`` is (B, 2, H, W) in normalised coordinates (channel 0: x, along the width; channel 1: y),
# the convention of ``F.grid_sample`` with ``align_corners=False``: a pixel is 2 / W wide, and the warped image
# at p is the input at p + u(p) (backward warping).


def identity_grid(shape: tuple[int, ...], device=None, dtype=None) -> torch.Tensor:
    """The sampling grid (B, H, W, 2) of the identity transform for images of ``shape`` (B, C, H, W)."""
    b, _, h, w = shape
    theta = torch.eye(2, 3, device=device, dtype=dtype).unsqueeze(0).expand(b, 2, 3)
    return F.affine_grid(theta, [b, 1, h, w], align_corners=False)


def warp(x: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``x`` (B, C, H, W) sampled at p + u(p); outside the image the border value is repeated."""
    grid = identity_grid(x.shape, x.device, x.dtype) + displacement.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def warp_labels(labels: torch.Tensor, displacement: torch.Tensor,
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp an integer label map (B, H, W): the one-hot maps are warped bilinearly, then arg-maxed.

    Returns ``(soft, hard)``: the warped one-hot probabilities (B, classes, H, W), which sum to 1 at every pixel,
    and their arg-max (B, H, W) int64, a valid label map. Warping the one-hot maps rather than the integers keeps
    thin structures better than nearest-neighbour sampling and never invents a label between two others.
    """
    onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).to(displacement.dtype)
    soft = warp(onehot, displacement)
    return soft, soft.argmax(1)


def integrate_velocity(velocity: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Displacement of the flow of a stationary velocity field by scaling and squaring (Arsigny et al. 2006).

    As in diffeomorphic VoxelMorph (Dalca et al., MICCAI 2018): u = v / 2**steps, then ``steps`` times
    u <- u + u o (id + u). Each component of the result is bounded by the largest value of that component of
    ``v`` (bilinear interpolation is a convex combination), and the transform stays invertible for smooth ``v``.
    """
    u = velocity / (2 ** steps)
    for _ in range(steps):
        u = u + warp(u, u)
    return u


def smoothness(field: torch.Tensor) -> torch.Tensor:
    """Mean squared finite difference of a (B, C, H, W) field along both axes (a diffusion regulariser)."""
    dy = field[:, :, 1:, :] - field[:, :, :-1, :]
    dx = field[:, :, :, 1:] - field[:, :, :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()


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
        layers += [_ResBlock(ch) for _ in range(blocks)]
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
