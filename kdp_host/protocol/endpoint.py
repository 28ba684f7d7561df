"""The name of a resource's socket in the kubelet's socket dir (Register's `endpoint`)."""

from __future__ import annotations

import hashlib
import re
from typing import Final

INSTANCE_ID_MAX_LENGTH: Final = 8
"""Longest host instance ID a socket name carries (the host uses 8 hex digits)."""
_SLUG_MAX_LENGTH: Final = 20
_HASH_LENGTH: Final = 8
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
_PREFIX, _SUFFIX = "kdp-", ".sock"

SOCKET_NAME_MAX_LENGTH: Final = (
    len(_PREFIX) + _SLUG_MAX_LENGTH + 1 + _HASH_LENGTH + 1 + INSTANCE_ID_MAX_LENGTH + len(_SUFFIX)
)
"""Longest name `socket_name` returns, whatever the resource name: a socket dir works for
every resource when `<dir>/` plus this many bytes fits a Unix socket path (rules.py)."""


def socket_name(resource: str, instance_id: str) -> str:
    """`kdp-vendor.example_fpga-<hash>-<instance>.sock`: unique per resource and instance.

    The readable part is the resource name cut to 20 characters (so the longest name, 47
    bytes, fits AF_UNIX even under microk8s's 56-byte socket dir); the hash of the whole name
    keeps names that share those characters apart, so the length stays bounded.
    """
    if not 0 < len(instance_id) <= INSTANCE_ID_MAX_LENGTH or _UNSAFE.search(instance_id):
        raise ValueError(f"instance ID {instance_id!r}: 1 to 8 of [A-Za-z0-9._-]")
    slug = _UNSAFE.sub("_", resource.replace("/", "_"))[:_SLUG_MAX_LENGTH]
    digest = hashlib.sha256(resource.encode()).hexdigest()[:_HASH_LENGTH]
    return f"{_PREFIX}{slug}-{digest}-{instance_id}{_SUFFIX}"
