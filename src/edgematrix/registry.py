"""One registry type for every extension axis: model family, task, backend, recipe step.

A registry maps names to objects. Names come from three places, looked up in this order:

1. **built-ins**, declared as ``"module:attribute"`` strings (:data:`edgematrix.core.registries`),
   so the names are known (the matrix validates against them) without importing anything heavy;
2. objects **registered** in code with the :meth:`Registry.register` decorator;
3. **plugins**: the entry points of the registry's group (``edgematrix.tasks``,
   ``edgematrix.families``, ``edgematrix.backends``, ``edgematrix.recipe_steps``) of any installed
   distribution, discovered when a name is not built in;
4. **import paths**: a name of the form ``"package.module:Attribute"`` (``task = "mypkg.tasks:MyTask"``
   in the matrix) is imported as it is, with no registration at all.

An unknown name raises :class:`~edgematrix.errors.UnknownNameError` listing the known names and the
entry-point group that was searched. Stdlib only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, TypeVar

from edgematrix.errors import EdgeMatrixError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Provider:
    """Where a registered name comes from."""

    name: str
    source: str  # "built-in", "registered", "plugin", "import path", or "plugin (shadowed by the built-in)"
    target: str  # "module:attribute" (built-ins, plugins, import paths), or the object's qualified name
    distribution: str = ""  # the installed distribution of a plugin or of an import path's package


def is_import_path(name: str) -> bool:
    """``"package.module:Attribute"``: a name imported as it is rather than looked up."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr)


def distribution_of(module: str) -> str:
    """The installed distribution that provides ``module``'s top-level package ("" when none is known)."""
    top = module.split(".")[0]
    try:
        found = metadata.packages_distributions().get(top, [])
    except Exception:  # a broken metadata folder of some distribution: nothing to say
        return ""
    return ", ".join(sorted(set(found)))


def load_object(spec: str, what: str) -> Any:
    """Import ``"package.module:attribute"`` (attribute may be dotted); errors name ``what`` and the spec."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise EdgeMatrixError(f"{what}: {spec!r} is not 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise EdgeMatrixError(f"{what}: cannot import module {module_name!r} ({type(e).__name__}: {e})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise EdgeMatrixError(f"{what}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


class Registry(Generic[T]):
    """Maps names to objects; an unknown name raises an error listing the known ones."""

    def __init__(self, kind: str, *, builtin: Mapping[str, str] | None = None, group: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self._builtin = dict(builtin or {})
        self._items: dict[str, T] = {}
        self._imported: set[str] = set()  # import-path names resolved so far
        self._plugins: dict[str, metadata.EntryPoint] | None = None

    # -- registration -----------------------------------------------------------------------

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    # -- lookup -------------------------------------------------------------------------------

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        if self._plugins is None:
            found = metadata.entry_points(group=self.group) if self.group else ()
            self._plugins = {ep.name: ep for ep in found}
        return self._plugins

    def refresh(self) -> None:
        """Forget the discovered plugins (after installing a distribution in this process)."""
        self._plugins = None

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        if name in self._builtin:
            spec = self._builtin[name]
            module = spec.partition(":")[0]
            importlib.import_module(module)  # a module may register the name itself on import
            if name not in self._items:
                self._items[name] = load_object(spec, f"built-in {self.kind} {name!r}")
            return self._items[name]
        ep = self._entry_points().get(name)
        if ep is not None:
            dist = ep.dist.name if ep.dist is not None else "?"
            try:
                obj = ep.load()
            except Exception as e:  # a broken plugin: name it and its distribution
                raise EdgeMatrixError(
                    f"{self.kind} {name!r} from plugin distribution {dist!r} ({ep.value}) failed to load: "
                    f"{type(e).__name__}: {e}"
                ) from None
            self._items.setdefault(name, obj)
            return self._items[name]
        if is_import_path(name):
            obj = load_object(name, f"{self.kind} {name!r}")
            self._items[name] = obj
            self._imported.add(name)
            return obj
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}{self._where()}"
        )

    def _where(self) -> str:
        plugins = f"plugins are looked for in entry-point group {self.group!r}; " if self.group else ""
        return f" ({plugins}an import path 'package.module:Attribute' is imported as it is)"

    def names(self) -> list[str]:
        """Every known name (built-in, registered, plugin) without importing anything; objects resolved from an
        import path are not names of the registry (they were only cached under their path)."""
        registered = (n for n in self._items if n not in self._imported)
        return sorted({*self._builtin, *registered, *self._entry_points()})

    def providers(self) -> list[Provider]:
        """Where each name comes from (``edgematrix list --plugins``): built-ins, registered objects, the
        plugins found (one of a built-in's name is listed too, as shadowed: the built-in wins) and the
        import paths resolved so far."""
        out = []
        for name in sorted({*self.names(), *self._imported}):
            if name in self._builtin:
                out.append(Provider(name, "built-in", self._builtin[name]))
                ep = self._entry_points().get(name)
                if ep is not None:
                    dist = ep.dist.name if ep.dist is not None else "?"
                    out.append(Provider(name, "plugin (shadowed by the built-in)", ep.value, dist))
            elif name in self._imported:
                out.append(Provider(name, "import path", name, distribution_of(name.partition(":")[0])))
            elif name in self._entry_points() and name not in self._items:
                ep = self._entry_points()[name]
                out.append(Provider(name, "plugin", ep.value, ep.dist.name if ep.dist is not None else "?"))
            else:
                obj = self._items[name]
                found = self._entry_points().get(name)
                if found is not None:
                    dist = found.dist.name if found.dist is not None else "?"
                    out.append(Provider(name, "plugin", found.value, dist))
                else:
                    qual = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"
                    out.append(Provider(name, "registered", qual))
        return out

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is known without importing anything (an import path counts once resolved by
        :meth:`get`)."""
        return isinstance(name, str) and (name in self._items or name in self._builtin or name in self._entry_points())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
