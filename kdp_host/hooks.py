"""Operator commands on the allocation path: `preStart.command` and `allocate.command`.

Both run under the same containment as probes (kdp_host/process.py: own process group,
stdin closed, output capped, TERM then KILL at the timeout, never a shell), with their argv
and env rendered by the config's one template renderer from the devices of the container.

- PreStartContainer runs `preStart.command` once per call, at most `preStart.parallelism`
  at a time per resource (the others wait for a slot, counted), and only while its timeout
  fits in what is left of the kubelet's deadline (`start_budget`: else not run, result
  `deadline`); a call the kubelet gives up on is cancelled, which kills the command's group.
- Allocate runs `allocate.command` once per container request; what it prints is checked by
  the probe-output rules and added to the response.

A failure becomes a HookFailed with the gRPC status to answer and a message that carries the
exit status and the end of stderr: the kubelet puts it in the pod's events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from grpclib.const import Status

from .allocation import AllocationBuilder, AllocationError, HookFailed, device_env, hook_values
from .api.v1beta1 import ContainerAllocateResponse
from .command_output import ProbeOutputError, parse_allocate_output
from .config import PreStartConfig, ResourceConfig, render_template
from .device_table import DeviceTable
from .devices import Device, DeviceNode, Snapshot, physical_id
from .handed_entries import use_of
from .handed_out import HANDED_FILE, HandedOut, in_memory
from .host_env import host_command_env
from .identity import Identity, Reach
from .logs import EventLogger
from .metric_labels import HookResult
from .metrics import Metrics
from .process import CommandError, CommandResult, CommandRunner
from .start_budget import StartBudget

STDERR_IN_STATUS = 512
"""Characters of the end of stderr put in the status message (the log has up to 4 KiB):
the kubelet copies the message into the pod's events, which are short."""
HOOK_OUTPUT_LIMIT = 64 * 1024
"""Most stdout bytes a hook may print (an allocate.command's JSON is small)."""


_COMMAND_ERROR_RESULTS: Mapping[str, HookResult] = {
    "timeout": "timeout",
    "spawn": "spawn",
    "output_too_large": "output_too_large",
}
"""CommandError reasons as hook results (anything else counts as `exit`)."""


def render_argv(command: Sequence[str], values: Mapping[str, str]) -> list[str]:
    return [render_template(arg, values) for arg in command]


def _stderr_tail(stderr: str) -> str:
    text = stderr.strip()
    if len(text) > STDERR_IN_STATUS:
        text = "..." + text[-STDERR_IN_STATUS:]
    return text


async def run_hook(
    commands: CommandRunner,
    what: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    timeout: float,
) -> CommandResult:
    """Run a hook; raises HookFailed (FAILED_PRECONDITION) for anything but exit 0."""
    try:
        result = await commands.run(
            argv, timeout=timeout, env=env or None, max_output=HOOK_OUTPUT_LIMIT
        )
    except CommandError as exc:
        tail = _stderr_tail(exc.stderr)
        message = f"{what} {exc}" + (f"; stderr: {tail}" if tail else "")
        failure = _COMMAND_ERROR_RESULTS.get(exc.reason, "exit")
        raise HookFailed(Status.FAILED_PRECONDITION, failure, message) from None
    if not result.ok:
        tail = _stderr_tail(result.stderr)
        message = f"{what} {result.describe_exit()}" + (f"; stderr: {tail}" if tail else "")
        raise HookFailed(Status.FAILED_PRECONDITION, "exit", message)
    return result


PlaceCheck = Callable[
    [Collection[str], Collection[str], Mapping[str, Identity]], Awaitable[Mapping[str, str]]
]
"""(the IDs a device was handed out under, its host paths as handed out, what those reached
then where the record knows it) -> the paths that reach another device now, with what, in
words (`OwnershipIndex.changed_places`, bound to the resource): a release or preStart acts
on none of them."""

Listed = Callable[[Reach], Mapping[str, tuple[str, DeviceNode]]]
"""Handed path -> the device its node (the identity it reached) is listed by now at another
path, and that node (`OwnershipIndex.listed_at`, bound to the resource): a release acts on
the node its use was handed, there (issue 17, hostile20 F5)."""


async def check_places(
    check: PlaceCheck | None,
    what: str,
    ids: Collection[str],
    devices: Sequence[Device],
    handed: Mapping[str, Identity] | None = None,
) -> None:
    """Raise HookFailed (`place_changed`, FAILED_PRECONDITION) when a host path of `devices`
    as handed out reaches another device now (issue 17, hostile7 F3: a device renamed onto
    it, or made there anew with a reused inode number): the command is not run, since it
    would act on that device, which another pod may hold. `handed`: what each path reached
    when handed out (`HandedOut.reached`): it must reach that still (hostile8 N2). Each path
    is looked at where kdp-host sees it (`Device.checked_at`: a sysfs `devRoot`)."""
    if changed := await changed_places(check, ids, devices, handed):
        raise place_changed(what, changed)


