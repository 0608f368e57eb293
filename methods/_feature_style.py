"""ADaIN feature-style augmentation, after CD-TG's ``module.py`` (class ``ADaIN``).

A "style" is the per-channel mean and standard deviation of a feature map over its spatial positions (Huang and
Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance Normalization", ICCV 2017). CD-TG
perturbs a copy of the support features in one of four ways that mimic medical images, drawn at random per
batch, and gives the original features the copy's style; the spatial content stays the original's:

* ``noise``: add Gaussian noise of standard deviation ``strength``;
* ``contrast``: scale by ``1 + strength``, then ReLU;
* ``boundary``: add ``strength`` times a high-frequency map of the features;
* ``low_contrast``: shrink every value towards its channel's mean by the factor ``strength``.

Differences from the released code: its high-frequency map is a depthwise 3x3 convolution created with fresh
random weights at every call, which is a random filter rather than a high-pass one; here it is the fixed discrete
Laplacian (replicate padding), the high-pass filter its docstring describes. Its random draws use Python's
``random`` and the global torch generator; here they use torch's generator inside a fork, so they are fixed by
the trainer's per-step seed and leave the host's own random stream untouched.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from benchmark.errors import UsageError

STYLES = ("noise", "contrast", "boundary", "low_contrast")
EPS = 1e-5
LAPLACIAN = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])


def parse_styles(text: str) -> tuple[str, ...]:
    """The perturbations named in ``text`` (comma-separated), in the order given; an unknown name is refused."""
    names = tuple(s.strip() for s in str(text).split(",") if s.strip())
    unknown = [s for s in names if s not in STYLES]
    if unknown or not names:
        raise UsageError(f"cdtg: adain_styles={text!r} names {', '.join(map(repr, unknown)) or 'no perturbation'}; "
                         f"choose one or more of {', '.join(STYLES)}, comma-separated.")
    return names


def high_frequency(content: torch.Tensor) -> torch.Tensor:
    """The discrete Laplacian of every channel (B, C, H, W), replicate-padded: zero on constant regions."""
    c = content.shape[1]
    kernel = LAPLACIAN.to(content)[None, None].expand(c, 1, 3, 3)
    return F.conv2d(F.pad(content, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def perturb(content: torch.Tensor, style: str, strength: float) -> torch.Tensor:
    """One of CD-TG's four perturbations of ``content`` (B, C, H, W)."""
    if style == "noise":
        return content + torch.randn_like(content) * strength
    if style == "contrast":
        return F.relu(content * (1 + strength))
    if style == "boundary":
        return content + strength * high_frequency(content)
    if style == "low_contrast":
        mean = content.mean((2, 3), keepdim=True)
        return mean + strength * (content - mean)
    raise UsageError(f"Unknown ADaIN perturbation {style!r}; choose one of {', '.join(STYLES)}.")


def adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """``content`` normalised per channel, then given ``style``'s per-channel mean and standard deviation."""
    c_mean, c_std = content.mean((2, 3), keepdim=True), content.std((2, 3), keepdim=True)
    s_mean, s_std = style.mean((2, 3), keepdim=True), style.std((2, 3), keepdim=True)
    return (content - c_mean) / (c_std + EPS) * s_std + s_mean


class FeatureStyleAugmentation:
    """Restyle features with one perturbation drawn at random per call (CD-TG's ADaIN, used in training only)."""

    def __init__(self, styles: Sequence[str], strength: float):
        self.styles = tuple(styles)
        self.strength = float(strength)

    def draw(self) -> str:
        """The perturbation of this call, from torch's global generator (callers fork it)."""
        return self.styles[int(torch.randint(len(self.styles), ()).item())]

    def __call__(self, content: torch.Tensor, style: str | None = None) -> torch.Tensor:
        devices = [content.device.index or 0] if content.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            name = style or self.draw()
            return adain(content, perturb(content, name, self.strength))
