"""The U-Net wrapper: unreached encoder stages are dropped without changing weights or outputs."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from benchmark.models import build_segmenter


def test_shallow_encoder_drops_unreached_stages_and_keeps_outputs():
    spec = {"encoder": "resnet18", "encoder_depth": 4, "decoder_channels": [32, 16, 16, 8]}
    torch.manual_seed(0)
    ours = build_segmenter(spec, 1, 5)
    torch.manual_seed(0)
    reference = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=5, encoder_depth=4,
                         decoder_channels=[32, 16, 16, 8])
    assert isinstance(ours.unet.encoder.layer4, nn.Identity)
    assert not isinstance(reference.encoder.layer4, nn.Identity)
    dropped = sum(p.numel() for p in reference.encoder.layer4.parameters())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters()) - dropped
    # the probe left the batch-norm statistics alone, and both networks compute the same thing
    for name, buffer in ours.unet.named_buffers():
        torch.testing.assert_close(buffer, reference.get_buffer(name), rtol=0, atol=0)
    x = torch.randn(2, 1, 64, 64)
    ours.train(), reference.train()
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


def test_full_depth_encoder_keeps_every_stage():
    seg = build_segmenter({"encoder": "resnet18", "encoder_depth": 5, "decoder_channels": [16, 16, 8, 8, 8]}, 1, 3)
    assert not any(isinstance(m, nn.Identity) for m in seg.unet.encoder.children())
