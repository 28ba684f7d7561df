"""The one readable-name maker (`kdp_host.names`) against frozen copies of the four makers it
replaced: sysfs `safe_id`, the glob `DeviceIds`, `endpoint.socket_name` and
`allocation.cdi_device_name`, as they were before. An upgrade that renamed a device ID would
let the kubelet hand a booked device to a second pod, one that renamed a socket or a CDI name
would break the running node, so these comparisons stay: never edit the copies below.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdp_host.allocation import cdi_device_part
from kdp_host.cdi_rules import CDI_DEVICE_NAME, CDI_NAME_ESCAPE, cdi_device_name_problem
from kdp_host.drivers.glob_paths import DeviceIds, fixed_parent
from kdp_host.endpoint import socket_name
from kdp_host.names import CDI_NAME, DEVICE_ID, PATH_ID, make_name
from kdp_host.rules import MAX_DEVICE_ID_LENGTH, device_id_problem, socket_path_problem
from kdp_host.sysfs.model import USB, SysfsDevice, device_id

# --------------------------------------------------------------------- frozen copies (main,
# before the one maker): the reference. The rules they call (device_id_problem,
# socket_path_problem, CDI_DEVICE_NAME) are rules, not makers, and are shared.

_OLD_SYSFS_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


def old_safe_id(text: str) -> str:
    if _OLD_SYSFS_UNSAFE.search(text) is None and device_id_problem(text) is None:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    readable = _OLD_SYSFS_UNSAFE.sub("_", text).lstrip("-_")[: MAX_DEVICE_ID_LENGTH - 9]
    return f"{readable}-{digest}" if readable else digest


_OLD_GLOB_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_OLD_HASH_SUFFIX = re.compile(r"-[0-9a-f]{10}\Z")


def _old_depth(pattern: str, base: str) -> int:
    return len(pattern[len(base.rstrip("/")) :].strip("/").split("/"))


class OldDeviceIds:
    def __init__(self, patterns: list[str]) -> None:
        bases = [fixed_parent(p) for p in patterns]
        self.base = os.path.commonpath(bases) if bases else "/"
        self._prefix = self.base.rstrip("/") + "/"
        self._mixed_depths = len({_old_depth(p, self.base) for p in patterns}) > 1

    def __call__(self, path: str) -> str:
        inside = path.startswith(self._prefix)
        rel = path[len(self._prefix) :] if inside else path.lstrip("/")
        parts = rel.split("/")
        joined = "-".join(parts)
        readable = _OLD_GLOB_UNSAFE.sub("_", joined)
        if (
            inside
            and readable == joined
            and readable not in (".", "..")
            and device_id_problem(readable) is None
            and not _OLD_HASH_SUFFIX.search(readable)
            and not (len(parts) > 1 and ("-" in rel or "_" in rel))
            and not (len(parts) == 1 and self._mixed_depths and "-" in rel)
        ):
            return readable
        digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        short = readable if inside else _OLD_GLOB_UNSAFE.sub("_", parts[-1])
        stem = short[: MAX_DEVICE_ID_LENGTH - 11].lstrip("-")
        return f"{stem}-{digest}" if stem else f"dev-{digest}"


_OLD_SOCKET_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def old_socket_name(resource: str, instance_id: str, socket_dir: str) -> str:
    slug = _OLD_SOCKET_UNSAFE.sub("_", resource.replace("/", "_"))[:20]
    digest = hashlib.sha256(resource.encode()).hexdigest()[:8]
    readable = f"kdp-{slug}-{digest}-{instance_id}.sock"
    if socket_path_problem(os.path.join(socket_dir, readable)) is None:
        return readable
    both = hashlib.sha256(f"{resource}\0{instance_id}".encode()).digest()
    return "kdp-" + base64.b32encode(both).decode().lower()[:8]


_OLD_CDI_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def old_cdi_device_name(device_id: str) -> str:
    if CDI_DEVICE_NAME.fullmatch(device_id) and CDI_NAME_ESCAPE not in device_id:
        return device_id
    spelled = device_id.encode("utf-8", "surrogatepass").hex()
    readable = _OLD_CDI_UNSAFE.sub("_", device_id).strip("_.-") or "id"
    return f"{readable}{CDI_NAME_ESCAPE}{spelled}"


# --------------------------------------------------------------------- strategies

_PIECES = (
    "-",
    "_",
    ".",
    "..",
    ":",
    "::",
    "/",
    "//",
    " ",
    ",",
    "é",
    "\udcff",
    "\udc80",
    "\ud800",
    "\x00",
    "\n",
    "0000:01:00.0",
    "1-1.2",
    "fpga0",
    "-0123456789",
    "-" * 130,
    "_" * 60,
    "a" * 50,
    "Z" * 125,
)
"""Pieces that reach the edges of every rule: separators, escapes, surrogates (file names
that are not UTF-8), lengths around the cuts."""


def texts(surrogates: bool = True) -> st.SearchStrategy[str]:
    chars = st.characters(exclude_categories=() if surrogates else ("Cs",))
    pieces = _PIECES if surrogates else tuple(p for p in _PIECES if not _has_surrogate(p))
    return st.lists(st.sampled_from(pieces) | st.text(chars, max_size=8), max_size=12).map("".join)


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _outcome(make: object, *args: str) -> str:
    """The name, or the exception's type: the old and new code must fail alike too."""
    assert callable(make)
    try:
        return str(make(*args))
    except (UnicodeEncodeError, ValueError) as exc:
        return f"raised {type(exc).__name__}"