async def changed_places(
    check: PlaceCheck | None,
    ids: Collection[str],
    devices: Sequence[Device],
    handed: Mapping[str, Identity] | None = None,
) -> Mapping[str, str]:
    """`check_places`' finding: where kdp-host sees each host path of `devices` that
    reaches another device now -> what, in words (none: the command may act on them)."""
    if check is None:
        return {}
    where = {path: at for device in devices for path, at in device.checked_at().items()}
    reached = {where.get(path, path): key for path, key in (handed or {}).items()}
    return await check(ids, set(where.values()), reached) if where else {}


def place_changed(what: str, changed: Mapping[str, str]) -> HookFailed:
    """The failure of a command not run since `changed` (`changed_places`) is not empty."""
    found = "; ".join(f"{path}: {why}" for path, why in sorted(changed.items()))
    return HookFailed(
        Status.FAILED_PRECONDITION,
        "place_changed",
        f"{what} not run: a host path it was handed reaches another device now ({found})",
    )


def handed_devices(
    builder: AllocationBuilder, snapshot: Snapshot, handed: HandedOut, requested_ids: Sequence[str]
) -> list[Device]:
    """The physical devices behind `requested_ids` as their Allocate handed them out
    (`handed_entries.use_of`: wherever a reload moved them since, or another ID of the
    device was handed out otherwise), else as `snapshot` lists them (handed out before the
    record knew them); raises AllocationError for an ID neither knows or one withheld."""
    if withheld := sorted(handed.withheld.intersection(requested_ids)):
        raise AllocationError(
            f"{handed.resource}: what {','.join(withheld)} was handed out is not known "
            f"({HANDED_FILE} was lost or could not be read): refused until handed out again"
        )
    found: dict[str, Device] = {}
    listed: list[str] = []
    for advertised in dict.fromkeys(requested_ids):
        entry = handed.entry(physical_id(advertised))
        if entry is None:
            listed.append(advertised)
        else:  # (ITS use: a shared device handed out otherwise since, hostile14 N6)
            found.setdefault(entry.device.id, use_of(entry, advertised).device)
    if listed or not found:
        for device in builder.physical_devices(snapshot, listed, healthy_only=False):
            found.setdefault(device.id, device)
    return sorted(found.values(), key=lambda device: device.id)


