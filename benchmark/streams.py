"""The data streams of the method contract: what each stream holds, which volumes feed it, and its batch.

A method declares the streams it reads (:attr:`benchmark.method.Method.streams`); the trainer builds exactly those
(:func:`build_streams`) and hands the method a :class:`Batch` per step. Which volumes feed a stream is the
protocol's few-shot rule, written here once:

* ``source``: the K labeled source training volumes chosen by the seed (:func:`benchmark.protocol.select_labeled`);
* ``source_unlabeled``: the other source training volumes, images only (with ``shots=all`` none is left, and the
  labeled volumes' images serve instead);
* ``source_all``: every source training volume, images only;
* ``target``: every target training volume, images only (target labels never reach a method);
* ``target_labeled``: K labeled target training volumes chosen by the same rule (the ``oracle`` reference only).

Target *test* volumes feed no stream: they are used only for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UsageError
from .protocol import TrialSpec, parse_direction, select_labeled

#: The streams a method can ask for, and whether each carries labels.
STREAMS = {
    "source": True,
    "source_unlabeled": False,
    "source_all": False,
    "target": False,
    "target_labeled": True,
}


@dataclass
class Batch:
    """Tensors (B, 1, H, W) for images and (B, H, W) int64 for labels; absent streams are None."""

    source_x: torch.Tensor | None = None
    source_y: torch.Tensor | None = None
    source_unlabeled_x: torch.Tensor | None = None
    source_all_x: torch.Tensor | None = None
    target_x: torch.Tensor | None = None
    target_labeled_x: torch.Tensor | None = None
    target_labeled_y: torch.Tensor | None = None

    def to(self, device: torch.device | str, memory_format: torch.memory_format = torch.preserve_format) -> "Batch":
        """The batch on ``device``; images (4D) in ``memory_format`` (e.g. ``torch.channels_last``), labels int64
        (compact uint8 labels, as a drawing process sends them, are widened after the move)."""
        return Batch(**{k: (None if v is None else _widen(v.to(device, non_blocking=True,
                                                                memory_format=memory_format if v.dim() == 4
                                                                else torch.preserve_format)))
                        for k, v in vars(self).items()})


def _widen(t: torch.Tensor) -> torch.Tensor:
    return t.long() if t.dtype == torch.uint8 else t


@dataclass(frozen=True)
class Stream:
    """The volumes (case IDs of one modality) a stream draws its slices from, and whether it carries labels."""

    modality: str
    cases: list[str]
    labeled: bool


def build_streams(adapter, spec: TrialSpec, wanted: tuple[str, ...]) -> dict[str, Stream]:
    """The volumes of each stream in ``wanted`` for the trial ``spec``, by the rules above."""
    source, target = parse_direction(spec.direction, adapter.modalities)
    src_train = adapter.cases(source, "train")
    labeled = select_labeled(src_train, spec.shots, spec.seed, dataset=adapter.name, modality=source)
    streams: dict[str, Stream] = {}
    for name in wanted:
        if name == "source":
            streams[name] = Stream(source, labeled, True)
        elif name == "source_unlabeled":
            rest = [c for c in src_train if c not in labeled]
            streams[name] = Stream(source, rest or list(labeled), False)
        elif name == "source_all":
            streams[name] = Stream(source, list(src_train), False)
        elif name == "target":
            streams[name] = Stream(target, adapter.cases(target, "train"), False)
        elif name == "target_labeled":
            streams[name] = Stream(target, select_labeled(adapter.cases(target, "train"), spec.shots, spec.seed,
                                                          dataset=adapter.name, modality=target), True)
        else:
            raise UsageError(f"Method {spec.method!r} asks for an unknown data stream {name!r}; the streams are "
                             f"{', '.join(STREAMS)}.")
    return streams
