"""``python -m benchmark predict``: a finished trial's model on a new scan, written on the scan's own grid.

The scan (a NIfTI file of the trial's target modality) goes through exactly the preprocessing of the trial's
dataset: reoriented as the adapter reorients its files, cropped, clipped, resized and normalised as the trial's
slice cache was (modality normalisation uses the statistics of the cache's training volumes). The model's slice
scores are mapped back through the inverse of that preprocessing (:class:`benchmark.native.InverseMap`) and the
labels are written with the input's shape and affine, in the dataset's raw label values (e.g. 205/420/500/820 for
MM-WHS), so the file opens over the scan in any viewer and ``python -m benchmark evaluate`` can score it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, UsageError


@dataclass
class Prediction:
    path: Path
    trial_id: str
    label: str
    shape: tuple[int, ...]
    voxels: dict[str, int]


def _write_nifti(labels: np.ndarray, like, path: Path) -> None:
    """Write ``labels`` with the affine and geometry header of NIfTI image ``like``, atomically."""
    import nibabel as nib

    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    header = like.header.copy()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(labels.astype(dtype), like.affine, header=header)
    img.header.set_slope_inter(1, 0)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def predict_scan(out: str | Path, input_path: str | Path, output_path: str | Path, *, method: str | None = None,
                 trial_id: str | None = None, device: str = "cpu", **selection) -> Prediction:
    """Segment ``input_path`` with a finished trial of the run in ``out`` and write ``output_path``."""
    import nibabel as nib

    from .cache import PreprocessSettings, preprocess_volume
    from .native import InverseMap
    from .protocol import parse_direction
    from .store import ResultsStore
    from .trainer import predict_native
    from .visualize import find_trial, load_trial_method

    input_path, output_path = Path(input_path), Path(output_path)
    if not output_path.name.endswith((".nii", ".nii.gz")):
        raise UsageError(f"{output_path}: the output must be a NIfTI file (.nii or .nii.gz).")
    from .formats import read_nifti

    scan = read_nifti(input_path)
    store = ResultsStore(out)
    record = find_trial(store, method, trial_id=trial_id, **selection)
    model, spec, adapter, cache = load_trial_method(store, record, device)
    _, modality = parse_direction(spec.direction, adapter.modalities)
    grid = adapter.input_grid(scan.affine, scan.data.shape)
    image = np.ascontiguousarray(grid.to_canonical(scan.data), dtype=np.float32)
    settings = PreprocessSettings(size=spec.preset_settings["size"]).resolve(adapter)
    pre = preprocess_volume(image, grid.canonical_spacing, adapter.slice_axis, settings)
    stats = cache.index["stats"][modality]
    slices = ((pre["image"] - stats["mean"]) / stats["std"]).astype(np.float32)
    inverse = InverseMap(shape=image.shape, axis=adapter.slice_axis, crop=tuple(map(tuple, pre["crop"])),
                         size=settings.size)
    labels = predict_native(model, slices, inverse, model_device(model), spec.preset_settings["eval_batch_size"])
    coding = adapter.label_coding(modality)
    if coding is not None:
        lut = np.zeros(max(adapter.classes.values()) + 1, dtype=np.uint16)
        for cls, raw in coding.from_class.items():
            lut[cls] = raw
        written = lut[labels]
    else:
        written = labels
    _write_nifti(np.ascontiguousarray(grid.to_file(written)), nib.load(str(input_path)), output_path)
    voxels = {name: int(np.count_nonzero(labels == c)) for name, c in adapter.classes.items()}
    return Prediction(output_path, spec.trial_id, spec.label, tuple(scan.data.shape), voxels)


def model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - every method has parameters
        raise DataError("The trial's model has no parameters.") from None
