"""Typed plugin registries for methods, plug-ins and datasets, and their explicit discovery.

One :class:`Registry` per kind. Plugins register by decorator with a unique name (aliases optional). A duplicate
name or a class that does not derive from the registry's base class is an error at registration time, and an
unknown name fails with the list of known names, the closest match and where discovery looked.

Plugins live in the plugin folders ``methods/`` and ``datasets/``; plug-ins, which modify a method
(``metahallu+cdtg``), live in ``methods/`` beside the methods and register with :func:`register_plugin`. A
checkout's folders are the repository's own; an installed copy ships them inside the package as
``benchmark/_methods`` and ``benchmark/_datasets`` and loads those (never both, so no plugin is loaded twice).
The folders have no ``__init__.py``, so the repository's ``datasets/`` can never shadow an installed ``datasets``
package: :func:`discover` makes each folder a package under a private name (``_fsuda_plugins.<kind>.d<hash>``,
its ``__path__`` the folder) and loads each plugin file as its submodule. A plugin file can therefore import the
folder's other files relatively (``from ._shared import natural_key``); files whose name starts with ``_`` are
such helpers, importable but never loaded as plugins themselves.

Installed third-party packages add plugins through the entry point groups ``fsuda_benchmark.methods``,
``fsuda_benchmark.plugins`` and ``fsuda_benchmark.datasets``: each entry point names a module, which is imported
and registers its classes by the same decorators. Extra plugin folders can be given in the environment variable
``FSUDA_PLUGIN_PATH`` (``os.pathsep``-separated; each folder may hold ``methods/`` and ``datasets/`` subfolders),
loaded like the built-in ones.

:func:`discover` is explicit, idempotent and what every Ray worker calls: workers receive plugin names, never
class objects.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from .errors import BenchmarkError, UnknownNameError, UsageError

T = TypeVar("T", bound=type)

PACKAGE_DIR = Path(__file__).resolve().parent
#: The folder above the package: the repository in a checkout, ``site-packages`` in an installed copy.
REPO_ROOT = PACKAGE_DIR.parent
KINDS = ("methods", "datasets")
#: Where an installed copy keeps the plugin folders it ships (the build maps ``methods/`` and ``datasets/`` there).
PACKAGED_FOLDERS = {kind: PACKAGE_DIR / f"_{kind}" for kind in KINDS}
ENTRY_POINT_GROUPS = {"methods": "fsuda_benchmark.methods", "datasets": "fsuda_benchmark.datasets",
                      "plugins": "fsuda_benchmark.plugins"}
#: The entry point groups each kind of plugin folder loads with it (plug-ins are loaded with the methods).
_GROUPS_OF_KIND = {"methods": ("methods", "plugins"), "datasets": ("datasets",)}
PLUGIN_PATH_ENV = "FSUDA_PLUGIN_PATH"
_PRIVATE_PREFIX = "_fsuda_plugins"


class RegistryError(BenchmarkError):
    """A plugin broke a registry rule (duplicate name, wrong base class, unloadable file)."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered plugin: its canonical name, class, aliases and where it was loaded from."""

    name: str
    cls: T
    aliases: tuple[str, ...]
    source: str

    @property
    def description(self) -> str:
        """The first line of the class docstring."""
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""


