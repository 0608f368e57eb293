"""``python -m benchmark``: run, ls, leaderboard, publish, compare, prepare, validate, visualize, evaluate, predict.

Usage errors (an unknown method, an impossible shot count, a bad option) exit with code 2 and a one-paragraph
message; other errors a user can cause (a corrupt file, a failed trial) exit with code 1 and print no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .cli_scoring import (DEFAULT_OUT, add_scoring_parsers, add_trial_selectors, cmd_compare, cmd_evaluate,
                          cmd_predict, leaderboards_dir, trial_selection)
from .errors import BenchmarkError, UsageError



def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _int_list(value: str) -> list[int]:
    out: list[int] = []
    for item in _csv(value):
        try:
            if "-" in item[1:]:
                lo, hi = item.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(item))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not an integer or a range like 0-4") from None
    return out


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with every option's default, except empty ones (no value, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # exit 2 with a sentence, as argparse does, but never a traceback
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: {message}")


def build_parser(prog: str = "python -m benchmark") -> argparse.ArgumentParser:
    """The command line; ``prog`` is how usage lines name the command (``fsuda-benchmark`` or ``python -m ...``)."""
    from . import __version__
    from .presets import PRESETS

    presets = "{" + ",".join(PRESETS) + "}"
    p = _Parser(prog=prog, description=__doc__.splitlines()[0].replace("``python -m benchmark``", prog))
    p.add_argument("--version", action="version", version=f"fsuda-benchmark {__version__}",
                   help="print the version and stop")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND",
                           help="one of the commands below; COMMAND --help describes its options")
    _add_run_parser(sub, presets)
    from .tune import add_tune_parser

    add_tune_parser(sub, presets, _csv, _int_list)

    sub.add_parser("ls", help="list methods and datasets with where each was loaded from")

    lb = sub.add_parser("leaderboard", help="print the leaderboards of a run directory or of leaderboards/")
    lb.add_argument("dir", nargs="?", default=DEFAULT_OUT, help="a run directory (--out of run) or leaderboard CSVs")
    lb.add_argument("--format", default="text", choices=("text", "markdown", "latex"),
                    help="latex: a booktabs table per track, best per column in bold, 95%% intervals")

    pub = sub.add_parser("publish", help="merge a run's rows into leaderboards/<dataset>/<direction>.csv")
    pub.add_argument("dir", nargs="?", default=None, help=f"the run directory (--out of run) to publish (default: "
                                                          f"{DEFAULT_OUT})")
    pub.add_argument("--to", default=None,
                     help="leaderboards directory (default: the checkout's leaderboards/; an installed copy needs it)")
    pub.add_argument("--selection", default=None,
                     help="a selection study's policies to publish as rows (default: every policy)")
    pub.add_argument("--replace", action="store_true", help="allow replacing a row by one with fewer seeds")
    pub.add_argument("--allow-dirty", action="store_true",
                     help="allow rows whose trials ran from a tree with uncommitted changes")
    pub.add_argument("--dry-run", action="store_true", help="print what would be added and replaced; write nothing")
    pub.add_argument("--rerender", action="store_true",
                     help="publish no rows: draw every board's figures again from its published tables (after a "
                          "change to how figures are drawn); refused if a table would change")

    pr = sub.add_parser("prepare", help="build a dataset's slice cache")
    pr.add_argument("dataset", nargs="?", default="synthetic-heart", help="a registered dataset, as ls lists them")
    pr.add_argument("--root", "--data-root", dest="root", default=None, help="where a real dataset's files are")
    pr.add_argument("--preset", default="quick", metavar=presets, help="the preset whose slice size to prepare")
    pr.add_argument("--workers", type=int, default=None, help="processes reading volumes (default: all cores)")

    va = sub.add_parser("validate", help="check every file of a dataset before any training")
    va.add_argument("dataset", help="a registered dataset, as ls lists them")
    va.add_argument("--root", "--data-root", dest="root", default=None, help="where the dataset's files are")
    va.add_argument("--workers", type=int, default=None, help="processes reading volumes (default: all cores)")

    vi = sub.add_parser("visualize", help="save a PNG grid of a finished trial's images, hallucinations or "
                                          "translations, and target predictions")
    vi.add_argument("method", nargs="?", default=None, help="e.g. metahallu (optional with --trial)")
    add_trial_selectors(vi, presets)
    vi.add_argument("--rows", type=int, default=4, help="examples to draw")
    vi.add_argument("--png", default=None, help="where to write (default: <out>/figures/...png)")
    add_scoring_parsers(sub, presets)
    return p


def _add_run_parser(sub, presets: str) -> None:
    from .tracking import TRACKERS

    be = sub.add_parser("bench", help="training steps per second, peak memory and sampler throughput per method on "
                                      "this machine's device, beside a bare PyTorch loop and the GEMM rate")
    be.add_argument("--methods", type=_csv, default=None, help="comma-separated entries (default: every method)")
    be.add_argument("--preset", default="quick", metavar=presets, help="the preset whose model and batch to time")
    be.add_argument("--steps", type=int, default=20, help="training steps timed per method")
    be.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default); ignored on a GPU")
    be.add_argument("--workers", type=int, default=None,
                    help="batch-drawing processes of the input pipeline timed for source_only (default: as a GPU "
                         "trial gets, one per CPU core; on a CPU, this machine's cores)")
    be.add_argument("--precision", default="auto", metavar="{auto,fp32,bf16,fp16}", help="as for run")
    be.add_argument("--memory-format", default="auto", metavar="{auto,contiguous,channels_last}", help="as for run")
    be.add_argument("--json", default="runs/bench.json", help="where the report is written")

    r = sub.add_parser("run", help="train and evaluate methods over shots, directions and seeds (Ray Tune)",
                       description="Train and evaluate every (direction, method, shots, seed) trial on Ray Tune, "
                                   "showing their progress, and write the leaderboards; finished trials are skipped.")
    r.add_argument("--methods", type=_csv, default="source_only,oracle",
                   help="comma-separated method names (ls lists them); a method may set "
                        "hyperparameters after colons, e.g. metahallu:meta=false, which is its own leaderboard row, "
                        "and compose plug-ins after '+', each with its own settings, e.g. "
                        "metahallu+cdtg or source_only+cdtg:blend=0.5")
    r.add_argument("--shots", type=_csv, default="1,4", help="labeled volumes per trial: e.g. 1,4 or all")
    r.add_argument("--directions", type=_csv, default=None,
                   help="source2target, e.g. mr2ct,ct2mr (default: both ways)")
    r.add_argument("--seeds", type=_int_list, default="0,1,2", help="e.g. 0,1,2 or 0-4")
    r.add_argument("--dataset", default="synthetic-heart", help="a registered dataset, as ls lists them")
    r.add_argument("--data-root", default=None, help="where a real dataset's files are")
    r.add_argument("--preset", default="quick", metavar=presets,
                   help="the training budget: slice size, steps, batch size, backbone")
    r.add_argument("--steps", type=int, default=None, help="override the preset's number of training steps")
    r.add_argument("--hparam-samples", type=_int_list, default="0",
                   help="hyperparameter samples (0 = defaults); e.g. 0-4")
    r.add_argument("--selection", default="last",
                   help="model-selection policies, each its own rows from the same trials: last, source-val, "
                        "entropy, im, snd, oracle-target (an upper bound, never a result); any but last alone makes "
                        "the trials a selection study, which holds out 20%% of the labeled slices for source-val")
    r.add_argument("--select-every", type=int, default=None,
                   help="a selection study's candidate interval in steps (default: the preset's checkpoint_every)")
    r.add_argument("--out", default=DEFAULT_OUT, help="results directory")
    r.add_argument("--cpus-per-trial", default="auto",
                   help="CPU cores Ray reserves for each trial: a number, or auto (the default): 1 on a cluster "
                        "without GPUs, else a GPU node's CPUs shared among the trials its GPUs run at once")
    r.add_argument("--gpus-per-trial", default="auto",
                   help="GPUs Ray reserves for each trial: auto (one when the cluster has GPUs, else none), or a "
                        "number; fractions share one GPU, e.g. 0.25")
    r.add_argument("--precision", default="auto", metavar="{auto,fp32,bf16,fp16}",
                   help="the training step's precision: auto (bfloat16 autocast on a GPU that supports it, float16 "
                        "with loss scaling on an older GPU, float32 on a CPU), fp32, bf16 or fp16 (on a CPU too, "
                        "slowly without instructions for them); a method with second-order gradients trains in "
                        "float32 and says so")
    r.add_argument("--memory-format", default="auto", metavar="{auto,contiguous,channels_last}",
                   help="how models and batches are stored: auto (channels-last on a GPU, contiguous on a CPU, as "
                        "the published rows), contiguous, or channels_last (faster convolutions on a CPU too, with "
                        "numbers that differ from a contiguous trial's)")
    r.add_argument("--address", default=None, help="an existing Ray cluster (default: RAY_ADDRESS or a local Ray)")
    r.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    r.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    r.add_argument("--tracker", choices=list(TRACKERS), default=None,
                   help="also log the trials' losses to an experiment tracker (default: none); it stays local: "
                        "TensorBoard files, an MLflow store in <out>/mlruns, wandb offline, unless "
                        "MLFLOW_TRACKING_URI or WANDB_MODE say otherwise")
    noise = r.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true", help="print only the plan, errors and the final summary")
    noise.add_argument("-v", "--verbose", action="store_true",
                       help="also print every line the trials log (steps, evaluation)")


def cmd_run(args: argparse.Namespace) -> int:
    from .leaderboard import build_rows, format_table, write_leaderboards
    from .progress import NORMAL, QUIET, VERBOSE, RunDisplay
    from .protocol import row_name
    from .runner import build_grid, run_grid, run_lock
    from .selection import expand_selections
    from .store import ResultsStore
    from .tracking import check_tracker, where_tracked

    if args.tracker is not None:
        check_tracker(args.tracker)
    from .resources import check_trial_request, parse_cpus, parse_gpus

    gpus_per_trial = parse_gpus(args.gpus_per_trial)
    args.cpus_per_trial = parse_cpus(args.cpus_per_trial)
    check_trial_request(args.cpus_per_trial, args.steps)
    policies, validation = _study(args)
    specs = build_grid(dataset=args.dataset, methods=args.methods, shots=args.shots, directions=args.directions,
                       seeds=args.seeds, preset=args.preset, hparam_samples=args.hparam_samples,
                       data_root=args.data_root, preset_overrides={"steps": args.steps}, precision=args.precision,
                       memory_format=args.memory_format, validation=validation)
    out = Path(args.out)
    store = ResultsStore(out)
    states = [store.status(s) for s in specs]
    n_ok, n_failed = states.count("ok"), states.count("failed")
    to_run = len(specs) - n_ok - (0 if args.retry_failed else n_failed)
    n_methods = len({row_name(s.method, s.variant, s.plugins) for s in specs})
    dims = (f"{n_methods} methods x {len(set(str(s.shots) for s in specs))} shot counts x "
            f"{len(set(s.direction for s in specs))} directions x {len(args.seeds)} seeds"
            + (f" x {len(args.hparam_samples)} hyperparameter samples" if len(args.hparam_samples) > 1 else ""))
    asked = "".join(f", {what} {value}" for what, value in (("precision", specs[0].precision),
                                                            ("memory format", specs[0].memory_format))
                    if specs and value != "auto")
    print(f"Plan: {len(specs)} trials ({dims}) on {args.dataset}, preset {args.preset}{asked}.")
    print(f"      {n_ok} already finished, {n_failed} failed earlier"
          f" ({'to retry' if args.retry_failed else 'kept; --retry-failed runs them again'}), {to_run} to run.")
    if validation:
        print(f"      Selection study: rows for {', '.join(policies)}; {validation['source_val']:.0%} of the labeled "
              f"slices held out for source-val, candidates every {validation['select_every']} steps.")
    print(f"      Results: {out / 'trials'}   Leaderboards: {out / 'leaderboards'}")
    if args.tracker is not None:
        print(f"      Tracking: {where_tracked(args.tracker, out)}")
    if args.dry_run:
        return 0
    mode = QUIET if args.quiet else VERBOSE if args.verbose else NORMAL
    t0 = time.perf_counter()
    with run_lock(out):
        summary = run_grid(specs, out, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=gpus_per_trial,
                           address=args.address, retry_failed=args.retry_failed, display=RunDisplay(mode=mode),
                           log=_silent if mode == QUIET else print, tracker=args.tracker)
        raw = list(store.records())
        paths = write_leaderboards(raw, out / "leaderboards", policies)
        records = expand_selections(raw, policies)
    rows = build_rows(records)
    print()
    print(format_table(rows))
    print()
    print(f"Done in {time.perf_counter() - t0:.0f} s: {summary.ran} trials run ({summary.ok} ok, {summary.failed} "
          f"failed), {summary.skipped} skipped as already recorded.")
    for p in paths:
        print(f"Leaderboard: {p}")
    failed = [r for r in (store.read(s) for s in specs) if r is not None and r["status"] == "failed"]
    if failed:
        print(f"\n{len(failed)} trial(s) of this plan failed; their records are kept in {out / 'trials'}:",
              file=sys.stderr)
        for r in failed:
            print(f"  {r['label']} ({r['trial_id']}): {r['error'].splitlines()[0][:300]}", file=sys.stderr)
        return 1
    return 0


def _study(args: argparse.Namespace) -> tuple[list[str], dict]:
    """The run's selection policies and, when any but ``last`` is asked for, its study settings."""
    from .presets import select_interval
    from .selection import parse_selection
    from .validators import DEFAULT_HOLDOUT

    policies = parse_selection(args.selection)
    if policies == ["last"]:
        if args.select_every is not None:
            raise UsageError("--select-every sets a selection study's candidates; add policies with --selection, "
                             "e.g. --selection last,source-val,snd,oracle-target.")
        return policies, {}
    return policies, {"source_val": DEFAULT_HOLDOUT, "select_every": select_interval(args.preset, args.select_every)}


