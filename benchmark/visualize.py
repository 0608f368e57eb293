"""``python -m benchmark visualize``: a PNG grid of what a finished trial's model does, for a researcher to look at.

One row per example. Columns: a labeled source slice with its label contours; for a method that exposes
``hallucinate`` (``metahallu``) the hallucination of the trial's initial hallucinator (step 0: the same seeded
initialisation, rebuilt), the trained hallucination with its warped label contours (for the paired hallucinator,
both hallucinated towards the target slice of the same row) and the transform (the sampling grid over the gain or
additive field), so a reader sees what training changed; for one that exposes ``translate`` (``cyclegan_uda``,
``sifa_lite``) the translated source slice with the source label; then a target test slice with the model's
predicted contours and the same slice with the ground-truth contours. Source and hallucination panels name their
intensity distribution's 1-Wasserstein distance to that target slice (label-free: lower is more target-like). The
weights are the trial's final weights (``model.pt`` in its directory of the results store), so a figure shows
exactly the model the leaderboard scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import torch

from . import registry
from .cache import PreprocessSettings, prepare
from .errors import BenchmarkError, UsageError
from .io import load_tensors
from .protocol import TrialSpec, derive_seed, parse_direction, row_name, select_labeled
from .runner import entry_row_name
from .store import ResultsStore
from .trainer import FINAL_WEIGHTS, build_method, method_context

#: Width and height of one panel, in inches at :data:`DPI`.
PANEL_INCHES, DPI = 2.4, 100
CONTOUR_COLORS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6")


@dataclass
class Figure:
    path: Path
    rows: int
    columns: tuple[str, ...]
    trial_id: str


def find_trial(store: ResultsStore, method: str | None = None, *, trial_id: str | None = None,
               dataset: str | None = None, direction: str | None = None, shots: str | int | None = None,
               seed: int | None = None, preset: str | None = None, hparam_sample: int | None = None
               ) -> dict[str, Any]:
    """The finished record of the one trial matching the selection, or a :class:`UsageError` saying why not."""
    if trial_id is not None:
        record = store.read(trial_id)
        if record is None:
            raise UsageError(f"No finished trial {trial_id!r} in {store.trials}; `python -m benchmark leaderboard "
                             f"{store.root}` lists what finished there.")
        if method is not None and _row(record["config"]) != entry_row_name(method):
            raise UsageError(f"Trial {trial_id} is a {_row(record['config'])} trial, not {method}.")
    else:
        if method is None:
            raise UsageError("Name a method (e.g. `visualize metahallu`) or a trial (--trial ID).")
        method = entry_row_name(method)
        wanted = {"dataset": dataset, "direction": direction,
                  "shots": None if shots is None else str(shots), "seed": seed, "preset": preset,
                  "hparam_sample": hparam_sample}
        records = [r for r in store.records() if _row(r["config"]) == method]
        matches = [r for r in records
                   if all(v is None or str(r["config"][k]) == str(v) for k, v in wanted.items())]
        if not matches:
            what = ", ".join([f"method {method}"] + [f"{k} {v}" for k, v in wanted.items() if v is not None])
            have = sorted({r["label"] for r in records})
            raise UsageError(
                f"No finished trial in {store.trials} matches {what}."
                + (f" Finished {method} trials there: {'; '.join(have[:10])}." if have else
                   f" It holds no finished {method} trial: run one first, e.g. `python -m benchmark run --methods "
                   f"{method} --out {store.root}`."))
        if len(matches) > 1:
            listing = "; ".join(f"{r['trial_id']} ({r['label']}, preset {r['config']['preset']})" for r in matches[:10])
            raise UsageError(f"{len(matches)} finished trials match; narrow the selection (--direction, --shots, "
                             f"--seed, --preset, --hparam-sample) or pass --trial ID. Matches: {listing}.")
        record = matches[0]
    if record["status"] != "ok":
        raise UsageError(f"Trial {record['trial_id']} ({record['label']}) failed, so it has no model to show: "
                         f"{str(record.get('error')).splitlines()[0][:300]}")
    return record


def _row(config: dict[str, Any]) -> str:
    """A trial's row name without its hyperparameter sample (which ``--hparam-sample`` selects)."""
    return row_name(config["method"], config.get("variant", ""), config.get("plugins", ()))


def load_trial_method(store: ResultsStore, record: dict[str, Any], device: str = "cpu"):
    """(method with the trial's final weights, spec, adapter, slice cache) of a finished trial."""
    spec = TrialSpec.from_dict(record["config"])
    weights = store.trials / spec.trial_id / FINAL_WEIGHTS
    if not weights.exists():
        raise UsageError(f"Trial {spec.trial_id} ({spec.label}) kept no final weights ({weights} is missing); it "
                         f"finished before trials kept them. Run it again into a new --out directory to inspect it.")
    registry.discover()
    adapter = registry.get_dataset(spec.dataset, spec.data_root)
    settings = spec.preset_settings
    cache = prepare(adapter, PreprocessSettings(size=settings["size"]), workers=1, log=lambda s: None)
    method = build_method(spec, method_context(spec, adapter, cache, torch.device(device))).to(device)
    state = load_tensors(weights, f"the final weights of trial {spec.trial_id}", map_location=device)
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as exc:
        raise BenchmarkError(
            f"The final weights {weights} of trial {spec.trial_id} ({spec.label}) do not fit {spec.method} as the "
            f"code now defines it ({str(exc).splitlines()[0]}); they were saved by other code. Run the trial again "
            f"into a new --out directory to inspect it.") from None
    method.eval()
    return method, spec, adapter, cache


