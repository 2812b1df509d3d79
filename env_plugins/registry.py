"""Finding environments: the ``gymux.envs`` entry-point group plus programmatic registration.

An entry point names an :class:`~gymux.env_plugins.EnvPlugin` object, or a zero-argument
callable that returns one::

    [project.entry-points."gymux.envs"]
    mygame = "mypkg.mygame:plugin"

Entry points load lazily, one at a time. A plugin that fails to import or breaks the
protocol is remembered with its error (:meth:`Registry.status` shows it); asking for it
raises :class:`PluginError` naming the plugin and the cause, and every other plugin keeps
working.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import msgspec
import structlog

from gymux.env_plugins.protocol import EnvPlugin
from gymux.errors import PluginError

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginStatus",
    "Registry",
    "default_registry",
    "register",
]

ENTRY_POINT_GROUP = "gymux.envs"
_log = structlog.get_logger("gymux.registry")


class PluginStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One row of :meth:`Registry.status`."""

    id: str
    source: str
    ok: bool
    version: str = ""
    splits: dict[str, int] = msgspec.field(default_factory=dict)
    execution: str = ""
    has_oracle: bool = False
    error: str | None = None
    #: Optional dependencies not installed (``"module (install hint)"``).
    missing: list[str] = msgspec.field(default_factory=list)


def validate_plugin(env_id: str, obj: object) -> EnvPlugin:
    """Check that ``obj`` is a well-formed plugin for ``env_id``; raise PluginError if not."""
    if not isinstance(obj, EnvPlugin) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise PluginError(env_id, f"plugin factory raised {exc!r}") from exc
    if not isinstance(obj, EnvPlugin):
        raise PluginError(env_id, f"expected an EnvPlugin, got {type(obj).__name__}")
    spec = obj.spec
    if spec.id != env_id:
        raise PluginError(env_id, f"spec id {spec.id!r} does not match registered name")
    if not spec.splits:
        raise PluginError(env_id, "spec declares no task splits")
    for name, split in spec.splits.items():
        if split.name != name:
            raise PluginError(env_id, f"split key {name!r} holds split named {split.name!r}")
        if len(set(split.ids)) != len(split.ids):
            raise PluginError(env_id, f"split {name!r} has duplicate task ids")
    if spec.max_turns < 1:
        raise PluginError(env_id, f"max_turns must be >= 1, got {spec.max_turns}")
    lo, hi = spec.reward_range
    if lo > hi:
        raise PluginError(env_id, f"reward_range {spec.reward_range} is empty")
    return obj


class Registry:
    """A set of environment plugins, by id."""

    def __init__(self, *, entry_points_group: str | None = ENTRY_POINT_GROUP) -> None:
        self._plugins: dict[str, EnvPlugin] = {}
        self._sources: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self._pending: dict[str, EntryPoint] = {}
        self._group = entry_points_group
        self._discovered = entry_points_group is None

    def register(
        self, plugin: EnvPlugin | Callable[[], EnvPlugin], *, replace: bool = False
    ) -> EnvPlugin:
        """Add a plugin programmatically. Raises PluginError when it is malformed."""
        env_id = (
            plugin.spec.id if isinstance(plugin, EnvPlugin) else getattr(plugin, "__name__", "?")
        )
        checked = validate_plugin(env_id, plugin)
        self._discover()
        if not replace and (checked.id in self._plugins or checked.id in self._pending):
            raise PluginError(checked.id, "already registered (pass replace=True to override)")
        self._pending.pop(checked.id, None)
        self._errors.pop(checked.id, None)
        self._plugins[checked.id] = checked
        self._sources[checked.id] = "registered"
        return checked

    def unregister(self, env_id: str) -> None:
        self._plugins.pop(env_id, None)
        self._pending.pop(env_id, None)
        self._errors.pop(env_id, None)
        self._sources.pop(env_id, None)

    def ids(self) -> list[str]:
        self._discover()
        return sorted({*self._plugins, *self._pending, *self._errors})

    def get_runnable(self, env_id: str) -> EnvPlugin:
        """:meth:`get`, and PluginError if a dependency the env needs is not installed."""
        plugin = self.get(env_id)
        absent = plugin.missing()
        if absent:
            raise PluginError(env_id, f"not installed: {', '.join(absent)}")
        return plugin

    def get(self, env_id: str) -> EnvPlugin:
        """The plugin ``env_id``, loading it if needed; PluginError if missing or broken."""
        self._discover()
        if env_id in self._plugins:
            return self._plugins[env_id]
        if env_id in self._pending:
            self._load(env_id)
            if env_id in self._plugins:
                return self._plugins[env_id]
        if env_id in self._errors:
            raise PluginError(env_id, self._errors[env_id])
        known = ", ".join(self.ids()) or "none"
        raise PluginError(env_id, f"not installed (known envs: {known})")

    def status(self) -> list[PluginStatus]:
        """Load every plugin and report each one, broken ones included."""
        rows: list[PluginStatus] = []
        for env_id in self.ids():
            try:
                plugin = self.get(env_id)
            except PluginError as exc:
                rows.append(
                    PluginStatus(
                        id=env_id, source=self._sources.get(env_id, ""), ok=False, error=exc.cause
                    )
                )
                continue
            rows.append(
                PluginStatus(
                    id=env_id,
                    source=self._sources.get(env_id, ""),
                    ok=True,
                    version=plugin.spec.version,
                    splits={name: s.count for name, s in plugin.spec.splits.items()},
                    execution=plugin.execution.value,
                    has_oracle=plugin.oracle is not None,
                    missing=plugin.missing(),
                )
            )
        return rows

    # -- entry points -------------------------------------------------------------------

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        assert self._group is not None
        self.add_entry_points(entry_points(group=self._group))

    def add_entry_points(self, eps: Iterable[EntryPoint]) -> None:
        """Queue entry points for lazy loading (used by discovery, and by tests)."""
        for ep in eps:
            if ep.name in self._plugins or ep.name in self._pending:
                _log.warning("duplicate env entry point ignored", env=ep.name, value=ep.value)
                continue
            self._pending[ep.name] = ep
            self._sources[ep.name] = f"entry point {ep.value}"

    def _load(self, env_id: str) -> None:
        ep = self._pending.pop(env_id)
        try:
            obj: Any = ep.load()
        except Exception as exc:
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
            cause = f"failed to import {ep.value}: {type(exc).__name__}: {exc}{where}"
            self._errors[env_id] = cause
            _log.info("env plugin failed to load", env=env_id, error=cause)
            return
        try:
            self._plugins[env_id] = validate_plugin(env_id, obj)
        except PluginError as exc:
            self._errors[env_id] = exc.cause
            _log.info("env plugin is invalid", env=env_id, error=exc.cause)


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry, discovering installed entry points on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry()
    return _DEFAULT


def register(plugin: EnvPlugin, *, replace: bool = False) -> EnvPlugin:
    """Register ``plugin`` in the default registry."""
    return default_registry().register(plugin, replace=replace)


def import_ref(ref: str) -> Any:
    """Import ``"module:qualname"``."""
    module_name, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
