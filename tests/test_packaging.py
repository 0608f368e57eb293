"""The lock file behind the published numbers, and the README's commands that use it."""

from __future__ import annotations

import re
from importlib.metadata import requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import benchmark

ROOT = benchmark.registry.REPO_ROOT


def pins() -> dict[str, Requirement]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", line
            assert str(req.marker) == 'python_version >= "3.11"', line
            assert canonicalize_name(req.name) not in out, f"{req.name} pinned twice"
            out[canonicalize_name(req.name)] = req
    return out


def test_every_declared_dependency_is_pinned():
    pinned = pins()
    declared = {canonicalize_name(Requirement(r).name) for r in requires("fsuda-benchmark") or []}
    assert {"torch", "opencv-python-headless", "numpy", "albumentations", "ray"} <= set(pinned)
    assert declared - set(pinned) == set()
    assert "fsuda-benchmark" not in pinned


def test_readme_commands_install_with_the_lock_file_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python3 -m venv .*$", readme, flags=re.M)
    assert len(commands) == 2
    assert all("-c constraints.txt" in c for c in commands)
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(c for c in commands if c.endswith("python -m pytest"))
    assert test_command in ci.splitlines()
