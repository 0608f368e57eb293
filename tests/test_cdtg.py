"""CD-TG: the class captions, the offline text encoder and its cache, the Semantic-guided Unit, ADaIN, the fusion."""

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
from helpers import B, build, tiny_batch

registry.discover()
CDTG = registry.PLUGINS.get("cdtg")
cdtg_module = sys.modules[CDTG.__module__]
feature_style = sys.modules[CDTG.__module__.rsplit(".", 1)[0] + "._feature_style"]
BACKBONE = {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}
SIZE, CLASSES, WIDTH = 32, 5, 8
TEXTS = ["The heart muscle of the left ventricle.", "The myocardium, the muscular wall of the heart.",
         "A red sports car parked on the street."]


# --- class descriptions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["synthetic-heart", "mmwhs", "mmwhs-2d", "chaos-btcv"])
def test_every_dataset_describes_each_class_and_the_background(dataset):
    cls = registry.DATASETS.get(dataset)
    texts = cls.class_descriptions()
    assert texts["version"] == "2"
    assert texts["order"] == ["background", *sorted(cls.classes, key=cls.classes.get)]
    for name in texts["order"]:
        (caption,) = texts["classes"][name]  # one caption per class, in the paper's standard form
        assert caption.startswith("A photo of the ") and " in which " in caption and len(caption.split()) >= 12
    assert len({texts["classes"][n][0] for n in texts["order"]}) == len(texts["order"])  # all distinct
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


def plugin(width: int = WIDTH, **overrides) -> torch.nn.Module:
    ctx = MethodContext(in_channels=1, num_classes=CLASSES, device=torch.device("cpu"), total_steps=10,
                        class_names=("MYO", "LAC", "LVC", "AA"),
                        backbone=lambda classes=CLASSES: build_segmenter(BACKBONE, 1, classes),
                        describe=registry.DATASETS.get("synthetic-heart").class_descriptions)
    torch.manual_seed(0)
    return CDTG(ctx, resolve(CDTG.declared_hparams(), 0, overrides), width)


def cdtg(**overrides):
    """The plug-in with ``overrides`` over its defaults, ready for :func:`helpers.build`."""
    return CDTG, resolve(CDTG.declared_hparams(), 0, overrides)


def test_plugin_reads_the_dataset_captions_and_names_its_encoder():
    p = plugin()
    assert p.class_names == ("background", "MYO", "LAC", "LVC", "AA")
    assert p.text_embeddings.shape == (CLASSES, 384) and p.tokens().shape == (CLASSES, WIDTH)
    heart = registry.DATASETS.get("synthetic-heart")
    assert CDTG.provenance(heart, p.hparams) == {"descriptions": "synthetic_heart.classes.json v2", "encoder": "minilm"}
    assert CDTG.provenance(heart, {"text_encoder": "openclip:ViT-B-16:/w/m.bin"})["encoder"] == "openclip-ViT-B-16"


def test_bad_settings_name_the_setting():
    with pytest.raises(UsageError, match="heads=3 does not divide the host's feature width 8"):
        plugin(heads=3)
    with pytest.raises(UsageError, match="adain_styles='noise,blur' names 'blur'; choose one or more of noise, "
                                         "contrast, boundary, low_contrast"):
        plugin(adain_styles="noise,blur")
    assert feature_style.parse_styles(" contrast ,noise") == ("contrast", "noise")
    from benchmark.runner import build_grid

    grid = dict(dataset="synthetic-heart", shots=[1], directions=["mr2ct"], seeds=[0], preset="quick")
    for bad, message in [("adain_styles=blur", "adain_styles='blur' names 'blur'"),
                         ("heads=0", "heads=0 is impossible")]:
        with pytest.raises(UsageError, match=message):  # refused when the grid is planned, before any trial runs
            build_grid(methods=[f"source_only+cdtg:{bad}"], **grid)


def test_the_attention_differs_per_pixel_unless_the_texts_are_all_alike():
    """Keys and values are the tokens of all classes: each pixel mixes them by its own similarities. With a single
    text, broadcast as in the released code, every pixel would receive that text's value alone."""
    g = torch.Generator().manual_seed(0)
    unit = cdtg_module.SemanticGuidedUnit(text_dim=12, width=WIDTH, heads=4)
    features = torch.randn(2, WIDTH, 6, 6, generator=g)
    texts = torch.randn(CLASSES, 12, generator=g)
    with torch.no_grad():
        tokens = unit.text_mlp(texts)
        out = unit.attend(features, tokens).flatten(2)  # (B, F, pixels)
        alike = unit.attend(features, unit.text_mlp(texts[:1].expand(CLASSES, -1))).flatten(2)
        assert alike.std(2).max() < 1e-6  # the degenerate case: the same value at every pixel
        assert out.std(2).min() > 100 * alike.std(2).max() + 1e-4  # every channel varies over the pixels
        queries = features.flatten(2).transpose(1, 2)
        keys = tokens[None].expand(2, -1, -1)
        reference, weights = unit.attention(queries, keys, keys)  # torch's own multi-head attention
        torch.testing.assert_close(out, reference.transpose(1, 2), rtol=1e-5, atol=1e-6)
        assert weights.shape == (2, 36, CLASSES) and len(set(weights.argmax(2).flatten().tolist())) >= 2
        guided = unit(features, unit.text_mlp(texts))  # residual and LayerNorm over the channels
        expected = torch.nn.functional.layer_norm((features.flatten(2) + out).transpose(1, 2), (WIDTH,),
                                                  unit.norm.weight, unit.norm.bias)
        torch.testing.assert_close(guided.flatten(2).transpose(1, 2), expected)


