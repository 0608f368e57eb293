"""CD-TG: the class descriptions, the offline text encoder and its cache, the alignment loss, the text-guided head."""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest
import torch

from benchmark import registry, text
from benchmark.errors import DataError, UsageError
from benchmark.hparams import resolve
from benchmark.method import MethodContext
from benchmark.models import build_segmenter

registry.discover()
CDTG = registry.PLUGINS.get("cdtg")
BACKBONE = {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}
SIZE, CLASSES, WIDTH = 32, 5, 8
TEXTS = ["The heart muscle of the left ventricle.", "The myocardium, the muscular wall of the heart.",
         "A red sports car parked on the street."]


# --- class descriptions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["synthetic-heart", "mmwhs", "mmwhs-2d", "chaos-btcv"])
def test_every_dataset_describes_each_class_and_the_background(dataset):
    cls = registry.DATASETS.get(dataset)
    texts = cls.class_descriptions()
    assert texts["version"] == "1"
    assert texts["order"] == ["background", *sorted(cls.classes, key=cls.classes.get)]
    for name in texts["order"]:
        sentences = texts["classes"][name]
        assert 1 <= len(sentences) <= 4 and all(len(s.split()) >= 5 for s in sentences)
    if dataset == "mmwhs-2d":
        assert texts["path"] == registry.DATASETS.get("mmwhs").class_descriptions()["path"]  # shared file


def test_bad_description_files_name_the_file(tmp_path, monkeypatch):
    cls = registry.DATASETS.get("synthetic-heart")
    path = tmp_path / "x.classes.json"
    monkeypatch.setattr(cls, "descriptions_path", classmethod(lambda c: path))
    with pytest.raises(DataError, match=f"{path} is missing"):
        cls.class_descriptions()
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        cls.class_descriptions()
    good = {"version": "1", "classes": {k: ["A sentence about this class."] for k in ["background", *cls.classes]}}
    path.write_text(json.dumps(good))
    assert cls.class_descriptions()["order"] == ["background", "MYO", "LAC", "LVC", "AA"]
    del good["classes"]["AA"]
    path.write_text(json.dumps(good))
    with pytest.raises(DataError, match="needs exactly"):
        cls.class_descriptions()


# --- the text encoder and its cache ---------------------------------------------------------------------------------


def test_encoder_specs():
    assert text.EncoderSpec.parse("minilm") == text.EncoderSpec("minilm")
    assert text.EncoderSpec.parse("openclip:/w/m.bin") == text.EncoderSpec("openclip", "ViT-B-32", "/w/m.bin")
    assert text.EncoderSpec.parse("openclip:ViT-B-16:/w/m.bin") == text.EncoderSpec("openclip", "ViT-B-16", "/w/m.bin")
    with pytest.raises(UsageError, match="Text encoder 'bert' is unknown"):
        text.EncoderSpec.parse("bert")


def test_openclip_needs_its_package_and_its_file(tmp_path, monkeypatch):
    weights = tmp_path / "open_clip.bin"
    with pytest.raises(UsageError, match="weights file .* does not exist"):
        text.encoder_identity(f"openclip:{weights}")
    weights.write_bytes(b"0")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
    with pytest.raises(UsageError, match="pip install open_clip_torch"):
        text.load_text_encoder(f"openclip:{weights}")


