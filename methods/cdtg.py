"""``cdtg`` plug-in: class texts, embedded by a frozen text encoder, guide the host's features (CD-TG)."""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import UsageError
from benchmark.hparams import HParam, log_uniform, uniform
from benchmark.losses import dice_ce_loss
from benchmark.method import MethodContext, Plugin
from benchmark.registry import register_plugin
from benchmark.text import DEFAULT_ENCODER, EncoderSpec, class_embeddings

from ._feature_style import STYLES, FeatureStyleAugmentation, parse_styles


class SemanticGuidedUnit(nn.Module):
    """CD-TG's Semantic-guided Unit: image features attend to the class texts (``module.py``'s AttentionModule).

    A two-layer MLP maps the frozen text embeddings (C, D) to tokens (C, F) of the feature width; multi-head
    attention takes every pixel's feature vector as a query and the C class tokens as keys and values; a residual
    connection and LayerNorm over the channels follow. Differences from the released code: its MLP keeps CLIP's
    width, which equals its features' (512); here the MLP's second layer maps into the host's feature width F. It
    attends to one broadcast text token per image, so every pixel receives the same value; here the keys and
    values are the tokens of all classes, so each pixel mixes the classes' tokens by its own similarities.
    """

    def __init__(self, text_dim: int, width: int, heads: int):
        super().__init__()
        self.text_mlp = nn.Sequential(nn.Linear(text_dim, text_dim), nn.ReLU(), nn.Linear(text_dim, width))
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)

    def attend(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The attention's output (B, F, H, W) for features (B, F, H, W) and class tokens (C, F).

        The computation of ``nn.MultiheadAttention`` with :attr:`attention`'s weights (a test checks it), written
        out channels-first: torch's fused kernel and a softmax over a last axis of a handful of keys are slow on
        the CPU, and the keys and values are projected once for the whole batch.
        """
        b, f, h, w = features.shape
        heads = self.attention.num_heads
        d = f // heads
        wq, wk, wv = self.attention.in_proj_weight.chunk(3)
        bq, bk, bv = self.attention.in_proj_bias.chunk(3)
        q = (torch.einsum("of,bfn->bon", wq, features.flatten(2)) + bq[:, None]).view(b, heads, d, h * w)
        k = F.linear(tokens, wk, bk).view(-1, heads, d).transpose(0, 1)  # (heads, C, d)
        v = F.linear(tokens, wv, bv).view(-1, heads, d).permute(1, 2, 0)  # (heads, d, C)
        weights = torch.softmax(k @ q / math.sqrt(d), dim=2)  # (B, heads, C, N): over the classes
        out = (v @ weights).reshape(b, f, h * w)
        out = torch.einsum("of,bfn->bon", self.attention.out_proj.weight, out) + self.attention.out_proj.bias[:, None]
        return out.view(b, f, h, w)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Text-guided features: LayerNorm over the channels of features + attention, (B, F, H, W)."""
        x = features + self.attend(features, tokens)
        x = x - x.mean(1, keepdim=True)
        x = x * torch.rsqrt((x * x).mean(1, keepdim=True) + self.norm.eps)
        return x * self.norm.weight[:, None, None] + self.norm.bias[:, None, None]


def masked_average(features: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average pooling over the batch: per-class prototypes (C, F) and which classes are present (C,)."""
    area = onehot.sum((0, 2, 3))
    prototypes = torch.einsum("bchw,bfhw->cf", onehot, features) / area.clamp_min(1e-6)[:, None]
    return prototypes, area > 0


def moved_average(bank: torch.Tensor, seen: torch.Tensor, batch: torch.Tensor, momentum: float) -> torch.Tensor:
    """Per class, the moving average ``bank`` (C, F) moved towards ``batch``; ``batch`` itself where not ``seen``."""
    return torch.where(seen[:, None], momentum * bank + (1 - momentum) * batch, batch)


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity of every pixel's features (B, F, H, W) to each prototype (C, F), over the temperature."""
    return torch.einsum("bfhw,cf->bchw", F.normalize(features, dim=1),
                        F.normalize(prototypes, dim=1)) / temperature


@register_plugin("cdtg")
class CDTG(Plugin):
    """Cross-domain text guidance (CD-TG) on the host's decoder features.

    After "Leveraging Language to Generalize Natural Images to Few-shot Medical Image Segmentation" (the CD-TG
    paper) and its code (github.com/Lilacis/CD_TG: ``module.py``, ``plug-in.py``; figure in its ``asset/Frame.png``).
    CD-TG plugs into prototype-based few-shot segmenters; here the host is a segmenter with a convolutional head,
    the labeled source batch plays the support set and the images being predicted the query. Component by
    component:

    * Texts: one caption per class, background included, in the paper's standard form "A photo of <class> in
      which ..." (``datasets/<adapter>.classes.json``, versioned; read through
      :meth:`benchmark.dataset.DatasetAdapter.class_descriptions`). The paper has GPT-4 write them; these were
      written for each dataset by hand. Outside a trial the class names stand in.
    * Text encoder: frozen, run once, embeddings cached (:mod:`benchmark.text`). The paper uses CLIP's text tower;
      ``text_encoder="openclip:[ARCH:]/path"`` loads an OpenCLIP one from a local file; the default is the
      offline all-MiniLM-L6-v2 (the board's version column names the encoder, e.g. ``cdtg-2[minilm]``).
    * Semantic-guided Unit (:class:`SemanticGuidedUnit`): applied to the host's features of the labeled batch
      and of the images being predicted.
    * Text-guided prototypes: masked average pooling of the text-guided support features per class. Without a
      support set at inference, the prototypes are an exponential moving average (``momentum``) over the
      training batches (buffers, saved with the model), of the un-augmented features; during training the batch's
      share of that average carries the gradient. A class not seen yet uses its text token.
    * Fusion (the code's FFAttention, 0.7 visual + 0.3 text): the host's own head stands for the visual
      prototypes, so the fusion is of predictions: ``(1 - fusion) * host logits + fusion * text logits``, the
      text logits being the cosine similarities of the text-guided query features to the text-guided prototypes
      over ``temperature``. Logits are linear in the prototypes, so this is the code's fusion of prototypes
      carried to a host without them. ``fusion=0`` is the host, exactly (no loss gradient, same predictions).
    * ADaIN feature-style augmentation (:mod:`methods._feature_style`) of the support features during training
      (``adain``, ``adain_strength``, ``adain_styles``), off at inference. It reaches the host only through the
      text-guided prototypes, since the host's head has no support input.
    * Loss: the paper's only loss is the segmentation loss of the fused prediction. Here it is the suite's
      Dice + cross-entropy of the fused prediction on the labeled batch, with the host's logits held fixed (the
      host's own loss already trains them), so it trains the Semantic-guided Unit and, through it, the host's
      features; it joins the host's optimizer step (see :mod:`benchmark.method`).
    * The suite's additions, off by default, not in the paper: ``align``, an InfoNCE loss over classes between
      the batch's text-guided prototypes and the class tokens; ``head``, a cosine head on visual prototypes
      (an average of the raw features per class) trained with cross-entropy (``head_weight``) and mixed into
      the output probabilities with weight ``blend``.

    The paper's episodic training on natural images has no counterpart in this protocol (source and target are
    two labeled and unlabeled medical modalities). Defaults were set without looking at target labels.
    """

    version = "2"
    HPARAMS: ClassVar[dict[str, HParam]] = {
        "text_encoder": HParam(DEFAULT_ENCODER, None, "'minilm' (offline, default) or 'openclip:[ARCH:]/path'"),
        "fusion": HParam(0.3, uniform(0.0, 0.6), "weight of the text-guided prediction beside the host's "
                                                 "(0.3: the paper's 0.7 visual / 0.3 text; 0: the host alone)"),
        "temperature": HParam(0.1, log_uniform(0.03, 0.3), "temperature of the cosine similarities"),
        "momentum": HParam(0.9, uniform(0.8, 0.99), "EMA momentum of the text-guided prototypes"),
        "heads": HParam(8, None, "attention heads of the Semantic-guided Unit (must divide the feature width)"),
        "adain": HParam(True, None, "ADaIN feature-style augmentation of the support features in training"),
        "adain_strength": HParam(0.3, uniform(0.1, 0.5), "strength of the ADaIN perturbations"),
        "adain_styles": HParam(",".join(STYLES), None,
                               "perturbations ADaIN draws from, comma-separated: " + ", ".join(STYLES)),
        "align": HParam(False, None, "suite's addition: InfoNCE between text-guided prototypes and class tokens"),
        "align_weight": HParam(0.1, log_uniform(0.01, 1.0), "weight of the InfoNCE loss (with align)"),
        "head": HParam(False, None, "suite's addition: a cosine head on visual prototypes, blended in"),
        "head_weight": HParam(0.2, log_uniform(0.02, 1.0), "weight of the cosine head's cross-entropy (with head)"),
        "blend": HParam(0.3, uniform(0.0, 0.6), "weight of the cosine head's probabilities (with head)"),
    }

    def __init__(self, ctx: MethodContext, hparams: dict[str, Any], feature_channels: int):
        super().__init__(ctx, hparams, feature_channels)
        names, descriptions = self.class_texts(ctx)
        if len(names) != ctx.num_classes:
            raise ValueError(f"cdtg: {len(names)} class descriptions for a segmenter of {ctx.num_classes} classes.")
        self.check_hparams(hparams)
        heads = int(hparams["heads"])
        if feature_channels % heads:
            raise UsageError(f"cdtg: heads={hparams['heads']} does not divide the host's feature width "
                             f"{feature_channels}; choose a divisor of {feature_channels} (e.g. cdtg:heads=1).")
        self.augment = FeatureStyleAugmentation(parse_styles(hparams["adain_styles"]), hparams["adain_strength"])
        text = torch.from_numpy(class_embeddings(descriptions, names, hparams["text_encoder"]))
        self.class_names = tuple(names)
        self.register_buffer("text_embeddings", text)
        self.unit = SemanticGuidedUnit(text.shape[1], feature_channels, heads)
        c = ctx.num_classes
        self.register_buffer("prototypes", torch.zeros(c, feature_channels))
        self.register_buffer("seen", torch.zeros(c, dtype=torch.bool))
        self.register_buffer("visual_prototypes", torch.zeros(c, feature_channels))
        self.register_buffer("visual_seen", torch.zeros(c, dtype=torch.bool))

    @classmethod
    def check_hparams(cls, hparams: dict[str, Any]) -> None:
        parse_styles(hparams["adain_styles"])
        if int(hparams["heads"]) < 1:
            raise UsageError(f"cdtg: heads={hparams['heads']} is impossible; the attention needs at least one head.")

    @classmethod
    def provenance(cls, adapter: Any, hparams: dict[str, Any]) -> dict[str, str]:
        texts = adapter.class_descriptions()
        spec = EncoderSpec.parse(hparams["text_encoder"])
        encoder = spec.kind if spec.kind == "minilm" else f"{spec.kind}-{spec.arch}"
        return {"descriptions": f"{adapter.descriptions_path().name} v{texts['version']}", "encoder": encoder}

    @staticmethod
    def class_texts(ctx: MethodContext) -> tuple[list[str], dict[str, list[str]]]:
        """Class names in label order (background first) and their captions."""
        if ctx.describe is not None:
            texts = ctx.describe()
            return list(texts["order"]), texts["classes"]
        names = ["background", *ctx.class_names]
        names += [f"class {k}" for k in range(len(names), ctx.num_classes)]
        return names, {n: [f"A photo of the {n} in a medical image."] for n in names}

    # -- the parts --------------------------------------------------------------------------------------------
    def tokens(self) -> torch.Tensor:
        """The class tokens (C, F): the text MLP on the frozen text embeddings."""
        return self.unit.text_mlp(self.text_embeddings)

    def guided(self, features: torch.Tensor) -> torch.Tensor:
        """Text-guided features (B, F, H, W) of the Semantic-guided Unit."""
        return self.unit(features, self.tokens())

    def text_prototypes(self, batch: torch.Tensor | None = None, present: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """Text-guided prototypes (C, F): the moving average where seen, the class token where not; with a
        training batch's prototypes, the average as this batch updates it, the batch's share keeping its gradient."""
        seen, bank = self.seen.clone(), self.prototypes.clone()  # the buffers move after this step
        out = torch.where(seen[:, None], bank, self.tokens())
        if batch is not None:
            mixed = moved_average(bank, seen, batch, self.hparams["momentum"])
            out = torch.where(present[:, None], mixed, out)
        return out

    def alignment_loss(self, prototypes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``align``: InfoNCE over classes, each present class's prototype against every class's token."""
        logits = F.normalize(prototypes[present], dim=1) @ F.normalize(self.tokens(), dim=1).T
        return F.cross_entropy(logits / self.hparams["temperature"], present.nonzero().squeeze(1))

    def fuse(self, host: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(1 - fusion) * host + fusion * text`` logits."""
        w = self.hparams["fusion"]
        if text.shape[-2:] != host.shape[-2:]:
            text = F.interpolate(text, size=host.shape[-2:], mode="bilinear", align_corners=False)
        return (1 - w) * host + w * text

    def _track(self, bank: torch.Tensor, seen: torch.Tensor, batch: torch.Tensor, present: torch.Tensor) -> None:
        """Move the moving average ``bank`` towards ``batch`` for the present classes (first sighting: set it)."""
        with torch.no_grad():
            update = moved_average(bank, seen, batch, self.hparams["momentum"])
            bank.copy_(torch.where(present[:, None], update, bank))
            seen |= present

    # -- the plug-in contract ---------------------------------------------------------------------------------
    def loss(self, features: torch.Tensor, labels: torch.Tensor, step: int,
             head: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        hp = self.hparams
        onehot = F.one_hot(labels, self.ctx.num_classes).permute(0, 3, 1, 2).to(features.dtype)
        if onehot.shape[-2:] != features.shape[-2:]:
            onehot = F.interpolate(onehot, size=features.shape[-2:], mode="area")
            labels = onehot.argmax(1)
        query = self.guided(features)
        support = self.guided(self.augment(features)) if hp["adain"] else query
        batch, present = masked_average(support, onehot)
        text = cosine_logits(query, self.text_prototypes(batch, present), hp["temperature"])
        seg = dice_ce_loss(self.fuse(head(features).detach(), text), labels)
        self._track(self.prototypes, self.seen, masked_average(query.detach(), onehot)[0], present)
        total, logs = seg, {"seg": seg.item()}
        if hp["align"]:
            align = self.alignment_loss(batch, present)
            total = total + hp["align_weight"] * align
            logs["align"] = align.item()
        if hp["head"]:
            visual = masked_average(features, onehot)[0]
            self._track(self.visual_prototypes, self.visual_seen, visual.detach(), present)
            cos = F.cross_entropy(cosine_logits(features, self.visual_prototypes, hp["temperature"]), labels)
            total = total + hp["head_weight"] * cos
            logs["head"] = cos.item()
        return total, logs

    @property
    def has_head(self) -> bool:
        return self.hparams["fusion"] > 0 or self.hparams["head"]

    def blend(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        if hp["fusion"] > 0:
            logits = self.fuse(logits, cosine_logits(self.guided(features), self.text_prototypes(),
                                                     hp["temperature"]))
        if not hp["head"]:
            return logits
        head = cosine_logits(features, self.visual_prototypes, hp["temperature"])
        if head.shape[-2:] != logits.shape[-2:]:
            head = F.interpolate(head, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        probs = (1 - hp["blend"]) * logits.softmax(1) + hp["blend"] * head.softmax(1)
        return probs.clamp_min(1e-12).log()
