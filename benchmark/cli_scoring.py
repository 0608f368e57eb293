"""The scoring commands of ``python -m benchmark``: ``evaluate`` (any model's predictions), ``predict`` (a trial's
model on a new scan) and ``compare`` (paired comparisons of a track's rows)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UsageError

DEFAULT_OUT = "runs"


def add_trial_selectors(parser, presets: str) -> None:
    """The options that pick one finished trial of a run (``visualize``, ``predict``)."""
    parser.add_argument("--out", default=DEFAULT_OUT, help="the run's results directory")
    parser.add_argument("--trial", default=None, help="a trial id (its folder name under <out>/trials)")
    parser.add_argument("--direction", default=None, help="the trial's direction, e.g. mr2ct")
    parser.add_argument("--shots", default=None, help="the trial's shots, e.g. 4 or all")
    parser.add_argument("--seed", type=int, default=None, help="the trial's seed")
    parser.add_argument("--dataset", default=None, help="the trial's dataset")
    parser.add_argument("--preset", default=None, metavar=presets, help="the trial's preset")
    parser.add_argument("--hparam-sample", type=int, default=None, help="the trial's hyperparameter sample")


def trial_selection(args: argparse.Namespace) -> dict:
    """The trial selectors of :func:`add_trial_selectors` as keyword arguments of
    :func:`benchmark.visualize.find_trial`."""
    return {"trial_id": args.trial, "dataset": args.dataset, "direction": args.direction, "shots": args.shots,
            "seed": args.seed, "preset": args.preset, "hparam_sample": args.hparam_sample}


def add_scoring_parsers(sub, presets: str) -> None:
    ev = sub.add_parser("evaluate", help="score a folder of NIfTI predictions of a dataset's test cases with the "
                                         "protocol's metrics, on each label file's own grid")
    ev.add_argument("--dataset", default="synthetic-heart", help="a registered dataset, as ls lists them")
    ev.add_argument("--root", "--data-root", dest="root", default=None, help="where a real dataset's files are")
    ev.add_argument("--predictions", required=True, help="folder of <modality>_<case id>.nii.gz files")
    ev.add_argument("--modality", default=None, help="the modality predicted (default: the dataset's last, e.g. ct)")
    ev.add_argument("--labels", default="auto", choices=("auto", "raw", "indices"),
                    help="the files' label values: the dataset's raw values or the suite's class indices")
    ev.add_argument("--out", default="evaluation", help="where per_volume.csv and summary.csv are written")
    ev.add_argument("--name", default=None, help="the model's name for --publish (row external:NAME)")
    ev.add_argument("--shots", default=None, help="with --publish: the labeled source volumes the model used")
    ev.add_argument("--direction", default=None, help="with --publish: the track (default: <other>2<modality>)")
    ev.add_argument("--publish", action="store_true", help="add an external:NAME row to the track's leaderboard")
    ev.add_argument("--to", default=None, help="with --publish: leaderboards directory (default: the checkout's)")

    cmp_ = sub.add_parser("compare", help="paired comparisons of a track's rows: mean difference, bootstrap 95%% "
                                          "interval, Wilcoxon p-value with Holm's correction")
    cmp_.add_argument("dir", nargs="?", default="leaderboards", help="a run directory or a leaderboards folder")
    cmp_.add_argument("--track", required=True, help="dataset/direction, e.g. synthetic-heart/mr2ct")
    cmp_.add_argument("--baseline", default=None, help="compare every row with this row name only (e.g. source_only)")
    cmp_.add_argument("--metric", default="dice", choices=("dice", "assd_mm", "hd95_mm", "all"),
                      help="the metric compared")

    pd_ = sub.add_parser("predict", help="segment a new scan with a finished trial's model, written on the scan's "
                                         "own grid and affine in the dataset's raw label values")
    pd_.add_argument("method", nargs="?", default=None, help="e.g. sifa_lite (optional with --trial)")
    pd_.add_argument("--input", required=True, help="the scan, a NIfTI file of the trial's target modality")
    pd_.add_argument("--output", required=True, help="where to write the segmentation (.nii.gz)")
    add_trial_selectors(pd_, presets)


def leaderboards_dir(to: str | None) -> Path:
    """Where publishing writes: ``to``, else the checkout's ``leaderboards/`` (an installed copy has none)."""
    from .registry import checkout_root

    if to is not None:
        return Path(to)
    checkout = checkout_root()
    if checkout is None or not (checkout / "leaderboards").is_dir():
        raise UsageError(f"No repository leaderboards/ folder is next to this copy of the suite "
                         f"({Path(__file__).parent}; an installed copy has none), so publish does not know where to "
                         f"write: pass --to DIR, e.g. the leaderboards/ folder of a clone of the repository.")
    return checkout / "leaderboards"


