"""The supervisor: one ResourceRuntime per configured resource, on one event loop.

Every resource runs in a task the host owns. A resource that crashes is logged, counted
and restarted with backoff while the others keep serving. A new config is applied as a
diff (Intel's device-plugin manager shape): new resources start, removed ones stop, changed
ones restart, unchanged ones are not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles

from .backoff import Backoff
from .config import Config, ConfigError, ResourceConfig, load_config_text
from .drivers import DriverFactory, make_driver
from .http import HEARTBEAT_INTERVAL, HealthState
from .logs import EventLogger
from .metrics import Metrics
from .registration import KUBELET_SOCKET, kubelet_socket_identity
from .resource import HostServices, ResourceRuntime
from .watch import Watcher, make_watcher

RESTART_DELAYS = (0.5, 30.0)
"""Backoff of a crashed resource's restarts: first and longest delay, in seconds."""
STABLE_AFTER = 60.0
"""A resource that ran this long before crashing restarts with the shortest backoff again."""
GIVE_UP_AFTER_CRASHES = 10
"""Crashes in a row (none of them stable) after which /healthz reports the resource dead."""
RELOAD_DEBOUNCE = 0.1
"""A ConfigMap update is several renames in a row: read the file once they have settled."""


@dataclass(frozen=True)
class ReloadPlan:
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
    """Settings a running host cannot change."""
    problems = []
    if old.kubelet.socket_dir != new.kubelet.socket_dir:
        problems.append("kubelet.socketDir changed: restart kdp-host to apply")
    if old.metrics != new.metrics:
        problems.append("metrics.listen changed: restart kdp-host to apply")
    return problems


def remove_stale_sockets(socket_dir: str, log: EventLogger) -> None:
    """Remove `kdp-*.sock` files nobody listens on: left by an instance that was killed.

    Sockets of a live instance (another pod during a rolling upgrade) accept connections
    and are kept.
    """
    try:
        names = [n for n in os.listdir(socket_dir) if n.startswith("kdp-") and n.endswith(".sock")]
    except OSError:
        return
    for name in names:
        path = os.path.join(socket_dir, name)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(path)
                continue
            except ConnectionRefusedError:
                pass
            except OSError:
                continue
        with contextlib.suppress(OSError):
            os.unlink(path)
            log.info("stale_socket_removed", socket=path)


@dataclass
class _Supervised:
    runtime: ResourceRuntime
    task: asyncio.Task[None] | None = None
    crashes: int = 0
    gave_up: bool = False
    stopping: bool = False
    """Set before the host cancels it: an error from here on is part of stopping."""


