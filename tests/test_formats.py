"""The format readers: NIfTI reorientation, DICOM series order, TFRecord framing and Example parsing."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from realdata_files import (
    permuted_affine,
    save_nifti,
    scanner_affine,
    write_dicom,
)

from benchmark import formats
from benchmark.errors import DataError
from benchmark.preprocess import body_crop, otsu_threshold


# -- NIfTI --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("affine, expected, spacing", [
    (scanner_affine((0.8, 0.7, 1.5)), lambda a: a[::-1, ::-1, :], (0.8, 0.7, 1.5)),
    (permuted_affine((1.2, 0.9, 2.0)), lambda a: np.transpose(a, (2, 0, 1))[::-1, ::-1, ::-1], (2.0, 1.2, 0.9)),
])
def test_nifti_is_reoriented_to_ras_with_spacing_permuted(tmp_path, affine, expected, spacing):
    data = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    save_nifti(tmp_path / "x.nii.gz", data, affine)
    nii = formats.read_nifti(tmp_path / "x.nii.gz")
    out, new_affine, got_spacing = formats.to_canonical(nii.data, nii.affine)
    assert np.array_equal(out, expected(data))
    assert got_spacing == pytest.approx(spacing)
    assert formats.orientation_code(new_affine) == "RAS"
    # every voxel keeps its world position: compare the world point of the value 17 before and after
    i_old = np.argwhere(data == 17)[0]
    i_new = np.argwhere(out == 17)[0]
    assert (affine @ [*i_old, 1])[:3] == pytest.approx((new_affine @ [*i_new, 1])[:3])


def test_nifti_faults_name_the_file(tmp_path):
    noise = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    save_nifti(tmp_path / "good.nii.gz", noise, np.eye(4))
    blob = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "junk.nii.gz").write_bytes(b"this is not a nifti file at all" * 20)
    (tmp_path / "plain.nii").write_bytes(gzip.decompress(blob)[:4000])
    with pytest.raises(DataError, match=r"missing\.nii\.gz: the file is missing"):
        formats.read_nifti(tmp_path / "missing.nii.gz")
    with pytest.raises(DataError, match=r"cut\.nii\.gz: the file is truncated"):
        formats.read_nifti(tmp_path / "cut.nii.gz")
    with pytest.raises(DataError, match=r"junk\.nii\.gz: not a gzip file \(unreadable NIfTI file\)"):
        formats.read_nifti(tmp_path / "junk.nii.gz")
    with pytest.raises(DataError, match=r"plain\.nii: the file is truncated \(4000 bytes where the header needs"):
        formats.read_nifti(tmp_path / "plain.nii")
    problems: list[str] = []
    assert formats.read_nifti(tmp_path / "cut.nii.gz", problems=problems) is None and len(problems) == 1


def test_affines_match_within_a_tenth_of_a_voxel():
    a = scanner_affine()
    b = a.copy()
    b[:3, 3] += 0.01
    assert formats.affines_match(a, b, (100, 100, 50))
    b[0, 3] += 0.5
    assert not formats.affines_match(a, b, (100, 100, 50))
    assert not formats.affines_match(a, permuted_affine(), (10, 10, 10))


def test_map_labels_lists_every_offending_value():
    raw = np.array([[[0, 205, 420, 421, 500, 550, 600, 820, 850]]], dtype=np.int16)
    out = formats.map_labels(raw, {205: 1, 420: 2, 421: 2, 500: 3, 820: 4}, (0, 205, 420, 421, 500, 550, 600,
                                                                             820, 850), "lab.nii.gz")
    assert out.tolist() == [[[0, 1, 2, 2, 3, 0, 0, 4, 0]]] and out.dtype == np.uint8
    with pytest.raises(DataError, match=r"lab\.nii\.gz: label values 7, 999 are outside the documented set"):
        formats.map_labels(np.array([0, 7, 205, 999]), {205: 1}, (0, 205), "lab.nii.gz")
    with pytest.raises(DataError, match="non-integer values"):
        formats.map_labels(np.array([0.0, 205.5]), {205: 1}, (0, 205), "lab.nii.gz")


# -- DICOM --------------------------------------------------------------------------------------------------
def test_dicom_series_is_ordered_by_position_along_the_normal_not_by_name(tmp_path):
    # a sagittal series: rows run anterior->posterior (+y), columns run superior->inferior (-z); the normal is -x,
    # so neither the file names (shuffled) nor the z coordinate (constant) gives the order
    iop = (0, 1, 0, 0, 0, -1)
    rng = np.random.default_rng(0)
    n = 5
    names = [3, 0, 4, 1, 2]
    planes = [rng.integers(0, 1000, (6, 7)).astype(np.uint16) for _ in range(n)]
    for k in range(n):
        write_dicom(tmp_path / f"s{names[k]}.dcm", planes[k], (30.0 - 4.0 * k, -20.0, 50.0), orientation=iop,
                    spacing=(0.5, 0.6))
    paths = sorted(tmp_path.glob("*.dcm"))
    series = formats.read_dicom_series(paths)
    assert [paths[i].name for i in series.order] == [f"s{m}.dcm" for m in names]
    assert series.volume.shape == (7, 6, 5)  # (columns, rows, slices)
    for k in range(n):
        assert np.array_equal(series.volume[:, :, k], planes[k].T)
    # the affine maps voxel (column i, row j, slice k) to the RAS position of that pixel
    lps = np.array([30.0 - 4.0 * 2, -20.0 + 0.6 * 3, 50.0 - 0.5 * 1])  # slice 2, column 3, row 1
    ras = series.affine @ [3, 1, 2, 1]
    assert ras[:3] == pytest.approx([-lps[0], -lps[1], lps[2]])


def test_dicom_faults_name_the_file(tmp_path):
    img = np.zeros((4, 4), np.uint16)
    for k in range(3):
        write_dicom(tmp_path / "a" / f"{k}.dcm", img, (0, 0, 2.0 * k))
    (tmp_path / "a" / "1.dcm").write_bytes(b"not a dicom file")
    with pytest.raises(DataError, match=r"a/1\.dcm: unreadable DICOM file"):
        formats.read_dicom_series(sorted((tmp_path / "a").glob("*.dcm")))
    for k, z in enumerate([0.0, 2.0, 2.0]):
        write_dicom(tmp_path / "b" / f"{k}.dcm", img, (0, 0, z))
    with pytest.raises(DataError, match="duplicate slice"):
        formats.read_dicom_series(sorted((tmp_path / "b").glob("*.dcm")))
    for k, z in enumerate([0.0, 2.0, 4.0, 8.0]):
        write_dicom(tmp_path / "c" / f"{k}.dcm", img, (0, 0, z))
    with pytest.raises(DataError, match=r"c/3\.dcm: the gap before this slice is 4\.000 mm .* 2\.000 mm; a slice is"):
        formats.read_dicom_series(sorted((tmp_path / "c").glob("*.dcm")))


# -- TFRecord -----------------------------------------------------------------------------------------------
def _write_records(path, examples):
    import tfrecord

    writer = tfrecord.TFRecordWriter(str(path))
    for ex in examples:
        writer.write(ex)
    writer.close()


def test_tfrecord_examples_written_by_another_implementation_read_back(tmp_path):
    data = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32)
    examples = [{"data_vol": (data.tobytes(), "byte"), "dsize_dim0": (4, "int"), "neg": ([-3, 2 ** 40], "int"),
                 "f": ([1.5, -2.25], "float")},
                {"data_vol": (b"", "byte"), "dsize_dim0": (0, "int"), "neg": (7, "int"), "f": (0.5, "float")}]
    _write_records(tmp_path / "x.tfrecords", examples)
    records = list(formats.iter_tfrecord(tmp_path / "x.tfrecords"))
    assert len(records) == 2
    first = formats.parse_example(records[0][1])
    assert np.array_equal(np.frombuffer(first["data_vol"][0], "<f4").reshape(4, 5, 3), data)
    assert first["dsize_dim0"] == [4] and first["neg"] == [-3, 2 ** 40] and first["f"] == [1.5, -2.25]
    assert formats.parse_example(formats.read_tfrecord_at(tmp_path / "x.tfrecords", records[1][0]))["neg"] == [7]


def test_tfrecord_corruption_and_truncation_are_caught(tmp_path):
    _write_records(tmp_path / "x.tfrecords", [{"a": (b"0123456789" * 10, "byte")}] * 3)
    blob = bytearray((tmp_path / "x.tfrecords").read_bytes())
    size = len(blob) // 3
    flipped = bytearray(blob)
    flipped[size + 40] ^= 0xFF  # a data byte of record 1
    (tmp_path / "flip.tfrecords").write_bytes(bytes(flipped))
    with pytest.raises(DataError, match=r"flip\.tfrecords: corrupt file: the data of record 1 .* CRC-32C"):
        list(formats.iter_tfrecord(tmp_path / "flip.tfrecords"))
    bad_length = bytearray(blob)
    bad_length[:8] = struct.pack("<Q", 5)
    (tmp_path / "len.tfrecords").write_bytes(bytes(bad_length))
    with pytest.raises(DataError, match=r"the length field of record 0 \(byte 0\) fails its CRC-32C"):
        list(formats.iter_tfrecord(tmp_path / "len.tfrecords"))
    (tmp_path / "cut.tfrecords").write_bytes(bytes(blob[: 2 * size + 30]))
    with pytest.raises(DataError, match=r"cut\.tfrecords: truncated file: record 2 .* declares"):
        list(formats.iter_tfrecord(tmp_path / "cut.tfrecords"))
    with pytest.raises(DataError, match="the file is missing"):
        list(formats.iter_tfrecord(tmp_path / "none.tfrecords"))


def test_masked_crc_matches_the_reference_value():
    # TensorFlow's masked CRC-32C of b"" and of b"\x00" * 8 (length field of an empty record)
    import tfrecord.writer as w

    for blob in (b"", b"\x00" * 8, b"hello world"):
        assert struct.pack("<I", formats.masked_crc32c(blob)) == w.TFRecordWriter.masked_crc(blob)


# -- label-free crop ----------------------------------------------------------------------------------------
def test_body_crop_comes_from_the_image_alone():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 3, (60, 50, 40)).astype(np.float32)
    image[10:50, 5:45, 8:36] += 100  # the body
    assert 0 < otsu_threshold(image) < 100
    box = body_crop(image, (1.0, 1.0, 2.0))
    assert [(b.start, b.stop) for b in box] == [(10, 50), (5, 45), (8, 36)]
    fov = body_crop(image, (1.0, 1.0, 2.0), (20.0, None, 200.0))
    assert [(b.start, b.stop) for b in fov] == [(20, 40), (5, 45), (0, 40)]


def test_a_body_filling_the_field_of_view_is_not_cropped_to_its_brightest_organ():
    """Cardiac CT often has no air around the body: the crop must not shrink to the contrast-filled heart."""
    rng = np.random.default_rng(1)
    image = rng.normal(40, 20, (64, 64, 32)).astype(np.float32)  # soft tissue everywhere
    image[20:40, 25:45, 10:20] += 300                              # bright blood pool
    assert [(b.start, b.stop) for b in body_crop(image, (1.0, 1.0, 1.0))] == [(0, 64), (0, 64), (0, 32)]