# --- ADaIN ----------------------------------------------------------------------------------------------------------


def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean((2, 3)), x.std((2, 3))


@pytest.mark.parametrize("strength", [0.1, 0.3, 0.6])
def test_adain_moves_the_feature_style_by_the_strength(strength):
    g = torch.Generator().manual_seed(1)
    content = torch.rand(2, WIDTH, 64, 64, generator=g) * 3  # non-negative, as after the decoder's ReLU
    augment = feature_style.FeatureStyleAugmentation(feature_style.STYLES, strength)
    mean, std = stats(content)
    shrink = std / (std + feature_style.EPS)  # ADaIN's epsilon
    for style, want_mean, want_std in [("contrast", (1 + strength) * mean, (1 + strength) * std * shrink),
                                       ("low_contrast", mean, strength * std * shrink)]:
        out = augment(content, style)
        assert out.shape == content.shape
        torch.testing.assert_close(stats(out)[0], want_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats(out)[1], want_std, rtol=1e-5, atol=1e-5)
    torch.manual_seed(7)
    noisy = augment(content, "noise")
    torch.manual_seed(7)
    copy = content + torch.randn_like(content) * strength  # the perturbed copy whose style it takes
    torch.testing.assert_close(stats(noisy)[1], stats(copy)[1] * shrink, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats(noisy)[1], (std ** 2 + strength ** 2).sqrt(), rtol=0.05, atol=0)  # about
    edges = augment(content, "boundary")
    torch.testing.assert_close(stats(edges)[1], stats(content + strength * feature_style.high_frequency(content))[1]
                               * shrink, rtol=1e-5, atol=1e-5)
    for out in (noisy, edges):  # only the style changes: per channel, the output is an affine map of the content
        corr = torch.nn.functional.cosine_similarity((out - stats(out)[0][..., None, None]).flatten(2),
                                                     (content - mean[..., None, None]).flatten(2), dim=2)
        torch.testing.assert_close(corr, torch.ones_like(corr))


