"""The method contract: an ``nn.Module`` with ``update(batch, step)`` and ``predict(images)``.

In the spirit of DomainBed (Gulrajani and Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021): the
shared trainer owns the loop, the learning-rate schedule, logging, checkpoints and evaluation, so a method file
holds only what is specific to the method. A method

* is constructed from a :class:`MethodContext` (channels, classes, device, a backbone factory, the step budget)
  and its resolved hyperparameters;
* declares the data streams it consumes (``streams``: ``source``, ``source_unlabeled``, ``source_all``,
  ``target``, ``target_labeled``; see :data:`benchmark.data.STREAMS`) so the loader builds only those;
* declares its hyperparameters beside its code in ``HPARAMS`` (merged along the class hierarchy);
* creates its optimizers in ``__init__`` and lists them in ``self.optimizers`` (the trainer schedules them);
* may run in stages: ``self.total_steps`` (default: the preset's steps, ``ctx.total_steps``) is how many steps
  the trainer runs, and ``self.optimizer_spans`` gives each optimizer the (start, end) steps over which its
  learning-rate schedule (warm-up, then decay) runs; outside its span an optimizer's rate is zero;
* exposes its segmenter's features through :meth:`features` so plug-ins can attach to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from .data import Batch
from .hparams import HParam, log_uniform, uniform
from .losses import dice_ce_loss
from .models import Segmenter


@dataclass
class MethodContext:
    in_channels: int
    num_classes: int
    device: torch.device
    #: Builds a fresh U-Net of the preset; ``backbone(n)`` gives one with ``n`` output channels.
    backbone: Callable[..., Segmenter]
    total_steps: int
    class_names: tuple[str, ...] = ()
    #: A folder for artifacts that trials may share (e.g. a translator that does not depend on the shot count).
    artifacts: Path | None = None
    #: What identifies the trial's data and budget apart from the method: dataset, direction, seed, preset.
    run_key: dict[str, Any] = field(default_factory=dict)


class Method(nn.Module):
    """Base class of every method (register subclasses with ``@register_method("name")``)."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    streams: ClassVar[tuple[str, ...]] = ("source",)
    HPARAMS: ClassVar[dict[str, HParam]] = {
        "lr": HParam(1e-3, log_uniform(1e-4, 3e-3), "Adam learning rate of the segmenter"),
        "weight_decay": HParam(1e-5, log_uniform(1e-6, 1e-3), "Adam weight decay"),
    }

    def __init__(self, ctx: MethodContext, hparams: dict[str, Any]):
        super().__init__()
        self.ctx = ctx
        self.hparams = dict(hparams)
        self.optimizers: list[torch.optim.Optimizer] = []
        #: Steps the trainer runs for this method; a multi-stage method may add steps of its own.
        self.total_steps: int = ctx.total_steps
        #: One (start, end) step span per optimizer for its schedule; ``None``: every optimizer over all steps.
        self.optimizer_spans: list[tuple[int, int]] | None = None

    @classmethod
    def declared_hparams(cls) -> dict[str, HParam]:
        merged: dict[str, HParam] = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "HPARAMS", {}) or {})
        return merged

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        """One optimisation step on ``batch``; returns the losses as floats."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes, H, W) for images (B, C, H, W)."""
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The segmenter's last decoder features (B, F, H, W), where plug-ins attach."""
        raise NotImplementedError


class Plugin(nn.Module):
    """Base class of plug-ins, which add loss terms (and optionally an inference head) to a host method."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    HPARAMS: ClassVar[dict[str, HParam]] = {}


class SegmenterMethod(Method):
    """A method built around one U-Net ``segmenter``: it predicts, exposes features and owns the first optimizer.

    Subclasses add their own networks and append their optimizers to ``self.optimizers``.
    """

    def __init__(self, ctx: MethodContext, hparams: dict[str, Any]):
        super().__init__(ctx, hparams)
        self.segmenter = ctx.backbone()
        self.optimizers = [torch.optim.Adam(self.segmenter.parameters(), lr=hparams["lr"],
                                            weight_decay=hparams["weight_decay"])]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter.forward_features(images)[1]


class OutputAdversaryMethod(SegmenterMethod):
    """A segmenter plus a fully convolutional discriminator on its output maps (AdaptSegNet, ADVENT).

    The discriminator's Adam optimizer (betas 0.9, 0.99, as in both papers) is ``self.optimizers[1]``.
    """

    HPARAMS = {"d_lr": HParam(1e-4, log_uniform(3e-5, 3e-4), "discriminator learning rate (papers: 1e-4)")}

    def __init__(self, ctx: MethodContext, hparams: dict[str, Any]):
        from .blocks import OutputDiscriminator

        super().__init__(ctx, hparams)
        self.discriminator = OutputDiscriminator(ctx.num_classes)
        self.optimizers.append(
            torch.optim.Adam(self.discriminator.parameters(), lr=hparams["d_lr"], betas=(0.9, 0.99)))


class SupervisedMethod(SegmenterMethod):
    """A U-Net trained with Dice + cross-entropy on one labeled stream (the reference rows' shared core)."""

    labeled_stream: ClassVar[str] = "source"
    HPARAMS = {"dice_weight": HParam(1.0, uniform(0.5, 2.0), "weight of the soft Dice term beside cross-entropy")}

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        x = getattr(batch, f"{self.labeled_stream}_x")
        y = getattr(batch, f"{self.labeled_stream}_y")
        opt = self.optimizers[0]
        loss = dice_ce_loss(self.segmenter(x), y, self.hparams["dice_weight"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}