def _pick_slices(cache, modality: str, cases: list[str], rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``rows`` (image, label) slices, cycling over ``cases``: per case, slices with the most structures shown."""
    per_case = []
    for case in cases:
        images, labels, _ = cache.volume(modality, case)
        if labels is None:
            continue
        score = np.array([len(np.unique(s)) * 1e6 + np.count_nonzero(s) for s in labels])
        order = [int(i) for i in np.argsort(-score, kind="stable")]
        # spread the picks over the volume: best slice first, then the best ones at least 3 slices from it
        picks: list[int] = []
        for i in order:
            if all(abs(i - j) >= 3 for j in picks):
                picks.append(i)
            if len(picks) == rows:
                break
        per_case.append([(np.asarray(images[i], dtype=np.float32), np.asarray(labels[i])) for i in picks])
    if not per_case:
        raise UsageError(f"No labeled {modality} volume to draw slices from.")
    out = []
    for k in range(rows):
        slices = per_case[k % len(per_case)]
        out.append(slices[(k // len(per_case)) % len(slices)])
    return out


def _contours(ax, label: np.ndarray, num_classes: int) -> None:
    for k in range(1, num_classes):
        mask = (label == k).astype(float)
        if mask.any() and not mask.all():
            ax.contour(mask, levels=[0.5], colors=[CONTOUR_COLORS[(k - 1) % len(CONTOUR_COLORS)]], linewidths=1.0)


def _show(ax, image: np.ndarray, title: str | None, vmin: float, vmax: float) -> None:
    ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _sampling_grid(ax, displacement: np.ndarray | None, gain: np.ndarray | None, size: tuple[int, int],
                   title: str | None) -> None:
    """Where each output pixel samples the input (every 4th grid line), over the gain field (grey if none).

    An additive field is passed as 1 + bias, so both kinds share the colour scale 0.5 to 1.5."""
    h, w = size
    ax.imshow(np.ones((h, w)) if gain is None else gain, cmap="coolwarm", vmin=0.5, vmax=1.5,
              interpolation="bilinear")
    if displacement is not None:
        ys, xs = np.mgrid[0:h, 0:w].astype(float)
        # normalised units -> pixels (align_corners=False: a pixel is 2 / size wide)
        px = xs + displacement[0] * w / 2
        py = ys + displacement[1] * h / 2
        step = max(1, min(h, w) // 16)
        for i in range(0, h, step):
            ax.plot(px[i, :], py[i, :], color="k", linewidth=0.5)
        for j in range(0, w, step):
            ax.plot(px[:, j], py[:, j], color="k", linewidth=0.5)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _w1(ax, image: np.ndarray, reference: np.ndarray) -> None:
    """Write the intensity 1-Wasserstein distance of ``image`` to ``reference`` in a panel's corner."""
    w1 = scipy.stats.wasserstein_distance(image.ravel(), reference.ravel())
    ax.text(0.03, 0.03, f"W1 {w1:.2f}", transform=ax.transAxes, fontsize=7, color="yellow", va="bottom")


def initial_method(spec: TrialSpec, adapter, cache, device: torch.device | str = "cpu"):
    """The trial's method as it was at step 0: built after the same seeding as the trainer's (eval mode)."""
    torch.manual_seed(derive_seed("init", spec.seed))
    method = build_method(spec, method_context(spec, adapter, cache, torch.device(device))).to(device)
    return method.eval()


def _outputs(method, initial, spec: TrialSpec, adapter, cache, xs, ys, xt, target: str):
    """The model's panels: (their column titles, step-0 and trained hallucinations, translation, prediction)."""
    columns: list[str] = []
    torch.manual_seed(derive_seed("visualize", spec.seed))
    with torch.no_grad():
        hal = hal0 = trans = None
        if hasattr(method, "hallucinate"):
            initial = initial_method(spec, adapter, cache, xs.device) if initial is None else initial
            torch.manual_seed(derive_seed("visualize", spec.seed))
            hal0 = initial.hallucinate(xs, ys, reference=xt)
            torch.manual_seed(derive_seed("visualize", spec.seed))  # the same random codes as at step 0
            hal = method.hallucinate(xs, ys, reference=xt)
            field = "gain" if hal.gain is not None else "bias"
            columns += ["hallucination at step 0", "hallucination + warped label", f"sampling grid over {field}"]
        elif hasattr(method, "translate"):
            trans = method.translate(xs)
            columns += [f"translated to {target} + label"]
        pred = method.infer(xt).argmax(1).cpu().numpy()
    return columns, hal0, hal, trans, pred


def render(method, spec: TrialSpec, adapter, cache, path: Path, rows: int = 4,
           summary: dict[str, Any] | None = None, initial=None) -> tuple[str, ...]:
    """Draw the grid for ``method`` (already loaded, in eval mode) into ``path``; returns the column titles.

    ``initial``: the method at step 0 (:func:`initial_method`), whose hallucination is drawn beside the trained
    one; built here when the method hallucinates and none is given."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    source, target = parse_direction(spec.direction, adapter.modalities)
    labeled = select_labeled(adapter.cases(source, "train"), spec.shots, spec.seed, dataset=adapter.name,
                             modality=source)
    src = _pick_slices(cache, source, labeled, rows)
    tgt = _pick_slices(cache, target, adapter.cases(target, "test"), rows)
    num_classes = max(adapter.classes.values()) + 1
    device = next(method.parameters()).device
    xs = torch.from_numpy(np.stack([s[0] for s in src]))[:, None].to(device)
    ys = torch.from_numpy(np.stack([s[1] for s in src]).astype(np.int64)).to(device)
    xt = torch.from_numpy(np.stack([t[0] for t in tgt]))[:, None].to(device)

    middle, hal0, hal, trans, pred = _outputs(method, initial, spec, adapter, cache, xs, ys, xt, target)
    columns = [f"source ({source}) + label", *middle]
    columns += [f"target ({target}) prediction", f"target ({target}) ground truth"]

    images = [xs.cpu().numpy()[:, 0], xt.cpu().numpy()[:, 0]]
    vmin, vmax = (float(np.percentile(np.concatenate([a.ravel() for a in images]), q)) for q in (0.5, 99.5))
    cols = len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows), dpi=DPI,
                             squeeze=False)
    for r in range(rows):
        c = 0

        def title(name: str, first: bool = r == 0) -> str | None:
            return name if first else None

        _show(axes[r, c], src[r][0], title(columns[c]), vmin, vmax)
        _contours(axes[r, c], src[r][1], num_classes)
        if hal is not None:
            _w1(axes[r, c], src[r][0], tgt[r][0])
        c += 1
        if hal is not None:
            for h in (hal0, hal):
                _show(axes[r, c], h.image[r, 0].cpu().numpy(), title(columns[c]), vmin, vmax)
                _w1(axes[r, c], h.image[r, 0].cpu().numpy(), tgt[r][0])
                c += 1
            _contours(axes[r, c - 1], hal.label[r].cpu().numpy(), num_classes)
            disp = None if hal.displacement is None else hal.displacement[r].cpu().numpy()
            # an additive field is drawn as 1 + bias, on the gain's colour scale
            field = hal.gain if hal.gain is not None else None if hal.bias is None else 1 + hal.bias
            gain = None if field is None else field[r, 0].cpu().numpy()
            _sampling_grid(axes[r, c], disp, gain, src[r][0].shape, title(columns[c]))
            c += 1
        elif trans is not None:
            _show(axes[r, c], trans[r, 0].cpu().numpy(), title(columns[c]), vmin, vmax)
            _contours(axes[r, c], src[r][1], num_classes)
            c += 1
        _show(axes[r, c], tgt[r][0], title(columns[c]), vmin, vmax)
        _contours(axes[r, c], pred[r], num_classes)
        _show(axes[r, c + 1], tgt[r][0], title(columns[c + 1]), vmin, vmax)
        _contours(axes[r, c + 1], tgt[r][1], num_classes)
    names = sorted(adapter.classes, key=adapter.classes.get)
    handles = [Line2D([], [], color=CONTOUR_COLORS[(adapter.classes[n] - 1) % len(CONTOUR_COLORS)], label=n)
               for n in names]
    dice = "" if not summary else f", target Dice {summary['dice']['mean']:.3f}"
    fig.suptitle(f"{spec.label} (preset {spec.preset}{dice})", fontsize=9)
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.06, wspace=0.04, hspace=0.08)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return tuple(columns)


def visualize(out: str | Path, method: str | None = None, *, trial_id: str | None = None, png: str | Path | None = None,
              rows: int = 4, **selection: Any) -> Figure:
    """Find a finished trial in the run directory ``out``, load its final weights and draw its grid."""
    if rows < 1:
        raise UsageError(f"--rows {rows} is impossible: draw at least one row.")
    out = Path(out)
    if not (out / "trials").is_dir():
        raise UsageError(f"{out} is not a run directory (it has no trials/ folder); pass the --out of a run.")
    registry.discover()
    store = ResultsStore(out)
    record = find_trial(store, method, trial_id=trial_id, **selection)
    model, spec, adapter, cache = load_trial_method(store, record)
    name = f"{spec.row_name}_{spec.direction}_{spec.shots}shot_seed{spec.seed}_{spec.trial_id}.png"
    path = Path(png) if png else out / "figures" / name
    columns = render(model, spec, adapter, cache, path, rows, record.get("summary"))
    return Figure(path, rows, columns, spec.trial_id)


__all__ = ["Figure", "find_trial", "initial_method", "load_trial_method", "render", "visualize"]