@dataclass
class PreStartHook:
    """Answers the PreStartContainer calls of one resource (one per resource runtime, so the
    parallelism bound holds across re-registrations)."""

    config: PreStartConfig
    resource: ResourceConfig
    table: DeviceTable
    commands: CommandRunner
    metrics: Metrics
    log: EventLogger
    clock: Callable[[], float] = time.perf_counter
    handed: HandedOut | None = None
    """What each Allocate handed out (`HostServices.handed`, persisted): what the command
    acts on, not where a reload (or a kdp-host restart) moved the device since."""
    places: PlaceCheck | None = None
    """Whether those host paths still reach what was handed out (`check_places`)."""
    spawn_failed: Callable[[], None] = lambda: None
    """Told when the command could not be spawned (`answer_checks.NeedsWatch`)."""

    def __post_init__(self) -> None:
        self._handed = self.handed or in_memory(self.resource.name)
        self._slots = asyncio.Semaphore(self.config.parallelism)
        self._builder = AllocationBuilder(self.resource)
        self.metrics.add_pre_start(self.resource.name)

    async def run(self, device_ids: Sequence[str], budget: StartBudget | None = None) -> None:
        """Run the command for one container's devices, if its timeout fits in `budget` (the
        kubelet's deadline) once it has a slot; raises HookFailed."""
        name = self.resource.name
        started = self.clock()
        ids = ",".join(device_ids)
        try:
            try:
                physical = handed_devices(
                    self._builder, self.table.snapshot, self._handed, device_ids
                )
            except AllocationError as exc:
                raise HookFailed(Status.INVALID_ARGUMENT, "invalid", str(exc)) from None
            what, reached = f"{name}: preStart for {ids}:", self._handed.reached(physical)
            await check_places(self.places, what, device_ids, physical, reached)
            budget = (budget or StartBudget.of_call(None)).then(self.config.timeout)
            if self._slots.locked():
                self.metrics.pre_start_waits.labels(name).inc()
                self.log.info("pre_start_waiting", devices=ids)
            try:
                if budget.left() <= 0:  # (no time to wait for a slot either)
                    raise TimeoutError
                async with asyncio.timeout(budget.left()):
                    await self._slots.acquire()
            except TimeoutError:
                raise budget.too_late(what, self.config.timeout) from None
            try:
                await self._run_command(physical)
            finally:
                self._slots.release()
        except HookFailed as exc:
            self.metrics.pre_start_calls.labels(name, exc.result).inc()
            self.metrics.pre_start_seconds.labels(name).observe(self.clock() - started)
            self.log.warning("pre_start_failed", devices=ids, result=exc.result, error=str(exc))
            if exc.result == "spawn":
                self.spawn_failed()
            if exc.result not in ("invalid", "deadline") and self.config.on_failure == "unhealthy":
                for device in physical:
                    if self.table.set_check_result(device.id, False):
                        self.log.warning("device_unhealthy_after_pre_start", device=device.id)
            raise
        except asyncio.CancelledError:
            # The kubelet's deadline passed (grpclib cancels the handler; the command's
            # group was killed on the way out) or the connection went away.
            self.metrics.pre_start_calls.labels(name, "timeout").inc()
            self.metrics.pre_start_seconds.labels(name).observe(self.clock() - started)
            self.log.warning("pre_start_cancelled", devices=ids, result="timeout")
            raise
        seconds = self.clock() - started
        self.metrics.pre_start_calls.labels(name, "ok").inc()
        self.metrics.pre_start_seconds.labels(name).observe(seconds)
        self.log.info("pre_start_ok", devices=ids, seconds=round(seconds, 3))
        if self.config.on_failure == "unhealthy":
            for device in physical:
                if self.table.set_check_result(device.id, True):
                    self.log.info("device_healthy_after_pre_start", device=device.id)

    async def _run_command(self, physical: Sequence[Device]) -> None:
        values = hook_values(self.resource.name, physical)
        try:
            env = hook_env(self.resource.name, physical, values, self.config.env)
        except AllocationError as exc:
            raise HookFailed(Status.INVALID_ARGUMENT, "invalid", str(exc)) from None
        what = f"{self.resource.name}: preStart for {values['ids']}:"
        await run_hook(
            self.commands,
            what,
            render_argv(self.config.command, values),
            env,
            self.config.timeout,
        )


def hook_env(
    resource: str,
    devices: Sequence[Device],
    values: Mapping[str, str],
    configured: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The env a host command for `devices` runs with (`host_env.host_command_env`): their
    own under `KDP_DEVICE_ENV_`, then the `configured` entries rendered with `values`.
    Raises AllocationError where the devices' own env cannot be merged, as Allocate does."""
    rendered = {key: render_template(text, values) for key, text in (configured or {}).items()}
    return host_command_env(device_env(resource, devices), rendered)


@dataclass
class AllocateHook:
    """Runs `allocate.command` for a container's devices and parses what it printed."""

    command: Sequence[str]
    timeout: float
    resource: str
    commands: CommandRunner
    metrics: Metrics
    log: EventLogger
    spawn_failed: Callable[[], None] = lambda: None
    """Told when the command could not be spawned (`answer_checks.NeedsWatch`)."""

    def __post_init__(self) -> None:
        self.metrics.add_allocate_hook(self.resource)

    async def response(
        self, builder: AllocationBuilder, snapshot: Snapshot, requested_ids: Sequence[str]
    ) -> ContainerAllocateResponse:
        """Run the command for a container's devices and build its response with what the
        command printed; raises HookFailed (INVALID_ARGUMENT when the output claims a
        container path the response has for something else). Raises AllocationError,
        without running the command, when the devices' own env cannot be passed to it."""
        physical = builder.physical_devices(snapshot, requested_ids)
        values = hook_values(self.resource, physical)
        env = hook_env(self.resource, physical, values)
        what = f"{self.resource}: allocate.command for {values['ids']}:"
        counter = self.metrics.allocate_hooks
        try:
            result = await run_hook(
                self.commands, what, render_argv(self.command, values), env, self.timeout
            )
            try:
                extras = parse_allocate_output(result.stdout)
            except ProbeOutputError as exc:
                raise HookFailed(
                    Status.FAILED_PRECONDITION, "parse", f"{what} output does not parse: {exc}"
                ) from None
            try:
                response = builder.container_response(snapshot, requested_ids, extras)
            except AllocationError as exc:
                raise HookFailed(Status.INVALID_ARGUMENT, "parse", f"{what} {exc}") from None
        except HookFailed as exc:
            counter.labels(self.resource, exc.result).inc()
            self.log.warning(
                "allocate_hook_failed", devices=values["ids"], result=exc.result, error=str(exc)
            )
            if exc.result == "spawn":
                self.spawn_failed()
            raise
        counter.labels(self.resource, "ok").inc()
        return response
