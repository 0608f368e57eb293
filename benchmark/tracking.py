"""Optional experiment tracking (``run --tracker``) through Ray Tune's own logger callbacks.

Off unless asked. Each tracker needs its package, checked before anything runs; none makes a network call unless
the user configured one: TensorBoard writes event files beside Ray's trial folders, MLflow writes to a local store
under the run's directory unless ``MLFLOW_TRACKING_URI`` names another, and wandb runs offline unless
``WANDB_MODE`` says otherwise. Trials log their reported losses (and, at the end, their Dice) there.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from .errors import UsageError

#: tracker name -> (module to import, distribution to install)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboardX", "tensorboardX"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
#: Ray Tune's experiment folder under a run's directory (``make_tuner`` names it).
RAY_RESULTS = Path("ray_results") / "fsuda"


def check_tracker(name: str) -> None:
    """Fail with a usage error unless tracker ``name`` exists and its package is installed."""
    if name not in TRACKERS:
        raise UsageError(f"Tracker {name!r} does not exist; trackers are {', '.join(TRACKERS)}.")
    module, dist = TRACKERS[name]
    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--tracker {name} needs the {dist} package, which is not installed here: install it "
                         f"with `pip install {dist}`, or run without --tracker.") from None


def mlflow_uri(out: Path) -> str:
    """Where MLflow records: ``MLFLOW_TRACKING_URI`` if set, else a local store in ``<out>/mlruns``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path(out) / "mlruns").resolve().as_uri()


def wandb_settings(out: Path) -> dict[str, Any]:
    """wandb's run settings: offline unless ``WANDB_MODE`` is set, its files in ``<out>``."""
    return {"project": os.environ.get("WANDB_PROJECT", "fsuda-benchmark"),
            "mode": os.environ.get("WANDB_MODE", "offline"), "dir": str(Path(out).resolve())}


def where_tracked(name: str, out: Path) -> str:
    """A sentence saying where tracker ``name`` records a run in ``out`` and how to look at it."""
    if name == "tensorboard":
        return f"TensorBoard: tensorboard --logdir {Path(out) / RAY_RESULTS}"
    if name == "mlflow":
        return f"MLflow: {mlflow_uri(out)} (mlflow ui --backend-store-uri {mlflow_uri(out)})"
    settings = wandb_settings(out)
    return (f"wandb: project {settings['project']}, mode {settings['mode']}, files in {Path(out) / 'wandb'}"
            + (" (wandb sync uploads them)" if settings["mode"] == "offline" else ""))


__all__ = ["TRACKERS", "check_tracker", "mlflow_uri", "wandb_settings", "where_tracked"]
