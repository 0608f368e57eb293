"""The lock file behind the published numbers, the README's commands that use it, and an installed wheel.

The wheel is built from a copy of the sources (an in-tree build would leave ``build/`` in the checkout) and installed
into a fresh virtual environment that sees this environment's dependencies through a ``.pth`` file; it is run from
a folder outside the checkout, so nothing can come from the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import benchmark
from benchmark import registry

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


def test_publish_outside_a_checkout_asks_for_to(tmp_path, monkeypatch, capsys):
    from benchmark.cli import main

    (tmp_path / "run" / "trials").mkdir(parents=True)
    monkeypatch.setattr(registry, "REPO_ROOT", tmp_path / "site-packages")  # an installed copy's parent folder
    assert main(["publish", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "No repository leaderboards/ folder" in err and "pass --to DIR" in err


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    site: Path  # the fresh environment's site-packages
    elsewhere: Path  # a working folder outside the checkout


def ok(*command: str | Path) -> str:
    res = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    assert res.returncode == 0, f"{command} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("benchmark", "methods", "datasets"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = ["-m", "pip", "--disable-pip-version-check", "-q"]
    ok(sys.executable, *pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist", src)
    (wheel,) = (tmp / "dist").glob("fsuda_benchmark-*.whl")
    ok(sys.executable, "-m", "venv", "--without-pip", tmp / "venv")
    python = tmp / "venv" / "bin" / "python"
    site = Path(ok(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # pip comes from this environment through the .pth; --ignore-installed never touches this environment's copy
    ok(python, *pip, "install", "--no-deps", "--no-index", "--ignore-installed", wheel)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    assert ROOT not in elsewhere.resolve().parents
    return Installed(wheel, python, site, elsewhere)


def run_installed(installed: Installed, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", registry.PLUGIN_PATH_ENV)}
    env.update(NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    return subprocess.run([str(installed.python), "-m", "benchmark", *args], cwd=installed.elsewhere, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_wheel_ships_the_package_and_the_plugin_folders_with_their_json(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmark").rglob("*.py")}
    methods = {f"benchmark/_methods/{p.name}" for p in (ROOT / "methods").glob("*.py")}
    datasets = {f"benchmark/_datasets/{p.name}" for p in (ROOT / "datasets").iterdir()
                if p.suffix == ".py" or p.name.endswith((".split.json", ".classes.json"))}
    assert {"benchmark/_datasets/_shared.py", "benchmark/_datasets/mmwhs.split.json",
            "benchmark/_datasets/mmwhs.classes.json", "benchmark/_methods/source_only.py"} <= datasets | methods
    assert package | methods | datasets == {n for n in names if not n.startswith("fsuda_benchmark-")}


def test_the_installed_copy_lists_every_plugin_from_its_own_files(installed):
    res = run_installed(installed, "ls")
    assert res.returncode == 0, res.stderr
    registry.discover()
    listed = 0
    for reg, kind in ((registry.METHODS, "methods"), (registry.PLUGINS, "methods"), (registry.DATASETS, "datasets")):
        own = [e for e in reg if Path(e.source).parent == ROOT / kind]  # not the plugins other tests registered
        assert own
        for entry in own:
            where = installed.site / "benchmark" / f"_{kind}" / Path(entry.source).name
            assert re.search(rf"^  {re.escape(entry.name)} .*\n +from {re.escape(str(where))}$", res.stdout,
                             flags=re.M), f"{entry.name} not listed from {where}"
        listed += len(own)
    assert res.stdout.count(" from ") == listed
    assert "(none" not in res.stdout and str(ROOT) not in res.stdout + res.stderr


@pytest.mark.slow
def test_the_installed_copy_runs_a_trial_and_publish_asks_where(installed, tmp_path):
    from benchmark.runner import build_grid

    out = tmp_path / "out"
    res = run_installed(installed, "run", "--methods", "source_only", "--shots", "1", "--directions", "mr2ct",
                        "--seeds", "0", "--steps", "2", "--out", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "1 trials run (1 ok, 0 failed)" in res.stdout
    (spec,) = build_grid(dataset="synthetic-heart", methods=["source_only"], shots=[1], directions=["mr2ct"],
                         seeds=[0], preset="quick", preset_overrides={"steps": 2})
    result = json.loads((out / "trials" / spec.trial_id / "result.json").read_text())  # the checkout's trial
    assert result["status"] == "ok" and result["final_losses"]
    res = run_installed(installed, "publish", str(out))
    assert res.returncode == 2
    assert "pass --to DIR" in res.stderr and "Traceback" not in res.stderr
    assert not (installed.site / "leaderboards").exists()
    res = run_installed(installed, "publish", str(out), "--to", str(tmp_path / "boards"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "boards" / "synthetic-heart" / "mr2ct.csv").is_file()
