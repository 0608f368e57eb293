"""What several dataset adapters share: the MM-WHS label tables and a natural sort order of file names.

A helper, not an adapter (its name starts with ``_``): discovery never registers it, and the adapters of this
folder import it relatively (``from ._shared import natural_key``). Its code is part of every file adapter's cache
fingerprint (:meth:`benchmark.dataset.FileDatasetAdapter.fingerprint`), so editing a table here never reuses
slices made with the old.
"""

from __future__ import annotations

import re
from pathlib import Path

#: The benchmark's MM-WHS structures, shared by the challenge files (``mmwhs``) and the 2D release (``mmwhs-2d``).
MMWHS_CLASSES = {"MYO": 1, "LAC": 2, "LVC": 3, "AA": 4}

#: MM-WHS label values: 205 myocardium, 420 left atrium, 500 left ventricle, 550 right atrium, 600 right
#: ventricle, 820 ascending aorta, 850 pulmonary artery. 421 occurs in one released MR label file for a few
#: left-atrium voxels (a known slip of the release) and is read as 420.
MMWHS_RAW_LABELS = (0, 205, 420, 421, 500, 550, 600, 820, 850)
#: Raw MM-WHS value -> class of :data:`MMWHS_CLASSES`; the other values of :data:`MMWHS_RAW_LABELS` are background.
MMWHS_LABEL_MAP = {205: 1, 420: 2, 421: 2, 500: 3, 820: 4}
#: Class of :data:`MMWHS_CLASSES` -> the raw value written for it.
MMWHS_WRITE = {1: 205, 2: 420, 3: 500, 4: 820}


def natural_key(path: str | Path) -> list:
    """Sort key on the whole path that orders ``IMG-0002-00010`` after ``IMG-0002-00009`` (digit runs as numbers)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]
