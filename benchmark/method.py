"""The method contract: an ``nn.Module`` with ``update(batch, step)`` and ``predict(images)``.

In the spirit of DomainBed (Gulrajani and Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021): the
shared trainer owns the loop, the learning-rate schedule, logging, checkpoints and evaluation, so a method file
holds only what is specific to the method. A method

* is constructed from a :class:`MethodContext` (channels, classes, device, a backbone factory, the step budget)
  and its resolved hyperparameters;
* declares the data streams it consumes (``streams``: ``source``, ``source_unlabeled``, ``source_all``,
  ``target``, ``target_labeled``; :mod:`benchmark.streams` says which volumes feed each) so the loader
  builds only those;
* declares its hyperparameters beside its code in ``HPARAMS`` (merged along the class hierarchy);
* creates its optimizers in ``__init__`` and lists them in ``self.optimizers`` (the trainer schedules them);
* may run in stages: ``self.total_steps`` (default: the preset's steps, ``ctx.total_steps``) is how many steps
  the trainer runs, and ``self.optimizer_spans`` gives each optimizer the (start, end) steps over which its
  learning-rate schedule (warm-up, then decay) runs; outside its span an optimizer's rate is zero;
* exposes its segmenter's features through :meth:`features` so plug-ins can attach to it;
* back-propagates through :meth:`Method.backward` and steps its optimizers through :meth:`Method.step` (or sets
  ``.grad`` itself and then calls :meth:`Method.step`), so that ``--precision fp16`` can scale its losses: under
  float16 both go through the trial's gradient scaler (``torch.amp.GradScaler``, one for all the method's
  optimizers, updated once per training step), and at any other precision they are ``loss.backward()`` and
  ``optimizer.step()`` exactly. Under fp16 an optimizer stepped any other way stops the trial with a message.

Plug-ins (:class:`Plugin`, e.g. ``metahallu+cdtg``) modify a method rather than replace it. The trainer calls
:meth:`Method.train_step` and :meth:`Method.infer`, which are :meth:`Method.update` and :meth:`Method.predict`
unchanged when no plug-in is attached. Every method steps its segmenter through one optimizer,
:meth:`Method.segmenter_optimizer` (``optimizers[0]`` of a :class:`SegmenterMethod`); an attached plug-in joins
exactly that step: a step pre-hook on that optimizer computes the host's :meth:`features` of the labeled batch
(batch-norm running statistics held still, see :func:`frozen_running_statistics`), asks each plug-in for its loss
(it may call the host's :meth:`logits_from_features` on them) and back-propagates it, so its gradient adds to
whatever the host put in the segmenter's ``.grad`` (plain back-propagation, SIFA's restricted backward, or
metahallu's meta-gradients) before the host's own optimizer applies them. No second optimizer ever steps the
segmenter. A plug-in's own weights are a parameter group of that optimizer, so they follow the segmenter's schedule
(and its stage, for a multi-stage method such as ``cyclegan_uda``, whose segmenter trains only in its second stage)
and are saved in its checkpoint state; the plug-in modules are the submodule ``plugins`` of the method, so the
method's ``state_dict`` holds them too. At inference, :meth:`Method.infer` lets each plug-in with a head blend its
prediction from the host's features into the host's logits.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import nn

from .blocks import OutputDiscriminator, gan_loss, set_requires_grad
from .errors import PluginHostError
from .hparams import HParam, log_uniform, uniform
from .losses import dice_ce_loss
from .models import Segmenter
from .precision import LossScaler
from .protocol import row_name
from .streams import Batch


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
    #: Reads the dataset's class descriptions (:meth:`benchmark.dataset.DatasetAdapter.class_descriptions`), for
    #: plug-ins that use language; ``None`` outside a trial (plug-ins then fall back on the class names).
    describe: Callable[[], dict[str, Any]] | None = None


def _declared(cls: type) -> dict[str, "HParam"]:
    """``HPARAMS`` merged along the class hierarchy (a subclass overrides its bases)."""
    merged: dict[str, HParam] = {}
    for klass in reversed(cls.__mro__):
        merged.update(getattr(klass, "HPARAMS", {}) or {})
    return merged


class Method(nn.Module):
    """Base class of every method (register subclasses with ``@register_method("name")``)."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    streams: ClassVar[tuple[str, ...]] = ("source",)
    HPARAMS: ClassVar[dict[str, HParam]] = {
        "lr": HParam(1e-3, log_uniform(1e-4, 3e-3), "Adam learning rate of the segmenter"),
        "weight_decay": HParam(1e-5, log_uniform(1e-6, 1e-3), "Adam weight decay"),
    }

    #: The labeled stream plug-ins learn from (images ``<stream>_x``, labels ``<stream>_y`` of the batch).
    labeled_stream: ClassVar[str] = "source"
    #: Whether the training step may run under bf16 or fp16 autocast (:mod:`benchmark.precision`); False for a step
    #: that differentiates through its own gradients, which then trains in float32 under any ``--precision``.
    mixed_precision: ClassVar[bool] = True

    def __init__(self, ctx: MethodContext, hparams: dict[str, Any]):
        super().__init__()
        self.ctx = ctx
        self.hparams = dict(hparams)
        self.optimizers: list[torch.optim.Optimizer] = []
        #: Steps the trainer runs for this method; a multi-stage method may add steps of its own.
        self.total_steps: int = ctx.total_steps
        #: One (start, end) step span per optimizer for its schedule; ``None``: every optimizer over all steps.
        self.optimizer_spans: list[tuple[int, int]] | None = None
        self._plugin_step: dict[str, Any] | None = None  # the batch and losses of the step in progress
        #: The trial's loss scaling: disabled (``backward`` and ``step`` unchanged) unless :meth:`scale_losses`.
        self.loss_scaler = LossScaler(torch.device(ctx.device).type)

    @classmethod
    def declared_hparams(cls) -> dict[str, HParam]:
        return _declared(cls)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        """One optimisation step on ``batch``; returns the losses as floats."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes, H, W) for images (B, C, H, W)."""
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The segmenter's last decoder features (B, F, H, W), where plug-ins attach."""
        raise NotImplementedError

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """The segmenter's head on :meth:`features`: its logits (B, classes, H, W), for plug-ins that fuse with them."""
        raise NotImplementedError

    def segmenter_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer whose ``step()`` updates the segmenter (where plug-ins add their losses); None: none."""
        return None

    # -- back-propagation and steps (loss scaling) ---------------------------------------------------------------
    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``loss.backward(**kwargs)``, with ``loss`` multiplied by the loss scale under float16."""
        self.loss_scaler.backward(loss, **kwargs)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``: under float16 through the loss scaler, which unscales the gradients first and
        skips the step if any is not finite. Attached plug-ins join the segmenter's optimizer here (see
        :meth:`attach_plugins`), before the gradients are unscaled, so their loss is scaled like the host's."""
        if "plugins" in self._modules and optimizer is self.segmenter_optimizer():
            self._join_plugins()
        self.loss_scaler.step(optimizer)

    def scale_losses(self) -> None:
        """Train with a float16 loss scaler (``--precision fp16``; call before the first step). Every optimizer of
        the method then refuses a step that does not come through :meth:`step`."""
        self.loss_scaler = LossScaler(torch.device(self.ctx.device).type, enabled=True)
        self.loss_scaler.guard(self.optimizers, self.name)

    def end_step(self) -> None:
        """Close a training step: the loss scaler's update, once, after every optimizer has stepped."""
        self.loss_scaler.end_step()

    # -- plug-ins ---------------------------------------------------------------------------------------------
    @classmethod
    def hosting_problem(cls) -> str | None:
        """Why this method cannot host plug-ins, as a clause (``None``: it can), judged from its class alone."""
        if cls.features is Method.features:
            return "it does not expose its segmenter's features (its features() is not implemented)"
        if cls.segmenter_optimizer is Method.segmenter_optimizer:
            return "it names no optimizer that steps a segmenter (its segmenter_optimizer() returns None)"
        if cls.logits_from_features is Method.logits_from_features:
            return "it does not expose its segmenter's head (its logits_from_features() is not implemented)"
        if cls.labeled_stream not in cls.streams:
            return (f"it does not read the labeled stream {cls.labeled_stream!r} that plug-ins learn from "
                    f"(its streams: {', '.join(cls.streams)})")
        return None

    @property
    def attached_plugins(self) -> dict[str, "Plugin"]:
        """The attached plug-ins by name, in the order they were composed (empty without plug-ins)."""
        plugins = self._modules.get("plugins")
        return dict(plugins.items()) if plugins is not None else {}

    def attach_plugins(self, plugins: Sequence[tuple[type["Plugin"], dict[str, Any]]]) -> None:
        """Build the plug-ins ``(class, resolved hyperparameters)`` on this method and join them to its training.

        Raises :class:`~benchmark.errors.PluginHostError`, naming the method and the plug-in, if this method
        cannot host them. Call it right after construction, before the trainer builds its schedules.
        """
        if not plugins:
            return
        if "plugins" in self._modules:
            raise RuntimeError(f"Method {self.name!r} already has plug-ins attached.")
        names = [cls.name for cls, _ in plugins]
        optimizer = None
        problem = type(self).hosting_problem()
        if problem is None:
            optimizer = self.segmenter_optimizer()
            if optimizer is None:
                problem = "it has no optimizer that steps a segmenter (its segmenter_optimizer() returned None)"
        width = None
        if problem is None:
            width, problem = self._probe_feature_channels()
        if problem is not None:
            raise plugin_host_error(self.name, names, problem)
        device = next(self.parameters()).device
        modules = nn.ModuleDict()
        for cls, hparams in plugins:
            modules[cls.name] = cls(self.ctx, hparams, width)
        self.plugins = modules.to(device)
        for plugin in modules.values():
            params = [p for p in plugin.parameters() if p.requires_grad]
            if params:
                optimizer.add_param_group({"params": params, "lr": plugin.hparams["lr"],
                                           "weight_decay": plugin.hparams.get("weight_decay", 0.0)})
        optimizer.register_step_pre_hook(self._plugins_join_step)

    def _probe_feature_channels(self) -> tuple[int | None, str | None]:
        """The width of :meth:`features` on a blank 64x64 image (eval mode, no gradient, RNG untouched)."""
        modes = {m: m.training for m in self.modules()}
        device = next(self.parameters()).device
        self.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                feats = self.features(torch.zeros(1, self.ctx.in_channels, 64, 64, device=device))
        except NotImplementedError:
            return None, "its features() is not implemented"
        except Exception as exc:  # noqa: BLE001 - any failure means the method cannot host a plug-in
            return None, f"its features() failed on a 64x64 probe image with {type(exc).__name__}: {exc}"
        finally:
            for m, training in modes.items():
                m.training = training
        if not isinstance(feats, torch.Tensor) or feats.ndim != 4:
            return None, "its features() did not return a (batch, channels, height, width) tensor"
        return int(feats.shape[1]), None

    def _plugins_join_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Step pre-hook of the segmenter's optimizer: add every plug-in's gradient to the host's (unless
        :meth:`step` already did, before unscaling)."""
        if not self.loss_scaler.is_stepping(optimizer):
            self._join_plugins()

    def _join_plugins(self) -> None:
        """Back-propagate the plug-ins' losses on the labeled batch of the step in progress into the segmenter."""
        state = self._plugin_step
        if state is None:
            raise RuntimeError(
                f"Method {self.name!r} stepped its segmenter outside train_step(): with plug-ins attached "
                f"({', '.join(self.attached_plugins)}), train it through train_step(batch, step), as the trainer "
                f"does, so the plug-ins see the batch.")
        x = getattr(state["batch"], f"{self.labeled_stream}_x", None)
        y = getattr(state["batch"], f"{self.labeled_stream}_y", None)
        if x is None or y is None:
            raise RuntimeError(f"The batch has no labeled {self.labeled_stream!r} stream for the plug-ins of "
                               f"method {self.name!r}.")
        with torch.enable_grad(), frozen_running_statistics(self):
            feats = self.features(x)
            total = None
            for name, plugin in self.attached_plugins.items():
                for p in plugin.parameters():
                    p.grad = None  # the host may never zero them (metahallu assigns its gradients)
                loss, logs = plugin.loss(feats, y, state["step"], self.logits_from_features)
                total = loss if total is None else total + loss
                state["losses"].update({f"{name}_{k}": float(v) for k, v in logs.items()})
            self.backward(total)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        """What the trainer calls: :meth:`update`, with the attached plug-ins joining the segmenter's step, then
        :meth:`end_step`."""
        if "plugins" not in self._modules:
            losses = self.update(batch, step)
        else:
            self._plugin_step = {"batch": batch, "step": step, "losses": {}}
            try:
                losses = {**self.update(batch, step), **self._plugin_step["losses"]}
            finally:
                self._plugin_step = None
        self.end_step()
        return losses

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """What evaluation calls: :meth:`predict`, blended with the heads of attached plug-ins."""
        logits = self.predict(images)
        heads = [p for p in self.attached_plugins.values() if p.has_head]
        if heads:
            feats = self.features(images)
            for plugin in heads:
                logits = plugin.blend(logits, feats)
        return logits


