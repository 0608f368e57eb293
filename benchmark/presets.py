"""Presets size a run: slice size, schedule, batch size and backbone.

* ``quick`` (the default): CPU, minutes. 64x64 slices, a short schedule, a slim U-Net decoder.
* ``standard``: CPU or one GPU, hours. 128x128 slices.
* ``paper``: GPU. 256x256 slices and schedules comparable to the papers.

The preset's full settings are part of every trial's configuration (and so of its hash): changing a preset's
numbers never mixes old and new results.
"""

from __future__ import annotations

from typing import Any

from .errors import UsageError

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "size": 64, "steps": 300, "batch_size": 8, "augment": "standard", "eval_batch_size": 64,
        "warmup_steps": 20, "log_every": 50, "checkpoint_every": 100,
        "backbone": {"encoder": "resnet18", "encoder_depth": 4, "decoder_channels": [64, 32, 16, 16]},
    },
    "standard": {
        "size": 128, "steps": 6000, "batch_size": 16, "augment": "standard", "eval_batch_size": 64,
        "warmup_steps": 200, "log_every": 200, "checkpoint_every": 500,
        "backbone": {"encoder": "resnet18", "encoder_depth": 5, "decoder_channels": [256, 128, 64, 32, 16]},
    },
    "paper": {
        "size": 256, "steps": 30000, "batch_size": 16, "augment": "standard", "eval_batch_size": 32,
        "warmup_steps": 500, "log_every": 500, "checkpoint_every": 2000,
        "backbone": {"encoder": "resnet34", "encoder_depth": 5, "decoder_channels": [256, 128, 64, 32, 16]},
    },
}


def get_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of preset ``name`` with ``overrides`` applied (``None`` values ignored)."""
    if name not in PRESETS:
        raise UsageError(f"Unknown preset {name!r}; presets are {', '.join(PRESETS)}.")
    settings = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[name].items()}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in settings:
            raise UsageError(f"Preset setting {key!r} does not exist; settings are {', '.join(settings)}.")
        settings[key] = value
    return settings


def select_interval(preset: str, select_every: int | None) -> int:
    """A selection study's steps between candidates: ``--select-every``, else the preset's ``checkpoint_every``."""
    every = int(get_preset(preset)["checkpoint_every"]) if select_every is None else select_every
    if every < 1:
        raise UsageError(f"--select-every {every} is impossible: score candidates every one step or more.")
    return every
