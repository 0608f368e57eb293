"""Backbones: a segmentation-models-pytorch U-Net wrapped so that methods and plug-ins can reach its features.

Weights are never downloaded: ``encoder_weights=None`` unless a local weights file is given, and model
construction runs with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .io import load_tensors


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Forbid hub downloads while building a model."""
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class BackboneSpec:
    """Which U-Net: encoder name, depth, decoder widths, optional local weights file."""

    encoder: str = "resnet18"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    weights_path: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneSpec":
        d = dict(d)
        if "decoder_channels" in d:
            d["decoder_channels"] = tuple(d["decoder_channels"])
        return cls(**d)


class Segmenter(nn.Module):
    """U-Net whose forward returns logits; :meth:`forward_features` also returns the decoder features.

    ``feature_channels`` is the width of the last decoder feature map (the input of the segmentation head),
    the place plug-ins attach to.
    """

    def __init__(self, spec: BackboneSpec, in_channels: int, num_classes: int):
        super().__init__()
        import segmentation_models_pytorch as smp

        with offline():
            self.unet = smp.Unet(encoder_name=spec.encoder, encoder_weights=None, in_channels=in_channels,
                                 classes=num_classes, encoder_depth=spec.encoder_depth,
                                 decoder_channels=spec.decoder_channels)
        if spec.weights_path:
            path = Path(spec.weights_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"Backbone weights file {path} does not exist.")
            state = load_tensors(path, "the backbone weights file")
            self.unet.encoder.load_state_dict(state, strict=False)
        self._drop_unreached_encoder_stages(in_channels)
        self.feature_channels = spec.decoder_channels[-1]
        self.num_classes = num_classes

    def _drop_unreached_encoder_stages(self, in_channels: int) -> None:
        """Replace the encoder modules a forward pass never reaches by ``nn.Identity``.

        A shallower smp encoder keeps every stage of its network (resnet18 at depth 4 still holds ``layer4``,
        8.4M of its 11.5M weights) though it never runs them. Dropping them after construction changes no
        initial weight and no output, and keeps them out of optimizers, checkpoints and saved models.
        """
        encoder, reached = self.unet.encoder, set()
        hooks = [child.register_forward_hook(lambda *_, name=name: reached.add(name))
                 for name, child in encoder.named_children()]
        was_training = encoder.training
        encoder.eval()  # no running-statistics update from the probe
        try:
            with torch.no_grad():
                encoder(torch.zeros(1, in_channels, 64, 64))
        finally:
            encoder.train(was_training)
            for hook in hooks:
                hook.remove()
        for name, child in list(encoder.named_children()):
            if name not in reached and any(True for _ in child.parameters()):
                setattr(encoder, name, nn.Identity())

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.unet.encoder(x)

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.unet.decoder(skips)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.unet.segmentation_head(features)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.decode(self.encode(x))
        return self.head(features), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def build_segmenter(spec: BackboneSpec | dict, in_channels: int = 1, num_classes: int = 5) -> Segmenter:
    if isinstance(spec, dict):
        spec = BackboneSpec.from_dict(spec)
    return Segmenter(spec, in_channels, num_classes)
