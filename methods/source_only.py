"""``source_only``: the lower reference row of every leaderboard."""

from benchmark.method import SupervisedMethod
from benchmark.registry import register_method


@register_method("source_only")
class SourceOnly(SupervisedMethod):
    """U-Net trained on the K labeled source volumes only; no adaptation (lower bound).

    Standard 2D augmentation (affine, brightness/contrast, noise) from the shared data pipeline; Dice +
    cross-entropy; the unlabeled source and target volumes are not used.
    """

    streams = ("source",)
    labeled_stream = "source"
