"""The checks every parser of command output applies (`command_output.py`): the error that
names the line and quotes it, and the text, path, node, NUMA and health checks of one entry
(each a `rules.py` rule, worded for someone reading what their command printed).
"""

from __future__ import annotations

import re

from . import rules
from .devices import DeviceNode

QUOTE_LIMIT = 200
_DIGITS = re.compile(r"[0-9]{1,6}")
_HEALTH_WORDS = {"healthy": True, "unhealthy": False}


class ProbeOutputError(ValueError):
    """Probe output that does not parse; names the line (1-based) and quotes it."""

    def __init__(self, message: str, line: int | None = None, text: str | None = None) -> None:
        self.problem = message
        self.line = line
        self.text = text
        where = f"line {line}: " if line is not None else ""
        quoted = f": {quote(text)}" if text is not None else ""
        super().__init__(f"{where}{message}{quoted}")


def quote(text: str) -> str:
    if len(text) > QUOTE_LIMIT:
        text = text[:QUOTE_LIMIT] + "..."
    return repr(text)


class Invalid(Exception):
    """A problem inside one entry; the caller adds the line or the JSON location."""


def check_text(value: str, what: str) -> str:
    """Strings end up in protobuf messages, container runtimes and logs (rules.text_problem)."""
    if why := rules.text_problem(value):
        raise Invalid(f"{what} {why}")
    return value


def check_path(value: str, what: str) -> str:
    if why := rules.absolute_path_problem(value):
        raise Invalid(f"{what} {why}, got {quote(value)}")
    return value


def check_container_path(value: str, what: str, *, device_node: bool) -> str:
    """A path inside the container: rules.container_path_problem."""
    if why := rules.container_path_problem(value, device_node=device_node):
        raise Invalid(f"{what} {why}, got {quote(value)}")
    return value


def check_node_path(value: str, what: str) -> str:
    """A device node's path, which `{paths}` and `{hostPaths}` list: rules.device_path_problem."""
    if why := rules.device_path_problem(value):
        raise Invalid(f"{what} {why}, got {quote(value)}")
    return value


def health_word(word: str) -> bool:
    healthy = _HEALTH_WORDS.get(word.lower())
    if healthy is None:
        raise Invalid(f"health must be Healthy or Unhealthy, got {quote(word)}")
    return healthy


def node_from_spec(spec: str) -> DeviceNode:
    """`/dev/x` (same path inside) or `/dev/x:/dev/y` (the container part starts at `:/`)."""
    split = spec.find(":/", 1)
    host, container = (spec[:split], spec[split + 1 :]) if split > 0 else (spec, spec)
    return DeviceNode(
        check_node_path(host, "host path"),
        check_container_path(container, "container path", device_node=True),
    )


def add_node(nodes: dict[str, DeviceNode], node: DeviceNode) -> None:
    """Add `node` to a device's `nodes` (by container path: one lookup, however many)."""
    if node.container_path in nodes:
        raise Invalid(f"container path {node.container_path!r} given twice")
    nodes[node.container_path] = node


def numa_from_text(text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise Invalid(f"numa must be a node number 0-{rules.MAX_NUMA_NODE}, got {quote(text)}")
    return numa_from_int(int(text))


def numa_from_int(node: int) -> int:
    if not 0 <= node <= rules.MAX_NUMA_NODE:
        raise Invalid(f"numa must be a node number 0-{rules.MAX_NUMA_NODE}, got {node}")
    return node


def decode_line(raw: bytes, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProbeOutputError(
            "not valid UTF-8", lineno, raw.decode("utf-8", errors="replace")
        ) from None