PATTERN_SETS = (
    ["/dev/fpga*"],
    ["/dev/bus/usb/*/*"],
    ["/dev/fpga*", "/dev/accel/*/*"],
    ["/dev/serial/by-id/*"],
    ["/dev/a*", "/dev/a/b*"],
    ["/*"],
)


# --------------------------------------------------------------------- the comparisons


@settings(max_examples=600, deadline=None)
@given(texts())
def test_sysfs_ids_are_what_they_were(text: str) -> None:
    """But a text with `::` (a replica's ID would name the device and a replica of another:
    hostile16 F4), whose ID has none now."""
    if "::" in text:
        assert "::" not in make_name(text, DEVICE_ID)
        return
    assert _outcome(make_name, text, DEVICE_ID) == _outcome(old_safe_id, text)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(PATTERN_SETS), st.booleans(), texts(), texts())
def test_glob_ids_are_what_they_were(
    patterns: list[str], under_base: bool, first: str, rest: str
) -> None:
    old, new = OldDeviceIds(patterns), DeviceIds(patterns)
    path = f"{old.base.rstrip('/')}/{first}" if under_base else f"/{first}"
    for candidate in (path, f"{path}/{rest}", f"{path}{rest}"):
        assert _outcome(new, candidate) == _outcome(old, candidate), candidate


@settings(max_examples=400, deadline=None)
@given(
    texts(surrogates=False).filter(bool),
    st.text("0123456789abcdef._-", min_size=1, max_size=8),
    st.integers(min_value=1, max_value=90),
)
def test_socket_names_are_what_they_were(resource: str, instance: str, dir_length: int) -> None:
    """Resource names are valid (no surrogates, never empty): the old code took no other."""
    socket_dir = "/" + "d" * dir_length
    assert socket_name(resource, instance, socket_dir) == old_socket_name(
        resource, instance, socket_dir
    )


@settings(max_examples=600, deadline=None)
@given(texts())
def test_cdi_names_are_what_they_were(device_id: str) -> None:
    # The device part of a CDI name: issue 17 put the resource in front of it deliberately
    # (`<resource>:<device>`, test_allocation), the device part stays what it was.
    assert _outcome(cdi_device_part, device_id) == _outcome(old_cdi_device_name, device_id)
    assert _outcome(make_name, device_id, CDI_NAME) == _outcome(old_cdi_device_name, device_id)


@pytest.mark.parametrize(
    ("text", "old"),
    [
        ("-" * 130 + "x", old_safe_id("-" * 130 + "x")),
        ("", old_safe_id("")),
        ("a b", old_safe_id("a b")),
    ],
)
def test_edge_cases_of_the_sysfs_form(text: str, old: str) -> None:
    assert make_name(text, DEVICE_ID) == old


def test_edge_cases_of_the_path_form() -> None:
    """Cut before the trim (a long run of `-` leaves `dev`), and the file name of a path
    outside the base."""
    ids, old = DeviceIds(["/dev/fpga*"]), OldDeviceIds(["/dev/fpga*"])
    for path in ("/dev/" + "-" * 130 + "x", "/elsewhere/ttyUSB0", "/dev/fpga0-0123456789"):
        assert ids(path) == old(path)
    assert ids("/dev/" + "-" * 130 + "x").startswith("dev-")
    assert make_name("/x", PATH_ID, shown="x") == old("/x")


def test_device_ids_are_safe_stable_and_distinct() -> None:
    for text in ("A10K4V2F", "1-1.2", "0000:3b:00.0"):
        assert make_name(text, DEVICE_ID) == text
    for text in ("has space", "-dash", "ü", "x" * 300, "a/b"):
        result = make_name(text, DEVICE_ID)
        assert device_id_problem(result) is None, (text, result)
        assert make_name(text, DEVICE_ID) == result
    assert make_name("a b", DEVICE_ID) != make_name("a_b", DEVICE_ID)


@settings(max_examples=300, deadline=None)
@given(texts().filter(bool))
def test_every_form_makes_a_name_of_its_grammar(text: str) -> None:
    assert device_id_problem(make_name(text, DEVICE_ID)) is None
    assert cdi_device_name_problem(make_name(text, CDI_NAME)) is None


def test_a_sysfs_device_id_follows_usb_id_from() -> None:
    stick = SysfsDevice(
        source=USB, name="1-1", path="/sys/devices/usb1/1-1", attributes={"serial": "S N"}
    )
    assert device_id(stick) == make_name("S N", DEVICE_ID)
    assert device_id(stick, "port") == "1-1"
