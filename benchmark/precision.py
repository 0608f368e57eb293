"""Numeric precision and memory format of a trial's training step: ``--precision auto|fp32|bf16|fp16`` and
``--memory-format auto|contiguous|channels_last``.

``auto`` (the default) trains in bfloat16 autocast on a GPU that supports it, in float16 autocast with loss
scaling on an older GPU (before Ampere: no bfloat16 kernels) and in float32 on a CPU, so CPU results are the
float32 results they always were. ``bf16`` and ``fp16`` ask for that autocast on any device (on a CPU both are slow
unless the CPU has instructions for them). bfloat16 keeps float32's exponent range, so it needs no loss scaling.
float16 does (Micikevicius et al., "Mixed Precision Training", ICLR 2018): small gradients underflow, so each loss
is multiplied by a dynamic scale before back-propagation (``torch.amp.GradScaler``), the gradients are divided by
it before the optimizer steps, a step whose gradients overflowed is skipped and the scale halved, and the scale
doubles after 2000 clean steps. Every method back-propagates and steps through
:meth:`benchmark.method.Method.backward` and :meth:`~benchmark.method.Method.step`, which go through the trial's
one :class:`LossScaler` under fp16 and are plain ``backward()`` and ``step()`` otherwise. The scaler's state is
checkpointed with the trial; its final scale and the number of skipped steps are recorded in ``result.json``.

Autocast covers the training step only; evaluation runs in float32, so a score never depends on the precision of
the forward pass that produced it, only on the weights. A method whose step differentiates through its own
gradients (``metahallu``'s second-order meta-gradients) declares ``mixed_precision = False`` and trains in float32
under any request, and the trial's ``result.json`` says so.

``--memory-format auto`` (the default) stores models and batches channels-last on a GPU, which the tensor-core
convolution kernels prefer, and contiguous on a CPU: a memory format changes the order of a convolution's sums, so
it changes float results, and the published rows were trained contiguous on CPUs. ``channels_last`` asks for it on
a CPU too, where oneDNN's convolutions run faster in it (the speed is ``python -m benchmark bench --memory-format
channels_last``'s to measure), at the price of numbers that differ from a contiguous trial's; ``contiguous`` asks
for it on a GPU.

The requested precision and memory format are part of a trial's configuration (and hash) when they are not
``auto``; what was used is recorded in ``result.json`` (``compute``), with the cuDNN settings in ``determinism``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


def parse_precision(text: str) -> str:
    """A ``--precision`` value, checked: one of :data:`PRECISIONS`."""
    value = str(text).strip().lower()
    if value not in PRECISIONS:
        raise UsageError(f"--precision {text!r} is not a precision; use one of {', '.join(PRECISIONS)}.")
    return value


def parse_memory_format(text: str) -> str:
    """A ``--memory-format`` value, checked: one of :data:`MEMORY_FORMATS`."""
    value = str(text).strip().lower().replace("-", "_")
    if value not in MEMORY_FORMATS:
        raise UsageError(f"--memory-format {text!r} is not a memory format; use one of {', '.join(MEMORY_FORMATS)}.")
    return value


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` is a GPU with bfloat16 support (autocast's ``auto`` uses bfloat16 only there)."""
    import torch

    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def auto_precision(device: torch.device) -> str:
    """What ``--precision auto`` trains in on ``device``: bf16 on a GPU with bfloat16, fp16 on another GPU, fp32
    on a CPU."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if bf16_supported(device) else "fp16"


def compute_settings(requested: str, device: torch.device, method_cls: type,
                     layout: str = "auto") -> dict[str, Any]:
    """What a trial's training step uses: ``requested``, ``precision`` (fp32, bf16 or fp16), ``loss_scaling``
    (fp16 only), ``memory_format`` (``layout`` when not auto) and a ``note`` when the method kept float32 despite
    the request."""
    requested, layout = parse_precision(requested), parse_memory_format(layout)
    if layout == "auto":
        layout = "channels_last" if device.type == "cuda" else "contiguous"
    used = auto_precision(device) if requested == "auto" else requested
    note = ""
    if used != "fp32" and not getattr(method_cls, "mixed_precision", True):
        used, note = "fp32", (f"{getattr(method_cls, 'name', method_cls.__name__)} trains in float32: its step "
                              f"differentiates through its own gradients, which autocast does not cover safely")
    return {"requested": requested, "precision": used, "loss_scaling": used == "fp16",
            "memory_format": layout, "note": note}


def autocast(device: torch.device, settings: dict[str, Any]):
    """The autocast context of a training step under ``settings`` (:func:`compute_settings`)."""
    import torch

    if settings["precision"] == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[settings["precision"]])


def memory_format(settings: dict[str, Any]) -> torch.memory_format:
    """The memory format image batches are converted to under ``settings`` (contiguous: left as drawn)."""
    import torch

    return torch.channels_last if settings["memory_format"] == "channels_last" else torch.preserve_format


def to_memory_format(module, settings: dict[str, Any]):
    """``module`` in the memory format of ``settings`` (left as it is when contiguous)."""
    import torch

    return module.to(memory_format=torch.channels_last) if settings["memory_format"] == "channels_last" else module


class LossScaler:
    """A trial's loss scaling: one ``torch.amp.GradScaler`` for all of a method's optimizers, updated once per
    training step, and a guard that refuses an optimizer step that bypasses it.

    Disabled (the default, any precision but fp16), :meth:`backward` and :meth:`step` are ``loss.backward()`` and
    ``optimizer.step()`` exactly. Enabled, each loss is multiplied by the scale, :meth:`step` unscales the gradients
    and skips an optimizer whose gradients are not finite, and :meth:`end_step` updates the scale once per training
    step, and only when something stepped (a step that steps nothing leaves the scaler nothing to update). A step is
    counted in :attr:`skipped_steps` when the scale dropped, i.e. some optimizer's gradients overflowed.
    """

    def __init__(self, device_type: str, enabled: bool = False):
        import torch

        self.scaler = torch.amp.GradScaler(device_type, enabled=enabled)
        #: Training steps in which some optimizer's gradients overflowed, so that its update was skipped.
        self.skipped_steps = 0
        self._stepping: torch.optim.Optimizer | None = None  # the optimizer :meth:`step` is stepping
        self._stepped = False  # whether an optimizer stepped in the training step in progress

    @property
    def enabled(self) -> bool:
        return self.scaler.is_enabled()

    @property
    def scale(self) -> float:
        """The current loss scale (1 when disabled)."""
        return float(self.scaler.get_scale()) if self.enabled else 1.0

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        self.scaler.scale(loss).backward(**kwargs)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self._stepping = optimizer
        try:
            self.scaler.step(optimizer)
        finally:
            self._stepping = None
        self._stepped = True

    def is_stepping(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether ``optimizer``'s step in progress came through :meth:`step`."""
        return self._stepping is optimizer

    def guard(self, optimizers, owner: str) -> None:
        """Make each of ``optimizers`` refuse a step that does not come through :meth:`step` (when enabled): its
        gradients would be applied still multiplied by the scale. ``owner`` names the method in the message."""
        if not self.enabled:
            return

        def only_scaled_steps(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if not self.is_stepping(optimizer):
                raise RuntimeError(
                    f"Method {owner!r} stepped an optimizer ({type(optimizer).__name__}) directly under --precision "
                    f"fp16: its gradients carry the loss scale. Back-propagate with self.backward(loss) and step "
                    f"with self.step(optimizer), as the suite's methods do, or train it with --precision bf16 or "
                    f"fp32.")

        for optimizer in optimizers:
            optimizer.register_step_pre_hook(only_scaled_steps)

    def end_step(self) -> None:
        if self.enabled and self._stepped:
            before = self.scaler.get_scale()
            self.scaler.update()
            self.skipped_steps += int(self.scaler.get_scale() < before)
        self._stepped = False

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state and the skipped-step count, for a checkpoint (empty when disabled)."""
        if not self.enabled:
            return {}
        return {"grad_scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (a checkpoint without it leaves the scaler as it is)."""
        if "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
            self.skipped_steps = int(state["skipped_steps"])

    def summary(self) -> dict[str, Any]:
        """For ``result.json``: the final loss scale and the skipped steps (empty when disabled)."""
        return {"loss_scale": self.scale, "skipped_steps": self.skipped_steps} if self.enabled else {}


__all__ = ["LossScaler", "MEMORY_FORMATS", "PRECISIONS", "auto_precision", "autocast", "bf16_supported",
           "compute_settings", "memory_format", "parse_memory_format", "parse_precision", "to_memory_format"]
