"""Readers for the public file formats of the real datasets: NIfTI, DICOM series, TFRecord, npz.

Every reader turns a failure into a :class:`~benchmark.errors.DataError` whose message starts with the file and
says what is wrong with it (missing, unreadable, truncated, inconsistent), never a bare traceback. Readers that
take a ``problems`` list append each problem to it and go on where they can, so ``validate`` reports every fault
of a dataset at once; without one they raise at the first.

* NIfTI (nibabel): :func:`read_nifti` reads the array and affine as stored; :func:`to_canonical` reorients an
  array to the closest canonical (RAS+) orientation from its affine and returns the spacing per new axis.
* DICOM (pydicom): :func:`read_dicom_series` orders a series by ``ImagePositionPatient`` projected on the slice
  normal (the cross product of the two ``ImageOrientationPatient`` directions), never by file name, and builds
  its RAS+ affine.
* TFRecord (no TensorFlow): :func:`iter_tfrecord` checks each record's framing (uint64 length, masked CRC-32C
  of the length, data, masked CRC-32C of the data) and :func:`parse_example` decodes a ``tf.train.Example``.

Heavy libraries (pydicom, google-crc32c) load on first use, so dataset discovery stays cheap.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .native import Grid


def _fail(message: str, problems: list[str] | None) -> None:
    if problems is None:
        raise DataError(message)
    problems.append(message)


def reason(exc: BaseException) -> str:
    """An exception's text for a problem sentence (its type's name when it has none), cut at 300 characters."""
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


# -- NIfTI -------------------------------------------------------------------------------------------------
@dataclass
class Nifti:
    """An array as stored in a NIfTI file, with its voxel-to-world (RAS+ mm) affine."""

    path: Path
    data: np.ndarray
    affine: np.ndarray


def read_nifti(path: str | Path, *, dtype=np.float32, problems: list[str] | None = None) -> Nifti | None:
    """Read a ``.nii``/``.nii.gz`` file completely (a truncated gzip or data block is caught here)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        _fail(f"{path}: the file is missing.", problems)
        return None
    try:
        img = nib.load(str(path))
        if not path.name.endswith(".gz"):
            header = img.header
            voxels = int(np.prod(header.get_data_shape()))
            need = int(header.get_data_offset()) + voxels * header.get_data_dtype().itemsize
            if path.stat().st_size < need:
                raise EOFError(f"{path.stat().st_size} bytes where the header needs {need}")
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except EOFError as exc:
        _fail(f"{path}: the file is truncated ({reason(exc)}).", problems)
        return None
    except Exception as exc:  # noqa: BLE001 - nibabel, gzip and zlib raise many types for damaged files
        _fail(f"{path}: {_gzip_fault(path) or 'unreadable NIfTI file'} ({type(exc).__name__}: {reason(exc)}).",
              problems)
        return None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        _fail(f"{path}: expected a 3D volume, the file holds an array of shape {data.shape}.", problems)
        return None
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        _fail(f"{path}: the header's voxel-to-world affine is degenerate or not finite.", problems)
        return None
    return Nifti(path=path, data=np.asarray(data, dtype=dtype), affine=affine)


def _gzip_fault(path: Path) -> str | None:
    """Why a ``.gz`` file is damaged at the gzip level ("the file is truncated", "not a gzip file"), else None."""
    import gzip
    import zlib

    if not path.name.endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as g:
            while g.read(1 << 24):
                pass
    except EOFError:
        return "the file is truncated"
    except gzip.BadGzipFile:
        return "not a gzip file (unreadable NIfTI file)"
    except (OSError, zlib.error):
        return "corrupt gzip data (unreadable NIfTI file)"
    return None