def test_embeddings_load_offline_are_deterministic_and_cached(tmp_path, monkeypatch):
    attempts = []

    def no_network(sock, address, *args):
        attempts.append(address)  # recorded, in case a library swallows the error
        raise OSError(f"the text encoder tried to reach the network at {address}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the loader itself must make loading offline
    first = text.embed_texts(TEXTS, root=tmp_path / "a")  # loads the encoder from the installed package
    assert attempts == []
    assert first.shape == (3, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    cached = text.embedding_cache_path(text.encoder_identity("minilm"), TEXTS, tmp_path / "a")
    assert cached.is_file() and not list(cached.parent.glob(".*.tmp"))  # written atomically
    second = text.embed_texts(TEXTS, root=tmp_path / "b")  # a fresh computation
    np.testing.assert_array_equal(first, second)
    assert first[0] @ first[1] > first[0] @ first[2] + 0.2  # a real sentence encoder: related texts are closer

    def never(*args, **kwargs):
        raise AssertionError("the encoder was loaded although the embeddings are cached")

    monkeypatch.setattr(text, "load_text_encoder", never)
    np.testing.assert_array_equal(text.embed_texts(TEXTS, root=tmp_path / "a"), first)


def test_a_corrupt_cache_file_is_rebuilt(tmp_path, monkeypatch):
    calls = []

    def fake_encoder(spec):
        calls.append(spec)
        return lambda texts: np.eye(len(texts), 4, dtype=np.float32)

    monkeypatch.setattr(text, "load_text_encoder", fake_encoder)
    path = text.embedding_cache_path(text.encoder_identity("minilm"), TEXTS, tmp_path)
    first = text.embed_texts(TEXTS, root=tmp_path)
    assert len(calls) == 1 and path.is_file()
    text.embed_texts(TEXTS, root=tmp_path)
    assert len(calls) == 1  # read from the cache
    for garbage in (b"not a numpy file", None):
        if garbage is None:
            np.save(path, np.zeros((2, 4), dtype=np.float32))  # readable, but the wrong shape
        else:
            path.write_bytes(garbage)
        with pytest.warns(UserWarning, match="Rebuilding the cached text embeddings"):
            again = text.embed_texts(TEXTS, root=tmp_path)
        np.testing.assert_array_equal(again, first)
        np.testing.assert_array_equal(np.load(path), first)
    assert len(calls) == 3


def test_class_embeddings_average_each_class_sentences(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "load_text_encoder",
                        lambda spec: lambda texts: np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)[:len(texts)])
    out = text.class_embeddings({"a": ["x", "y"], "b": ["z"]}, ["a", "b"], root=tmp_path)
    np.testing.assert_allclose(out, [[2 ** -0.5, 2 ** -0.5], [2 ** -0.5, 2 ** -0.5]], rtol=1e-6)


# --- the plug-in ----------------------------------------------------------------------------------------------------


def plugin(**overrides) -> torch.nn.Module:
    ctx = MethodContext(in_channels=1, num_classes=CLASSES, device=torch.device("cpu"), total_steps=10,
                        class_names=("MYO", "LAC", "LVC", "AA"),
                        backbone=lambda classes=CLASSES: build_segmenter(BACKBONE, 1, classes),
                        describe=registry.DATASETS.get("synthetic-heart").class_descriptions)
    torch.manual_seed(0)
    return CDTG(ctx, resolve(CDTG.declared_hparams(), 0, overrides), WIDTH)


def test_plugin_reads_the_dataset_descriptions():
    p = plugin()
    assert p.class_names == ("background", "MYO", "LAC", "LVC", "AA")
    assert p.text_embeddings.shape == (CLASSES, 384) and p.projection.out_features == WIDTH
    assert CDTG.provenance(registry.DATASETS.get("synthetic-heart")) == {
        "descriptions": "synthetic_heart.classes.json v1"}


def test_alignment_loss_decreases_on_fixed_features():
    """A few optimizer steps on the projection align fixed random class prototypes with their class texts."""
    p = plugin()
    g = torch.Generator().manual_seed(0)
    features = torch.randn(4, WIDTH, 16, 16, generator=g)
    labels = torch.randint(0, CLASSES, (4, 16, 16), generator=g)
    onehot = torch.nn.functional.one_hot(labels, CLASSES).permute(0, 3, 1, 2).float()
    prototypes = torch.einsum("bchw,bfhw->cf", onehot, features) / onehot.sum((0, 2, 3))[:, None]
    present = torch.ones(CLASSES, dtype=torch.bool)
    opt = torch.optim.Adam(p.projection.parameters(), lr=1e-2)
    history = []
    for _ in range(30):
        loss = p.alignment_loss(prototypes, present)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0]
    assert all(b <= a + 1e-6 for a, b in zip(history[:10], history[1:11]))  # steadily at first
    # each prototype is now nearest to its own class's text
    sims = torch.nn.functional.normalize(prototypes, dim=1) @ torch.nn.functional.normalize(p.projected_text(), dim=1).T
    assert torch.equal(sims.argmax(1), torch.arange(CLASSES))


def test_plugin_loss_tracks_prototypes_and_trains_the_head():
    p = plugin(momentum=0.5)
    features = torch.randn(2, WIDTH, 8, 8, requires_grad=True)
    labels = torch.zeros(2, 8, 8, dtype=torch.int64)
    labels[:, :4] = 2
    loss, logs = p.loss(features, labels, 0)
    assert set(logs) == {"align", "head"} and loss.requires_grad
    loss.backward()
    assert features.grad is not None and p.projection.weight.grad is not None
    assert p.seen.tolist() == [True, False, True, False, False]
    mean2 = features[:, :, :4].mean((0, 2, 3)).detach()
    torch.testing.assert_close(p.prototypes[2], mean2)  # first sighting: the batch prototype
    p.loss(features * 0 + 1.0, labels, 1)
    torch.testing.assert_close(p.prototypes[2], 0.5 * mean2 + 0.5)  # then the EMA
    assert torch.equal(p.prototypes[1], torch.zeros(WIDTH))


def test_head_blend():
    p = plugin(blend=0.5)
    logits, features = torch.randn(2, CLASSES, 8, 8), torch.randn(2, WIDTH, 8, 8)
    out = p.blend(logits, features)
    assert p.has_head and torch.allclose(out.exp().sum(1), torch.ones(2, 8, 8))
    expected = 0.5 * logits.softmax(1) + 0.5 * p.head_logits(features).softmax(1)
    torch.testing.assert_close(out.exp(), expected)
    off = plugin(blend=0.0)
    assert not off.has_head and off.blend(logits, features) is logits
    # unseen classes use their text alone: with fusion 0 the seen classes use their visual prototype alone
    q = plugin(fusion=0.0)
    q.prototypes[1] = torch.arange(WIDTH, dtype=torch.float32)
    q.seen[1] = True
    fused = q.fused_prototypes()
    torch.testing.assert_close(fused[1], torch.nn.functional.normalize(q.prototypes[1], dim=0))
    torch.testing.assert_close(fused[0], torch.nn.functional.normalize(q.projected_text()[0], dim=0))


def test_without_a_dataset_the_class_names_stand_in():
    ctx = MethodContext(in_channels=1, num_classes=3, device=torch.device("cpu"), total_steps=1,
                        class_names=("liver",), backbone=lambda: None)
    names, descriptions = CDTG.class_texts(ctx)
    assert names == ["background", "liver", "class 2"]
    assert descriptions["liver"] == ["a medical image of the liver"]