def test_the_high_pass_is_scipys_laplacian_and_the_draws_leave_the_global_generator_alone():
    from scipy import ndimage

    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(2))
    want = np.stack([-ndimage.laplace(c, mode="nearest") for c in x[0].numpy()])
    np.testing.assert_allclose(feature_style.high_frequency(x)[0].numpy(), want, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(feature_style.high_frequency(torch.ones(1, 2, 5, 5))) == 0
    augment = feature_style.FeatureStyleAugmentation(feature_style.STYLES, 0.3)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    first = augment(x)
    assert torch.equal(torch.get_rng_state(), state)  # the host's random stream is untouched
    assert torch.equal(augment(x), first)  # and the same state draws the same perturbation
    drawn = set()
    for seed in range(40):
        torch.manual_seed(seed)
        drawn.add(augment.draw())
    assert drawn == set(feature_style.STYLES)


def test_adain_runs_in_training_only(monkeypatch):
    p = plugin()
    calls = []
    real = p.augment
    monkeypatch.setattr(p, "augment", lambda f: calls.append(f.shape) or real(f))
    features, labels = torch.rand(2, WIDTH, 8, 8), torch.randint(0, CLASSES, (2, 8, 8))
    p.loss(features, labels, 0, lambda f: torch.zeros(2, CLASSES, 8, 8))
    assert calls == [features.shape]
    p.blend(torch.zeros(2, CLASSES, 8, 8), features)  # inference
    assert calls == [features.shape]
    q = plugin(adain=False)
    monkeypatch.setattr(q, "augment", lambda f: calls.append("q"))
    q.loss(features, labels, 0, lambda f: torch.zeros(2, CLASSES, 8, 8))
    assert calls == [features.shape]


# --- prototypes, fusion, loss ---------------------------------------------------------------------------------------


def test_the_loss_tracks_text_guided_prototypes_and_holds_the_host_fixed():
    p = plugin(momentum=0.5, adain=False)
    features = torch.randn(2, WIDTH, 8, 8, requires_grad=True)
    labels = torch.zeros(2, 8, 8, dtype=torch.int64)
    labels[:, :4] = 2
    host = torch.nn.Conv2d(WIDTH, CLASSES, 1)
    loss, logs = p.loss(features, labels, 0, host)
    assert set(logs) == {"seg"}
    loss.backward()
    assert features.grad is not None and p.unit.attention.in_proj_weight.grad is not None
    assert host.weight.grad is None  # the host's logits enter the fused loss as constants
    assert p.seen.tolist() == [True, False, True, False, False]
    with torch.no_grad():
        guided = p.guided(features)
    torch.testing.assert_close(p.prototypes[2], guided[:, :, :4].mean((0, 2, 3)))  # first sighting: the batch's
    p.loss(features.detach() * 0 + 1.0, labels, 1, host)
    with torch.no_grad():
        ones = p.guided(torch.ones(2, WIDTH, 8, 8))
    torch.testing.assert_close(p.prototypes[2], 0.5 * guided[:, :, :4].mean((0, 2, 3)) + 0.5 * ones[0, :, 0, 0])
    assert torch.equal(p.prototypes[1], torch.zeros(WIDTH))
    with torch.no_grad():  # at inference: the averages where seen, the class tokens where not
        protos = p.text_prototypes()
        torch.testing.assert_close(protos[[0, 2]], p.prototypes[[0, 2]])
        torch.testing.assert_close(protos[[1, 3, 4]], p.tokens()[[1, 3, 4]])


def test_blend_fuses_the_text_guided_prediction_into_the_hosts_logits():
    logits, features = torch.randn(2, CLASSES, 8, 8), torch.randn(2, WIDTH, 8, 8)
    p = plugin(fusion=0.3)
    with torch.no_grad():
        text = cdtg_module.cosine_logits(p.guided(features), p.text_prototypes(), 0.1)
        assert p.has_head
        torch.testing.assert_close(p.blend(logits, features), 0.7 * logits + 0.3 * text)
    off = plugin(fusion=0.0)
    assert not off.has_head and off.blend(logits, features) is logits
    head = plugin(fusion=0.0, head=True, blend=0.5)
    head.visual_prototypes.copy_(torch.randn(CLASSES, WIDTH))
    out = head.blend(logits, features)
    want = 0.5 * logits.softmax(1) + 0.5 * cdtg_module.cosine_logits(features, head.visual_prototypes, 0.1).softmax(1)
    torch.testing.assert_close(out.exp(), want)


def test_the_suites_additions_add_their_terms():
    p = plugin(align=True, head=True)
    features, labels = torch.randn(2, WIDTH, 8, 8), torch.randint(0, CLASSES, (2, 8, 8))
    loss, logs = p.loss(features, labels, 0, lambda f: torch.zeros(2, CLASSES, 8, 8))
    assert set(logs) == {"seg", "align", "head"}
    torch.testing.assert_close(loss, torch.tensor(logs["seg"] + 0.1 * logs["align"] + 0.2 * logs["head"]))
    assert p.visual_seen.all() and torch.equal(p.visual_seen, p.seen)


def test_alignment_loss_decreases_on_fixed_prototypes():
    """``align``: a few optimizer steps on the text MLP align fixed class prototypes with their class tokens."""
    p = plugin()
    prototypes = torch.randn(CLASSES, WIDTH, generator=torch.Generator().manual_seed(0))
    present = torch.ones(CLASSES, dtype=torch.bool)
    opt = torch.optim.Adam(p.unit.text_mlp.parameters(), lr=1e-2)
    history = []
    for _ in range(30):
        loss = p.alignment_loss(prototypes, present)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0]
    sims = torch.nn.functional.normalize(prototypes, dim=1) @ torch.nn.functional.normalize(p.tokens(), dim=1).T
    assert torch.equal(sims.argmax(1), torch.arange(CLASSES))


@pytest.mark.parametrize("host", ["source_only", "metahallu"])
def test_fusion_zero_leaves_the_host_exactly_unchanged(host):
    """With ``fusion=0`` (ADaIN on or off) the plug-in's loss has no gradient and its extra forward pass keeps the
    host's batch-norm statistics: training and predictions equal the host's bit for bit. The default changes them."""
    x = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    results = {}
    for name, plugins in [("host", []), ("off", [cdtg(fusion=0.0, adain=False)]), ("adain", [cdtg(fusion=0.0)]),
                          ("default", [cdtg()])]:
        method = build(host, 3, plugins=plugins)
        for step in range(3):
            torch.manual_seed(100 + step)
            method.train_step(tiny_batch(step, ("source", "target"), batch_size=B), step)
        method.eval()
        with torch.no_grad():
            results[name] = (method.segmenter.state_dict(), method.infer(x))
    state, prediction = results["host"]
    for name in ("off", "adain"):
        assert all(torch.equal(state[k], v) for k, v in results[name][0].items())  # parameters and BN buffers
        assert torch.equal(results[name][1], prediction)
    assert not torch.equal(results["default"][1], prediction)
    assert not all(torch.equal(state[k], v) for k, v in results["default"][0].items())


def test_without_a_dataset_the_class_names_stand_in():
    ctx = MethodContext(in_channels=1, num_classes=3, device=torch.device("cpu"), total_steps=1,
                        class_names=("liver",), backbone=lambda: None)
    names, descriptions = CDTG.class_texts(ctx)
    assert names == ["background", "liver", "class 2"]
    assert descriptions["liver"] == ["A photo of the liver in a medical image."]
