"""``mmwhs-2d``: the preprocessed MM-WHS release of PnP-AdaNet and SIFA (TFRecord slices, npz/NIfTI test volumes)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections import defaultdict
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchmark.dataset import CaseArrays, FileDatasetAdapter
from benchmark.errors import DataError
from benchmark.native import Grid
from benchmark.registry import register_dataset

from ._shared import MMWHS_CLASSES, MMWHS_LABEL_MAP, MMWHS_RAW_LABELS, natural_key
from ._slice_chains import chain_slices, digest, match_test_slices, subject_chains, thumbnail

FEATURES = ("data_vol", "label_vol", "dsize_dim0", "dsize_dim1", "dsize_dim2", "lsize_dim0", "lsize_dim1",
            "lsize_dim2")
_LIST = re.compile(r"^(?:(?P<m1>ct|mr)_(?:train|val)_list(?:\.txt)?|(?:training|validation|train|val)_(?P<m2>ct|mr)"
                   r"(?:_list)?\.txt)$", re.IGNORECASE)
_TEST_NIFTI = re.compile(r"^image_(ct|mr)_(\d{4})\.nii(\.gz)?$", re.IGNORECASE)
_TEST_NPZ = re.compile(r"(ct|mr)\D{0,16}?(\d{4})\D*\.npz$", re.IGNORECASE)

_INVENTORY_VERSION = "1"
#: The in-plane flip between the release's stored test volumes and its training slices, as a nibabel orientation.
_TEST_FLIP = ((0, -1), (1, -1), (2, 1))


@register_dataset("mmwhs-2d")
class MMWHS2D(FileDatasetAdapter):
    """The preprocessed MM-WHS 2D release most cardiac UDA papers use (PnP-AdaNet, SIFA); MYO, LAC, LVC, AA.

    Data: MM-WHS 2017 (Zhuang & Shen, MedIA 2016; Zhuang et al., MedIA 2019) as preprocessed and released by
    Dou et al., "PnP-AdaNet: plug-and-play adversarial domain adaptation network at unpaired cross-modality cardiac
    segmentation", IEEE Access 2019 (arXiv 2018), and used by Chen et al., "Synergistic image and feature adaptation"
    (SIFA), AAAI 2019 / IEEE TMI 2020: 256x256 coronal slices cropped around the heart, normalised per volume.

    Files. Training slices are ``tf.train.Example`` records in TFRecord files (read here without TensorFlow, CRCs
    checked): ``data_vol`` float32 bytes of 256x256x3 (three neighbouring slices; the middle one is the slice),
    ``label_vol`` float32 bytes of 256x256x1 (or x3, middle used) with class indices 0..4 in the order background,
    MYO, LAC, LVC, AA, and their sizes in ``dsize_dim0..2`` / ``lsize_dim0..2``. The files are named by text files
    of paths (``ct_train_list``, ``mr_val_list``, ``training_ct.txt``, ...; absolute, relative to the list, to ROOT,
    or found by file name under ROOT); with no list, every ``ct_*.tfrecords`` / ``mr_*.tfrecords`` under ROOT is
    used in natural name order. Test volumes are ``.npz`` files (``arr_0`` image HxWxD, ``arr_1`` labels HxWxD)
    with the modality and the subject number in their name, or NIfTI pairs ``image_ct_1003.nii.gz`` with
    ``gth_ct_1003.nii.gz`` (``test_ct_image_n_labels/``, likewise for MR). Test arrays are stored flipped on their
    first two axes relative to the training slices (SIFA's evaluation flips them back); this adapter flips them,
    so training and test slices share one orientation. The release has no usable geometry: test NIfTI volumes keep
    their header's voxel size as spacing (not reoriented, since the training slices have no header to agree
    with); npz volumes and training slices get 1 mm spacing, so their distances are in voxels, as in the papers.

    Subjects. The training records carry no subject IDs. Neighbouring slices of one volume share two of their
    three channels exactly, so the adapter chains records whose channels overlap into pseudo-volumes
    (``chain000``, ``chain001``, ... in order of first appearance); few-shot draws pick whole chains.

    Known leak: the release's training files contain the test subjects' slices (every MR subject was used for
    training and validation; see cchen-cc/SIFA issues #44 and #10). The protocol forbids a test volume in any
    training input, so before anything trains the adapter compares every training slice with every slice of the
    test volumes (exact equality, or a 32x32 thumbnail correlation of at least 0.98 after the documented flip);
    a chain whose slices mostly match one test subject is removed whole, and any other matching slice is removed
    too. ``validate`` reports what was removed. A copy of a test subject that the release resampled differently
    cannot be found this way: for leak-free claims use the ``mmwhs`` adapter on the challenge's NIfTI files.

    Split (``mmwhs_2d.split.json``): test CT 1003, 1008, 1014, 1019 and MR 1007, 1009, 1018, 1019 (the release's
    test volumes; cchen-cc/SIFA issue #6); training = every chain that survives the leak check. Preprocessing is
    the release's own (no crop, no clipping, values as released).
    """

    version = "1"
    modalities = ("mr", "ct")
    classes: ClassVar[dict[str, int]] = dict(MMWHS_CLASSES)
    slice_axis = 2
    split_file = "mmwhs_2d.split.json"
    descriptions_file = "mmwhs.classes.json"  # the same structures as MM-WHS
    citation = ("Dou et al., PnP-AdaNet, IEEE Access 7, 2019; Chen et al., SIFA, AAAI 2019 and IEEE TMI 39(7), "
                "2020; data: Zhuang et al., MedIA 58, 2019.")
    licence = "MM-WHS 2017 data terms (research use; cite the papers); the release is distributed by its authors."
    homepage = "https://github.com/cchen-cc/SIFA"
    layout = ("ROOT/ct_train_list, ROOT/mr_train_list (text files naming the .tfrecords, e.g. "
              "ct_train_tfs/ct_train_slice0.tfrecords), ROOT/test_ct_image_n_labels/image_ct_1003.nii.gz + "
              "gth_ct_1003.nii.gz (or ROOT/**/ct_1003.npz), likewise for MR")
    preprocessing: ClassVar[dict[str, Any]] = {"clip_low": 0.0, "clip_high": 100.0, "normalise": "none"}
    subject_kind = "test subject"  # the training subjects are chains of records, never files of their own

    # -- finding files -----------------------------------------------------------------------------------------
    def _list_files(self, modality: str) -> list[Path]:
        folders = [self.root, self.root / "datalist", self.root / "data" / "datalist"]
        found = []
        for folder in folders:
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                m = _LIST.match(path.name)
                if m and path.is_file() and (m.group("m1") or m.group("m2")).lower() == modality:
                    found.append(path)
        return sorted(found, key=lambda p: ("val" in p.name.lower(), natural_key(p)))

    @cached_property
    def _tfrecords_by_name(self) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = defaultdict(list)
        for path in sorted(self.root.rglob("*.tfrecords")) if self.root.is_dir() else []:
            out[path.name].append(path)
        return out

    def _training_files(self, modality: str, problems: list[str]) -> list[Path]:
        lists = self._list_files(modality)
        if not lists:
            return sorted((p for ps in self._tfrecords_by_name.values() for p in ps
                           if p.name.lower().startswith(f"{modality}_")), key=natural_key)
        files = []
        for lst in lists:
            try:
                lines = lst.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{lst}: unreadable list file ({exc}).")
                continue
            for n, line in enumerate(lines, 1):
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                path = self._resolve(entry, lst)
                if path is None:
                    problems.append(f"{lst}:{n}: {entry} does not exist (looked beside the list, in {self.root} and "
                                    f"for a .tfrecords file of that name under it).")
                else:
                    files.append(path)
        return files

    def _resolve(self, entry: str, lst: Path) -> Path | None:
        p = Path(entry)
        candidates = [p] if p.is_absolute() else [lst.parent / p, self.root / p]
        stripped = re.sub(r"^(\./)?(data/)?", "", entry)
        candidates.append(self.root / stripped)
        for c in candidates:
            if c.is_file():
                return c
        same = self._tfrecords_by_name.get(p.name, [])
        return same[0] if len(same) == 1 else None

    @cached_property
    def _test_files(self) -> dict[str, dict[str, tuple]]:
        """modality -> case ID -> ("nifti", image, label) or ("npz", path); NIfTI preferred (it has spacing)."""
        out: dict[str, dict[str, tuple]] = {m: {} for m in self.modalities}
        if not self.root.is_dir():
            return out
        for path in sorted(self.root.rglob("*.npz")):
            m = _TEST_NPZ.search(path.name)
            if m and m.group(1).lower() in out:
                out[m.group(1).lower()].setdefault(m.group(2), ("npz", path))
        for path in sorted(self.root.rglob("image_*.nii*")):
            m = _TEST_NIFTI.match(path.name)
            if m and m.group(1).lower() in out:
                label = path.with_name(path.name.replace("image_", "gth_", 1))
                out[m.group(1).lower()][m.group(2)] = ("nifti", path, label)
        return out

    # -- reading one record or test volume ------------------------------------------------------------------
    @staticmethod
    def _decode(where: str, data: bytes, problems: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """One record's three slices (H, W, 3) and its middle label (H, W); ``where`` names it in problems."""
        from benchmark.formats import parse_example

        try:
            ex = parse_example(data)
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"{where}: not a valid tf.train.Example ({exc}).")
            return None
        missing = [f for f in FEATURES if not ex.get(f)]
        if missing:
            problems.append(f"{where}: the record lacks the features {missing}.")
            return None
        dsize = [int(ex[f"dsize_dim{i}"][0]) for i in range(3)]
        lsize = [int(ex[f"lsize_dim{i}"][0]) for i in range(3)]
        raw, raw_label = ex["data_vol"][0], ex["label_vol"][0]
        if not isinstance(raw, bytes) or len(raw) != 4 * int(np.prod(dsize)) or min(dsize) < 1:
            problems.append(f"{where}: data_vol holds {len(raw) if isinstance(raw, bytes) else '?'} bytes; "
                            f"dsize {dsize} of float32 needs {4 * int(np.prod(dsize))}.")
            return None
        if not isinstance(raw_label, bytes) or len(raw_label) != 4 * int(np.prod(lsize)) or min(lsize) < 1:
            problems.append(f"{where}: label_vol holds {len(raw_label) if isinstance(raw_label, bytes) else '?'} "
                            f"bytes; lsize {lsize} of float32 needs {4 * int(np.prod(lsize))}.")
            return None
        image = np.frombuffer(raw, "<f4").reshape(dsize)
        label = np.frombuffer(raw_label, "<f4").reshape(lsize)
        if dsize[2] != 3 or lsize[:2] != dsize[:2]:
            problems.append(f"{where}: expected data_vol HxWx3 and label_vol HxWx1 (or x3) of the same HxW; got "
                            f"dsize {dsize}, lsize {lsize}.")
            return None
        label = label[:, :, lsize[2] // 2]
        if not np.all(np.isfinite(image)):
            problems.append(f"{where}: data_vol has non-finite values (NaN or inf).")
            return None
        values = np.unique(label)
        bad = [float(v) for v in values if not (v == round(v) and 0 <= v <= 4)]
        if bad:
            problems.append(f"{where}: label_vol values {bad[:10]} are not class indices 0..4.")
            return None
        return image, label.astype(np.uint8)

    def _read_test(self, modality: str, case_id: str, problems: list[str]) -> CaseArrays | None:
        from benchmark.formats import affines_match, map_labels, read_nifti, read_npz

        entry = self._test_files[modality].get(case_id)
        if entry is None:
            problems.append(f"{self.root}: no test volume for {modality} subject {case_id} (expected "
                            f"test_{modality}_image_n_labels/image_{modality}_{case_id}.nii.gz with gth_"
                            f"{modality}_{case_id}.nii.gz, or an .npz with '{modality}' and '{case_id}' in its name).")
            return None
        before = len(problems)
        if entry[0] == "npz":
            arrays = read_npz(entry[1], ("arr_0", "arr_1"), problems=problems)
            if arrays is None:
                return None
            image, raw, spacing, source = arrays["arr_0"], arrays["arr_1"], (1.0, 1.0, 1.0), entry[1]
            affine = np.eye(4)
        else:
            img = read_nifti(entry[1], problems=problems)
            lab = read_nifti(entry[2], dtype=None, problems=problems)
            if img is None or lab is None:
                return None
            if img.data.shape == lab.data.shape and not affines_match(img.affine, lab.affine, img.data.shape):
                problems.append(f"{entry[2]}: its voxel-to-world affine differs from the image's ({entry[1].name}).")
                return None
            image, raw, source, affine = img.data, lab.data, entry[1], img.affine
            spacing = tuple(float(s) for s in np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0)))
        if image.ndim != 3 or raw.shape != image.shape:
            problems.append(f"{source}: image shape {image.shape} and label shape {raw.shape} differ (or are not "
                            f"3D).")
            return None
        raw_values = raw[raw != 0]
        if raw_values.size and np.nanmax(raw_values) > 4:  # raw MM-WHS values, not yet class indices
            label = map_labels(raw, MMWHS_LABEL_MAP, MMWHS_RAW_LABELS, str(source), problems)
        else:
            label = map_labels(raw, {c: c for c in range(1, 5)}, range(5), str(source), problems)
        if label is None or len(problems) > before:
            return None
        image = np.ascontiguousarray(np.asarray(image, dtype=np.float32)[::-1, ::-1])
        # the volumes are flipped in plane to the training slices' orientation; the grid records the flip
        grid = Grid.of(affine, image.shape, _TEST_FLIP)
        return CaseArrays(image, np.ascontiguousarray(label[::-1, ::-1]), spacing, source, grid)

    # -- the inventory: chains of training slices, with test-subject slices removed ----------------------------
    def _inventory_key(self) -> str:
        parts: list[Any] = [self.name, self.version, _INVENTORY_VERSION, self.fingerprint(), str(self.root.resolve())]
        for ps in self._tfrecords_by_name.values():
            for p in ps:
                st = p.stat()
                parts.append([str(p), st.st_size, st.st_mtime_ns])
        for modality in self.modalities:
            for lst in self._list_files(modality):
                parts.append([str(lst), hashlib.sha256(lst.read_bytes()).hexdigest()])
            for entry in self._test_files[modality].values():
                for p in entry[1:]:
                    st = p.stat() if p.exists() else None
                    parts.append([str(p), st.st_size if st else None, st.st_mtime_ns if st else None])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    @cached_property
    def inventory(self) -> dict[str, Any]:
        """Per modality: the training files, the slice chains, what the leak check removed, and any problems.

        Built once (reading every record) and kept beside the slice caches, keyed by the files' names, sizes and
        modification times.
        """
        from benchmark.cache import cache_root

        path = cache_root() / self.name / f"inventory-{self._inventory_key()}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            pass
        print(f"Indexing the {self.name} training slices under {self.root} (once; kept in {path.parent})",
              file=sys.stderr)
        inventory = {m: self._build(m) for m in self.modalities}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(inventory))
        os.replace(tmp, path)
        return inventory

    def _build(self, modality: str) -> dict[str, Any]:
        from benchmark.formats import iter_tfrecord

        problems: list[str] = []
        files = self._training_files(modality, problems)
        records: list[tuple[int, int]] = []
        fronts, backs, mids, thumbs = [], [], [], []
        for fi, path in enumerate(files):
            try:
                for index, (offset, data) in enumerate(iter_tfrecord(path)):
                    decoded = self._decode(f"{path} (record {index}, byte {offset})", data, problems)
                    if decoded is None:
                        continue
                    ch = [np.ascontiguousarray(decoded[0][:, :, c]).tobytes() for c in range(3)]
                    records.append((fi, offset))
                    fronts.append(digest(ch[0], ch[1]))
                    backs.append(digest(ch[1], ch[2]))
                    mids.append(digest(ch[1]))
                    thumbs.append(thumbnail(decoded[0][:, :, 1]))
            except DataError as exc:
                problems.append(str(exc))
        if not files:
            problems.append(f"{self.root}: no {modality.upper()} training TFRecords (no list file such as "
                            f"{modality}_train_list and no {modality}_*.tfrecords file).")
        chains = chain_slices(fronts, backs)
        dropped, removed = self._leak_check(modality, chains, mids, thumbs)
        kept = {}
        for n, chain in enumerate(chains):
            cid = f"chain{n:03d}"
            rest = [i for i in chain if i not in removed]
            if cid not in dropped and rest:
                kept[cid] = [list(records[i]) for i in rest]
        gone = {int(c[len("chain"):]) for c in dropped}
        others = sum(1 for n, chain in enumerate(chains) if n not in gone for i in chain if i in removed)
        return {"files": [str(f) for f in files], "records": len(records), "chains": kept,
                "chain_lengths": [len(c) for c in chains], "dropped": dropped, "removed_slices": others,
                "problems": problems}

    def _leak_check(self, modality: str, chains: list[list[int]], mids: list[str],
                    thumbs: list[np.ndarray | None]) -> tuple[dict[str, list], set[int]]:
        """Which chains are test subjects' (dropped: chain ID -> [subject, fraction, length]) and which slices
        match one; an unreadable test volume cannot be matched (validate reports it)."""
        volumes = {}
        for case_id in self._split_file()[modality]["test"]:
            read = self._read_test(modality, case_id, [])
            if read is not None:
                volumes[case_id] = read[0]
        match = match_test_slices(mids, thumbs, volumes)
        return subject_chains(chains, match), set(match)

    # -- the adapter contract ----------------------------------------------------------------------------------
    def _split_file(self) -> dict[str, dict[str, list[str]]]:
        path = self.split_path()
        try:
            data = json.loads(path.read_text())
            return {m: {"test": [str(c) for c in data[m]["test"]]} for m in self.modalities}
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"The split file {path} of dataset {self.name!r} is missing or malformed ({exc}).") \
                from None

    @cached_property
    def split(self) -> dict[str, dict[str, list[str]]]:
        """Test subjects from the frozen file; training = the chains that survived the leak check."""
        frozen = self._split_file()
        problems = self.file_problems()
        if problems:
            raise DataError(f"{self.name} at {self.root}: {len(problems)} problem(s) in the training TFRecords, "
                            f"first: {problems[0]} Run `python -m benchmark validate {self.name} --root "
                            f"{self.root}` for the full list.")
        return {m: {"train": sorted(self.inventory[m]["chains"]), "test": frozen[m]["test"]}
                for m in self.modalities}

    def cases_to_check(self, modality: str, split: str) -> list[str]:
        """The test volumes are checked even when faulty training TFRecords keep the split from being built."""
        if split == "test":
            return sorted(self._split_file()[modality]["test"])
        return [] if self.inventory[modality]["problems"] else sorted(self.inventory[modality]["chains"])

    def split_cases(self, modality: str) -> list[str]:
        """The split's test subjects and the training chains, even where faulty TFRecords keep the split unbuilt."""
        return self._split_file()[modality]["test"] + sorted(self.inventory[modality]["chains"])

    def unknown_case_problem(self, modality: str, case_id: str) -> str:
        return f"{self.name} has no {modality} case {case_id!r} (training chains and the split's test subjects)."

    def subjects_on_disk(self, modality: str) -> dict[str, Path]:
        return {case_id: entry[1] for case_id, entry in sorted(self._test_files[modality].items())}

    def file_problems(self) -> list[str]:
        """The faults of the training TFRecords and their list files."""
        return [p for m in self.modalities for p in self.inventory[m]["problems"]]

    def notes(self) -> list[str]:
        out = []
        for m in self.modalities:
            inv = self.inventory[m]
            lengths = inv["chain_lengths"]
            kept = inv["chains"]
            drops = ", ".join(f"{cid} ({n} slices, {frac:.0%} matching {subj})"
                              for cid, (subj, frac, n) in sorted(inv["dropped"].items()))
            out.append(f"{m}: {inv['records']} training slices in {len(inv['files'])} files chain into "
                       f"{len(lengths)} pseudo-volumes (lengths {min(lengths, default=0)}-{max(lengths, default=0)}); "
                       f"leak check removed {len(inv['dropped'])} chains that are test subjects"
                       f"{': ' + drops if drops else ''} and {inv['removed_slices']} other matching slices; "
                       f"{len(kept)} chains remain for training.")
        return out

    def input_grid(self, affine: np.ndarray, shape: tuple[int, ...]) -> Grid:
        """A new scan is oriented as the release's test volumes: flipped on its first two axes, not reoriented."""
        return Grid.of(affine, shape, _TEST_FLIP)

    def read_files(self, modality: str, case_id: str, problems: list[str]) -> CaseArrays | None:
        from benchmark.formats import read_tfrecord_at

        if case_id in self._split_file()[modality]["test"]:
            return self._read_test(modality, case_id, problems)
        files = self.inventory[modality]["files"]
        images, labels = [], []
        for fi, offset in self.inventory[modality]["chains"][case_id]:
            path = Path(files[fi])
            try:
                decoded = self._decode(f"{path} (byte {offset})", read_tfrecord_at(path, offset), problems)
            except DataError as exc:
                problems.append(str(exc))
                return None
            if decoded is None:
                return None
            images.append(decoded[0][:, :, 1])
            labels.append(decoded[1])
        image, label = np.stack(images, axis=-1).astype(np.float32), np.stack(labels, axis=-1)
        return image, label, (1.0, 1.0, 1.0), f"{self.name} {modality} training {case_id}"
