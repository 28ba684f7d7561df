"""The name of a resource's socket in the directory it is served from (Register's `endpoint`).

Two forms, one rule choosing between them: the readable name when its path fits a Unix socket
(`rules.socket_path_problem`), the compact hash-only name otherwise. The compact name is as
long as `kubelet.sock`, so every directory the kubelet itself can serve from serves every
resource of kdp-host.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Final

from .names import SOCKET_SLUG, make_name
from .rules import socket_path_problem

INSTANCE_ID_MAX_LENGTH: Final = 8
"""Longest host instance ID (the host uses 8 hex digits): it is part of every socket name
and names the host's lock file in stateDir (`state_lock`)."""
_INSTANCE_ID: Final = re.compile(rf"[A-Za-z0-9._-]{{1,{INSTANCE_ID_MAX_LENGTH}}}")
_SOCKET_HASH_LENGTH: Final = 8
_SOCKET_PREFIX, _SOCKET_SUFFIX = "kdp-", ".sock"
_COMPACT_SOCKET: Final = re.compile(r"kdp-[a-z2-7]{8}")

SOCKET_NAME_MAX_LENGTH: Final = (
    len(_SOCKET_PREFIX)
    + (SOCKET_SLUG.length or 0)
    + len(SOCKET_SLUG.separator)
    + (SOCKET_SLUG.digest or 0)
    + 1
    + INSTANCE_ID_MAX_LENGTH
    + len(_SOCKET_SUFFIX)
)
"""Longest (readable) name `socket_name` returns, whatever the resource name."""
SOCKET_NAME_MIN_LENGTH: Final = len(_SOCKET_PREFIX) + _SOCKET_HASH_LENGTH
"""Length of the compact name: 12 bytes, as long as `kubelet.sock`. A socket dir serves every
resource when `<dir>/` plus this many bytes fits a Unix socket path."""


def instance_id_problem(instance: str) -> str | None:
    """Why `instance` cannot be a host's instance ID: 1 to 8 of [A-Za-z0-9._-]."""
    if _INSTANCE_ID.fullmatch(instance) is None:
        return f"must be 1 to {INSTANCE_ID_MAX_LENGTH} of [A-Za-z0-9._-]"
    return None


def socket_name(resource: str, instance_id: str, socket_dir: str) -> str:
    """The socket name of `resource` for host instance `instance_id` in `socket_dir`.

    Readable, `kdp-vendor.example_fpga-<hash>-<instance>.sock`, when its path in `socket_dir`
    fits AF_UNIX: the resource name cut to 20 characters and the hash of the whole name
    (`names.SOCKET_SLUG`: names sharing those characters stay apart), and the instance.
    Otherwise compact, `kdp-<8 base32 characters>`: a hash of the resource name and the
    instance, so it is still unique per resource and instance.
    """
    problem = instance_id_problem(instance_id)
    if problem is not None:
        raise ValueError(f"instance ID {instance_id!r} {problem}")
    readable = f"{_SOCKET_PREFIX}{socket_slug(resource)}-{instance_id}{_SOCKET_SUFFIX}"
    if socket_path_problem(os.path.join(socket_dir, readable)) is None:
        return readable
    both = hashlib.sha256(f"{resource}\0{instance_id}".encode()).digest()
    return _SOCKET_PREFIX + base64.b32encode(both).decode().lower()[:_SOCKET_HASH_LENGTH]


def socket_instance(name: str) -> str | None:
    """The instance ID a readable socket name carries (`socket_name`); None for a compact
    name, or a name that carries none."""
    if not (name.startswith(_SOCKET_PREFIX) and name.endswith(_SOCKET_SUFFIX)):
        return None
    instance = name[: -len(_SOCKET_SUFFIX)].rpartition("-")[2]
    return instance if instance_id_problem(instance) is None else None


def socket_slug(resource: str) -> str:
    """The part of a readable socket name that comes from the resource name. Two names that
    give one slug would serve on one path (each taking the other's bind for its own socket
    deleted): the config refuses them (`Config.check`)."""
    return make_name(resource, SOCKET_SLUG)


def is_socket_name(name: str) -> bool:
    """Whether `name` has the form of a socket name `socket_name` makes (either form)."""
    if name.startswith(_SOCKET_PREFIX) and name.endswith(_SOCKET_SUFFIX):
        return True
    return _COMPACT_SOCKET.fullmatch(name) is not None