def _silent(line: str) -> None:
    """A log that shows nothing (``run --quiet``)."""


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_report, run_bench, write_report

    report = run_bench(args.methods, preset=args.preset, steps=args.steps, threads=args.threads or None,
                       precision=args.precision, memory_format=args.memory_format, workers=args.workers)
    print(format_report(report))
    print(f"Report: {write_report(report, Path(args.json))}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from . import registry

    registry.discover()
    for reg in (registry.METHODS, registry.PLUGINS, registry.DATASETS):
        print(f"{reg.kind}:")
        if not len(reg):
            print(f"  (none; looked in {'; '.join(registry.search_locations(reg.kind))})")
        for entry in reg:
            alias = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            print(f"  {entry.name:<18} {entry.description}{alias}")
            print(f"  {'':<18} from {_short(entry.source)}")
    return 0


def _short(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _load_rows(directory: Path):
    import pandas as pd

    from .leaderboard import build_rows, read_leaderboard
    from .leaderboard_publish import board_csvs
    from .store import ResultsStore

    if (directory / "trials").is_dir():
        return build_rows(list(ResultsStore(directory).records()))
    csvs = board_csvs(directory.glob("*/*.csv")) or board_csvs(directory.glob("*.csv"))
    if not csvs:
        raise UsageError(f"{directory} holds neither a run (a trials/ folder) nor leaderboard CSVs.")
    return pd.concat([read_leaderboard(p) for p in csvs], ignore_index=True)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import format_latex, format_table, render_markdown

    directory = Path(args.dir)
    if not directory.exists():
        raise UsageError(f"{directory} does not exist; pass a run directory (--out of run) or leaderboards/.")
    rows = _load_rows(directory)
    if rows.empty:
        raise UsageError(f"{directory} has no finished trials yet.")
    print({"text": format_table, "markdown": render_markdown, "latex": format_latex}[args.format](rows))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .leaderboard import build_rows, publish, volume_rows
    from .store import ResultsStore

    if args.rerender:
        return _rerender(args)
    directory = Path(args.dir or DEFAULT_OUT)
    if not (directory / "trials").is_dir():
        raise UsageError(f"{directory} is not a run directory (it has no trials/ folder); pass the --out of a run.")
    from .selection import expand_selections, parse_selection

    from .leaderboard_validators import validator_tables

    target = leaderboards_dir(args.to)
    raw = list(ResultsStore(directory).records())
    records = expand_selections(raw, None if args.selection is None else parse_selection(args.selection))
    rows = build_rows(records)
    if rows.empty:
        raise UsageError(f"{directory} has no finished trials to publish.")
    for path in publish(rows, target, volumes=volume_rows(records), validators=validator_tables(raw),
                        replace=args.replace, allow_dirty=args.allow_dirty, dry_run=args.dry_run, log=print):
        print(f"Published {path}")
    return 0


def _rerender(args: argparse.Namespace) -> int:
    from .leaderboard_publish import rerender
    from .store import git_commit

    if args.dir is not None or args.selection is not None or args.replace:
        raise UsageError("publish --rerender publishes no rows, so it takes no run directory, --selection or "
                         "--replace; run it alone (with --to, --dry-run or --allow-dirty).")
    commit = git_commit()
    if commit.endswith("-dirty") and not args.allow_dirty and not args.dry_run:
        raise UsageError(f"Re-rendering refused, nothing was written: the checkout has uncommitted changes "
                         f"({commit}), so the figures would come from code no commit holds. Commit first, or pass "
                         f"--allow-dirty.")
    for path in rerender(leaderboards_dir(args.to), dry_run=args.dry_run, log=print):
        print(f"Wrote {path}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from . import get_dataset
    from .cache import PreprocessSettings, prepare
    from .presets import get_preset
    from .store import human_size

    adapter = get_dataset(args.dataset, args.root)
    settings = PreprocessSettings(size=get_preset(args.preset)["size"])
    t0 = time.perf_counter()
    cache = prepare(adapter, settings, workers=args.workers)
    n = sum(len(v) for v in cache.index["cases"].values())
    print(f"Slice cache ready: {cache.path} ({n} volumes, {human_size(cache.path)}, {time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from . import get_dataset
    from .validate import validate

    adapter = get_dataset(args.dataset, args.root)
    t0 = time.perf_counter()
    report = validate(adapter, workers=args.workers)
    if not report.ok:
        for problem in report.problems:
            print(problem)
        print(f"error: {len(report.problems)} problem(s) in {args.dataset} at {adapter.root}; fix them and run "
              f"validate again.", file=sys.stderr)
        return 1
    print(report.table())
    for note in report.notes:
        print(f"note: {note}")
    print(f"{args.dataset}: all {len(report.cases)} volumes passed ({time.perf_counter() - t0:.1f} s).")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from .visualize import visualize

    fig = visualize(args.out, args.method, png=args.png, rows=args.rows, **trial_selection(args))
    print(f"Saved {fig.path} ({fig.rows} rows: {', '.join(fig.columns)})")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .tune import cmd_tune as tune

    return tune(args)


COMMANDS = {"run": cmd_run, "tune": cmd_tune, "bench": cmd_bench, "ls": cmd_ls, "leaderboard": cmd_leaderboard,
            "publish": cmd_publish,
            "prepare": cmd_prepare, "validate": cmd_validate, "visualize": cmd_visualize,
            "evaluate": cmd_evaluate, "predict": cmd_predict, "compare": cmd_compare}


def prog_name(argv0: str | None = None) -> str:
    """How usage lines name the command: the console script by its name, else ``python -m benchmark``."""
    name = Path(sys.argv[0] if argv0 is None else argv0).name
    return "fsuda-benchmark" if name.startswith("fsuda-benchmark") else "python -m benchmark"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        args = build_parser(prog_name()).parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        from .runner import INTERRUPTED

        print(INTERRUPTED, file=sys.stderr)
        return 130
