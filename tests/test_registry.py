"""Registry rules, discovery and the repository layout."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmark import registry
from benchmark.errors import UnknownNameError
from benchmark.registry import Registry, RegistryError

REPO = Path(__file__).resolve().parent.parent


class Base:
    pass


class Child(Base):
    """A child plugin.

    More text."""


def test_register_get_and_description():
    reg = Registry("things", Base)
    reg.register("child", aliases=("kid",))(Child)
    assert reg.get("child") is Child and reg.get("kid") is Child
    assert reg.canonical("kid") == "child"
    assert reg.names() == ["child"]
    assert reg.entry("child").description == "A child plugin."
    assert "kid" in reg and "nope" not in reg


def test_duplicate_name_is_an_error():
    reg = Registry("things", Base)
    reg.add("child", Child)

    class Other(Base):
        pass

    with pytest.raises(RegistryError, match="Duplicate thing name 'child'"):
        reg.add("child", Other)
    with pytest.raises(RegistryError, match="Duplicate thing name 'child'"):
        reg.add("other", Other, aliases=("child",))


def test_wrong_base_class_is_an_error():
    reg = Registry("things", Base)

    class NotAThing:
        pass

    with pytest.raises(RegistryError, match="does not derive from .*Base"):
        reg.add("x", NotAThing)


def test_bad_name_is_an_error():
    reg = Registry("things", Base)
    with pytest.raises(RegistryError, match="names are non-empty"):
        reg.add("a b", Child)


def test_unknown_name_lists_known_and_closest():
    reg = Registry("things", Base)
    reg.add("source_only", Child)
    with pytest.raises(UnknownNameError) as err:
        reg.get("source_onyl")
    msg = str(err.value)
    assert "Unknown thing 'source_onyl'" in msg
    assert "Did you mean 'source_only'?" in msg
    assert "Known things: source_only." in msg


def test_discover_finds_the_repository_plugins():
    registry.discover()
    assert {"source_only", "oracle"} <= set(registry.METHODS.names())
    assert "synthetic-heart" in registry.DATASETS.names()
    entry = registry.METHODS.entry("source_only")
    assert Path(entry.source) == REPO / "methods" / "source_only.py"
    # loaded under a private name, never as a top-level module
    assert entry.cls.__module__.startswith("_fsuda_plugins.methods.")
    registry.discover()  # idempotent
    assert registry.METHODS.get("source_only") is entry.cls


def test_aliases_resolve_to_the_canonical_name():
    registry.discover()
    assert registry.METHODS.canonical("sifa") == "sifa_lite"
    assert registry.METHODS.get("sifa") is registry.METHODS.get("sifa_lite")
    from benchmark.runner import build_grid

    (spec,) = build_grid(dataset="synthetic-heart", methods=["sifa"], shots=[1], directions=["mr2ct"], seeds=[0],
                         preset="quick")
    assert spec.method == "sifa_lite"  # tables show the canonical name


def test_plugin_path_env_adds_a_folder(tmp_path, monkeypatch):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "my_method.py").write_text(textwrap.dedent('''
        from benchmark.method import SupervisedMethod
        from benchmark.registry import register_method

        @register_method("my_test_method")
        class MyMethod(SupervisedMethod):
            """A method from an extra plugin folder."""
    '''))
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(tmp_path))
    registry.discover()
    assert registry.METHODS.entry("my_test_method").source == str(tmp_path / "methods" / "my_method.py")


def test_broken_plugin_file_names_the_file(tmp_path, monkeypatch):
    (tmp_path / "methods").mkdir()
    bad = tmp_path / "methods" / "broken.py"
    bad.write_text("raise ValueError('boom')\n")
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(tmp_path))
    with pytest.raises(RegistryError, match=f"{bad}.*ValueError: boom"):
        registry.discover()


def test_plugin_files_import_the_helpers_of_their_folder(tmp_path, monkeypatch):
    folder = tmp_path / "datasets"
    folder.mkdir()
    (folder / "_tables.py").write_text("LABELS = {'MYO': 1}\n")
    (folder / "toy_set.py").write_text(textwrap.dedent('''
        from benchmark.dataset import DatasetAdapter
        from benchmark.registry import register_dataset

        from ._tables import LABELS

        @register_dataset("toy-set-with-helper")
        class Toy(DatasetAdapter):
            """A dataset whose classes come from a helper file of its folder."""

            classes = dict(LABELS)
    '''))
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(tmp_path))
    registry.discover(kinds=("datasets",))
    cls = registry.DATASETS.get("toy-set-with-helper")
    assert cls.classes == {"MYO": 1}
    module = sys.modules[cls.__module__]
    package = sys.modules[module.__package__]
    assert package.__path__ == [str(folder.resolve())] and module.__package__.startswith("_fsuda_plugins.datasets.")
    assert sys.modules[f"{module.__package__}._tables"].__file__ == str(folder.resolve() / "_tables.py")
    assert not any(Path(e.source).name == "_tables.py" for e in registry.DATASETS)  # a helper, not a plugin


def test_the_repository_adapters_share_one_helper_module():
    registry.discover(kinds=("datasets",))
    mmwhs, mmwhs_2d, chaos = (sys.modules[registry.DATASETS.get(n).__module__]
                              for n in ("mmwhs", "mmwhs-2d", "chaos-btcv"))
    assert mmwhs.__package__ == mmwhs_2d.__package__ == chaos.__package__
    assert sys.modules[mmwhs.__package__].__path__ == [str(REPO / "datasets")]
    assert mmwhs.MMWHS_LABEL_MAP is mmwhs_2d.MMWHS_LABEL_MAP and mmwhs.MMWHS_RAW_LABELS is mmwhs_2d.MMWHS_RAW_LABELS
    assert mmwhs_2d.natural_key is chaos.natural_key
    assert registry.DATASETS.get("mmwhs").classes == registry.DATASETS.get("mmwhs-2d").classes
    names = [Path("a/IMG-0002-00010.dcm"), Path("a/IMG-0002-00009.dcm"), Path("a/IMG-0001-00011.dcm")]
    assert [p.name for p in sorted(names, key=chaos.natural_key)] == [
        "IMG-0001-00011.dcm", "IMG-0002-00009.dcm", "IMG-0002-00010.dcm"]
    helper = sys.modules[f"{mmwhs.__package__}._shared"]
    assert helper.__file__ == str(REPO / "datasets" / "_shared.py")
    assert not any(Path(e.source).name.startswith("_") for e in registry.DATASETS)
    from benchmark import formats
    from benchmark.preprocess import code_fingerprint

    helpers = sorted((REPO / "datasets").glob("_*.py"))
    assert helper.__file__ in map(str, helpers)
    for name in ("mmwhs", "mmwhs-2d", "chaos-btcv"):  # the helpers' code keys their slice caches too
        adapter = registry.get_dataset(name, "/nonexistent")
        own = sys.modules[type(adapter).__module__].__file__
        assert adapter.fingerprint() == code_fingerprint(own, *helpers, formats.__file__)
        assert adapter.fingerprint() != code_fingerprint(own, formats.__file__)


def test_a_missing_helper_and_a_failing_helper_are_named(tmp_path, monkeypatch):
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "needs_helper.py").write_text("from ._nowhere import x\n")
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(tmp_path))
    with pytest.raises(RegistryError, match=rf"{folder / 'needs_helper.py'}.*imports '_nowhere' relatively, but "
                                            rf"{folder.resolve()} has no _nowhere.py"):
        registry.discover()
    (folder / "_nowhere.py").write_text("x = 1\nraise ValueError('bad table')\n")
    where = folder.resolve() / "_nowhere.py"
    with pytest.raises(RegistryError, match=rf"ValueError: bad table \(raised at {where}:2\)"):
        registry.discover()
    (folder / "_nowhere.py").write_text("x = 1\n")
    (folder / "needs_helper.py").write_text("import _nowhere\n")
    with pytest.raises(RegistryError, match=r"_nowhere.py of its folder is imported relatively: from ._nowhere"):
        registry.discover()


def test_builtin_folders_come_from_the_installed_copy_or_the_checkout_never_site_packages(tmp_path, monkeypatch):
    assert registry.plugin_folders()["datasets"][0] == REPO / "datasets"  # this checkout
    site = tmp_path / "site-packages"
    (site / "datasets").mkdir(parents=True)  # another distribution's package, as HuggingFace's datasets is
    (site / "datasets" / "arrow_dataset.py").write_text("raise ImportError('never load me')\n")
    monkeypatch.setattr(registry, "REPO_ROOT", site)
    assert registry.checkout_root() is None and registry.builtin_folder("datasets") is None
    assert registry.plugin_folders() == {"methods": [], "datasets": []}
    shipped = site / "benchmark" / "_datasets"
    shipped.mkdir(parents=True)
    monkeypatch.setitem(registry.PACKAGED_FOLDERS, "datasets", shipped)
    assert registry.plugin_folders()["datasets"] == [shipped]
    assert registry.search_locations("datasets") == [f"{shipped} (built in)",
                                                     "the entry point group fsuda_benchmark.datasets"]


def test_an_unknown_name_says_where_discovery_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(tmp_path))
    registry.discover(kinds=("datasets",))
    with pytest.raises(UnknownNameError) as err:
        registry.DATASETS.get("nosuch")
    assert (f"Discovery looked in {REPO / 'datasets'} (built in); {tmp_path / 'datasets'} (FSUDA_PLUGIN_PATH, "
            f"missing); the entry point group fsuda_benchmark.datasets.") in str(err.value)


def test_no_init_files_in_plugin_folders():
    assert not (REPO / "datasets" / "__init__.py").exists()
    assert not (REPO / "methods" / "__init__.py").exists()


def test_repository_datasets_folder_does_not_shadow_an_installed_datasets(tmp_path):
    """From the repository root, an installed ``datasets`` package is the one Python finds."""
    site = tmp_path / "site"
    (site / "datasets").mkdir(parents=True)
    (site / "datasets" / "__init__.py").write_text("MARK = 'installed'\n")
    code = ("import importlib.util as u, datasets; s = u.find_spec('datasets'); "
            "print(s.origin); print(datasets.MARK)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": ""}, check=True).stdout.split()
    assert out == [str(site / "datasets" / "__init__.py"), "installed"]


def test_benchmark_discovery_never_binds_the_name_datasets():
    code = ("import sys, benchmark; benchmark.discover(); "
            "print('datasets' in sys.modules, 'methods' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_importing_the_package_is_light():
    code = "import sys, benchmark; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_method_declares_valid_hyperparameters():
    from benchmark.hparams import resolve

    registry.discover()
    for entry in registry.METHODS:
        declared = entry.cls.declared_hparams()
        assert {"lr", "weight_decay"} <= set(declared)
        defaults = resolve(declared, 0)
        assert defaults == {k: v.default for k, v in declared.items()}
        assert resolve(declared, 3) != defaults  # sample 3 draws from the search distributions
        assert entry.description, f"{entry.name} has no docstring"
