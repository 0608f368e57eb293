"""Rebuilding volumes from a release of 2.5D training slices, and finding test subjects among them.

The preprocessed MM-WHS release of PnP-AdaNet and SIFA (``mmwhs-2d``) stores training slices as 3-channel
records (slices k-1, k, k+1) without subject IDs. Consecutive records of one subject share two channels, so
linking records whose last two channels equal the next one's first two rebuilds each subject's chain of
slices. Test volumes are matched to those chains by exact slice digests and, where the bytes differ, by the
correlation of small thumbnails.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np

#: A training slice whose 32x32 thumbnail correlates at least this much with a test slice is that test slice.
MATCH_CORRELATION = 0.98
#: A slice chain is a test subject's when at least this fraction of its slices match that subject's slices.
CHAIN_MATCH_FRACTION = 0.5


def digest(*parts: bytes) -> str:
    """A short blake2b digest of the concatenated ``parts``."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p)
    return h.hexdigest()


def thumbnail(slice2d: np.ndarray) -> np.ndarray | None:
    """A 32x32 z-scored thumbnail scaled so that a dot product of two is their correlation (None if constant)."""
    import cv2

    small = cv2.resize(np.ascontiguousarray(slice2d, dtype=np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    small = small.ravel().astype(np.float64)
    std = small.std()
    if not np.isfinite(std) or std < 1e-6:
        return None
    return ((small - small.mean()) / (std * np.sqrt(small.size))).astype(np.float32)


def chain_slices(fronts: list[str], backs: list[str]) -> list[list[int]]:
    """Chains of record indices: link a -> b when a's last two channels (``backs[a]``) equal b's first two
    (``fronts[b]``); the next record in list order wins ties. Every record is in exactly one chain."""
    n = len(fronts)
    by_front: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(fronts):
        by_front[key].append(i)
    succ, has_pred = [-1] * n, [False] * n
    for i in range(n):
        if i + 1 < n and fronts[i + 1] == backs[i] and not has_pred[i + 1]:
            best = i + 1
        else:
            best = next((j for j in by_front.get(backs[i], []) if j != i and not has_pred[j]), -1)
        if best >= 0:
            succ[i], has_pred[best] = best, True
    chains, seen = [], [False] * n
    for start in [i for i in range(n) if not has_pred[i]] + list(range(n)):
        if seen[start]:
            continue
        chain, i = [], start
        while i >= 0 and not seen[i]:
            seen[i] = True
            chain.append(i)
            i = succ[i]
        chains.append(chain)
    return chains


def match_test_slices(mids: list[str], thumbs: list[np.ndarray | None],
                      volumes: dict[str, np.ndarray]) -> dict[int, str]:
    """Training record index -> the test subject whose slice it is.

    ``mids`` are the digests of the records' middle channels (float32 little-endian bytes), ``thumbs`` their
    :func:`thumbnail`; ``volumes`` maps each test subject to its (H, W, D) image. A record matches a subject
    when its middle slice equals one of the subject's slices exactly, else when its thumbnail correlates at
    least :data:`MATCH_CORRELATION` with the best-correlated test slice.
    """
    exact: dict[str, str] = {}
    test_thumbs, owners = [], []
    for case_id, image in volumes.items():
        for k in range(image.shape[2]):
            sl = np.ascontiguousarray(image[:, :, k])
            exact[digest(sl.astype("<f4").tobytes())] = case_id
            t = thumbnail(sl)
            if t is not None:
                test_thumbs.append(t)
                owners.append(case_id)
    match = {i: exact[key] for i, key in enumerate(mids) if key in exact}
    if test_thumbs:
        idx = [i for i, t in enumerate(thumbs) if t is not None and i not in match]
        bank = np.stack(test_thumbs)
        for start in range(0, len(idx), 2048):
            part = idx[start:start + 2048]
            corr = np.stack([thumbs[i] for i in part]) @ bank.T
            best = corr.argmax(axis=1)
            for i, b, c in zip(part, best, corr[np.arange(len(part)), best]):
                if c >= MATCH_CORRELATION:
                    match[i] = owners[int(b)]
    return match


def subject_chains(chains: list[list[int]], match: dict[int, str]) -> dict[str, list]:
    """The chains that are test subjects': chain ID (``chainNNN``) -> [subject, matched fraction, length], when
    at least :data:`CHAIN_MATCH_FRACTION` of the chain's records match that subject."""
    dropped = {}
    for n, chain in enumerate(chains):
        votes: dict[str, int] = defaultdict(int)
        for i in chain:
            if i in match:
                votes[match[i]] += 1
        if votes:
            subject, count = max(votes.items(), key=lambda kv: kv[1])
            if count >= CHAIN_MATCH_FRACTION * len(chain):
                dropped[f"chain{n:03d}"] = [subject, round(count / len(chain), 3), len(chain)]
    return dropped