def affines_match(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> bool:
    """True when two affines place every corner of a grid of ``shape`` within a tenth of a voxel of each other."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)])
    shift = np.abs(corners @ (a - b).T)[:, :3].max()
    voxel = float(np.sqrt((a[:3, :3] ** 2).sum(axis=0)).min())
    return bool(shift <= 0.1 * voxel)


def canonical_orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel's orientation transform from the array's axes to the closest RAS+ axes."""
    import nibabel as nib

    return nib.orientations.io_orientation(affine)


def to_canonical(array: np.ndarray, affine: np.ndarray,
                 ornt: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Reorient ``array`` to the closest canonical RAS+ orientation (axis permutation and flips, no resampling).

    Returns the reoriented array, its affine and its spacing in mm per (new) axis. Pass the ``ornt`` computed for
    the image to reorient its label with exactly the same transform.
    """
    import nibabel as nib

    if ornt is None:
        ornt = canonical_orientation(affine)
    out = nib.orientations.apply_orientation(array, ornt)  # a view: axes permuted and flipped, never copied
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)
    spacing = tuple(float(s) for s in np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0)))
    return out, new_affine, spacing  # type: ignore[return-value]


def orientation_code(affine: np.ndarray) -> str:
    """The axis codes of an affine, e.g. ``"LPS"`` or ``"RAS"``."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(affine))


# -- labels --------------------------------------------------------------------------------------------------
def map_labels(raw: np.ndarray, mapping: dict[int, int], allowed: Iterable[int], source: str,
               problems: list[str] | None = None, *, described: str | None = None) -> np.ndarray | None:
    """Map raw label values to class indices (unlisted documented values become background).

    Values that are not integers or not in ``allowed`` are problems, listed by value.
    """
    allowed = {int(v) for v in allowed}
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)):
            _fail(f"{source}: the label volume has non-finite values (NaN or inf).", problems)
            return None
        frac = raw != np.round(raw)
        if frac.any():
            odd = np.unique(raw[frac])[:10].tolist()
            _fail(f"{source}: the label volume has non-integer values {odd}; labels must be whole numbers.", problems)
            return None
    values = raw if raw.dtype.kind in "iu" and raw.dtype.itemsize <= 4 else raw.astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if hi - lo < 1 << 24:
        # values lie in [lo, hi] with hi - lo < 2**24, so the difference fits int32 (wrap-around cancels out)
        shifted = np.subtract(values, lo, dtype=np.int32, casting="unsafe")
        seen = np.zeros(hi - lo + 1, dtype=bool)
        seen[shifted.ravel(order="K")] = True  # much faster than np.unique or np.bincount on 10^8 voxels
        present = (np.flatnonzero(seen) + lo).tolist()
    else:
        present = np.unique(values).tolist()
    bad = sorted(set(present) - allowed)
    if bad:
        shown = ", ".join(str(v) for v in bad[:20]) + (" ..." if len(bad) > 20 else "")
        _fail(f"{source}: label values {shown} are outside the documented set {described or sorted(allowed)}.",
              problems)
        return None
    lut = np.zeros(hi - lo + 1, dtype=np.uint8) if hi - lo < 1 << 24 else None
    if lut is not None:
        for value, cls in mapping.items():
            if lo <= value <= hi:
                lut[value - lo] = cls
        return lut[shifted]
    out = np.zeros(values.shape, dtype=np.uint8)
    for value, cls in mapping.items():
        out[values == value] = cls
    return out


# -- DICOM ---------------------------------------------------------------------------------------------------
@dataclass
class DicomSeries:
    """A DICOM series as a volume indexed (column, row, slice), its RAS+ affine and the files' slice order."""

    volume: np.ndarray
    affine: np.ndarray
    order: list[int]  # order[k] = index into the given paths of the file at slice k


