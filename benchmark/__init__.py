"""fsuda-benchmark: few-shot cross-modality domain adaptation for medical image segmentation.

Importing the package is light (no torch); heavy modules load on first use. Public entry points:
:func:`discover`, :func:`get_dataset`, :func:`get_method`, :mod:`benchmark.metrics`, and the CLI
``python -m benchmark``.
"""

from __future__ import annotations

from .protocol import PROTOCOL
from .registry import (DATASETS, METHODS, PLUGINS, discover, get_dataset, register_dataset, register_method,
                       register_plugin)

__version__ = "0.1.0"


def get_method(name: str):
    """The method class registered as ``name`` (or an alias)."""
    discover()
    return METHODS.get(name)


__all__ = ["PROTOCOL", "DATASETS", "METHODS", "PLUGINS", "discover", "get_dataset", "get_method",
           "register_dataset", "register_method", "register_plugin", "__version__"]
