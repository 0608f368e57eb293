"""Writers of tiny files in the real datasets' exact formats, for the adapter, validate and end-to-end tests.

Written with the format's own libraries (nibabel, pydicom, Pillow, numpy's npz, the ``tfrecord`` package's
writer), independently of the suite's readers, so a misunderstanding shared by reader and writer cannot pass.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

MMWHS_RAW = (205, 420, 500, 550, 600, 820, 850)
MMWHS_TO_CLASS = {205: 1, 420: 2, 421: 2, 500: 3, 820: 4}


def phantom(shape, rng, values, *, body=100.0, noise=5.0):
    """A bright box-shaped body in dark noise, with blocks of label ``values`` inside; (image, raw label)."""
    image = rng.normal(0, noise, shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.int16)
    inner = tuple(slice(1, n - 1) for n in shape)
    image[inner] += body
    cells = [(a, b, c) for a in range(2, shape[0] - 3, 3) for b in range(2, shape[1] - 3, 3)
             for c in range(2, shape[2] - 3, 3)]
    assert len(cells) >= len(values), "volume too small for its labels"
    for i, v in enumerate(values):
        corner = cells[i * (len(cells) // len(values))]
        block = tuple(slice(c, c + 2 + (i % 2 and k == 0)) for k, c in enumerate(corner))
        label[block] = v
        image[block] += 20 * (i + 1)
    return image, label


def scanner_affine(spacing=(0.8, 0.7, 1.5), origin=(90.0, 120.0, -60.0)):
    """An LPS-stored axial volume (the usual DICOM-converted layout): array axes run R->L, A->P, I->S."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    return affine