def _dicom_slice(path: Path) -> tuple | str:
    """One file's (path, ImagePositionPatient, ImageOrientationPatient, PixelSpacing, rescaled pixels), or why
    the file cannot be one slice of a series."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except FileNotFoundError:
        return f"{path}: the file is missing."
    except (InvalidDicomError, Exception) as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        return f"{path}: unreadable DICOM file ({type(exc).__name__}: {reason(exc)})."
    try:
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        spacing = [float(v) for v in ds.PixelSpacing]
    except (AttributeError, TypeError, ValueError) as exc:
        return (f"{path}: the DICOM header lacks a valid ImagePositionPatient, ImageOrientationPatient or "
                f"PixelSpacing ({reason(exc)}); the slice cannot be placed in the volume.")
    try:
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as exc:  # noqa: BLE001 - compressed or malformed pixel data
        return f"{path}: the DICOM pixel data cannot be decoded ({type(exc).__name__}: {reason(exc)})."
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return path, ipp, iop, spacing, pixels * slope + intercept


def read_dicom_series(paths: list[Path], *, problems: list[str] | None = None) -> DicomSeries | None:
    """Read single-frame DICOM files of one series, ordered by position along the slice normal."""
    if not paths:
        _fail("no DICOM files were given.", problems)
        return None
    read = [_dicom_slice(path) for path in paths]
    local = [r for r in read if isinstance(r, str)]
    slices = [r for r in read if not isinstance(r, str)]
    if local or not slices:
        for message in local or ["no readable DICOM slice."]:
            _fail(message, problems)
        return None
    path0, _, iop0, spacing0, pixels0 = slices[0]
    for path, _, iop, spacing, pixels in slices[1:]:
        if not np.allclose(iop, iop0, atol=1e-4) or not np.allclose(spacing, spacing0, rtol=1e-4):
            _fail(f"{path}: its ImageOrientationPatient or PixelSpacing differs from {path0.name}'s; the files are "
                  f"not one series.", problems)
            return None
        if pixels.shape != pixels0.shape:
            _fail(f"{path}: its image size {pixels.shape} differs from {path0.name}'s {pixels0.shape}.", problems)
            return None
    row_dir, col_dir = iop0[:3], iop0[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([float(ipp @ normal) for _, ipp, _, _, _ in slices])
    order = np.argsort(positions, kind="stable").tolist()
    positions = positions[order]
    if len(slices) > 1:
        gaps = np.diff(positions)
        step = float(np.median(gaps))
        dup = np.flatnonzero(gaps < 1e-3 * max(step, 1e-3))
        if dup.size:
            a, b = slices[order[dup[0]]][0], slices[order[dup[0] + 1]][0]
            _fail(f"{b}: it lies at the same position as {a.name} ({positions[dup[0]]:.3f} mm along the slice "
                  f"normal); duplicate slice.", problems)
            return None
        uneven = np.flatnonzero(np.abs(gaps - step) > max(0.1 * step, 0.05))
        if uneven.size:
            after = slices[order[uneven[0] + 1]][0]
            _fail(f"{after}: the gap before this slice is {gaps[uneven[0]]:.3f} mm where the series' spacing is "
                  f"{step:.3f} mm; a slice is missing or the files mix series.", problems)
            return None
        step_vec = (slices[order[-1]][1] - slices[order[0]][1]) / (len(slices) - 1)
    else:
        step_vec = normal * 1.0
    # pixel_array is (rows, columns); our volume axes are (column i, row j, slice k)
    volume = np.stack([slices[k][4].T for k in order], axis=-1)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing0[1]   # moving along a row = increasing column index, step = column spacing
    lps[:3, 1] = col_dir * spacing0[0]   # moving down a column = increasing row index, step = row spacing
    lps[:3, 2] = step_vec
    lps[:3, 3] = slices[order[0]][1]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM patient space is LPS+, NIfTI world is RAS+
    return DicomSeries(volume=volume, affine=affine, order=order)


# -- TFRecord ------------------------------------------------------------------------------------------------
_CRC_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C: rotate right by 15 bits, add a constant (mod 2**32)."""
    import google_crc32c

    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def _read_record(f, path: Path, index: int, offset: int) -> bytes | None:
    header = f.read(12)
    if not header:
        return None
    where = f"record {index} (byte {offset})"
    if len(header) < 12:
        raise DataError(f"{path}: truncated file: it ends inside the header of {where}.")
    length, length_crc = struct.unpack("<QI", header)
    if masked_crc32c(header[:8]) != length_crc:
        raise DataError(f"{path}: corrupt file: the length field of {where} fails its CRC-32C check.")
    data = f.read(length)
    footer = f.read(4)
    if len(data) < length or len(footer) < 4:
        raise DataError(f"{path}: truncated file: {where} declares {length} bytes but the file ends first.")
    if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
        raise DataError(f"{path}: corrupt file: the data of {where} fails its CRC-32C check.")
    return data


