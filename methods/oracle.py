"""``oracle``: the upper reference row of every leaderboard."""

from benchmark.method import SupervisedMethod
from benchmark.registry import register_method


@register_method("oracle")
class Oracle(SupervisedMethod):
    """The same U-Net trained on K labeled *target* volumes (upper bound for K shots).

    The K target training volumes are chosen by the same seeded rule as the source shots; target test volumes
    stay unseen. ``gap_closed`` in the leaderboards is measured between ``source_only`` and this row.
    """

    streams = ("target_labeled",)
    labeled_stream = "target_labeled"
