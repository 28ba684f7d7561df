"""Live config reload: watch the file, read and validate it, hand a diff to the host.

The file is watched the way a Kubernetes ConfigMap volume updates it (an atomic swap of the
`..data` symlink, not a write to the file) and re-read on request (SIGHUP). Every attempt
ends in one counted result: `ok`, `invalid`, `refused` or `unchanged`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, ConfigError, load_config
from .config.declare import restart_keys
from .files import DaemonThreads, Offload
from .logs import EventLogger
from .metric_labels import ConfigReloadResult
from .metrics import Metrics
from .watch import Watcher

RELOAD_DEBOUNCE = 0.1
"""A ConfigMap update is several renames in a row: read the file once they have settled."""


@dataclass(frozen=True)
class ReloadPlan:
    """The resources a reload adds, removes, changes and keeps, by name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    old_by_name = {r.name: r for r in old.resources}
    new_by_name = {r.name: r for r in new.resources}
    return ReloadPlan(
        added=tuple(n for n in new_by_name if n not in old_by_name),
        removed=tuple(n for n in old_by_name if n not in new_by_name),
        changed=tuple(
            n for n in new_by_name if n in old_by_name and old_by_name[n] != new_by_name[n]
        ),
        unchanged=tuple(n for n in new_by_name if old_by_name.get(n) == new_by_name[n]),
    )


def restart_required(old: Config, new: Config) -> list[str]:
    """Settings a running host cannot change: the keys declared `restart=True`
    (config/model.py) whose value differs."""
    return [
        f"{path} changed: restart kdp-host to apply"
        for path, attributes in restart_keys(Config)
        if _value(old, attributes) != _value(new, attributes)
    ]


def _value(config: Config, attributes: tuple[str, ...]) -> object:
    value: object = config
    for name in attributes:
        value = getattr(value, name)
    return value


class RestartRequired(ValueError):
    """The new config changes a setting that only a restart applies."""


@dataclass
class ConfigReloader:
    """Re-reads `path` when it changes or on `request()`, and applies it through `apply`.

    `current` returns the config in force; `apply` applies a validated config as a diff and
    raises RestartRequired for changes it cannot make live, ConfigError for a file this node
    cannot serve.
    """

    path: Path
    current: Callable[[], Config]
    apply: Callable[[Config], ReloadPlan]
    metrics: Metrics
    log: EventLogger
    load_config: Callable[[Path], Config] = load_config
    """Reads and validates a config file (through `offload`); raises ConfigError."""
    offload: Offload = field(default_factory=DaemonThreads)
    debounce: float = RELOAD_DEBOUNCE
    _wanted: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def request(self) -> None:
        """Re-read the file soon (SIGHUP)."""
        self._wanted.set()

    async def run(self, watcher: Watcher) -> None:
        """Reload on changes to the file, including a ConfigMap's `..data` symlink swap."""
        path = self.path
        watched = {path.name, "..data"}

        def on_event(name: str | None) -> None:
            if name is None or name in watched:
                self._wanted.set()

        subscriptions = [watcher.subscribe(str(path.parent), on_event)]
        real_parent = Path(os.path.realpath(path)).parent
        if real_parent != path.parent:
            watched.add(Path(os.path.realpath(path)).name)
            subscriptions.append(watcher.subscribe(str(real_parent), on_event))
        try:
            while True:
                await self._wanted.wait()
                await asyncio.sleep(self.debounce)
                self._wanted.clear()
                await self.reload()
        finally:
            for subscription in subscriptions:
                subscription.cancel()

    async def reload(self) -> ConfigReloadResult:
        """Read, validate and apply the file; returns the result that was counted.

        The file is read and checked by the same function as at start-up, off the loop
        (its work is bounded by the config loader's limits), so the loop keeps serving.
        """
        try:
            new = await self.offload.run(lambda: self.load_config(self.path))
        except ConfigError as exc:
            return self._result("invalid", error=str(exc), problems=len(exc.problems))
        if new.sha256 == self.current().sha256:
            return self._result("unchanged", sha256=new.sha256[:12])
        try:
            plan = self.apply(new)
        except RestartRequired as exc:
            return self._result("refused", error=str(exc))
        except ConfigError as exc:  # valid, but not on this node (two entries select it)
            return self._result("invalid", error=str(exc), problems=len(exc.problems))
        return self._result(
            "ok",
            added=",".join(plan.added),
            removed=",".join(plan.removed),
            changed=",".join(plan.changed),
            unchanged=len(plan.unchanged),
            sha256=new.sha256[:12],
        )

    def _result(self, result: ConfigReloadResult, **fields: object) -> ConfigReloadResult:
        self.metrics.config_reloads.labels(result).inc()
        if result == "ok":
            self.log.info("config_reloaded", **fields)
        elif result == "unchanged":
            self.log.info("config_unchanged", detail="the file is the config in force", **fields)
        else:
            self.log.error("config_reload_failed", result=result, **fields)
        return result
