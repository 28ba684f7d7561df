"""The supervisor: one ResourceRuntime per configured resource, on one event loop.

Every resource runs in a task the host owns. A resource that crashes is logged, counted
and restarted with backoff while the others keep serving. A new config is applied as a
diff (Intel's device-plugin manager shape): new resources start, removed ones stop, changed
ones restart, unchanged ones are not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Config, ResourceConfig
from .logs import EventLogger
from .metrics import Metrics
from .registration import KUBELET_SOCKET, Backoff, kubelet_socket_inode
from .resource import HostServices, ResourceRuntime
from .watch import Watcher, make_watcher

RESTART_BACKOFF = Backoff(initial=0.5, maximum=30.0)
STABLE_AFTER = 60.0
"""A resource that ran this long before crashing restarts with the shortest backoff again."""


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


@dataclass
class _Supervised:
    runtime: ResourceRuntime
    task: asyncio.Task[None] | None = None
    crashes: int = 0
    gave_up: bool = False


@dataclass
class Host:
    config: Config
    metrics: Metrics
    log: EventLogger
    watcher: Watcher | None = None
    instance_id: str = field(default_factory=lambda: secrets.token_hex(4))
    _resources: dict[str, _Supervised] = field(default_factory=dict, init=False)
    _services: HostServices | None = field(default=None, init=False)
    _stopping: set[asyncio.Task[None]] = field(default_factory=set, init=False)

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
        self._services = HostServices(socket_dir, self.instance_id, watcher, self.metrics, self.log)
        watch_task = asyncio.create_task(watcher.run(), name="watcher")
        kubelet_watch = self._watch_kubelet_restarts(socket_dir)
        self.log.info(
            "host_started",
            resources=len(self.config.resources),
            socket_dir=socket_dir,
            instance=self.instance_id,
            watcher=watcher.kind,
        )
        try:
            for resource in self.config.resources:
                self._start(resource)
            stop_task = asyncio.create_task(stop.wait())
            await asyncio.wait({stop_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
            if watch_task.done() and not stop_task.done():
                stop_task.cancel()
                watch_task.result()
        finally:
            kubelet_watch()
            await self._stop_all()
            watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch_task
            self.log.info("host_stopped")

    def apply(self, new: Config) -> ReloadPlan:
        """Apply a validated config as a diff. Raises ValueError for changes needing a restart."""
        problems = restart_required(self.config, new)
        if problems:
            raise ValueError("; ".join(problems))
        plan = plan_reload(self.config, new)
        new_by_name = {r.name: r for r in new.resources}
        for name in (*plan.removed, *plan.changed):
            self._stop_later(name)
        for name in (*plan.changed, *plan.added):
            self._start(new_by_name[name])
        for name in plan.removed:
            self.metrics.forget_resource(name)
        self.config = new
        return plan

    def _start(self, config: ResourceConfig) -> None:
        assert self._services is not None
        runtime = ResourceRuntime(config, self._services)
        supervised = _Supervised(runtime)
        supervised.task = asyncio.create_task(
            self._supervise(supervised), name=f"resource:{config.name}"
        )
        self._resources[config.name] = supervised

    async def _supervise(self, supervised: _Supervised) -> None:
        backoff = Backoff(initial=RESTART_BACKOFF.initial, maximum=RESTART_BACKOFF.maximum)
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
                if loop.time() - started > STABLE_AFTER:
                    backoff.reset()
                delay = backoff.next_delay()
                supervised.crashes += 1
                self.metrics.resource_restarts.labels(runtime.config.name).inc()
                runtime.log.exception("resource_crashed", restart_in=f"{delay:g}s", error=repr(exc))
                await asyncio.sleep(delay)
                assert self._services is not None
                runtime = ResourceRuntime(runtime.config, self._services)
                supervised.runtime = runtime

    def _stop_later(self, name: str) -> None:
        task = self._resources.pop(name).task
        if task is not None:
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def _stop_all(self) -> None:
        for name in list(self._resources):
            self._stop_later(name)
        if self._stopping:
            await asyncio.wait(set(self._stopping), timeout=1.5)

    def _watch_kubelet_restarts(self, socket_dir: str) -> Callable[[], None]:
        assert self.watcher is not None
        last = kubelet_socket_inode(socket_dir)
        log = self.log

        def on_event(name: str | None) -> None:
            nonlocal last
            if name not in (None, KUBELET_SOCKET):
                return
            current = kubelet_socket_inode(socket_dir)
            if current is None or current == last:
                return
            if last is not None:
                self.metrics.kubelet_restarts.inc()
                log.info("kubelet_restarted", socket=os.path.join(socket_dir, KUBELET_SOCKET))
            last = current

        subscription = self.watcher.subscribe(socket_dir, on_event)
        return subscription.cancel
