"""Rendering a structure map as an MR-like or a CT-like image.

Both modalities look tissues up in :data:`.tables.TISSUE_INTENSITY` with per-subject jitter; they differ in
everything after that (see :data:`.tables.MR_IMAGING` and :data:`.tables.CT_IMAGING`): MR is blurred in plane,
averaged across each slice's slab with the modality's slice profile, shaded by a multiplicative bias field and
given Rician noise; CT gets Gaussian noise that an isotropic blur then correlates.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .geometry import smooth_field
from .tables import CT_IMAGING, MR_IMAGING, SLICES, STRUCT_TISSUE, TISSUE_INTENSITY, TISSUES


def tissue_means(rng: np.random.Generator, modality: str) -> np.ndarray:
    """This subject's mean intensity of each tissue code; air is never jittered."""
    table = TISSUE_INTENSITY[modality]
    names = sorted(TISSUES, key=TISSUES.get)
    means = np.array([table[n] for n in names], dtype=np.float64)
    if modality == "mr":
        means *= rng.uniform(*MR_IMAGING["mean_jitter"], size=len(means))
    else:
        means += rng.normal(0.0, CT_IMAGING["mean_sd"], size=len(means))
        means[TISSUES["blood"]] = table["blood"] * rng.uniform(*CT_IMAGING["blood_jitter"])
    means[TISSUES["air"]] = table["air"]
    return means


def slab_average(vol: np.ndarray, profile: Sequence[float]) -> np.ndarray:
    """Average each slice's slab of fine samples with the weights ``profile`` (a single weight: ``vol`` as is).

    With n weights, output slice i covers fine samples (n - 1) * i .. (n - 1) * (i + 1), so neighbouring slabs
    share their face samples.
    """
    if len(profile) == 1:
        return vol
    step = len(profile) - 1
    nz = (vol.shape[2] - 1) // step
    img = None
    for k, w in enumerate(profile):
        term = w * vol[:, :, k:k + step * nz:step]
        img = term if img is None else img + term
    return img


def _mr_image(rng: np.random.Generator, vol: np.ndarray, blood: float) -> np.ndarray:
    t = MR_IMAGING
    vol = ndimage.gaussian_filter(vol, sigma=t["blur"], truncate=t["blur_truncate"])
    img = slab_average(vol, SLICES["mr"]["profile"])
    shape = img.shape
    bias = smooth_field(rng, shape, t["bias_controls"], 1.0)
    bias *= np.float32(rng.uniform(*t["bias"]))
    img *= np.exp(bias)
    sigma = np.float32(rng.uniform(*t["noise"]) * blood)
    n1 = rng.standard_normal(shape, dtype=np.float32)
    n1 *= sigma
    n1 += img
    n2 = rng.standard_normal(shape, dtype=np.float32)
    n2 *= sigma
    return np.sqrt(n1 * n1 + n2 * n2)


def _ct_image(rng: np.random.Generator, vol: np.ndarray) -> np.ndarray:
    t = CT_IMAGING
    vol = slab_average(vol, SLICES["ct"]["profile"])
    sigma = np.float32(rng.uniform(*t["noise"]))
    noise = rng.standard_normal(vol.shape, dtype=np.float32)
    noise *= sigma
    vol += noise
    return ndimage.gaussian_filter(vol, sigma=t["blur"], truncate=t["blur_truncate"])


def render(rng: np.random.Generator, modality: str, smap: np.ndarray) -> np.ndarray:
    """The float32 image of structure map ``smap``, sampled on the fine grid of ``modality``'s slice profile."""
    means = tissue_means(rng, modality)
    lut = means[STRUCT_TISSUE].astype(np.float32)
    vol = lut[smap]
    if modality == "mr":
        img = _mr_image(rng, vol, means[TISSUES["blood"]])
    else:
        img = _ct_image(rng, vol)
    return np.ascontiguousarray(img, dtype=np.float32)
