"""The rules of the Kubernetes API's names: extended resource names (the kubelet's Register),
label keys and values, annotation keys (the API server's), and the node feature labels of a
resource. Part of the text rules (`rules.py`: its conventions hold here too), kept apart as
apimachinery keeps them: each function returns why a value breaks its rule, or None.
"""

from __future__ import annotations

import re
from typing import Final

MAX_QUALIFIED_NAME_LENGTH: Final = 63
MAX_DNS1123_SUBDOMAIN_LENGTH: Final = 253
_QUALIFIED_NAME: Final = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_LABEL: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN: Final = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
EXTENDED_RESOURCE_NAME_PATTERN: Final = (
    rf"^({_DNS1123_LABEL}\.)*{_DNS1123_LABEL}/"
    rf"[A-Za-z0-9]([-A-Za-z0-9_.]{{0,{MAX_QUALIFIED_NAME_LENGTH - 2}}}[A-Za-z0-9])?$"
)
EXTENDED_RESOURCE_NAME_NOT_PATTERN: Final = r"(^|\.)kubernetes\.io/|^requests\."
"""JSON Schema's first check of an extended resource name: it matches the pattern, not this
one (`extended_resource_name_problem` is the whole rule, lengths too)."""


def dns1123_subdomain_problem(value: str) -> str | None:
    """apimachinery's IsDNS1123Subdomain: lower-case labels of `[a-z0-9-]` joined by `.`,
    each starting and ending alphanumeric, at most 253 characters in all."""
    if len(value) > MAX_DNS1123_SUBDOMAIN_LENGTH:
        return f"must be at most {MAX_DNS1123_SUBDOMAIN_LENGTH} characters"
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        return "must be a lower-case DNS-1123 subdomain (e.g. vendor.example)"
    return None


def qualified_name_problem(value: str) -> str | None:
    """apimachinery's IsQualifiedName: `[prefix/]name`.

    The optional prefix is a DNS-1123 subdomain; the name is 1-63 characters of
    `[A-Za-z0-9-_.]` starting and ending alphanumeric. This is the rule of label keys,
    annotation keys and (after `requests.` is prepended) extended resource names.
    """
    prefix, slash, name = value.rpartition("/")
    if slash:
        if "/" in prefix:
            return "must have at most one '/'"
        if not prefix:
            return "prefix before '/' must not be empty"
        if why := dns1123_subdomain_problem(prefix):
            return f"prefix {why}"
    if not name:
        return "name must not be empty"
    if len(name) > MAX_QUALIFIED_NAME_LENGTH:
        return f"name must be at most {MAX_QUALIFIED_NAME_LENGTH} characters"
    if not _QUALIFIED_NAME.fullmatch(name):
        return "name must be [A-Za-z0-9-_.], starting and ending with a letter or digit"
    return None


def extended_resource_name_problem(name: str) -> str | None:
    """Why the kubelet would refuse `name` as an extended resource name in Register, or None.

    The kubelet's rule (IsExtendedResourceName of the core API helpers): the name has a `/`
    (no `/` means a native resource), does not contain `kubernetes.io/` (the native
    namespace), does not start with `requests.`, and `requests.<name>` is a qualified name.
    """
    if "/" not in name:
        return "must have a domain prefix, e.g. vendor.example/fpga"
    if "kubernetes.io/" in name:
        return "must not be in the kubernetes.io/ namespace (native resources)"
    if name.startswith("requests."):
        return "must not start with 'requests.'"
    if why := qualified_name_problem(f"requests.{name}"):
        return why
    return None


def is_extended_resource_name(name: str) -> bool:
    return extended_resource_name_problem(name) is None


def annotation_key_problem(key: str) -> str | None:
    """Why the API server would refuse `key` as an annotation key, or None.

    The API server's ValidateAnnotations checks each key, lower-cased, as a qualified name
    (so upper-case letters are accepted in the prefix too). The kubelet forwards a device
    plugin's annotations to the runtime without a check; kdp-host holds them to the API
    server's rule so they mean the same as annotations anywhere else.
    """
    return qualified_name_problem(key.lower())


def label_key_problem(key: str) -> str | None:
    """Why the API server would refuse `key` as a label key, or None: a qualified name
    (`[prefix/]name`), as written (labels are not lower-cased first)."""
    return qualified_name_problem(key)


def label_value_problem(value: str) -> str | None:
    """apimachinery's IsValidLabelValue: empty, or 1-63 characters of `[A-Za-z0-9-_.]`
    starting and ending with a letter or digit."""
    if not value:
        return None
    if len(value) > MAX_QUALIFIED_NAME_LENGTH:
        return f"must be at most {MAX_QUALIFIED_NAME_LENGTH} characters"
    if not _QUALIFIED_NAME.fullmatch(value):
        return "must be [A-Za-z0-9-_.], starting and ending with a letter or digit"
    return None


NODE_FEATURE_SUFFIXES: Final = (".present", ".count")
"""The node feature labels of a resource `domain/name`: `domain/name.present` (`true` or
`false`) and `domain/name.count` (its healthy devices)."""


def node_feature_labels(resource: str) -> tuple[str, str]:
    """The node feature label keys of a resource: (present, count)."""
    present, count = (resource + suffix for suffix in NODE_FEATURE_SUFFIXES)
    return present, count


def node_feature_label_problem(resource: str) -> str | None:
    """Why a resource name cannot give node feature labels (its name part is already at or
    near the 63-character limit of a label name), or None."""
    for label in node_feature_labels(resource):
        if why := label_key_problem(label):
            return f"gives the node feature label {label!r}, which {why}"
    return None
