"""Node Feature Discovery labels: a feature file for NFD's `local` source.

With `nodeFeatures` set, kdp-host keeps one file listing, for every resource this node
serves, `<resource>.present=true|false` and `<resource>.count=<healthy devices>` (physical
devices, replicas not counted). NFD's worker turns each line into a node label at its next
rescan, so pods and other tools can select nodes by what kdp-host found, and kdp-host needs
no API access for it. The file is written atomically (a dot file, which NFD ignores, renamed
into place) only when its content changes, and removed when kdp-host stops: an uninstalled
plugin leaves no stale labels.

A kdp-host that dies without removing it (killed, its node lost, its pod evicted with the
host path kept) would leave its labels for ever; so the file carries NFD's
`# +expiry-time=<RFC 3339>` directive (NFD v0.14 and newer ignore the lines after it once
that time has passed; older versions read it as a comment), `nodeFeatures.expiry` ahead,
and kdp-host rewrites it every third of that with a later time.

Two instances on one node (a rolling upgrade runs the new one beside the old one) write the
same file: it is owned like a CDI spec file (`file_lease.py`, the owner file
`.kdp-host.owner` next to it). The newest instance takes it over; the old one then neither
rewrites nor removes it, and takes it back only once the owner's lease ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

from .atomic_files import unlink, write_atomic
from .backoff import Backoff
from .config.model import NodeFeaturesConfig
from .config.outputs import owner_path
from .devices import Snapshot
from .file_lease import LEASE, VERIFY, OwnerLease
from .files import Offload
from .k8s_names import node_feature_labels
from .logs import EventLogger

WRITE_DEBOUNCE = 0.1
"""Changes within this time (a burst of hot-plugs, a reload) make one write."""
MAX_FEATURE_FILE_BYTES = 64 * 1024
"""NFD ignores a feature file larger than this."""
REFRESHES_PER_EXPIRY = 3
"""The file is rewritten with a later expiry time this many times per `nodeFeatures.expiry`,
so two refreshes can be missed (a loaded node) before NFD drops the labels."""


def expiry_directive(expires: float) -> str:
    """NFD's expiry directive for the Unix time `expires`, rounded up to the second (RFC 3339
    in UTC, the format NFD parses)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(expires)))
    return f"# +expiry-time={stamp}"


def feature_file_text(counts: dict[str, int], expires: float | None = None) -> str:
    """The file's content for the given resources' healthy device counts; with `expires`
    (a Unix time), NFD ignores the labels from then on."""
    lines = ["# Written by kdp-host for Node Feature Discovery (local source). Do not edit."]
    if expires is not None:
        lines.append(expiry_directive(expires))
    for resource in sorted(counts):
        present, count = node_feature_labels(resource)
        lines += [
            f"{present}={'true' if counts[resource] else 'false'}",
            f"{count}={counts[resource]}",
        ]
    return "\n".join(lines) + "\n"


class NodeFeatureFile:
    """Keeps the feature file in step with the resources' device lists."""

    def __init__(
        self,
        config: NodeFeaturesConfig,
        log: EventLogger,
        offload: Offload,
        instance: str,
        clock: Callable[[], float] = time.time,
        lease: float = LEASE,
    ) -> None:
        """`instance`: this host instance, the owner of the file it writes."""
        self.path = path = config.file
        self._offload = offload
        self._log = log.bind(component="node-features", path=path)
        self._lease = OwnerLease(
            owner_path(path), path, instance, lease, offload, self._log, what="node_features"
        )
        self._verify = min(VERIFY, lease / 3)
        self._expiry = config.expiry
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._written: str | None = None
        """The labels last written (the file's text without its expiry time)."""
        self._refresh_at: float | None = None
        """When the file must be written again with a later expiry (Unix time)."""
        self._retry = Backoff(initial=1.0, maximum=60.0)

    def update(self, resource: str, snapshot: Snapshot) -> None:
        """A resource's new device list (a DeviceTable listener, on the event loop)."""
        healthy = sum(1 for device in snapshot.devices if device.healthy)
        if self._counts.get(resource) != healthy:
            self._counts[resource] = healthy
            self._changed.set()

    def forget(self, resource: str) -> None:
        """The resource left this node's config (once its runtime stopped)."""
        if self._counts.pop(resource, None) is not None:
            self._changed.set()

    async def run(self) -> None:
        """Write on every change, and before the expiry time written passes, until
        cancelled; then remove the file unless another instance owns it now. Every
        `VERIFY` seconds the owner refreshes its lease, and a file nobody owns any more is
        written again (taken over)."""
        try:
            await self._lease.take_over()
            while True:
                refresh_in = self._verify
                if self._refresh_at is not None:
                    refresh_in = min(refresh_in, self._refresh_at - self._clock())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(refresh_in):
                        await self._changed.wait()
                if self._changed.is_set():
                    await asyncio.sleep(WRITE_DEBOUNCE)
                    self._changed.clear()
                else:
                    await self._keep_lease()
                await self._write(dict(self._counts))
        finally:
            await self._remove()

    async def _keep_lease(self) -> None:
        """As the owner, refresh the lease; a file nobody owns (its owner stopped, or its
        lease ran out) is written again by this instance, which takes it over."""
        owner = await self._lease.owner()
        if owner == self._lease.instance:
            await self._lease.refresh()
        elif owner is None:
            self._written = None

    async def _remove(self) -> None:
        """At stop: remove the file, unless another instance owns it now (during a rolling
        upgrade the old instance leaves the new one's file)."""
        try:
            owner = await self._lease.other_owner()
            if owner is not None:
                self._log.info("node_features_left", owner=owner)
                return
            await self._offload.run(lambda: unlink(self.path))
            await self._lease.give_up()
        except OSError as exc:
            self._log.warning("node_features_remove_failed", reason=str(exc))

    async def _write(self, counts: dict[str, int]) -> None:
        labels = feature_file_text(counts)
        now = self._clock()
        refresh_due = self._refresh_at is not None and now >= self._refresh_at
        if labels == self._written and not refresh_due:
            return
        if not await self._lease.may_write():
            return  # another instance owns the file (a rolling upgrade): it keeps it
        text = feature_file_text(counts, expires=now + self._expiry)
        data = text.encode()
        if len(data) > MAX_FEATURE_FILE_BYTES:
            self._log.error(
                "node_features_too_large",
                bytes=len(data),
                detail=f"NFD ignores feature files over {MAX_FEATURE_FILE_BYTES} bytes",
            )
        try:
            await self._offload.run(lambda: write_atomic(self.path, data))
        except OSError as exc:
            delay = self._retry.next_delay()
            self._log.error(
                "node_features_write_failed", reason=exc.strerror or str(exc), retry_in=delay
            )
            await asyncio.sleep(delay)
            self._changed.set()
            return
        self._retry.reset()
        self._refresh_at = now + self._expiry / REFRESHES_PER_EXPIRY
        if labels != self._written:
            self._log.info("node_features_written", resources=len(counts))
        else:
            self._log.debug("node_features_refreshed", resources=len(counts))
        self._written = labels
