"""Shared test setup: offline, no albumentations update check, a private cache, Ray auth off."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest
import torch

# One thread per test process: OpenMP threads spinning against a busy second core slow small models ~50x.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One slice cache for the whole session (the synthetic dataset is generated once)."""
    path = tmp_path_factory.mktemp("fsuda-cache")
    return str(path)


@pytest.fixture(autouse=True)
def _private_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("FSUDA_CACHE", cache_dir)
