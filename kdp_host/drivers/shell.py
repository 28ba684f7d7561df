"""The `shell` driver: an operator's command prints the device list.

Two output formats:

- `lines`: one device per non-empty line not starting with `#`:
  `<id> [Healthy|Unhealthy] [path=<host>[:<container>]]... [numa=<N>]`.
  The container path of `path=` starts at the first `:/` (host paths such as
  `/dev/serial/by-path/pci-0000:00:14.0-usb-0:1` keep their colons).
- `json`: a list, or `{"devices": [...]}`, of objects
  `{id, health?, paths?, numa?, env?, mounts?, annotations?}`.

Two modes: `poll` runs the command every interval; `stream` keeps one command running and
applies every complete list it prints at once (a JSON document per line, or for `lines` a
block ended by a blank line; an empty block is an empty list), restarting it with backoff
when it exits.

Failure policy: a failed run (spawn error, non-zero exit, timeout, too much output, output
that does not parse, a stream command exiting) keeps the last good list. After
`failureThreshold` consecutive failures every device is reported Unhealthy until a run
succeeds again. The log says so once per change of state; metrics count every failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..config import ShellDriverConfig
from ..devices import Device, DeviceMount, DeviceNode
from .base import DeviceSink, DriverContext, DriverError
from .glob import MAX_ID_LENGTH
from .probe import (
    DEFAULT_KILL_GRACE,
    MAX_OUTPUT,
    CommandError,
    RunningCommand,
    describe_exit,
    raise_if_cancelling,
    run_command,
    start_command,
)

MAX_NUMA_NODE = 1023
MAX_PATH_LENGTH = 4096
_OFFLOAD_PARSE_BYTES = 16 * 1024
"""Outputs larger than this are parsed in a worker thread, off the event loop."""
_QUOTE_LIMIT = 200
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGITS = re.compile(r"[0-9]{1,6}")
_HEALTH_WORDS = {"healthy": True, "unhealthy": False}
_LINE_KEYS = ("path", "numa")
_DEVICE_KEYS = frozenset({"id", "health", "paths", "numa", "env", "mounts", "annotations"})
_PATH_KEYS = frozenset({"hostPath", "containerPath"})
_MOUNT_KEYS = frozenset({"hostPath", "containerPath", "readOnly"})

Format = Literal["lines", "json"]


class ProbeOutputError(ValueError):
    """Probe output that does not parse; names the line (1-based) and quotes it."""

    def __init__(self, message: str, line: int | None = None, text: str | None = None) -> None:
        self.problem = message
        self.line = line
        self.text = text
        where = f"line {line}: " if line is not None else ""
        quoted = f": {_quote(text)}" if text is not None else ""
        super().__init__(f"{where}{message}{quoted}")


def _quote(text: str) -> str:
    if len(text) > _QUOTE_LIMIT:
        text = text[:_QUOTE_LIMIT] + "..."
    return repr(text)


class _Invalid(Exception):
    """A problem inside one entry; the caller adds the line or the JSON location."""


def _id_problem(device_id: str) -> str | None:
    if not device_id:
        return "device ID must not be empty"
    if len(device_id) > MAX_ID_LENGTH:
        return f"device ID longer than {MAX_ID_LENGTH} characters"
    if any(c.isspace() or not c.isprintable() for c in device_id):
        return "device ID must not contain whitespace or control characters"
    return None


def _check_text(value: str, what: str) -> str:
    """Strings end up in protobuf messages and container runtimes: valid UTF-8, no NUL."""
    if "\x00" in value:
        raise _Invalid(f"{what} must not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(f"{what} is not valid Unicode text") from None
    return value


def _check_path(value: str, what: str) -> str:
    _check_text(value, what)
    if not value.startswith("/"):
        raise _Invalid(f"{what} must be an absolute path, got {_quote(value)}")
    if len(value) > MAX_PATH_LENGTH:
        raise _Invalid(f"{what} longer than {MAX_PATH_LENGTH} characters")
    return value


def _health(word: str) -> bool:
    healthy = _HEALTH_WORDS.get(word.lower())
    if healthy is None:
        raise _Invalid(f"health must be Healthy or Unhealthy, got {_quote(word)}")
    return healthy


def _node_from_spec(spec: str) -> DeviceNode:
    """`/dev/x` (same path inside) or `/dev/x:/dev/y` (the container part starts at `:/`)."""
    split = spec.find(":/", 1)
    host, container = (spec[:split], spec[split + 1 :]) if split > 0 else (spec, spec)
    return DeviceNode(_check_path(host, "host path"), _check_path(container, "container path"))


def _add_node(nodes: list[DeviceNode], node: DeviceNode) -> None:
    if any(n.container_path == node.container_path for n in nodes):
        raise _Invalid(f"container path {node.container_path!r} given twice")
    nodes.append(node)


def _numa_from_text(text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise _Invalid(f"numa must be a node number 0-{MAX_NUMA_NODE}, got {_quote(text)}")
    return _numa_from_int(int(text))


def _numa_from_int(node: int) -> int:
    if not 0 <= node <= MAX_NUMA_NODE:
        raise _Invalid(f"numa must be a node number 0-{MAX_NUMA_NODE}, got {node}")
    return node


def _decode_line(raw: bytes, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProbeOutputError(
            "not valid UTF-8", lineno, raw.decode("utf-8", errors="replace")
        ) from None


def parse_lines(data: bytes | str) -> list[Device]:
    """Parse `lines` output. Raises ProbeOutputError naming the first bad line."""
    if isinstance(data, bytes):
        lines = [_decode_line(raw, n) for n, raw in enumerate(data.split(b"\n"), 1)]
    else:
        lines = data.split("\n")
    devices: list[Device] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            device = _device_from_tokens(stripped.split())
        except _Invalid as exc:
            raise ProbeOutputError(str(exc), lineno, stripped) from None
        if device.id in seen:
            raise ProbeOutputError(
                f"device ID {device.id!r} already given on line {seen[device.id]}",
                lineno,
                stripped,
            )
        seen[device.id] = lineno
        devices.append(device)
    return devices


def _device_from_tokens(tokens: list[str]) -> Device:
    device_id = tokens[0]
    if why := _id_problem(device_id):
        raise _Invalid(why)
    _check_text(device_id, "device ID")
    rest = tokens[1:]
    healthy = True
    if rest and "=" not in rest[0]:
        healthy = _health(rest[0])
        rest = rest[1:]
    nodes: list[DeviceNode] = []
    numa: int | None = None
    for token in rest:
        key, sep, value = token.partition("=")
        if not sep:
            raise _Invalid(f"expected key=value, got {_quote(token)}")
        if key == "path":
            _add_node(nodes, _node_from_spec(value))
        elif key == "numa":
            if numa is not None:
                raise _Invalid("numa given twice")
            numa = _numa_from_text(value)
        else:
            raise _Invalid(f"unknown key {_quote(key)} (known: {', '.join(_LINE_KEYS)})")
    return Device(id=device_id, healthy=healthy, nodes=tuple(nodes), numa=numa)


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(data: bytes | str) -> list[Device]:
    """Parse `json` output. Raises ProbeOutputError naming the offending line or entry."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            lineno = data.count(b"\n", 0, exc.start) + 1
            raise ProbeOutputError(
                "not valid UTF-8", lineno, _line_of(data.decode("utf-8", "replace"), lineno)
            ) from None
    else:
        text = data
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ProbeOutputError(
            f"invalid JSON: {exc.msg}", exc.lineno, _line_of(text, exc.lineno)
        ) from None
    except _DuplicateKey as exc:
        raise ProbeOutputError(f"invalid JSON: key {str(exc)!r} given twice") from None
    except RecursionError:
        raise ProbeOutputError("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ProbeOutputError(f"invalid JSON: {exc}") from None
    return _devices_from_document(document)


def _line_of(text: str, lineno: int) -> str:
    lines = text.split("\n")
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""


def _devices_from_document(document: Any) -> list[Device]:
    where = ""
    items = document
    if isinstance(document, dict):
        unknown = set(document) - {"devices"}
        if unknown or "devices" not in document:
            raise ProbeOutputError(
                'expected a list of devices or {"devices": [...]}, '
                f"got an object with keys {sorted(document)}"
            )
        items = document["devices"]
        where = "devices"
    if not isinstance(items, list):
        raise ProbeOutputError(
            f"{where or 'output'}: expected a list of devices, got {_json_kind(items)}"
        )
    devices: list[Device] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        location = f"{where}[{index}]"
        try:
            device = _device_from_json(item)
        except _Invalid as exc:
            raise ProbeOutputError(f"{location}: {exc}", text=_compact(item)) from None
        if device.id in seen:
            raise ProbeOutputError(
                f"{location}: device ID {device.id!r} already given at {where}[{seen[device.id]}]",
                text=_compact(item),
            )
        seen[device.id] = index
        devices.append(device)
    return devices


def _compact(item: Any) -> str:
    try:
        return json.dumps(item, ensure_ascii=False)[: _QUOTE_LIMIT + 1]
    except (ValueError, RecursionError):
        return "<unprintable>"


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else "a number"


def _json_object(value: Any, what: str, known: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{what} must be an object, got {_json_kind(value)}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise _Invalid(f"{what}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return value


def _json_string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"{what} must be a string, got {_json_kind(value)}")
    return _check_text(value, what)


def _json_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(f"{what} must be a list, got {_json_kind(value)}")
    return value


def _json_string_map(
    value: Any, what: str, key_check: Callable[[str], str | None]
) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Invalid(f"{what} must be an object of strings, got {_json_kind(value)}")
    out: dict[str, str] = {}
    for key, item in value.items():
        _check_text(key, f"{what} key")
        if why := key_check(key):
            raise _Invalid(f"{what}: {_quote(key)} {why}")
        out[key] = _json_string(item, f"{what}.{key}")
    return out


def _env_key_problem(key: str) -> str | None:
    return None if _ENV_NAME.fullmatch(key) else "is not a valid environment variable name"


def _annotation_key_problem(key: str) -> str | None:
    if not key or any(c.isspace() or not c.isprintable() for c in key):
        return "must be non-empty, without whitespace or control characters"
    return None


def _device_from_json(item: Any) -> Device:
    spec = _json_object(item, "device", _DEVICE_KEYS)
    if "id" not in spec:
        raise _Invalid("missing required key 'id'")
    device_id = _json_string(spec["id"], "id")
    if why := _id_problem(device_id):
        raise _Invalid(why)
    healthy = True
    if spec.get("health") is not None:
        healthy = _health(_json_string(spec["health"], "health"))
    nodes: list[DeviceNode] = []
    for index, entry in enumerate(_json_list(spec.get("paths", []), "paths")):
        what = f"paths[{index}]"
        if isinstance(entry, str):
            node = _node_from_spec(_check_text(entry, what))
        else:
            obj = _json_object(entry, what, _PATH_KEYS)
            if "hostPath" not in obj:
                raise _Invalid(f"{what}: missing required key 'hostPath'")
            host = _check_path(_json_string(obj["hostPath"], f"{what}.hostPath"), "host path")
            container = host
            if "containerPath" in obj:
                container = _check_path(
                    _json_string(obj["containerPath"], f"{what}.containerPath"), "container path"
                )
            node = DeviceNode(host, container)
        _add_node(nodes, node)
    numa: int | None = None
    if spec.get("numa") is not None:
        raw_numa = spec["numa"]
        if not isinstance(raw_numa, int) or isinstance(raw_numa, bool):
            raise _Invalid(f"numa must be an integer, got {_json_kind(raw_numa)}")
        numa = _numa_from_int(raw_numa)
    mounts: list[DeviceMount] = []
    for index, entry in enumerate(_json_list(spec.get("mounts", []), "mounts")):
        what = f"mounts[{index}]"
        obj = _json_object(entry, what, _MOUNT_KEYS)
        for key in ("hostPath", "containerPath"):
            if key not in obj:
                raise _Invalid(f"{what}: missing required key {key!r}")
        read_only = obj.get("readOnly", True)
        if not isinstance(read_only, bool):
            raise _Invalid(f"{what}.readOnly must be true or false, got {_json_kind(read_only)}")
        mounts.append(
            DeviceMount(
                _check_path(_json_string(obj["hostPath"], f"{what}.hostPath"), "host path"),
                _check_path(
                    _json_string(obj["containerPath"], f"{what}.containerPath"), "container path"
                ),
                read_only,
            )
        )
    env = _json_string_map(spec.get("env", {}), "env", _env_key_problem)
    annotations = _json_string_map(
        spec.get("annotations", {}), "annotations", _annotation_key_problem
    )
    return Device(
        id=device_id,
        healthy=healthy,
        nodes=tuple(nodes),
        numa=numa,
        env=env,
        mounts=tuple(mounts),
        annotations=annotations,
    )


def parse_output(data: bytes | str, fmt: Format) -> list[Device]:
    """Parse probe output in either format. Raises ProbeOutputError."""
    return parse_json(data) if fmt == "json" else parse_lines(data)


async def _parse_off_loop(data: bytes, fmt: Format) -> list[Device]:
    if len(data) > _OFFLOAD_PARSE_BYTES:
        return await asyncio.to_thread(parse_output, data, fmt)
    return parse_output(data, fmt)


def _parse_error(exc: ProbeOutputError) -> DriverError:
    return DriverError("parse", f"output does not parse: {exc}")


@dataclass(frozen=True)
class Backoff:
    """Restart delays of a stream command: `initial` doubling up to `maximum`, back to
    `initial` once a run lasted `reset_after` seconds."""

    initial: float = 0.5
    maximum: float = 30.0
    reset_after: float = 60.0

    def delay(self, attempt: int) -> float:
        return float(min(self.maximum, self.initial * 2 ** min(attempt, 32)))


class FailurePolicy:
    """Counts consecutive failures of one resource's probe and degrades the sink at the
    threshold. Logs the first failure, a change of reason, degradation and recovery only."""

    def __init__(self, threshold: int, sink: DeviceSink, ctx: DriverContext) -> None:
        self._threshold = threshold
        self._sink = sink
        self._ctx = ctx
        self.consecutive = 0
        self.degraded = False
        self._last_reason: str | None = None

    def failure(self, error: DriverError) -> None:
        self.consecutive += 1
        if self._ctx.metrics is not None:
            self._ctx.metrics.driver_errors.labels(self._ctx.resource, error.reason).inc()
        if self.consecutive == 1 or error.reason != self._last_reason:
            self._ctx.log.warning(
                "probe_failed",
                reason=error.reason,
                error=str(error),
                stderr=getattr(error, "stderr", ""),
                consecutive=self.consecutive,
                threshold=self._threshold,
                action="keeping last good device list",
            )
        self._last_reason = error.reason
        if not self.degraded and self.consecutive >= self._threshold:
            self.degraded = True
            self._sink.set_degraded(f"{error.reason}: {error}")
            self._ctx.log.error(
                "resource_degraded",
                reason=error.reason,
                error=str(error),
                stderr=getattr(error, "stderr", ""),
                consecutive=self.consecutive,
                action="all devices Unhealthy until a probe succeeds",
            )

    def success(self) -> None:
        # Always lift: a previous run of this driver may have left the sink degraded.
        self._sink.set_degraded(None)
        if self.consecutive:
            self._ctx.log.info(
                "probe_recovered", after_failures=self.consecutive, was_degraded=self.degraded
            )
        self.consecutive = 0
        self.degraded = False
        self._last_reason = None


class _DocumentReader:
    """Splits a stream command's stdout into complete device lists.

    Cancel-safe: a partial `lines` block survives a cancelled `next()`.
    """

    def __init__(self, stdout: asyncio.StreamReader, fmt: Format, max_size: int) -> None:
        self._stdout = stdout
        self._fmt = fmt
        self._max_size = max_size
        self._block: list[bytes] = []
        self._block_size = 0

    async def next(self) -> bytes | None:
        """The next complete document, or None at EOF. Raises CommandError on overlong output."""
        while True:
            try:
                line = await self._stdout.readline()
            except ValueError:
                raise CommandError(
                    "output_too_large", f"printed a line longer than {self._max_size} bytes"
                ) from None
            if not line:
                if self._block:
                    return self._take_block()
                return None
            blank = not line.strip()
            if self._fmt == "json":
                if not blank:
                    return line
                continue
            if blank:
                return self._take_block()
            self._block_size += len(line)
            if self._block_size > self._max_size:
                raise CommandError(
                    "output_too_large", f"printed a device list longer than {self._max_size} bytes"
                )
            self._block.append(line)

    def _take_block(self) -> bytes:
        block = b"".join(self._block)
        self._block.clear()
        self._block_size = 0
        return block


class ShellDriver:
    """Devices from an operator's command, polled or streamed (see the module docstring)."""

    def __init__(
        self,
        config: ShellDriverConfig,
        ctx: DriverContext,
        *,
        restart_backoff: Backoff | None = None,
        kill_grace: float = DEFAULT_KILL_GRACE,
        max_output: int = MAX_OUTPUT,
    ) -> None:
        self._config = config
        self._ctx = ctx
        self._backoff = restart_backoff or Backoff()
        self._kill_grace = kill_grace
        self._max_output = max_output

    async def scan(self) -> list[Device]:
        """Run the command once; in stream mode, take its first complete list and stop it."""
        if self._config.mode == "stream":
            return await self._scan_stream()
        return await self._probe()

    async def run(self, sink: DeviceSink) -> None:
        policy = FailurePolicy(self._config.failure_threshold, sink, self._ctx)
        if self._config.mode == "stream":
            await self._run_stream(sink, policy)
        else:
            await self._run_poll(sink, policy)

    def _publish(self, sink: DeviceSink, devices: list[Device]) -> None:
        if sink.publish(devices):
            self._ctx.log.info(
                "devices_changed",
                healthy=sum(d.healthy for d in devices),
                unhealthy=sum(not d.healthy for d in devices),
            )

    async def _probe(self) -> list[Device]:
        config = self._config
        result = await run_command(
            config.command,
            timeout=config.timeout,
            env=config.env,
            cwd=config.working_dir,
            max_output=self._max_output,
            kill_grace=self._kill_grace,
        )
        if not result.ok:
            raise CommandError("exit", f"probe {result.describe_exit()}", result.stderr)
        try:
            return await _parse_off_loop(result.stdout, config.format)
        except ProbeOutputError as exc:
            raise _parse_error(exc) from None

    async def _run_poll(self, sink: DeviceSink, policy: FailurePolicy) -> None:
        """Probe every interval, measured from the start of one run to the next: a probe that
        hangs delays the next one by its timeout (plus the kill grace) at most."""
        loop = asyncio.get_running_loop()
        metrics = self._ctx.metrics
        while True:
            started = loop.time()
            try:
                devices = await self._probe()
            except DriverError as exc:
                policy.failure(exc)
            else:
                self._publish(sink, devices)
                policy.success()
            if metrics is not None:
                metrics.scan_seconds.labels(self._ctx.resource).observe(loop.time() - started)
            raise_if_cancelling()
            await asyncio.sleep(max(0.0, started + self._config.interval - loop.time()))

    def _start(self) -> contextlib.AbstractAsyncContextManager[RunningCommand]:
        config = self._config
        return start_command(
            config.command,
            env=config.env,
            cwd=config.working_dir,
            line_limit=self._max_output,
            kill_grace=self._kill_grace,
        )

    async def _run_stream(self, sink: DeviceSink, policy: FailurePolicy) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            started = loop.time()
            try:
                error = await self._stream_once(sink, policy)
            except CommandError as exc:
                error = exc
            policy.failure(error)
            if loop.time() - started >= self._backoff.reset_after:
                attempt = 0
            delay = self._backoff.delay(attempt)
            attempt += 1
            self._ctx.log.debug("stream_restart_scheduled", delay=delay, attempt=attempt)
            raise_if_cancelling()
            await asyncio.sleep(delay)

    async def _stream_once(self, sink: DeviceSink, policy: FailurePolicy) -> DriverError:
        """Run the stream command until it exits; returns the failure its exit counts as."""
        config = self._config
        async with self._start() as running:
            reader = _DocumentReader(running.stdout, config.format, self._max_output)
            awaiting_first = True
            while True:
                if awaiting_first:
                    try:
                        async with asyncio.timeout(config.timeout):
                            document = await reader.next()
                    except TimeoutError:
                        awaiting_first = False
                        policy.failure(
                            CommandError(
                                "timeout",
                                f"stream command printed no complete device list within "
                                f"{config.timeout:g}s of starting",
                                running.stderr_text(),
                            )
                        )
                        continue
                else:
                    document = await reader.next()
                if document is None:
                    break
                awaiting_first = False
                try:
                    devices = await _parse_off_loop(document, config.format)
                except ProbeOutputError as exc:
                    policy.failure(_parse_error(exc))
                    continue
                self._publish(sink, devices)
                policy.success()
            message = await self._wait_exit(running)
        return CommandError("exit", f"stream command {message}", running.stderr_text())

    async def _wait_exit(self, running: RunningCommand) -> str:
        try:
            async with asyncio.timeout(self._config.timeout):
                returncode = await running.process.wait()
        except TimeoutError:
            return "closed its output but did not exit"
        return describe_exit(returncode)

    async def _scan_stream(self) -> list[Device]:
        config = self._config
        failure: CommandError | None = None
        document: bytes | None = None
        async with self._start() as running:
            reader = _DocumentReader(running.stdout, config.format, self._max_output)
            try:
                async with asyncio.timeout(config.timeout):
                    document = await reader.next()
            except TimeoutError:
                failure = CommandError(
                    "timeout",
                    f"stream command printed no complete device list within {config.timeout:g}s",
                )
            if document is None and failure is None:
                exit_text = await self._wait_exit(running)
                failure = CommandError(
                    "exit", f"stream command {exit_text} before printing a complete device list"
                )
        if failure is not None:
            failure.stderr = running.stderr_text()
            raise failure
        assert document is not None
        try:
            return await _parse_off_loop(document, config.format)
        except ProbeOutputError as exc:
            raise _parse_error(exc) from None