def iter_tfrecord(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(byte offset, record bytes)`` of every record, checking both CRCs of each."""
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with block below
    except FileNotFoundError:
        raise DataError(f"{path}: the file is missing.") from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable file ({reason(exc)}).") from None
    with f:
        index, offset = 0, 0
        while True:
            data = _read_record(f, path, index, offset)
            if data is None:
                return
            yield offset, data
            offset += 16 + len(data)
            index += 1


def read_tfrecord_at(path: str | Path, offset: int) -> bytes:
    """The record starting at byte ``offset`` (as yielded by :func:`iter_tfrecord`), CRC-checked."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = _read_record(f, path, -1, offset)
    except FileNotFoundError:
        raise DataError(f"{path}: the file is missing.") from None
    if data is None:
        raise DataError(f"{path}: truncated file: no record at byte {offset}.")
    return data


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("a varint runs past the end of the message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("a varint is longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """Protocol-buffer wire format: (field number, wire type, value) for each field of a message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("a length-delimited field runs past the end of the message")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("a fixed-size field runs past the end of the message")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: memoryview) -> list:
    for kind, wire, lst in _fields(buf):
        if wire != 2:
            continue
        values: list = []
        for field, w, v in _fields(lst):  # type: ignore[arg-type]
            if field != 1:
                continue
            if kind == 1:      # BytesList: repeated bytes
                values.append(bytes(v))  # type: ignore[arg-type]
            elif kind == 2:    # FloatList: packed (wire 2) or not (wire 5)
                values.extend(np.frombuffer(bytes(v), "<f4").tolist())  # type: ignore[arg-type]
            elif kind == 3:    # Int64List: packed varints (wire 2) or single varints (wire 0)
                if w == 0:
                    values.append(_signed64(v))  # type: ignore[arg-type]
                else:
                    p = 0
                    while p < len(v):  # type: ignore[arg-type]
                        x, p = _varint(v, p)  # type: ignore[arg-type]
                        values.append(_signed64(x))
        return values
    return []


def parse_example(data: bytes) -> dict[str, list]:
    """Decode a serialized ``tf.train.Example``: feature name -> list of values (bytes, floats or ints)."""
    buf = memoryview(data)
    out: dict[str, list] = {}
    for field, wire, features in _fields(buf):
        if field != 1 or wire != 2:
            continue
        for f2, w2, entry in _fields(features):  # type: ignore[arg-type]
            if f2 != 1 or w2 != 2:
                continue
            key, value = None, memoryview(b"")
            for f3, w3, v in _fields(entry):  # type: ignore[arg-type]
                if f3 == 1 and w3 == 2:
                    key = bytes(v).decode("utf-8")  # type: ignore[arg-type]
                elif f3 == 2 and w3 == 2:
                    value = v  # type: ignore[assignment]
            if key is not None:
                out[key] = _parse_feature(value)
    return out


def read_npz(path: str | Path, keys: tuple[str, ...], *, problems: list[str] | None = None) -> dict | None:
    """Arrays ``keys`` of an ``.npz`` file, fully read (a truncated zip member is caught here)."""
    path = Path(path)
    if not path.is_file():
        _fail(f"{path}: the file is missing.", problems)
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                _fail(f"{path}: the archive has no array {missing[0]!r} (it holds {', '.join(z.files) or 'none'}).",
                      problems)
                return None
            return {k: np.asarray(z[k]) for k in keys}
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib and numpy raise many types
        _fail(f"{path}: unreadable or truncated .npz file ({type(exc).__name__}: {reason(exc)}).", problems)
        return None


def read_nifti_pair(image_path: Path, label_path: Path, *, mapping: dict[int, int], allowed: Iterable[int],
                    problems: list[str]) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], Grid] | None:
    """An image and its label volume, checked against each other, labels mapped, reoriented to RAS+, with the
    stored grid (the image's affine and shape and the reorientation; see :class:`benchmark.native.Grid`).

    Problems (missing or unreadable file, shape or affine mismatch, undocumented label values) are appended to
    ``problems``, all of them; returns None when any was found.
    """
    before = len(problems)
    image = read_nifti(image_path, problems=problems)
    label = read_nifti(label_path, dtype=None, problems=problems)
    if image is None or label is None:
        return None
    if image.data.shape != label.data.shape:
        problems.append(f"{label_path}: label shape {label.data.shape} differs from the image's {image.data.shape} "
                        f"({image_path.name}).")
        return None
    if not affines_match(image.affine, label.affine, image.data.shape):
        problems.append(f"{label_path}: its voxel-to-world affine differs from the image's ({image_path.name}): "
                        f"label {orientation_code(label.affine)} origin {np.round(label.affine[:3, 3], 2).tolist()}, "
                        f"image {orientation_code(image.affine)} origin {np.round(image.affine[:3, 3], 2).tolist()}.")
        return None
    mapped = map_labels(label.data, mapping, allowed, str(label_path), problems)
    if mapped is None or len(problems) > before:
        return None
    ornt = canonical_orientation(image.affine)
    data, _, spacing = to_canonical(image.data, image.affine, ornt)
    mapped, _, _ = to_canonical(mapped, image.affine, ornt)
    return data, mapped, spacing, Grid.of(image.affine, image.data.shape, ornt)
