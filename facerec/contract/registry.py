"""The plugin manager and the registry of parts: the engine asks for parts by kind and name here.

Plugins, built-in ones included, are found through the `facerec` entry-point group. A plugin that fails
to import, or whose hook raises, is recorded with its name and the error and left out; the rest work.
A name is taken by the first part registered under it for its kind, built-in plugins first: a later
plugin registering that name again keeps its other parts and has the clash recorded as its error, so
installing a plugin never silently swaps a part a gallery or a run was made with.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pluggy

from facerec.contract import hookspecs
from facerec.errors import UsageError

ENTRY_POINT_GROUP = "facerec"
KINDS = ("backbone", "detector", "loss", "miner", "head", "aligner", "store")


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str


@dataclass
class PluginInfo:
    """A plugin as `facerec plugins` shows it."""

    name: str
    source: str  # "built-in" or "DISTRIBUTION VERSION"
    registers: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def fail(self, message: str) -> None:
        """Record a problem of this plugin (after any recorded before)."""
        self.error = message if self.error is None else f"{self.error}; {message}"


@dataclass
class Registry:
    """Parts by kind and name, with where each came from."""

    parts: dict[str, dict[str, Registration]] = field(default_factory=lambda: {k: {} for k in KINDS})
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    manager: pluggy.PluginManager | None = None

    def names(self, kind: str) -> list[str]:
        return sorted(self.parts[kind])

    def factory(self, kind: str, name: str) -> Callable[..., Any]:
        try:
            return self.parts[kind][name].factory
        except KeyError:
            available = ", ".join(self.names(kind)) or "none"
            raise UsageError(f"unknown {kind} '{name}' (available: {available})") from None

    def create(self, kind: str, name: str, **options: Any) -> Any:
        """Build the part `name` of `kind` with `options`; unknown names, and options the factory does
        not take, are usage errors. What the factory itself raises goes through unchanged."""
        factory = self.factory(kind, name)
        check_options(kind, name, factory, options)
        return factory(**options)


def check_options(kind: str, name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Refuse options that `factory`'s signature does not name, and required ones that are missing,
    before calling it: a TypeError from the call could come from anywhere inside the factory."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (a builtin, say): the factory checks itself
        return
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    keywords = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    accepted = [p.name for p in keywords]
    unknown = [key for key in options if key not in accepted]
    if unknown:
        listed = f"options: {', '.join(accepted)}" if accepted else "it takes no options"
        noun = "option" if len(unknown) == 1 else "options"
        raise UsageError(f"{kind} '{name}' has no {noun} {', '.join(map(repr, unknown))} ({listed})")
    missing = [p.name for p in keywords if p.default is p.empty and p.name not in options]
    if missing:
        raise UsageError(f"{kind} '{name}' needs the option(s) {', '.join(map(repr, missing))}")


def _source(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    if dist is None:
        return "unknown"
    if dist.metadata["Name"] == "facerec":
        return "built-in"
    return f"{dist.metadata['Name']} {dist.version}"


def _load_plugins(registry: Registry) -> pluggy.PluginManager:
    manager = pluggy.PluginManager("facerec")
    manager.add_hookspecs(hookspecs)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        info = PluginInfo(name=entry_point.name, source=_source(entry_point))
        registry.plugins[info.name] = info
        try:
            manager.register(entry_point.load(), name=info.name)
        except Exception as error:  # a broken third-party plugin must not take the CLI down
            info.fail(f"{type(error).__name__}: {error}")
    return manager


def _collect_parts(registry: Registry, manager: pluggy.PluginManager) -> None:
    """Call every plugin's register hooks, built-in plugins first, so built-in names stay built-in."""
    for kind in KINDS:
        hook = getattr(manager.hook, f"register_{'losses' if kind == 'loss' else kind + 's'}")
        impls = sorted(
            hook.get_hookimpls(), key=lambda impl: registry.plugins[impl.plugin_name].source != "built-in"
        )
        for impl in impls:
            info = registry.plugins[impl.plugin_name]

            def register(name: str, factory: Callable[..., Any], kind: str = kind, info: PluginInfo = info):
                taken = registry.parts[kind].get(name)
                if taken is not None:
                    owner = registry.plugins[taken.plugin]
                    info.fail(
                        f"{kind} '{name}' is taken by plugin '{owner.name}' ({owner.source}); kept that one"
                    )
                    return
                registry.parts[kind][name] = Registration(kind, name, factory, info.name)
                info.registers.setdefault(kind, []).append(name)

            try:
                impl.function(register=register)
            except Exception as error:  # reported by `facerec plugins`, the other plugins still load
                info.fail(f"{type(error).__name__}: {error}")


@cache
def registry() -> Registry:
    """The process-wide registry, built on first use from every installed plugin."""
    result = Registry()
    manager = _load_plugins(result)
    _collect_parts(result, manager)
    result.manager = manager
    return result


def add_plugin_commands(cli) -> None:
    """Let every plugin add its commands; a plugin whose hook fails is recorded and skipped."""
    found = registry()
    for impl in found.manager.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as error:  # reported by `facerec plugins`; the CLI stays up
            found.plugins[impl.plugin_name].fail(f"{type(error).__name__}: {error}")
