"""The results store: our own record of every trial, independent of Ray's directory layout.

``<out>/trials/<trial_id>/`` holds, for one trial (``trial_id`` hashes its full configuration):

* ``config.json``: the configuration, written when the trial starts;
* ``checkpoint.pt``: the latest training checkpoint while it runs (removed when it finishes);
* ``model.pt``: the final weights, written when training ends and kept (``python -m benchmark visualize`` reads
  them);
* ``result.json``: the record (status ``ok`` or ``failed``, error, per-volume metrics, summary, timing, software
  versions, commit);
* ``log.txt``: every line the trial logged, attempt after attempt (a resumed or retried trial appends);
* ``DONE``: the completion marker, written last and atomically. A directory without it is an unfinished trial,
  which a later run resumes from its checkpoint; a record is trusted only when the marker exists.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import traceback
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from .io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .protocol import TrialSpec
from .registry import checkout_root

DONE = "DONE"
RESULT = "result.json"
CONFIG = "config.json"
#: A selection study's candidates (:mod:`benchmark.study` writes it while the trial trains).
CANDIDATES = "candidates.json"
TRIAL_LOG = "log.txt"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The short commit of the checkout the code runs from, ``-dirty`` if tracked files changed; ``unknown`` for an
    installed copy (whose site-packages may sit inside some other repository)."""
    root = checkout_root()
    if root is None:
        return "unknown"
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: The distributions whose versions can move a trial's numbers (OpenCV resizes slices and albumentations augments
#: them; scipy, edt and nibabel read and score volumes), recorded in every trial's ``result.json``.
NUMERIC_PACKAGES = ("fsuda-benchmark", "torch", "torchvision", "segmentation-models-pytorch", "timm", "numpy",
                    "scipy", "opencv-python-headless", "albumentations", "nibabel", "pydicom", "pillow", "edt",
                    "pandas", "ray")


def software_versions() -> dict[str, str]:
    """Python, the platform, and the version of each of :data:`NUMERIC_PACKAGES` (``not installed`` if absent)."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in NUMERIC_PACKAGES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


#: The statuses of a finished trial (one a run does not start again).
FINISHED = ("ok", "failed", "stopped")


class ResultsStore:
    """Trial records under ``<root>/trials``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.trials = self.root / "trials"

    def trial_dir(self, spec: TrialSpec) -> Path:
        return self.trials / spec.trial_id

    def status(self, spec: TrialSpec) -> str:
        """``"ok"``, ``"failed"``, ``"stopped"`` (ended early by a search's scheduler), ``"incomplete"`` (started,
        not finished) or ``"missing"``."""
        d = self.trial_dir(spec)
        marker = d / DONE
        if marker.exists():
            status = marker.read_text().strip()
            return status if status in FINISHED else "incomplete"
        return "incomplete" if d.exists() else "missing"

    def start(self, spec: TrialSpec, *, fresh: bool = False) -> Path:
        """Create the trial directory and write its configuration (``fresh`` discards an earlier attempt but its
        log, which the new attempt appends to)."""
        d = self.trial_dir(spec)
        if fresh and d.exists():
            log = (d / TRIAL_LOG).read_bytes() if (d / TRIAL_LOG).exists() else None
            shutil.rmtree(d)
            if log is not None:
                d.mkdir(parents=True)
                atomic_write_bytes(d / TRIAL_LOG, log)
        d.mkdir(parents=True, exist_ok=True)
        (d / DONE).unlink(missing_ok=True)
        atomic_write_json(d / CONFIG, {"trial_id": spec.trial_id, "label": spec.label, "config": spec.to_dict()})
        return d

    def _finish(self, spec: TrialSpec, record: dict[str, Any]) -> dict[str, Any]:
        d = self.trial_dir(spec)
        d.mkdir(parents=True, exist_ok=True)
        record = {"trial_id": spec.trial_id, "label": spec.label, "config": spec.to_dict(),
                  "versions": software_versions(), "commit": git_commit(), **record}
        atomic_write_json(d / RESULT, record)
        (d / "checkpoint.pt").unlink(missing_ok=True)
        atomic_write_text(d / DONE, record["status"] + "\n", fsync=True)
        return record

    def write_result(self, spec: TrialSpec, result: dict[str, Any]) -> dict[str, Any]:
        """Record a finished trial (status ok)."""
        return self._finish(spec, {"status": "ok", "error": None, **result})

    def write_failure(self, spec: TrialSpec, error: BaseException | str, *, timing: dict[str, float] | None = None,
                      tb: str | None = None) -> dict[str, Any]:
        """Record a failed trial with its error; it never stops the other trials."""
        if isinstance(error, BaseException):
            message = f"{type(error).__name__}: {error}"
            tb = tb or "".join(traceback.format_exception(type(error), error, error.__traceback__))
        else:
            message = str(error)
        return self._finish(spec, {"status": "failed", "error": message, "traceback": tb, "summary": None,
                                   "volumes": [], "timing": timing or {}})

    def write_stopped(self, spec: TrialSpec, reason: str) -> dict[str, Any]:
        """Record a search's trial that its scheduler stopped early: the candidates it scored (its
        ``candidates.json``) and the last step it reached; no test metrics of its own."""
        path = self.trial_dir(spec) / CANDIDATES
        candidates = [c for c in (json.loads(path.read_text()) if path.exists() else []) if c.get("test")]
        return self._finish(spec, {"status": "stopped", "error": None, "stopped": reason, "summary": None,
                                   "volumes": [], "candidates": candidates,
                                   "stopped_at": max((c["step"] for c in candidates), default=0)})

    def read(self, spec_or_id: TrialSpec | str) -> dict[str, Any] | None:
        """The finished record of a trial, or None if it has not finished."""
        tid = spec_or_id.trial_id if isinstance(spec_or_id, TrialSpec) else spec_or_id
        d = self.trials / tid
        if not (d / DONE).exists():
            return None
        return json.loads((d / RESULT).read_text())

    def records(self) -> Iterator[dict[str, Any]]:
        """Every finished record (ok, failed and stopped) in the store; unfinished trials are skipped."""
        if not self.trials.is_dir():
            return
        for d in sorted(self.trials.iterdir()):
            if (d / DONE).exists() and (d / RESULT).exists():
                yield json.loads((d / RESULT).read_text())


def human_size(path: Path) -> str:
    total = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    for unit in ("B", "KiB", "MiB", "GiB"):
        if total < 1024:
            return f"{total:.0f} {unit}"
        total /= 1024
    return f"{total:.1f} TiB"


__all__ = ["ResultsStore", "git_commit", "software_versions", "human_size"]
