"""The kubelet's texts, exactly as its Go code prints them.

Plugins (and the people reading their logs) see these strings: Register errors come back as
the status message, allocation errors end up in pod events. Every message the simulator can
produce is built here, with Go's quoting and grpc-go's status formatting.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from grpclib.const import Status
from grpclib.exceptions import GRPCError

_GO_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}

_GO_CODE_NAMES: Final = {
    Status.OK: "OK",
    Status.CANCELLED: "Canceled",
    Status.UNKNOWN: "Unknown",
    Status.INVALID_ARGUMENT: "InvalidArgument",
    Status.DEADLINE_EXCEEDED: "DeadlineExceeded",
    Status.NOT_FOUND: "NotFound",
    Status.ALREADY_EXISTS: "AlreadyExists",
    Status.PERMISSION_DENIED: "PermissionDenied",
    Status.RESOURCE_EXHAUSTED: "ResourceExhausted",
    Status.FAILED_PRECONDITION: "FailedPrecondition",
    Status.ABORTED: "Aborted",
    Status.OUT_OF_RANGE: "OutOfRange",
    Status.UNIMPLEMENTED: "Unimplemented",
    Status.INTERNAL: "Internal",
    Status.UNAVAILABLE: "Unavailable",
    Status.DATA_LOSS: "DataLoss",
    Status.UNAUTHENTICATED: "Unauthenticated",
}

DEADLINE_EXCEEDED: Final = "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
"""What grpc-go prints when the caller's own deadline passed."""


def go_quote(value: str) -> str:
    """Go's ``%q`` / ``strconv.Quote`` for a string (close enough for error messages)."""
    out = ['"']
    for ch in value:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            cp = ord(ch)
            if cp < 0x80:
                out.append(f"\\x{cp:02x}")
            elif cp < 0x10000:
                out.append(f"\\u{cp:04x}")
            else:
                out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


def go_join(directory: Path, endpoint: str) -> Path:
    """``filepath.Join(dir, endpoint)``: join then clean (``..`` may escape,
    docs/kubelet-contract.md §1)."""
    joined = f"{directory}/{endpoint}" if endpoint else str(directory)
    return Path(posixpath.normpath(joined))


def rpc_error_text(exc: BaseException) -> str:
    """An RPC failure the way grpc-go's status error prints it."""
    if isinstance(exc, GRPCError):
        code = _GO_CODE_NAMES.get(exc.status, exc.status.name)
        return f"rpc error: code = {code} desc = {exc.message or ''}"
    if isinstance(exc, TimeoutError):
        return DEADLINE_EXCEEDED
    return f"rpc error: code = Unavailable desc = {type(exc).__name__}: {exc}"


# ------------------------------------------------------- Register (docs/kubelet-contract.md §1-§3)


def unsupported_version(version: str, supported: Sequence[str]) -> str:
    listed = "[" + " ".join(go_quote(v) for v in supported) + "]"
    return (
        f"requested API version {go_quote(version)} is not supported by kubelet."
        f" Supported version is {listed}"
    )


def invalid_resource_name(name: str) -> str:
    return f"the ResourceName {go_quote(name)} is invalid"


def dial_failed(reason: str) -> str:
    return f"failed to dial device plugin: {reason}"


def options_failed(reason: str) -> str:
    return f"failed to get device plugin options: {reason}"


# ------------------------------------------- the plugin manager (docs/kubelet-contract.md §14)


def registry_dial_failed(socket: Path) -> str:
    return (
        f"RegisterPlugin error -- dial failed at socket {socket}, err: failed to dial socket "
        f"{socket}, err: context deadline exceeded"
    )


def get_info_failed(socket: Path, reason: str) -> str:
    return (
        "RegisterPlugin error -- failed to get plugin info using RPC GetInfo at socket "
        f"{socket}, err: {reason}"
    )


def no_handler(plugin_type: str, socket: Path) -> str:
    return (
        "RegisterPlugin error -- no handler registered for plugin type: "
        f"{plugin_type} at socket {socket}"
    )


def validation_failed(reason: str) -> str:
    return f"RegisterPlugin error -- plugin validation failed with err: {reason}"


VALIDATE_FUNC_FAILED: Final = "RegisterPlugin error -- pluginHandler.ValidatePluginFunc failed"


def registration_failed(reason: str) -> str:
    return f"RegisterPlugin error -- plugin registration failed with err: {reason}"


def plugin_versions_unsupported(manager_version: str, versions: Sequence[str]) -> str:
    """Go's ``%v`` of a string slice: ``[a b]``."""
    return (
        f"manager version, {manager_version}, is not among plugin supported versions "
        f"[{' '.join(versions)}]"
    )


def invalid_plugin_name(name: str) -> str:
    return f"invalid name of device plugin socket: {invalid_resource_name(name)}"


# ----------------------------------------------------- allocation (docs/kubelet-contract.md §4-§8)


def endpoint_stopped(resource: str) -> str:
    return f"endpoint {resource} has been stopped"


def unregistered_device(resource: str) -> str:
    return f"cannot allocate unregistered device {resource}"


def no_healthy_devices(resource: str) -> str:
    return f"no healthy devices present; cannot allocate unhealthy devices {resource}"


def previously_allocated_unhealthy(resource: str) -> str:
    return (
        "previously allocated devices are no longer healthy; cannot allocate unhealthy"
        f" devices {resource}"
    )


def changed_request(pod_uid: str, container: str, resource: str, had: int, wants: int) -> str:
    return (
        f"pod {go_quote(pod_uid)} container {go_quote(container)} changed request"
        f" for resource {go_quote(resource)} from {had} to {wants}"
    )


def devices_unavailable(resource: str, requested: int, available: int) -> str:
    return (
        f"requested number of devices unavailable for {resource}."
        f" Requested: {requested}, Available: {available}"
    )


def allocated_too_few(requested: int, got: int) -> str:
    return (
        f"unexpectedly allocated less resources than required. Requested: {requested}, Got: {got}"
    )


def endpoint_not_found(resource: str) -> str:
    return f"endpoint not found in cache for a registered resource: {resource}"


def unknown_device_plugin(resource: str) -> str:
    return f"unknown Device Plugin {resource}"


def no_container_responses() -> str:
    return (
        "no containers return in allocation response"
        " &AllocateResponse{ContainerResponses:[]*ContainerAllocateResponse{},}"
    )


def message_too_large(size: int, limit: int) -> str:
    """grpc-go's Recv of a message over its receive limit (docs/kubelet-contract.md §4)."""
    return (
        "rpc error: code = ResourceExhausted desc = grpc: received message larger than max "
        f"({size} vs. {limit})"
    )


def unmarshal_failed(reason: str) -> str:
    return (
        f"rpc error: code = Internal desc = grpc: failed to unmarshal the received message {reason}"
    )


def preferred_allocation_failed(reason: str) -> str:
    return f"device plugin GetPreferredAllocation rpc failed with err: {reason}"


def pre_start_failed(reason: str) -> str:
    return f"device plugin PreStartContainer rpc failed with err: {reason}"


def no_devices_allocated(pod_uid: str, container: str, resource: str) -> str:
    return (
        f"no devices found allocated in local cache for pod {pod_uid},"
        f" container {container}, resource {resource}"
    )
