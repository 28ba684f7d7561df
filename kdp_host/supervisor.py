"""Supervision: one task per resource runtime, restarted with backoff when it crashes.

A resource that crashes is logged, counted and restarted while the others keep serving;
after too many crashes in a row /healthz reports it dead. Stopping a resource is
asynchronous (its streams end cleanly first), so a restarted resource waits for its old
runtime to be gone before it starts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

from .backoff import Retries, Retry
from .config import ResourceConfig
from .features import cdi_goes, cdi_keeper
from .resource import ResourceRuntime
from .services import HostServices

STOP_WAIT = 1.5
"""Seconds the host waits for its resources to stop at shutdown before logging the slow ones."""


RESTARTS: Final = Retry(first=0.5, maximum=30.0, stable=60.0)
"""A crashed resource restarts after 0.5 s, doubling on each crash in a row up to 30 s; one
that ran a minute before crashing restarts with the shortest delay again."""


@dataclass(frozen=True)
class RestartPolicy:
    """How a crashed resource is restarted."""

    retry: Retry = RESTARTS
    give_up_after: int = 10
    """Crashes in a row (none of them stable) after which /healthz reports the resource dead."""


@dataclass
class _Supervised:
    """A resource's runtime, the task that runs it, and its state."""

    runtime: ResourceRuntime
    task: asyncio.Task[None] | None = None
    gave_up: bool = False
    stopping: bool = False
    """Set before the supervisor cancels it: an error from here on is part of stopping."""


@dataclass
class Supervisor:
    """Owns the task of every running resource."""

    services: HostServices
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    _running: dict[str, _Supervised] = field(default_factory=dict, init=False)
    _stopping: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _keepers: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False)
    """Resources a reload removed whose held CDI entries are still kept (`cdi_keeper`)."""
    _reads: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    """The kubelet's checkpoint read for a reload, which resources it starts wait for."""
    _stopped: dict[str, ResourceRuntime] = field(default_factory=dict, init=False)
    """The runtime a reload stopped that the changed resource's next `start` follows."""

    @property
    def resources(self) -> dict[str, ResourceRuntime]:
        return {name: s.runtime for name, s in self._running.items()}

    def not_ready(self) -> dict[str, str]:
        """Resources that are not serving and registered, with the reason."""
        return {n: why for n in self._running if (why := self.not_ready_reason(n)) is not None}

    def not_ready_reason(self, name: str) -> str | None:
        """Why a running resource is not ready; None when it is (or runs no more)."""
        supervised = self._running.get(name)
        if supervised is None or (status := supervised.runtime.status).ready:
            return None
        return status.not_ready_reason()

    def readiness(self, name: str) -> tuple[str | None, bool]:
        """`not_ready_reason`, and whether the resource sent its first list (or runs no more)."""
        supervised = self._running.get(name)
        return self.not_ready_reason(name), supervised is None or supervised.runtime.status.listed

    def gave_up(self, name: str) -> bool:
        supervised = self._running.get(name)
        return supervised is not None and supervised.gave_up

    def dead_resources(self) -> list[str]:
        return [name for name, s in self._running.items() if s.gave_up]

    def start(
        self,
        config: ResourceConfig,
        after: asyncio.Task[None] | None = None,
        booked: asyncio.Task[None] | None = None,
    ) -> None:
        """Start a resource; a restarted one waits until its old runtime has fully stopped.

        Otherwise the old ListAndWatch stream could end after the new registration, and the
        kubelet would then disconnect the new one (docs/kubelet-contract.md §9). One that
        comes back waits for the keeper of its held CDI entries to stop (one writer a file).
        Each waits for `booked` too: the kubelet's checkpoint read for a reload
        (`checkpoint_bookings.book_before`), so its first list holds what the pods hold.
        """
        keeper = None if config.allocate.cdi is None else self._keepers.pop(config.name, None)
        if keeper is not None:
            keeper.cancel()
            after = keeper  # (the keeper waited for the old runtime)
        if booked is not None and booked not in self._reads:
            self._reads.add(booked)  # (cancelled by `stop_all`)
            booked.add_done_callback(self._reads.discard)
        self.services.metrics.add_resource(config.name)
        supervised = _Supervised(ResourceRuntime(config, self.services))
        before = self._stopped.pop(config.name, None)
        supervised.task = asyncio.create_task(
            self._supervise(supervised, after, booked, before), name=f"resource:{config.name}"
        )
        self._running[config.name] = supervised
        self.services.status_changed(config.name)

    def stop_later(
        self, name: str, new: ResourceConfig | None = None, reload: bool = True
    ) -> asyncio.Task[None] | None:
        """Cancel a resource's task; returns it so a successor (`new`, its config: None, a
        removed resource) can wait for it to end, and take over what it has missing
        (`drivers.carry`). On a `reload` that ends its CDI spec file (`features.cdi_goes`), it
        keeps its held entries (`cdi_keeper`)."""
        supervised = self._running.pop(name)
        if new is not None:
            self._stopped[name] = supervised.runtime
        supervised.stopping = True
        self.services.status_changed(name)
        task = supervised.task
        if task is not None:
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        if reload and cdi_goes(supervised.runtime.config, new):
            self._keep(supervised.runtime.config, task)
        return task

    def _keep(self, config: ResourceConfig, stopping: asyncio.Task[None] | None) -> None:
        """Start the keeper of a removed resource's held CDI entries, if it has any."""
        keeper = cdi_keeper(config, self.services, stopping)
        if keeper is None:
            return
        self._keepers[config.name] = keeper
        self._stopping.add(keeper)

        def done(_: object) -> None:
            self._stopping.discard(keeper)
            if self._keepers.get(config.name) is keeper:
                del self._keepers[config.name]

        keeper.add_done_callback(done)

    async def stop_all(self) -> None:
        for name in list(self._running):
            self.stop_later(name, reload=False)
        for task in (*self._keepers.values(), *self._reads):
            task.cancel()
        if self.services.checkpoint is not None:
            self.services.checkpoint.close()
        if self._stopping:
            _, pending = await asyncio.wait(set(self._stopping), timeout=STOP_WAIT)
            for task in pending:
                self.services.log.warning("resource_stop_slow", task=task.get_name())

    async def _supervise(
        self,
        supervised: _Supervised,
        after: asyncio.Task[None] | None = None,
        booked: asyncio.Task[None] | None = None,
        before: ResourceRuntime | None = None,
    ) -> None:
        """Run a resource, restarted after each crash; a runtime that follows another (a
        reload's `before`, stopped once `after` is done; the one that crashed) takes over
        what that one's driver has missing: a restart ends no grace period (`drivers.carry`)."""
        if waits := {task for task in (after, booked) if task is not None}:
            await asyncio.wait(waits)
        policy = self.policy
        crashes = Retries(policy.retry)
        runtime = supervised.runtime
        if before is not None:
            runtime.carried = before.left()
        while True:
            crashes.started()
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
                delay = crashes.failed()
                supervised.gave_up = crashes.in_a_row >= policy.give_up_after
                self.services.metrics.resource_restarts.labels(runtime.config.name).inc()
                runtime.log.exception("resource_crashed", restart_in=f"{delay:g}s", error=repr(exc))
                await asyncio.sleep(delay)
                before, runtime = runtime, ResourceRuntime(runtime.config, self.services)
                runtime.carried = before.left()
                supervised.runtime = runtime
                self.services.status_changed(runtime.config.name)