def permuted_affine(spacing=(1.2, 0.9, 2.0), origin=(-40.0, 60.0, 80.0)):
    """A sagittal-like volume: array axis 0 runs A->P, axis 1 S->I, axis 2 L->R."""
    affine = np.zeros((4, 4))
    affine[1, 0] = -spacing[0]   # axis 0 -> posterior
    affine[2, 1] = -spacing[1]   # axis 1 -> inferior
    affine[0, 2] = -spacing[2]   # axis 2 -> left (x decreases)
    affine[:3, 3] = origin
    affine[3, 3] = 1
    return affine


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_mmwhs(root: Path, *, ids=range(1001, 1021), shape=(14, 12, 10), seed=0, modalities=("ct", "mr"),
                affine=None) -> dict:
    """The MM-WHS layout with every subject of the split; returns {(modality, id): (image, raw label, affine)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for modality in modalities:
        for case in ids:
            aff = affine if affine is not None else (scanner_affine() if modality == "ct" else permuted_affine())
            image, label = phantom(shape, rng, MMWHS_RAW)
            folder = root / f"{modality}_train"
            save_nifti(folder / f"{modality}_train_{case}_image.nii.gz", image.astype(np.int16), aff)
            save_nifti(folder / f"{modality}_train_{case}_label.nii.gz", label, aff)
            written[(modality, str(case))] = (image.astype(np.int16).astype(np.float32), label, aff)
    return written


# -- CHAOS / BTCV ------------------------------------------------------------------------------------------
CHAOS_VALUES = {1: 63, 2: 126, 3: 189, 4: 252}


def write_dicom(path: Path, pixels: np.ndarray, position, orientation=(1, 0, 0, 0, 1, 0), spacing=(0.9, 0.8),
                instance: int = 1) -> None:
    """One single-frame MR DICOM file (unsigned 16-bit, MONOCHROME2), written by pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def write_png(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


def write_chaos_patient(mr_dir: Path, patient: str, *, n_slices=6, rows=10, cols=12, seed=0, shuffle=True,
                        step=7.5) -> dict:
    """One CHAOS T2-SPIR series whose file names do NOT follow slice position; returns the truth by position.

    Slices are axial (orientation 1,0,0 / 0,1,0), placed at z = -100 + k * step for k = 0..n-1 (inferior to
    superior). The returned ``pixels`` and ``masks`` are (n, rows, cols) in that position order.
    """
    rng = np.random.default_rng(seed)
    folder = mr_dir / patient / "T2SPIR"
    pixels = rng.integers(0, 40, (n_slices, rows, cols)).astype(np.uint16)
    pixels[:, 1:-1, 1:-1] += 400
    classes = np.zeros((n_slices, rows, cols), dtype=np.uint8)
    for k in range(n_slices):
        for c in range(1, 5):
            r0, c0 = 1 + (c - 1) * 2, 1 + (k + c) % (cols - 3)
            classes[k, r0:r0 + 2, c0:c0 + 2] = c
    pixels = pixels + (classes * 50).astype(np.uint16)
    masks = np.zeros_like(classes)
    for c, v in CHAOS_VALUES.items():
        masks[classes == c] = v
    names = list(range(1, n_slices + 1))
    if shuffle:
        names = [names[i] for i in rng.permutation(n_slices)]
        while names == sorted(names):
            names = [names[i] for i in rng.permutation(n_slices)]
    for k in range(n_slices):
        stem = f"IMG-0002-{names[k]:05d}"
        write_dicom(folder / "DICOM_anon" / f"{stem}.dcm", pixels[k], (-50.0, -40.0, -100.0 + k * step),
                    instance=names[k])
        write_png(folder / "Ground" / f"{stem}.png", masks[k])
    return {"pixels": pixels, "masks": masks, "classes": classes, "names": names}


BTCV_TO_CLASS = {1: 4, 2: 2, 3: 3, 6: 1}


def write_btcv_case(btcv_dir: Path, case: str, *, shape=(16, 14, 12), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image, label = phantom(shape, rng, tuple(range(1, 14)), body=200.0)
    aff = scanner_affine(spacing=(0.75, 0.75, 2.5))
    save_nifti(btcv_dir / "img" / f"img{case}.nii.gz", image.astype(np.int16), aff)
    save_nifti(btcv_dir / "label" / f"label{case}.nii.gz", label.astype(np.uint8), aff)
    return image.astype(np.int16).astype(np.float32), label


def write_chaos_btcv(root: Path, *, mr_ids, ct_ids) -> dict:
    written = {}
    for i, p in enumerate(mr_ids):
        written[("mr", p)] = write_chaos_patient(root / "CHAOS_Train_Sets" / "Train_Sets" / "MR", p, seed=i)
    for i, c in enumerate(ct_ids):
        written[("ct", c)] = write_btcv_case(root / "BTCV" / "RawData" / "Training", c, seed=100 + i)
    return written


# -- the preprocessed 2D release -----------------------------------------------------------------------------
def write_tfrecord_slices(path: Path, volume: np.ndarray, label: np.ndarray, indices) -> None:
    """One record per slice index: the 3 neighbouring slices (edges repeated) and the middle slice's label.

    ``volume`` and ``label`` are (H, W, D) float32 in the training orientation; written with the ``tfrecord``
    package's writer, as the release's files were written by TensorFlow.
    """
    import tfrecord

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = tfrecord.TFRecordWriter(str(path))
    d = volume.shape[2]
    for k in indices:
        stack = np.stack([volume[:, :, max(k - 1, 0)], volume[:, :, k], volume[:, :, min(k + 1, d - 1)]], axis=-1)
        lab = label[:, :, k:k + 1].astype(np.float32)
        writer.write({
            "dsize_dim0": (stack.shape[0], "int"), "dsize_dim1": (stack.shape[1], "int"),
            "dsize_dim2": (stack.shape[2], "int"),
            "lsize_dim0": (lab.shape[0], "int"), "lsize_dim1": (lab.shape[1], "int"),
            "lsize_dim2": (lab.shape[2], "int"),
            "data_vol": (stack.astype(np.float32).tobytes(), "byte"),
            "label_vol": (lab.tobytes(), "byte"),
        })
    writer.close()


def subject_2d(rng, h=16, w=16, d=6):
    """A normalised 2D-release subject: (image, labels 0..4), both (H, W, D) in the training orientation."""
    image = rng.normal(0, 1, (h, w, d)).astype(np.float32)
    label = np.zeros((h, w, d), dtype=np.float32)
    for c in range(1, 5):
        r0 = 2 + (c - 1) * 3
        label[r0:r0 + 2, 3:3 + c + 1, :] = c
    image += label * 0.5
    return image, label


TESTS_2D = {"ct": ["1003", "1008", "1014", "1019"], "mr": ["1007", "1009", "1018", "1019"]}


def write_release(root, *, leak=("1003", "1007"), nifti_for=("1008",), shuffle=True, seed=0):
    """Three training subjects per modality plus the test subjects; ``leak`` test subjects also in training."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    subjects, n = {}, 0
    for m, tests in TESTS_2D.items():
        lines = []
        for sid in ["a", "b", "c", *tests]:
            image, label = subject_2d(rng, d=5 + len(subjects) % 3)
            subjects[(m, sid)] = (image, label)
            if sid not in tests or sid in leak:
                for k in range(image.shape[2]):
                    path = root / f"{m}_train_tfs" / f"{m}_train_slice{n}.tfrecords"
                    n += 1
                    write_tfrecord_slices(path, image, label, [k])
                    lines.append(f"./data/{m}_train_tfs/{path.name}")
            if sid in tests:
                stored_image, stored_label = image[::-1, ::-1], label[::-1, ::-1]  # the release's test flip
                if sid in nifti_for:
                    folder = root / f"test_{m}_image_n_labels"
                    folder.mkdir(exist_ok=True)
                    aff = np.diag([1.2, 1.2, 1.5, 1])
                    nib.save(nib.Nifti1Image(stored_image, aff), str(folder / f"image_{m}_{sid}.nii.gz"))
                    nib.save(nib.Nifti1Image(stored_label, aff), str(folder / f"gth_{m}_{sid}.nii.gz"))
                else:
                    (root / f"test_{m}").mkdir(exist_ok=True)
                    np.savez(root / f"test_{m}" / f"image_{m}_{sid}.npz", stored_image, stored_label)
        if shuffle:
            lines = [lines[i] for i in np.random.default_rng(1).permutation(len(lines))]
        (root / f"{m}_train_list").write_text("\n".join(lines) + "\n")
    return subjects


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- nnU-Net v2 raw format, and AMOS in it -----------------------------------------------------------------------
def write_dataset_json(root: Path, *, channels: dict, labels: dict, num_training: int, file_ending=".nii.gz",
                       **extra) -> Path:
    """nnU-Net v2's ``dataset.json`` with the keys its ``generate_dataset_json`` writes."""
    import json

    data = {"channel_names": {str(k): v for k, v in channels.items()}, "labels": dict(labels),
            "numTraining": num_training, "file_ending": file_ending,
            "licence": "Whoever converted this dataset was lazy and didn't look it up!", "converted_by": "tests",
            **extra}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(data, indent=4))
    return root / "dataset.json"


def write_nnunet_case(root: Path, case: str, *, channel: int, values, affine, shape=(14, 12, 10), seed=0,
                      ending=".nii.gz") -> tuple[np.ndarray, np.ndarray]:
    """``imagesTr/<case>_<channel:04d>`` (int16) and ``labelsTr/<case>`` (uint8); returns (image, raw label)."""
    rng = np.random.default_rng(seed)
    image, label = phantom(shape, rng, values, body=150.0)
    save_nifti(root / "imagesTr" / f"{case}_{channel:04d}{ending}", image.astype(np.int16), affine)
    save_nifti(root / "labelsTr" / f"{case}{ending}", label.astype(np.uint8), affine)
    return image.astype(np.int16).astype(np.float32), label.astype(np.uint8)


def write_nnunet(root: Path, cases: dict[str, int], *, channels: dict, labels: dict, values, affines: dict,
                 config: dict | None = None, shape=(14, 12, 10)) -> dict:
    """An nnU-Net raw folder: ``cases`` maps each case ID to the channel its image is written as, ``affines`` each
    channel to its affine; ``config`` is written as ``fsuda.json``. Returns {case: (image, raw label, affine)}."""
    import json

    write_dataset_json(root, channels=channels, labels=labels, num_training=len(cases))
    written = {}
    for i, (case, channel) in enumerate(cases.items()):
        image, label = write_nnunet_case(root, case, channel=channel, values=values, affine=affines[channel],
                                         shape=shape, seed=i)
        written[case] = (image, label, affines[channel])
    if config is not None:
        (root / "fsuda.json").write_text(json.dumps(config, indent=2))
    return written


#: AMOS's labels as nnU-Net's Dataset219 conversion writes them (AMOS's value -> name inverted, names as released).
AMOS_LABELS = {"background": 0, "spleen": 1, "right kidney": 2, "left kidney": 3, "gall bladder": 4, "esophagus": 5,
               "liver": 6, "stomach": 7, "arota": 8, "postcava": 9, "pancreas": 10, "right adrenal gland": 11,
               "left adrenal gland": 12, "duodenum": 13, "bladder": 14, "prostate/uterus": 15}


def write_amos(root: Path, *, ct_ids, mr_ids, shape=(16, 14, 12)) -> dict:
    """AMOS in nnU-Net's ``Dataset219_AMOS2022_postChallenge_task2`` layout: ``imagesTr/amos_0001_0000.nii.gz``,
    ``labelsTr/amos_0001.nii.gz``, one channel. CT volumes hold all 15 organs, MR volumes organs 1-13.
    Returns {(modality, case ID): (image, raw label, affine)}."""
    ct_affine = scanner_affine(spacing=(0.75, 0.75, 2.5))
    mr_affine = scanner_affine(spacing=(1.2, 1.1, 4.0), origin=(160.0, 150.0, -90.0))
    write_dataset_json(root, channels={0: "either_CT_or_MR"}, labels=AMOS_LABELS,
                       num_training=len(ct_ids) + len(mr_ids), name="AMOS2022_postChallenge_task2",
                       reference="https://amos22.grand-challenge.org/", release="https://zenodo.org/record/7262581",
                       overwrite_image_reader_writer="NibabelIOWithReorient",
                       description="This is the dataset as released AFTER the challenge event.")
    written = {}
    for modality, ids, values, affine in (("ct", ct_ids, tuple(range(1, 16)), ct_affine),
                                          ("mr", mr_ids, tuple(range(1, 14)), mr_affine)):
        for number in ids:
            case = f"amos_{number:04d}"
            image, label = write_nnunet_case(root, case, channel=0, values=values, affine=affine, shape=shape,
                                             seed=number)
            written[(modality, case)] = (image, label, affine)
    return written