class Registry(Generic[T]):
    """A name -> class registry for one kind of plugin."""

    def __init__(self, kind: str, base: Callable[[], type] | type, looked: Callable[[], str] | None = None):
        self.kind = kind
        self._base = base
        self._looked = looked  # where discovery looks for this kind, named in unknown-name errors
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    @property
    def base(self) -> type:
        """The class every plugin of this kind must derive from (resolved lazily to keep imports light)."""
        return self._base if isinstance(self._base, type) else self._base()

    def register(self, name: str, *, aliases: tuple[str, ...] | list[str] = ()) -> Callable[[T], T]:
        """Class decorator registering ``cls`` under ``name`` (and ``aliases``)."""

        def decorator(cls: T) -> T:
            self.add(name, cls, aliases=tuple(aliases))
            return cls

        return decorator

    def add(self, name: str, cls: T, *, aliases: tuple[str, ...] = ()) -> None:
        """Register ``cls``; the rules are those of :meth:`register`."""
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
            raise RegistryError(
                f"Cannot register {self.kind[:-1]} {name!r}: names are non-empty and use only letters, digits, "
                f"'_' and '-'."
            )
        if not isinstance(cls, type) or not issubclass(cls, self.base):
            raise RegistryError(
                f"Cannot register {self.kind[:-1]} {name!r}: {cls!r} does not derive from "
                f"{self.base.__module__}.{self.base.__qualname__}, the base class of every {self.kind[:-1]}."
            )
        source = _source_of(cls)
        for key in (name, *aliases):
            taken = self._entries.get(key) or self._entries.get(self._aliases.get(key, ""))
            if taken is not None:
                if taken.cls.__qualname__ == cls.__qualname__ and taken.source == source:
                    return  # the same file loaded twice (e.g. discover() in a fresh module namespace)
                raise RegistryError(
                    f"Duplicate {self.kind[:-1]} name {key!r}: {cls.__qualname__} from {source} clashes with "
                    f"{taken.cls.__qualname__} from {taken.source}. Rename one of them."
                )
        self._entries[name] = Entry(name=name, cls=cls, aliases=tuple(aliases), source=source)
        for alias in aliases:
            self._aliases[alias] = name
        cls.name = name  # type: ignore[attr-defined]

    def canonical(self, name: str) -> str:
        """The canonical name for ``name`` or one of its aliases."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known + sorted(self._aliases), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(known) if known else "(none: was discover() called?)"
        looked = f" Discovery looked in {self._looked()}." if self._looked else ""
        raise UnknownNameError(f"Unknown {self.kind[:-1]} {name!r}.{hint} Known {self.kind}: {listing}.{looked}")

    def get(self, name: str) -> T:
        """The class registered as ``name`` (or alias); unknown names raise :class:`UnknownNameError`."""
        return self._entries[self.canonical(name)].cls

    def entry(self, name: str) -> Entry:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._aliases)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _source_of(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    return str(path) if path else cls.__module__


def _method_base() -> type:
    from .method import Method

    return Method


def _plugin_base() -> type:
    from .method import Plugin

    return Plugin


def _dataset_base() -> type:
    from .dataset import DatasetAdapter

    return DatasetAdapter


def _looked_for(kind: str) -> Callable[[], str]:
    return lambda: "; ".join(search_locations(kind))


METHODS: Registry = Registry("methods", _method_base, _looked_for("methods"))
PLUGINS: Registry = Registry("plugins", _plugin_base, _looked_for("plugins"))
DATASETS: Registry = Registry("datasets", _dataset_base, _looked_for("datasets"))

register_method = METHODS.register
register_plugin = PLUGINS.register
register_dataset = DATASETS.register

_lock = threading.Lock()
_loaded: set[str] = set()


def checkout_root() -> Path | None:
    """The repository checkout this code runs from (a source tree or an editable install), or None.

    A checkout is the folder above the package when it holds ``pyproject.toml``; an installed copy has
    ``site-packages`` there, whose ``datasets/`` may be another distribution's and is never searched.
    """
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else None


def builtin_folder(kind: str) -> Path | None:
    """The suite's own plugin folder of ``kind``: the one an installed copy ships, else the checkout's, else None."""
    if PACKAGED_FOLDERS[kind].is_dir():
        return PACKAGED_FOLDERS[kind]
    checkout = checkout_root()
    return checkout / kind if checkout is not None else None


def plugin_folders() -> dict[str, list[Path]]:
    """The folders :func:`discover` loads, per kind: the built-in one, then those in ``FSUDA_PLUGIN_PATH``."""
    roots = [Path(p) for p in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep) if p]
    return {kind: [f for f in [builtin_folder(kind)] if f is not None] + [root / kind for root in roots]
            for kind in KINDS}


def search_locations(kind: str) -> list[str]:
    """Where :func:`discover` looks for plugins of ``kind`` (``methods``, ``plugins`` or ``datasets``), in words."""
    folder_kind = "datasets" if kind == "datasets" else "methods"
    folders = [f"{folder} ({'built in' if folder == builtin_folder(folder_kind) else PLUGIN_PATH_ENV}"
               f"{'' if folder.is_dir() else ', missing'})" for folder in plugin_folders()[folder_kind]]
    return [*(folders or ["no plugin folder"]), f"the entry point group {ENTRY_POINT_GROUPS[kind]}"]


def _folder_package(kind: str, folder: Path) -> str:
    """The private package whose ``__path__`` is ``folder`` (created once), so the folder's files import each other."""
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:8]  # stable across processes, unlike hash()
    name = f"{_PRIVATE_PREFIX}.{kind}.d{digest}"
    parent = None
    for part in (_PRIVATE_PREFIX, f"{_PRIVATE_PREFIX}.{kind}", name):
        module = sys.modules.get(part)
        if module is None:
            spec = importlib.machinery.ModuleSpec(part, None, is_package=True)
            spec.submodule_search_locations = [str(folder)] if part == name else []
            module = importlib.util.module_from_spec(spec)
            sys.modules[part] = module
            if parent is not None:
                setattr(parent, part.rpartition(".")[2], module)
        parent = module
    return name