@contextmanager
def frozen_running_statistics(module: nn.Module) -> Iterator[None]:
    """Batch-norm layers in training mode normalise with the batch's statistics but keep their running ones.

    The plug-ins' forward pass of the labeled batch is an extra look at images the host has already seen (or
    chose not to show its segmenter): it must not move the statistics the host evaluates with, so a plug-in
    whose loss has no gradient leaves the host's state exactly as it was. A momentum of 0 keeps the running
    mean and variance bit for bit; the batch counter is put back.
    """
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m, _, _ in saved:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def plugin_host_error(method: str, plugins: Sequence[str], problem: str) -> PluginHostError:
    """The one-paragraph error for a method that cannot host ``plugins``, saying why (``problem``)."""
    composed = row_name(method, "", [{"name": p} for p in plugins])
    return PluginHostError(
        f"Plug-in {'+'.join(plugins)!r} cannot attach to method {method!r} ({composed}): {problem}. A plug-in needs "
        f"a method built around a segmenter, whose features() returns the segmenter's last decoder features and "
        f"whose segmenter_optimizer() is the optimizer that steps the segmenter (every SegmenterMethod qualifies); "
        f"compose it with such a method instead, e.g. source_only+{plugins[0]}.")


class Plugin(nn.Module):
    """Base class of plug-ins, which add loss terms (and optionally an inference head) to a host method.

    Register subclasses with ``@register_plugin("name")``. A plug-in is built by
    :meth:`Method.attach_plugins` with the host's :class:`MethodContext`, its resolved hyperparameters (declared
    in ``HPARAMS`` like a method's) and the width of the host's :meth:`Method.features`. During training,
    :meth:`loss` receives the host's features of the labeled batch and its labels and returns a loss tensor,
    which joins the host's optimizer step of the segmenter; its own weights train in a parameter group of that
    optimizer with learning rate ``lr``. A plug-in with a head (``has_head``) blends its prediction into the
    host's logits at inference through :meth:`blend`.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    HPARAMS: ClassVar[dict[str, HParam]] = {
        "lr": HParam(1e-3, log_uniform(1e-4, 3e-3), "Adam learning rate of the plug-in's own weights"),
    }

    def __init__(self, ctx: MethodContext, hparams: dict[str, Any], feature_channels: int):
        super().__init__()
        self.ctx = ctx
        self.hparams = dict(hparams)
        self.feature_channels = feature_channels

    @classmethod
    def declared_hparams(cls) -> dict[str, HParam]:
        return _declared(cls)

    @classmethod
    def check_hparams(cls, hparams: dict[str, Any]) -> None:
        """Refuse resolved hyperparameters that cannot work, before any trial runs: raise
        :class:`~benchmark.errors.UsageError` naming the setting. Nothing is refused by default."""

    @classmethod
    def provenance(cls, adapter: Any, hparams: dict[str, Any]) -> dict[str, str]:
        """Versions of data and models the plug-in reads for ``adapter``'s dataset with ``hparams`` (they key the
        trial); none by default. An ``"encoder"`` entry (e.g. a frozen text encoder) is shown on the boards beside
        the plug-in's version."""
        return {}

    def loss(self, features: torch.Tensor, labels: torch.Tensor, step: int,
             head: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The plug-in's training loss on the host's ``features`` (B, F, h, w) of labeled images, ``labels``
        (B, H, W); ``head`` is the host's :meth:`Method.logits_from_features` (call it on ``features`` for the
        host's logits of the same pass). Returns the loss tensor and its parts as floats for the log."""
        raise NotImplementedError

    @property
    def has_head(self) -> bool:
        """Whether :meth:`blend` changes the host's prediction."""
        return False

    def blend(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The host's ``logits`` combined with this plug-in's prediction from ``features``."""
        return logits


class SegmenterMethod(Method):
    """A method built around one U-Net ``segmenter``: it predicts, exposes features and owns the first optimizer.

    Subclasses add their own networks and append their optimizers to ``self.optimizers``. The segmenter's loss
    weight ``dice_weight`` is declared here once, with one search distribution for every method that trains a
    segmenter with :func:`benchmark.losses.dice_ce_loss`.
    """

    HPARAMS = {"dice_weight": HParam(1.0, uniform(0.5, 2.0), "weight of the soft Dice term beside cross-entropy")}

    def __init__(self, ctx: MethodContext, hparams: dict[str, Any]):
        super().__init__(ctx, hparams)
        self.segmenter = ctx.backbone()
        self.optimizers = [torch.optim.Adam(self.segmenter.parameters(), lr=hparams["lr"],
                                            weight_decay=hparams["weight_decay"])]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter.forward_features(images)[1]

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.segmenter.head(features)

    def segmenter_optimizer(self) -> torch.optim.Optimizer | None:
        return self.optimizers[0]


class OutputAdversaryMethod(SegmenterMethod):
    """A segmenter plus a fully convolutional discriminator on its output maps (AdaptSegNet, ADVENT).

    The discriminator's Adam optimizer (betas 0.9, 0.99, as in both papers) is ``self.optimizers[1]``;
    :meth:`adversarial_step` is the training step both papers share.
    """

    HPARAMS = {"d_lr": HParam(1e-4, log_uniform(3e-5, 3e-4), "discriminator learning rate (papers: 1e-4)")}

    def __init__(self, ctx: MethodContext, hparams: dict[str, Any]):
        super().__init__(ctx, hparams)
        self.discriminator = OutputDiscriminator(ctx.num_classes)
        self.optimizers.append(
            torch.optim.Adam(self.discriminator.parameters(), lr=hparams["d_lr"], betas=(0.9, 0.99)))

    def adversarial_step(self, supervised: torch.Tensor, source_map: torch.Tensor, target_map: torch.Tensor,
                         weight: float, kind: str = "vanilla") -> dict[str, float]:
        """One step of the segmenter, then one of the discriminator, on output maps of source and target images.

        The segmenter descends ``supervised + weight * adv``, where ``adv`` is the GAN loss (``kind``) that labels
        the discriminator's scores on ``target_map`` "source" (the discriminator frozen meanwhile); then the
        discriminator learns to tell ``source_map`` ("real") from ``target_map`` ("fake"), both detached. Returns
        ``adv`` and the discriminator's loss ``disc``.
        """
        opt_s, opt_d = self.optimizers[0], self.optimizers[1]
        set_requires_grad(self.discriminator, False)
        adv = gan_loss(self.discriminator(target_map), real=True, kind=kind)
        opt_s.zero_grad(set_to_none=True)
        self.backward(supervised + weight * adv)
        self.step(opt_s)
        set_requires_grad(self.discriminator, True)
        d_loss = 0.5 * (gan_loss(self.discriminator(source_map.detach()), real=True, kind=kind)
                        + gan_loss(self.discriminator(target_map.detach()), real=False, kind=kind))
        opt_d.zero_grad(set_to_none=True)
        self.backward(d_loss)
        self.step(opt_d)
        return {"adv": adv.item(), "disc": d_loss.item()}


class SupervisedMethod(SegmenterMethod):
    """A U-Net trained with Dice + cross-entropy on one labeled stream (the reference rows' shared core)."""

    labeled_stream: ClassVar[str] = "source"

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        x = getattr(batch, f"{self.labeled_stream}_x")
        y = getattr(batch, f"{self.labeled_stream}_y")
        opt = self.optimizers[0]
        loss = dice_ce_loss(self.segmenter(x), y, self.hparams["dice_weight"])
        opt.zero_grad(set_to_none=True)
        self.backward(loss)
        self.step(opt)
        return {"loss": loss.item()}
