"""Every text rule of kdp-host, in one place (those of CDI names in `cdi_rules.py`, of the
Kubernetes API's names, labels and annotations in `k8s_names.py`).

A name, an ID, a key or a path that crosses into the kubelet, the API server, a container
runtime or a CDI spec must satisfy that consumer's rule, or the failure shows up far from its
cause (a refused Register, a pod that never starts, a silently dropped annotation). Each rule
is written here once, as a function that returns why a value breaks it (a short phrase that
reads after the value's name) or None, plus a predicate where callers only need yes or no.
The config loader, the drivers' output parsers and the kubelet simulator import these; the
tests feed the same strings to every user of a rule and to a reference: they must agree.

Patterns are matched with `fullmatch`: with `re.match` and `^...$`, `$` also matches before
a trailing newline, so `a.io/b\\n` would pass (Go's `$` does not do that).
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Iterable
from typing import Final

MAX_DEVICE_ID_LENGTH: Final = 128
"""Longest device ID kdp-host advertises (the kubelet sets no limit; its checkpoint and every
pod's allocation record repeat each ID, so IDs stay short)."""
MAX_PATH_LENGTH: Final = 4096
"""Linux PATH_MAX, terminating NUL included: no longer path can be opened."""
MAX_ARG_STRLEN: Final = 32 * 4096
"""Linux's bound on ONE argument or environment string of an execve, its NUL included (the
kernel's `MAX_ARG_STRLEN`, 32 pages), whatever ARG_MAX allows: a longer one fails the exec with
E2BIG, a hook's spawn and the container's own start alike. An environment string is
`NAME=value`: the name counts (`exec_string_problem`)."""
MAX_NAME_LENGTH: Final = 255
"""Linux NAME_MAX: no file name (one path component) is longer, in bytes."""
AF_UNIX_PATH_MAX: Final = 107
"""Longest path a Unix socket can be bound to: `sun_path` is 108 bytes with its NUL."""
MAX_NUMA_NODE: Final = 1023
"""Highest NUMA node number accepted (Linux builds with at most 1024 nodes)."""
KUBELET_PRE_START_DEADLINE: Final = 30.0
"""The deadline the kubelet gives every PreStartContainer call
(`KubeletPreStartContainerRPCTimeoutInSecs`, docs/kubelet-contract.md §8)."""
KILL_GRACE: Final = 1.0
"""Seconds between SIGTERM and SIGKILL to a command's process group (`process_group`)."""
PRE_START_REPLY_MARGIN: Final = 2.0
"""What a preStart hook's timeout leaves of the kubelet's deadline: the TERM-to-KILL grace
(1 s) and the reply. A longer hook would be cut off by the kubelet's deadline instead, and
the pod's events would say `DeadlineExceeded` instead of the hook's exit and stderr."""
MAX_PRE_START_TIMEOUT: Final = KUBELET_PRE_START_DEADLINE - PRE_START_REPLY_MARGIN
PRE_START_ANSWER_MARGIN: Final = 0.5
"""What kdp-host keeps of a PreStartContainer call's deadline to answer in: the call's waits
(for the container's owed releases, for a preStart slot) end this long before it, less the
preStart's timeout and the TERM-to-KILL grace when a preStart is still to run, so the kubelet
reads kdp-host's error (which releases still run, or that preStart would not fit), not
`DeadlineExceeded` (hostile13 M13). Under `PRE_START_REPLY_MARGIN` less the grace: a preStart
of the longest timeout still starts at once in a call that waited for nothing."""
MAX_ALLOCATE_TIMEOUT: Final = 10.0
"""The longest `allocate.timeout`. The kubelet gives Allocate no deadline at all and admits
one pod at a time (docs/kubelet-contract.md §6): while an `allocate.command` runs, no pod
of the node is admitted, whatever it asks for, and a hung command would stall admission for
ever. So kdp-host sets the deadline itself: the command is killed after at most 10 s (plus
the 1 s TERM-to-KILL grace), the Allocate fails with its stderr, and admission goes on. An
allocate.command is meant to take milliseconds; slow work belongs in `preStart`."""
KUBELET_MAX_RECEIVE_MESSAGE: Final = 4 * 1024 * 1024
"""The largest message the kubelet's gRPC client takes: grpc-go's default receive limit
(`defaultClientMaxReceiveMessageSize`, 4 MiB of message body), which the kubelet's device
plugin client keeps (docs/kubelet-contract.md §4). A larger ListAndWatch message fails the
kubelet's Recv with ResourceExhausted and the kubelet drops the plugin's endpoint."""
LIST_AND_WATCH_MAX_BYTES: Final = KUBELET_MAX_RECEIVE_MESSAGE - 64 * 1024
"""The most one ListAndWatch message of kdp-host holds (the encoded ListAndWatchResponse,
counted exactly): 64 KiB under the kubelet's limit, a margin for what is not ours to count
(the 5-byte gRPC prefix, a field a later API version adds to the message). A longer device
list is cut to its longest prefix that fits (`protocol.lists`)."""
REPLICA_SEPARATOR: Final = "::"
"""`<id>::<k>`: replica k of device <id> (`replicas`); in no device ID (hostile16 F4)."""
LIST_SEPARATOR: Final = ","
"""How a template field that lists several items renders them: `{ids}`, `{paths}`,
`{hostPaths}` (allocate env and annotations, preStart and allocate commands) and the sysfs
`{nodes}` join their items with it, in argv and env alike. No item can contain it: device IDs
(`device_id_problem`) and device node paths (`device_path_problem`) refuse it, so a list
always splits back into exactly its items, and one device's ID or path can never name
another device in a hook's argv."""

ENV_NAME_PATTERN: Final = r"[-._a-zA-Z][-._a-zA-Z0-9]*"
"""The character rule of an env name, as a regular expression (JSON Schema uses it too)."""
_ENV_NAME: Final = re.compile(ENV_NAME_PATTERN)
_MULTILINE_WHITESPACE: Final = frozenset("\t\n")
GLOB_MAGIC: Final = re.compile(r"[*?[]")
"""A character that makes a path a glob pattern (Python's glob: `*`, `?`, `[...]`)."""
MAX_MATCHED_PATHS: Final = 50_000
"""Paths one scan of a resource's glob patterns may match, counting the directories its
wildcards match on the way (`d*/d*/f` counts each `d*` and each `d*/d*` too). A scan that
reaches it stops walking and fails (`too_many_paths`, the last good list is kept): a tree
of symlinks that fan out (`d0..d9 -> .`) matches 10 times more paths at each level, all
of them one file."""
SKIPPED_SHOWN: Final = 20
"""Skipped paths of one reason logged one line each per list; past this, one summary line
per reason with the count (`paths_skipped`) instead of a line per path. The same bound
turns the `device_held` lines of one change of a resource into one `devices_held` line per
reason (and `device_claim_won` into `device_claims_won`)."""
HELD_SHOWN: Final = 5
"""Device IDs a `devices_held` / `device_claims_won` summary line names (the smallest)."""
IDS_NAMED: Final = 20
"""Device IDs a refusal names (the smallest, `named_ids`); past this, how many more: a
request may name any number (hostile27 F6: 20,000 unknown IDs made a 150 kB reason)."""
STATUS_MESSAGE_LIMIT: Final = 2048
"""Characters of a refusal's status message the kubelet is sent (`protocol.refusal`): it
travels as the `grpc-message` trailer, whose HPACK Huffman encoding costs the loop time
quadratic in its length (150 kB: 6.6 s, and the kubelet's connection dropped), and the
kubelet keeps it in a pod's event. The refusal's log line keeps the whole reason."""


def _control_character(text: str, allowed: frozenset[str] = frozenset()) -> str | None:
    """The first character of `text` that is a control character or not encodable, or None.

    Control characters are Unicode category Cc (C0, DEL, C1). Lone surrogates (from
    `surrogateescape` decoding) cannot be written as UTF-8, which protobuf strings require.
    """
    if text.isascii() and text.isprintable():
        return None  # the common case, decided in C: printable ASCII holds no Cc or Cs
    for char in text:
        if char in allowed:
            continue
        category = unicodedata.category(char)
        if category in ("Cc", "Cs"):
            return char
    return None


def text_problem(text: str) -> str | None:
    """Why `text` cannot become an argument, an env or annotation value, or a template.

    NUL cannot pass through execve, a container runtime or a C string (asyncio raises,
    uvloop silently truncates at it); other control characters corrupt logs and terminals.
    Tab and newline stay allowed: a `sh -c` script or a certificate in an env value needs them.
    """
    if "\x00" in text:
        return "must not contain NUL"
    if (char := _control_character(text, _MULTILINE_WHITESPACE)) is not None:
        return f"must not contain control character {char!r}"
    return None


def exec_string_problem(value: str, env_name: str | None = None) -> str | None:
    """Why `value` cannot pass through an execve as one argument, or as the value of the
    environment variable `env_name` (the longest name it is passed under), or None: with its
    NUL (and `NAME=`) it is longer than MAX_ARG_STRLEN. Every text `text_problem` lets through
    is held to it where it may reach an exec (config text, a device's env and annotations,
    an Allocate answer's env)."""
    named = 0 if env_name is None else len(env_name.encode("utf-8", "surrogatepass")) + 1
    if (len(value) + 1) * 4 + named <= MAX_ARG_STRLEN:
        return None  # (the common case: no UTF-8 of it is that long)
    size = len(value.encode("utf-8", "surrogatepass")) + 1 + named
    if size <= MAX_ARG_STRLEN:
        return None
    form = "" if env_name is None else f" as {env_name}=..."
    return (
        f"is {size} bytes{form} with its NUL, more than the {MAX_ARG_STRLEN} the kernel passes "
        "in one argument or environment string (MAX_ARG_STRLEN: every exec given it fails "
        "with E2BIG)"
    )


def name_text_problem(name: str) -> str | None:
    """Why `name` (a file or device name read from the system) cannot be used or shown as
    one name: any control character, newline and tab included (unlike `text_problem`), so
    a name printed into a table, a log line or a YAML document cannot start a new line."""
    if (char := _control_character(name)) is not None:
        return f"must not contain control character {char!r}"
    return None


_SYSFS_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


def sysfs_name_problem(name: str) -> str | None:
    """Why `name` is no bus (`/sys/bus/<name>`) or class (`/sys/class/<name>`) name: one
    path component of the kernel's characters, never `.` or `..`."""
    if not _SYSFS_NAME.fullmatch(name) or name in (".", ".."):
        return "must be a name under /sys/bus or /sys/class (e.g. usb, pci, video4linux)"
    return None


def absolute_path_problem(path: str) -> str | None:
    """Why `path` is not a usable absolute path on the host or in a container.

    The kubelet passes DeviceSpec and Mount paths to the runtime unchecked, and the runtime
    resolves a relative one against a directory nobody chose: kdp-host requires `/`, refuses
    control characters (no file name of a device or mount needs one), paths beyond PATH_MAX
    and names beyond NAME_MAX (no such path names a file).
    """
    if not path.startswith("/"):
        return "must be an absolute path (start with /)"
    if "\x00" in path:
        return "must not contain NUL"
    if (char := _control_character(path)) is not None:
        return f"must not contain control character {char!r}"
    encoded = path.encode("utf-8", "surrogatepass")
    if len(encoded) >= MAX_PATH_LENGTH:
        return f"must be shorter than {MAX_PATH_LENGTH} bytes"
    if len(encoded) > MAX_NAME_LENGTH and any(
        len(name) > MAX_NAME_LENGTH for name in encoded.split(b"/")
    ):
        return f"must have no name (between two /) longer than {MAX_NAME_LENGTH} bytes"
    return None


def below(real: str, directory: str) -> bool:
    """Whether `real` is inside `directory` (not the directory itself); both normalised."""
    if directory == "/":
        return real.startswith("/") and real != "/"
    return real.startswith(directory) and real[len(directory) : len(directory) + 1] == "/"


def parent(path: str) -> str:
    """`posixpath.dirname` of a text path, without its per-call `fspath` and separator
    look-ups (it runs for every path of every device admitted: issue 19)."""
    head = path[: path.rfind("/") + 1]
    return head.rstrip("/") or head  # (`/` and `//` stay)


def path_inside(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or lies under it (`below`), comparing normalised paths
    (no I/O: resolve symlinks first where that matters)."""
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    return path == directory or below(path, directory)


def named_ids(ids: Iterable[str]) -> str:
    """`ids` named in a message: the smallest `IDS_NAMED`, then how many more."""
    every = sorted(set(ids))
    shown = ", ".join(every[:IDS_NAMED])
    return shown if len(every) <= IDS_NAMED else f"{shown} (and {len(every) - IDS_NAMED} more)"


def join_list(items: Iterable[str]) -> str:
    """A list template field's value: the items joined with LIST_SEPARATOR."""
    return LIST_SEPARATOR.join(items)


def device_path_problem(path: str) -> str | None:
    """Why `path` cannot be a device node's host or container path, or None: an absolute
    path (`absolute_path_problem`) without LIST_SEPARATOR, which `{paths}` and `{hostPaths}`
    put between paths (no device node the kernel or udev names holds one)."""
    if why := absolute_path_problem(path):
        return why
    if LIST_SEPARATOR in path:
        return (
            f"must not contain {LIST_SEPARATOR!r} (template fields list device paths "
            f"separated by {LIST_SEPARATOR!r})"
        )
    return None


def container_path_problem(path: str, *, device_node: bool) -> str | None:
    """Why `path` cannot be a path inside a container, or None: a device node's path
    (`device_path_problem`) or a mount's (`absolute_path_problem`), in normal form.

    The runtime resolves `.`, `..` and repeated `/` itself, so `/dev/x/../fpga` and `/dev/fpga`
    are one path in the container; a path in normal form has one spelling, so comparing the
    text (the Allocate collision check, the config's per-member checks) compares the paths.
    """
    why = device_path_problem(path) if device_node else absolute_path_problem(path)
    return why or normal_form_problem(
        path,
        "the runtime resolves them, so two spellings would land on one container path "
        "and it would keep only one",
    )


def normal_form_problem(path: str, why: str) -> str | None:
    """Why `path` is not in normal form (`why` it must be), or None: one spelling of a path,
    so comparing the text compares the paths."""
    if posixpath.normpath(path) != path or path.startswith("//"):
        return (
            f"must be in normal form ({posixpath.normpath(path).replace('//', '/')!r}: no "
            f"'.', '..' or empty components, no trailing '/'): {why}"
        )
    return None


PATTERN_SPELLING: Final = (
    "a matched path is a device's ID and its default container path, so two spellings of one "
    "pattern would give one node two IDs and a container path another resource's may hide"
)
"""Why a glob pattern must be in normal form (`normal_form_problem`, hostile19 F10)."""


def env_name_problem(name: str) -> str | None:
    """Why the kubelet would skip `name` as an environment variable name, or None.

    apimachinery's IsEnvVarName, which the kubelet applies to keys it turns into variables:
    `[-._a-zA-Z][-._a-zA-Z0-9]*`, not `.` or `..`, not starting with `..`.
    """
    if not _ENV_NAME.fullmatch(name):
        return (
            "must be letters, digits, '_', '-' or '.', not starting with a digit "
            "(e.g. FPGA_DEVICES)"
        )
    if name in (".", "..") or name.startswith(".."):
        return "must not be '.' or start with '..'"
    return None


def device_id_problem(device_id: str) -> str | None:
    """Why `device_id` cannot be advertised as a device ID, or None.

    The kubelet itself accepts any string. kdp-host's rule: 1-128 characters, no whitespace
    and no control or unprintable characters (IDs are shown in logs and substituted into
    commands), no LIST_SEPARATOR (`{ids}` joins IDs with it: `a,b` would name two devices
    in a hook's argv), no REPLICA_SEPARATOR (it names a replica), and not starting with `-`,
    so that `health.command: [tool, "{id}"]` can never hand the tool an option.
    """
    if not device_id:
        return "device ID must not be empty"
    if len(device_id) > MAX_DEVICE_ID_LENGTH:
        return f"device ID longer than {MAX_DEVICE_ID_LENGTH} characters"
    plain = device_id.isascii() and device_id.isprintable() and " " not in device_id
    if not plain and any(c.isspace() or not c.isprintable() for c in device_id):
        return "device ID must not contain whitespace or control characters"
    if device_id.startswith("-"):
        return "device ID must not start with '-' (it would read as an option)"
    if LIST_SEPARATOR in device_id:
        return (
            f"device ID must not contain {LIST_SEPARATOR!r} ({{ids}} lists IDs separated by "
            f"{LIST_SEPARATOR!r}: it would name several devices)"
        )
    if REPLICA_SEPARATOR in device_id:
        return f"device ID must not contain {REPLICA_SEPARATOR!r} (<id>::<k> names a replica)"
    return None


def socket_path_problem(path: str) -> str | None:
    """Why a Unix socket cannot be bound at `path`, or None: longer than AF_UNIX allows."""
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > AF_UNIX_PATH_MAX:
        return f"is {size} bytes, longer than the {AF_UNIX_PATH_MAX} a Unix socket path allows"
    return None
