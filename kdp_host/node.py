"""Which resource entries this node serves: one config for a mixed fleet.

A resource entry with a `nodeSelector` is served only on the nodes it selects: by the node's
name (globs) and by its labels (exact values, like a pod's nodeSelector). The selection is a
pure function of the config and what is known about the node; the host applies its result
like a config edit, at start-up, on every reload and whenever the node's labels change.
Labels come from the Kubernetes API (kdp_host.kubeapi) and only when some entry asks for them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import os
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .config import Config, ConfigError, ResourceConfig

NODE_NAME_ENV = "NODE_NAME"
"""The environment variable the chart fills from the downward API (spec.nodeName)."""


@dataclass(frozen=True)
class NodeInfo:
    """What kdp-host knows about its node."""

    name: str
    labels: Mapping[str, str] | None = None
    """None while they are not known (no label selector needs them, or not read yet)."""


class NodeLabelSource(Protocol):
    """The node's labels, read and followed (kdp_host.kubeapi.NodeLabelWatch)."""

    @property
    def problem(self) -> str | None:
        """Why the labels are not current now (a short phrase), or None."""

    def updates(self) -> AsyncIterator[Mapping[str, str]]:
        """The labels once read, then again whenever they change; retries on its own and
        never ends."""


@dataclass(frozen=True)
class NoLabels:
    """The label source where there is no Kubernetes API to read them from."""

    reason: str

    @property
    def problem(self) -> str | None:
        return self.reason

    async def updates(self) -> AsyncIterator[Mapping[str, str]]:
        await asyncio.Event().wait()
        yield {}  # pragma: no cover (never reached: nothing to read)


def local_node_name(env: Mapping[str, str] = os.environ) -> str:
    """The node's name: $NODE_NAME (downward API), else the host name."""
    return env.get(NODE_NAME_ENV) or socket.gethostname()


def needs_labels(config: Config) -> bool:
    """Whether some entry selects nodes by label (and so the node's labels must be read)."""
    return any(r.node_selector is not None and r.node_selector.labels for r in config.resources)


@dataclass(frozen=True)
class Selection:
    """What this node serves of a config (`select_for_node`)."""

    config: Config
    """The config with only the entries this node serves (names unique)."""
    waiting: tuple[str, ...] = ()
    """Resources of entries that select by label while the labels are not known."""


class SelectionError(ConfigError):
    """Two entries with one name both select this node."""


def selects(resource: ResourceConfig, node: NodeInfo) -> bool | None:
    """Whether the entry is served on `node`; None when that depends on unknown labels."""
    selector = resource.node_selector
    if selector is None:
        return True
    if selector.names and not any(fnmatch.fnmatchcase(node.name, g) for g in selector.names):
        return False
    if not selector.labels:
        return True
    if node.labels is None:
        return None
    return all(node.labels.get(k) == v for k, v in selector.labels.items())


def select_for_node(config: Config, node: NodeInfo) -> Selection:
    """The entries `node` serves. Raises SelectionError when two entries that share a name
    both select it (the file is fine for other nodes: the error names this one)."""
    chosen: dict[str, int] = {}
    waiting: list[str] = []
    problems: list[str] = []
    for index, resource in enumerate(config.resources):
        selected = selects(resource, node)
        if selected is None:
            waiting.append(resource.name)
        elif selected:
            first = chosen.setdefault(resource.name, index)
            if first != index:
                problems.append(
                    f"resources[{first}] and resources[{index}] ({resource.name}) both select "
                    f"node {node.name!r}: at most one entry of a name may"
                )
    if problems:
        raise SelectionError(f"node {node.name!r}", problems)
    resources = tuple(config.resources[i] for i in sorted(chosen.values()))
    waiting_names = tuple(dict.fromkeys(n for n in waiting if n not in chosen))
    return Selection(dataclasses.replace(config, resources=resources), waiting_names)


T = TypeVar("T")


async def settled(
    updates: AsyncIterator[T],
    window: float,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> AsyncGenerator[T, None]:
    """`updates` with each burst coalesced: the first value at once; after that, a change
    opens a window of `window` seconds and the value that is latest when it closes comes
    next (the ones before it in the window are skipped). So at most one value per window,
    each at most `window` late. Ends when `updates` ends; raises what it raises."""
    latest: list[T] = []
    arrived = asyncio.Event()
    ended: list[BaseException | None] = []

    async def pump() -> None:
        try:
            async for value in updates:
                latest[:] = [value]
                arrived.set()
            ended.append(None)
        except Exception as exc:
            ended.append(exc)
        arrived.set()

    task = asyncio.create_task(pump())
    try:
        first = True
        while True:
            while not latest and not ended:
                arrived.clear()
                await arrived.wait()
            if latest and not first and not ended:
                await sleep(window)
            first = False
            if latest:
                yield latest.pop()
            elif ended[0] is not None:
                raise ended[0]
            else:
                return
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