def _load_track(directory: Path, track: str):
    """(rows, per-volume table) of one track of a run directory or a leaderboards folder."""
    from .leaderboard import build_rows, read_leaderboard, read_volumes, track_rows, volume_rows
    from .leaderboard_stats import add_statistics
    from .protocol import PROTOCOL
    from .store import ResultsStore

    dataset, _, direction = track.partition("/")
    if not dataset or not direction:
        raise UsageError(f"Track {track!r} is not of the form dataset/direction, e.g. synthetic-heart/mr2ct.")
    if (directory / "trials").is_dir():
        records = [r for r in ResultsStore(directory).records()
                   if (r["config"]["dataset"], r["config"]["direction"], r["config"]["protocol"]) ==
                   (dataset, direction, PROTOCOL)]
        rows = track_rows(build_rows(records), dataset, direction) if records else None
        volumes = volume_rows(records).get((dataset, direction, PROTOCOL))
        if rows is not None and volumes is not None:
            rows = add_statistics(rows, volumes)
    else:
        board = directory / dataset / f"{direction}.csv"
        rows = read_leaderboard(board) if board.exists() else None
        volumes = read_volumes(board) if board.exists() else None
    if rows is None or rows.empty:
        raise UsageError(f"{directory} has no rows of track {track}.")
    if volumes is None or volumes.empty:
        raise UsageError(f"{directory} has no per-volume metrics of track {track} to compare rows with.")
    return rows, volumes


def cmd_compare(args: argparse.Namespace) -> int:
    from .leaderboard_stats import pairwise

    rows, volumes = _load_track(Path(args.dir), args.track)
    metrics = ("dice", "assd_mm", "hd95_mm") if args.metric == "all" else (args.metric,)
    if args.baseline is not None and args.baseline not in set(rows["method"]):
        raise UsageError(f"Track {args.track} has no row {args.baseline!r}; its rows: "
                         f"{', '.join(sorted(set(rows['method'])))}.")
    table = pairwise(rows, volumes, args.baseline, metrics)
    if table.empty:
        raise UsageError(f"Track {args.track} has no two rows of one group (shots, selection, preset) to compare.")
    print(f"{args.track}: paired over (seed, test volume); diff = a - b with its hierarchical bootstrap 95% "
          f"interval; Wilcoxon signed-rank p, Holm-corrected over the {len(table)} comparisons below.")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import get_dataset
    from .evaluate import evaluate_predictions, external_record
    from .leaderboard import build_rows, publish, volume_rows
    from .protocol import parse_direction, parse_shots

    adapter = get_dataset(args.dataset, args.root)
    if args.publish:  # check the row's identity before any work
        if not args.name or args.shots is None:
            raise UsageError("--publish needs --name NAME (the row is external:NAME) and --shots K (the labeled "
                             "source volumes the model was trained with).")
        shots = parse_shots(args.shots)
        modality = args.modality or adapter.modalities[-1]
        direction = args.direction or "2".join([*(m for m in adapter.modalities if m != modality)][:1] + [modality])
        if parse_direction(direction, adapter.modalities)[1] != modality:
            raise UsageError(f"Direction {direction} does not have {modality} as its target.")
        target = leaderboards_dir(args.to)
    result = evaluate_predictions(adapter, args.predictions, modality=args.modality, labels=args.labels,
                                  out=args.out)
    print(f"{adapter.name} {result.modality}: {len(result.volumes)} test volumes scored on their label files' grids; "
          f"label values: {result.label_values}.")
    print(result.summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for path in result.written:
        print(f"Wrote {path}")
    if args.publish:
        records = [external_record(result, adapter, args.name, direction, shots)]
        for path in publish(build_rows(records), target, volumes=volume_rows(records), log=print):
            print(f"Published {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict_scan

    done = predict_scan(args.out, args.input, args.output, method=args.method, **trial_selection(args))
    counts = ", ".join(f"{k} {v}" for k, v in done.voxels.items())
    print(f"Wrote {done.path} ({'x'.join(map(str, done.shape))} voxels, the input's grid) with trial "
          f"{done.trial_id} ({done.label}); voxels per structure: {counts}")
    return 0
