"""Segmentation losses shared by every method."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = False,
                   eps: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over classes, computed over the whole batch (Milletari et al., V-Net, 2016).

    ``target`` is an integer label map (B, H, W) or per-pixel class probabilities (B, classes, H, W).
    """
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    if target.is_floating_point():
        onehot = target
    else:
        onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    start = 0 if include_background else 1
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)[start:]
    denom = probs.sum(dims)[start:] + onehot.sum(dims)[start:]
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy plus soft Dice, the usual supervised loss of the cardiac UDA literature.

    ``target`` is an integer label map (B, H, W) or per-pixel class probabilities (B, classes, H, W), such as a
    bilinearly warped one-hot label, with which the loss stays differentiable in the warp. On one-hot
    probabilities both forms agree up to float rounding, not bit for bit: the integer form's cross-entropy is
    ``F.cross_entropy``, the probability form's the mean over pixels of ``-sum_c target * log_softmax``.
    """
    if target.is_floating_point():
        ce = -(target * logits.log_softmax(1)).sum(1).mean()
    else:
        ce = F.cross_entropy(logits, target)
    return ce + dice_weight * soft_dice_loss(logits, target)