@dataclass
class Host:
    config: Config
    metrics: Metrics
    log: EventLogger
    watcher: Watcher | None = None
    instance_id: str = field(default_factory=lambda: secrets.token_hex(4))
    config_path: Path | None = None
    """Watched for changes (and re-read on `request_reload`) when given."""
    health: HealthState = field(default_factory=HealthState)
    drivers: DriverFactory = make_driver
    """Makes each resource's driver (tests pass their own)."""
    restart_delays: tuple[float, float] = RESTART_DELAYS
    _resources: dict[str, _Supervised] = field(default_factory=dict, init=False)
    _services: HostServices | None = field(default=None, init=False)
    _stopping: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _reload_wanted: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @property
    def resources(self) -> dict[str, ResourceRuntime]:
        return {name: s.runtime for name, s in self._resources.items()}

    def not_ready(self) -> dict[str, str]:
        """Resources that are not serving and registered, with the reason."""
        out = {}
        for name, supervised in self._resources.items():
            status = supervised.runtime.status
            if not (status.serving and status.registered):
                out[name] = status.last_error or (
                    "not serving" if not status.serving else "not registered"
                )
        return out

    def dead_resources(self) -> list[str]:
        return [name for name, s in self._resources.items() if s.gave_up]

    async def run(self, stop: asyncio.Event) -> None:
        """Serve every resource until `stop` is set, then shut everything down cleanly."""
        watcher = self.watcher or make_watcher(self.log.bind(component="watch"))
        self.watcher = watcher
        socket_dir = self.config.kubelet.socket_dir
        self._services = HostServices(
            socket_dir, self.instance_id, watcher, self.metrics, self.log, self.drivers
        )
        watch_task = asyncio.create_task(watcher.run(), name="watcher")
        kubelet_watch = self._watch_kubelet_restarts(socket_dir)
        self.log.info(
            "host_started",
            resources=len(self.config.resources),
            socket_dir=socket_dir,
            instance=self.instance_id,
            watcher=watcher.kind,
        )
        self._record_config(self.config)
        await asyncio.to_thread(remove_stale_sockets, socket_dir, self.log)
        internal = [watch_task, asyncio.create_task(self._heartbeat(), name="heartbeat")]
        if self.config_path is not None:
            internal.append(asyncio.create_task(self._reload_loop(self.config_path), name="reload"))
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        try:
            for resource in self.config.resources:
                self._start(resource)
            await asyncio.wait({stop_task, *internal}, return_when=asyncio.FIRST_COMPLETED)
            for task in internal:
                if task.done() and not task.cancelled():
                    error = task.exception()
                    self.log.error("host_task_died", task=task.get_name(), error=repr(error))
                    raise RuntimeError(f"host task {task.get_name()} died: {error!r}") from error
        finally:
            stop_task.cancel()
            kubelet_watch()
            await self._stop_all()
            for task in internal:
                task.cancel()
            await asyncio.gather(*internal, return_exceptions=True)
            self.log.info("host_stopped")

    def request_reload(self) -> None:
        """Re-read the config file now (SIGHUP)."""
        self._reload_wanted.set()

    async def _heartbeat(self) -> None:
        """Proves the loop is alive to /healthz, measures its lag, refreshes readiness."""
        loop = asyncio.get_running_loop()
        worst = 0.0
        while True:
            expected = loop.time() + HEARTBEAT_INTERVAL
            self.health.beat()
            self.health.not_ready = self.not_ready()
            self.health.dead = tuple(self.dead_resources())
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            lag = max(0.0, loop.time() - expected)
            worst = max(worst, lag)
            self.metrics.loop_lag.set(lag)
            self.metrics.loop_lag_max.set(worst)

    def _record_config(self, config: Config) -> None:
        self.metrics.config_info.info({"sha256": config.sha256})
        self.metrics.config_timestamp.set(time.time())

    async def _reload_loop(self, path: Path) -> None:
        """Reload on changes to the file, including a ConfigMap's `..data` symlink swap."""
        assert self.watcher is not None
        watched = {path.name, "..data"}

        def on_event(name: str | None) -> None:
            if name is None or name in watched:
                self._reload_wanted.set()

        subscriptions = [self.watcher.subscribe(str(path.parent), on_event)]
        real_parent = Path(os.path.realpath(path)).parent
        if real_parent != path.parent:
            watched.add(Path(os.path.realpath(path)).name)
            subscriptions.append(self.watcher.subscribe(str(real_parent), on_event))
        try:
            while True:
                await self._reload_wanted.wait()
                await asyncio.sleep(RELOAD_DEBOUNCE)
                self._reload_wanted.clear()
                await self.reload_from(path)
        finally:
            for subscription in subscriptions:
                subscription.cancel()

    async def reload_from(self, path: Path) -> str:
        """Read, validate and apply the file; returns the result that was counted."""
        try:
            async with aiofiles.open(path, "rb") as f:
                data = await f.read()
        except OSError as exc:
            return self._reload_result("invalid", error=f"cannot read {path}: {exc}")
        if hashlib.sha256(data).hexdigest() == self.config.sha256:
            return "unchanged"
        try:
            new = load_config_text(data.decode("utf-8", errors="replace"), str(path))
        except ConfigError as exc:
            return self._reload_result("invalid", error=str(exc), problems=len(exc.problems))
        try:
            plan = self.apply(new)
        except ValueError as exc:
            return self._reload_result("refused", error=str(exc))
        self._record_config(new)
        return self._reload_result(
            "ok",
            added=",".join(plan.added),
            removed=",".join(plan.removed),
            changed=",".join(plan.changed),
            unchanged=len(plan.unchanged),
            sha256=new.sha256[:12],
        )

    def _reload_result(self, result: str, **fields: object) -> str:
        self.metrics.config_reloads.labels(result).inc()
        if result == "ok":
            self.log.info("config_reloaded", **fields)
        else:
            self.log.error("config_reload_failed", result=result, **fields)
        return result

    def apply(self, new: Config) -> ReloadPlan:
        """Apply a validated config as a diff. Raises ValueError for changes needing a restart."""
        problems = restart_required(self.config, new)
        if problems:
            raise ValueError("; ".join(problems))
        plan = plan_reload(self.config, new)
        new_by_name = {r.name: r for r in new.resources}
        old_by_name = {r.name: r for r in self.config.resources}
        for name in plan.changed:
            if old_by_name[name].replicas != new_by_name[name].replicas:
                self.log.warning(
                    "replicas_changed",
                    resource=name,
                    detail="device IDs change; allocations the kubelet holds keep the old IDs",
                )
        stopping = {name: self._stop_later(name) for name in (*plan.removed, *plan.changed)}
        for name in (*plan.changed, *plan.added):
            self._start(new_by_name[name], after=stopping.get(name))
        for name in plan.removed:
            self.metrics.forget_resource(name)
        self.config = new
        return plan

    def _start(self, config: ResourceConfig, after: asyncio.Task[None] | None = None) -> None:
        """Start a resource; a restarted one waits until its old runtime has fully stopped.

        Otherwise the old ListAndWatch stream could end after the new registration, and the
        kubelet would then disconnect the new one (docs/kubelet-contract.md §9).
        """
        assert self._services is not None
        runtime = ResourceRuntime(config, self._services)
        supervised = _Supervised(runtime)
        supervised.task = asyncio.create_task(
            self._supervise(supervised, after), name=f"resource:{config.name}"
        )
        self._resources[config.name] = supervised

    async def _supervise(
        self, supervised: _Supervised, after: asyncio.Task[None] | None = None
    ) -> None:
        if after is not None:
            await asyncio.wait({after})
        backoff = Backoff(*self.restart_delays)
        loop = asyncio.get_running_loop()
        runtime = supervised.runtime
        while True:
            started = loop.time()
            try:
                await runtime.run()
                raise RuntimeError("resource runtime returned")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if supervised.stopping:
                    # Our cancel surfaced as another error (a cleanup step failed while the
                    # runtime stopped): the resource is being stopped, not crashing.
                    runtime.log.exception("resource_stop_failed")
                    raise asyncio.CancelledError from exc
                if loop.time() - started > STABLE_AFTER:
                    backoff.reset()
                delay = backoff.next_delay()
                supervised.crashes += 1
                if loop.time() - started > STABLE_AFTER:
                    supervised.crashes = 1
                supervised.gave_up = supervised.crashes >= GIVE_UP_AFTER_CRASHES
                self.metrics.resource_restarts.labels(runtime.config.name).inc()
                runtime.log.exception("resource_crashed", restart_in=f"{delay:g}s", error=repr(exc))
                await asyncio.sleep(delay)
                assert self._services is not None
                runtime = ResourceRuntime(runtime.config, self._services)
                supervised.runtime = runtime

    def _stop_later(self, name: str) -> asyncio.Task[None] | None:
        supervised = self._resources.pop(name)
        supervised.stopping = True
        task = supervised.task
        if task is not None:
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        return task

    async def _stop_all(self) -> None:
        for name in list(self._resources):
            self._stop_later(name)
        if self._stopping:
            _, pending = await asyncio.wait(set(self._stopping), timeout=1.5)
            for task in pending:
                self.log.warning("resource_stop_slow", task=task.get_name())

    def _watch_kubelet_restarts(self, socket_dir: str) -> Callable[[], None]:
        assert self.watcher is not None
        last = kubelet_socket_identity(socket_dir)
        log = self.log

        def on_event(name: str | None) -> None:
            nonlocal last
            if name not in (None, KUBELET_SOCKET):
                return
            current = kubelet_socket_identity(socket_dir)
            if current is None or current == last:
                return
            if last is not None:
                self.metrics.kubelet_restarts.inc()
                log.info("kubelet_restarted", socket=os.path.join(socket_dir, KUBELET_SOCKET))
            last = current

        subscription = self.watcher.subscribe(socket_dir, on_event)
        return subscription.cancel
