"""Typed plugin registries for methods, plug-ins and datasets, and their explicit discovery.

One :class:`Registry` per kind. Plugins register by decorator with a unique name (aliases optional). A duplicate
name or a class that does not derive from the registry's base class is an error at registration time, and an
unknown name fails with the list of known names and the closest match.

Plugins live in the repository's ``methods/`` and ``datasets/`` folders; plug-ins, which modify a method
(``metahallu+cdtg``), live in ``methods/`` beside the methods and register with :func:`register_plugin`. These
folders are *not* Python packages (they have no ``__init__.py``): :func:`discover` loads each file by path under a
private module name (``_fsuda_plugins.<kind>.<stem>``), so the repository's ``datasets/`` folder can never shadow
an installed ``datasets`` package. Installed third-party packages add plugins through the entry point groups
``fsuda_benchmark.methods``, ``fsuda_benchmark.plugins`` and ``fsuda_benchmark.datasets``: each entry point names a
module, which is imported and registers its classes by the same decorators. Extra plugin folders can be given in
the environment variable ``FSUDA_PLUGIN_PATH`` (``os.pathsep``-separated; each folder may hold ``methods/`` and
``datasets/`` subfolders).

:func:`discover` is explicit, idempotent and what every Ray worker calls: workers receive plugin names, never
class objects.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from .errors import BenchmarkError, UnknownNameError

T = TypeVar("T", bound=type)

REPO_ROOT = Path(__file__).resolve().parent.parent
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

    def __init__(self, kind: str, base: Callable[[], type] | type):
        self.kind = kind
        self._base = base
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
        raise UnknownNameError(f"Unknown {self.kind[:-1]} {name!r}.{hint} Known {self.kind}: {listing}.")

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


METHODS: Registry = Registry("methods", _method_base)
PLUGINS: Registry = Registry("plugins", _plugin_base)
DATASETS: Registry = Registry("datasets", _dataset_base)

register_method = METHODS.register
register_plugin = PLUGINS.register
register_dataset = DATASETS.register

_lock = threading.Lock()
_loaded: set[str] = set()


def plugin_folders() -> dict[str, list[Path]]:
    """The folders :func:`discover` loads, per kind: the repository's own, then those in ``FSUDA_PLUGIN_PATH``."""
    roots = [REPO_ROOT] + [Path(p) for p in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep) if p]
    return {kind: [root / kind for root in roots] for kind in ("methods", "datasets")}


def _load_file(kind: str, path: Path) -> None:
    key = str(path.resolve())
    if key in _loaded:
        return
    digest = abs(hash(str(path.parent.resolve()))) % 10**8
    module_name = f"{_PRIVATE_PREFIX}.{kind}.d{digest}.{path.stem}"
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
            f"Loading the {kind[:-1]} plugin file {path} failed with {type(exc).__name__}: {exc}. Fix or remove "
            f"the file; every file in {path.parent} is loaded as a plugin."
        ) from exc
    _loaded.add(key)


def discover(kinds: tuple[str, ...] = ("methods", "datasets")) -> None:
    """Load every plugin: the repository's folders, ``FSUDA_PLUGIN_PATH`` folders and installed entry points.

    Idempotent and thread-safe. Files whose name starts with ``_`` are skipped (shared helpers for plugins).
    ``kinds`` restricts loading to some kinds (dataset-only processes need not import torch).
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


def get_dataset(name: str, root: str | Path | None = None):
    """The adapter of dataset ``name`` (or an alias) on the files under ``root``, after discovering datasets."""
    discover(kinds=("datasets",))
    return DATASETS.get(name)(root)
