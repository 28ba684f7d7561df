"""The text rules of CDI names (the part of `rules.py` about the Container Device Interface).

A CDI device is named `vendor/class=device`: the kind (`vendor/class`) says which spec file
holds it, the device name which entry. A runtime resolves such names from an Allocate
answer's CDI devices and from the values of `cdi.k8s.io/...` container annotations (the
path device plugins used before Kubernetes 1.28: a comma-separated list of names). Every
rule about them is written here once, like the rest of `rules.py`: whether CDI takes a kind,
a device name or a qualified name (`*_problem`), and how kdp-host reads the names a value
lists to decide whose devices they are (`cdi_name_parts`, `cdi_annotation_names`).
"""

from __future__ import annotations

import re
from typing import Final

_CDI_VENDOR_OR_CLASS: Final = r"[A-Za-z][A-Za-z0-9_.-]*[A-Za-z0-9]"
"""A CDI vendor or class of at least 2 characters (CDI's Go validator mis-slices 1)."""
CDI_KIND_PATTERN: Final = f"^{_CDI_VENDOR_OR_CLASS}/{_CDI_VENDOR_OR_CLASS}$"
"""`cdi_kind_problem` as a JSON Schema pattern."""
CDI_DEVICE_NAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?")
"""A CDI device name: letters and digits at both ends, `_ . : -` inside (CDI's parser)."""
CDI_NAME_ESCAPE: Final = "::"
"""In a CDI device name: what follows is the hex spelling of a device ID that is not a CDI
name of its own (`allocation.cdi_device_name`)."""
CDI_RESOURCE_SEPARATOR: Final = ":"
"""In a CDI device name kdp-host writes, `<resource>:<device>`: after the resource part (the
resource name with its `/` as `_`, `config.outputs.resource_slug`), before the device's own
name (`allocation.cdi_device_name`). An extended resource name holds no `:` and its domain no
`_`, so the first `:` ends the resource part, which spells one resource only."""
CDI_NAME_SEPARATOR: Final = "="
"""Between the kind and the device of a qualified CDI name `vendor/class=device`."""
CDI_ANNOTATION_PREFIX: Final = "cdi.k8s.io/"
"""Container annotations whose values name CDI devices the runtime injects (CDI's
`AnnotationPrefix`)."""
CDI_ANNOTATION_SEPARATOR: Final = ","
"""Between the qualified names of one `cdi.k8s.io/...` annotation value (CDI splits there)."""


def cdi_kind_problem(kind: str) -> str | None:
    """Why CDI would refuse `kind` (`vendor/class`), or None.

    CDI's parser: vendor and class each start with a letter, end with a letter or digit,
    and hold only letters, digits, `_`, `-` and `.` (a `.` in the class needs cdiVersion
    0.6.0). One-character parts are refused as well: CDI's Go validator mis-slices them.
    """
    vendor, sep, klass = kind.partition("/")
    if not sep or not vendor or not klass:
        return "must be vendor/class, e.g. vendor.example/fpga"
    for what, part in (("vendor", vendor), ("class", klass)):
        if not re.fullmatch(_CDI_VENDOR_OR_CLASS, part):
            return (
                f"{what} {part!r} must start with a letter, end with a letter or digit and "
                "hold only letters, digits, '_', '-' and '.' (at least 2 characters)"
            )
    return None


def cdi_device_name_problem(name: str) -> str | None:
    """Why CDI would refuse `name` as a device name in a spec, or None.

    CDI's ValidateDeviceName: ASCII letters or digits at both ends, and letters, digits,
    `_`, `-`, `.` and `:` in between (one character is enough).
    """
    if not CDI_DEVICE_NAME.fullmatch(name):
        return (
            "must start and end with a letter or digit and hold only letters, digits, "
            "'_', '-', '.' and ':'"
        )
    return None


def cdi_qualified_name_problem(name: str) -> str | None:
    """Why CDI would refuse `name` as a qualified device name (`vendor/class=device`), or None."""
    if CDI_NAME_SEPARATOR not in name:
        return "must be a CDI name vendor/class=device, e.g. vendor.example/fpga=0"
    kind, device = name.split(CDI_NAME_SEPARATOR, 1)
    if why := cdi_kind_problem(kind):
        return why
    if why := cdi_device_name_problem(device):
        return f"device name {why}"
    return None


def cdi_name_parts(name: str) -> tuple[str, str]:
    """The kind and the device name of a qualified CDI name, split where CDI splits it (at
    the first `=`; no `=`: the whole text is the kind, the device is empty), each without
    the whitespace around it.

    For deciding whose device a name is, not whether CDI takes it (that is
    `cdi_qualified_name_problem`): a name that only a blank keeps from being valid must not
    slip past the check of whose it is (a runtime might trim it)."""
    kind, _, device = name.partition(CDI_NAME_SEPARATOR)
    return kind.strip(), device.strip()


def is_cdi_annotation_key(key: str) -> bool:
    """Whether a container annotation names CDI devices (`cdi.k8s.io/...`), in any case:
    CDI matches the prefix as written, but no spelling a runtime might take slips past."""
    return key.lower().startswith(CDI_ANNOTATION_PREFIX)


def cdi_annotation_names(value: str) -> list[str]:
    """The qualified CDI names a `cdi.k8s.io/...` annotation value lists: split at `,` as CDI
    splits it, each name without the whitespace around it, empty items left out."""
    return [name for item in value.split(CDI_ANNOTATION_SEPARATOR) if (name := item.strip())]