def _load_file(kind: str, path: Path) -> None:
    key = str(path.resolve())
    if key in _loaded:
        return
    package = _folder_package(kind, path.parent.resolve())
    module_name = f"{package}.{path.stem}"
    if module_name in sys.modules:  # a sibling plugin already imported this file
        _loaded.add(key)
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RegistryError(f"Cannot load {kind[:-1]} plugin file {path}: Python found no loader for it.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BenchmarkError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise RegistryError(
            f"Loading the {kind[:-1]} plugin file {path} failed with {type(exc).__name__}: {exc}"
            f"{_failure_site(exc, package, path.parent.resolve())}. Fix or remove the file; every file in "
            f"{path.parent} whose name does not start with '_' is loaded as a plugin."
        ) from exc
    setattr(sys.modules[package], path.stem, module)
    _loaded.add(key)


def _failure_site(exc: Exception, package: str, folder: Path) -> str:
    """Where in ``folder`` a plugin file's exception arose, or which of its relative imports names no file there."""
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith(f"{package}."):
        missing = exc.name[len(package) + 1:].split(".")[0]
        return f" (it imports {missing!r} relatively, but {folder} has no {missing}.py)"
    if isinstance(exc, ModuleNotFoundError) and exc.name and (folder / f"{exc.name}.py").is_file():
        return f" ({exc.name}.py of its folder is imported relatively: from .{exc.name} import ...)"
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    inside = [f for f in frames if Path(f.tb_frame.f_code.co_filename).resolve().parent == folder]
    if inside:
        return f" (raised at {inside[-1].tb_frame.f_code.co_filename}:{inside[-1].tb_lineno})"
    return ""


def discover(kinds: tuple[str, ...] = KINDS) -> None:
    """Load every plugin: the built-in folders, ``FSUDA_PLUGIN_PATH`` folders and installed entry points.

    Idempotent and thread-safe. Files whose name starts with ``_`` are not plugins but helpers the plugin files of
    their folder import. ``kinds`` restricts loading to some kinds (dataset-only processes need not import torch).
    """
    with _lock:
        for kind, folders in plugin_folders().items():
            if kind not in kinds:
                continue
            for folder in folders:
                if not folder.is_dir():
                    continue
                for path in sorted(folder.glob("*.py")):
                    if not path.name.startswith("_"):
                        _load_file(kind, path)
            groups = [ENTRY_POINT_GROUPS[g] for g in _GROUPS_OF_KIND[kind]]
            for ep in [ep for group in groups for ep in importlib.metadata.entry_points(group=group)]:
                if ep.value in _loaded:
                    continue
                try:
                    ep.load()
                except Exception as exc:
                    raise RegistryError(
                        f"The installed plugin {ep.name!r} (entry point group {ep.group}, {ep.value}) failed to "
                        f"load with {type(exc).__name__}: {exc}."
                    ) from exc
                _loaded.add(ep.value)


def split_dataset_name(name: str, root: str | Path | None = None) -> tuple[str, str | Path | None]:
    """``"nnunet:/data/Dataset219_AMOS"`` -> ``("nnunet", Path("/data/Dataset219_AMOS"))``: a dataset name may carry
    its folder after a colon (made absolute, so worker processes find it too); ``root``, when also given, must be
    the same folder. A name without a colon comes back with ``root`` unchanged."""
    base, colon, path = name.partition(":")
    if not colon:
        return name, root
    if not base or not path:
        raise UsageError(f"Dataset {name!r} is not of the form NAME or NAME:PATH (e.g. nnunet:/data/Dataset219_AMOS).")
    folder = Path(path).expanduser().resolve()
    if root is not None and Path(root).expanduser().resolve() != folder:
        raise UsageError(f"Dataset {name!r} names the folder {folder}, but --root names {root}; give the folder once.")
    return base, folder


def get_dataset(name: str, root: str | Path | None = None):
    """The adapter of dataset ``name`` (or an alias) on the files under ``root``, after discovering datasets.

    ``name`` may also be ``NAME:PATH``, the dataset with its folder (see :func:`split_dataset_name`).
    """
    discover(kinds=("datasets",))
    name, root = split_dataset_name(name, root)
    return DATASETS.get(name)(root)
