"""The one readable-name maker: text (a serial, a path, a resource name, a device ID) spelled
as a name of some grammar, readable where it can be and one-to-one always.

`make_name(text, form)` is the text itself when the form keeps it (it is a name of the
grammar already), else a readable part (the text with the grammar's unsafe characters
written `_`, trimmed and cut) plus a separator and a spelling of the whole text: a SHA-256
prefix, or, where the name must decode back to exactly one text, the text's bytes in hex.
Two different texts get different names (up to the digest), and a text always the same one.

Five forms, one per place a name crosses into another program (or another host):

- `DEVICE_ID`: a device ID from a device's own text (sysfs serial, port path, PCI address,
  kernel name). The kubelet's device ID: `:` is allowed (PCI addresses keep theirs).
- `PATH_ID`: a device ID from a file path (glob). No `:` (a path's readable form never
  shows one), and the digest hashes the path's bytes as the file system has them
  (`surrogateescape`: a path is bytes). Whether a path's readable form is used as it is
  depends on the patterns, so the glob driver decides that (`drivers/glob_paths.DeviceIds`)
  and asks this maker only for the hashed form.
- `SOCKET_SLUG`: the readable part of a socket file name (`endpoint.socket_name`): short
  (the path must fit AF_UNIX) and always hashed (a cut name must not meet another's).
- `QUOTED_FILE_NAME`: a file name below `stateDir` of percent-encoded text (a device's
  release lock): the text while it fits NAME_MAX, else a cut of it, `%%` (which
  percent-encoding never writes) and a digest of the whole.
- `CDI_NAME`: a CDI device name (`[A-Za-z0-9]`, then `[A-Za-z0-9_.:-]`, ending
  alphanumeric). Its readable part has no `:`, and the whole ID follows `::` in hex, so a
  name decodes back to exactly one ID and an escaped name is never an ID's own name.

Where the forms differ beyond those grammars (which characters are trimmed from which end,
whether the cut comes before the trim, the digest length, what stands for an empty
readable part) they differ because names already given out must not change: a device ID
that an upgrade renamed would let the kubelet hand a booked device to a second pod, a CDI
name that changed would break a running container's spec. tests/test_names.py compares
each form against frozen copies of the code that made those names before.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from .cdi_rules import CDI_DEVICE_NAME, CDI_NAME_ESCAPE
from .rules import MAX_DEVICE_ID_LENGTH, MAX_NAME_LENGTH, device_id_problem


@dataclass(frozen=True)
class NameForm:
    """How one grammar spells text that is not one of its names."""

    unsafe: re.Pattern[str]
    """What the readable part writes as `_` (each match: a character, or a run of them)."""
    keep: Callable[[str], bool] | None
    """Whether a text is a name of the grammar already, used as it is; None: never."""
    separator: str
    """Between the readable part and the spelling of the whole text."""
    digest: int | None
    """Hex digits of the whole text's SHA-256; None: its bytes in hex (decodes back)."""
    length: int | None = None
    """Longest readable part; None: no limit."""
    trim_start: str = ""
    trim_end: str = ""
    """Characters trimmed from the readable part's ends."""
    cut_first: bool = False
    """Cut to `length` before trimming (else after)."""
    empty: str = ""
    """The readable part when nothing readable is left; "": the name is the spelling alone."""
    errors: Literal["surrogatepass", "surrogateescape"] = "surrogatepass"
    """How a lone surrogate is encoded for the spelling (`surrogateescape`: a file name's
    undecodable byte stands for itself)."""


def make_name(text: str, form: NameForm, *, shown: str | None = None) -> str:
    """`text` as a name of `form`: itself when `form.keep` says so, else the readable part
    of `shown` (default: `text`) plus the separator and the spelling of `text`."""
    if form.keep is not None and form.keep(text):
        return text
    readable = form.unsafe.sub("_", text if shown is None else shown)
    if form.cut_first and form.length is not None:
        readable = readable[: form.length]
    readable = readable.lstrip(form.trim_start).rstrip(form.trim_end)
    if not form.cut_first and form.length is not None:
        readable = readable[: form.length]
    whole = text.encode("utf-8", form.errors)
    spelled = whole.hex() if form.digest is None else hashlib.sha256(whole).hexdigest()
    spelled = spelled[: form.digest]
    readable = readable or form.empty
    return f"{readable}{form.separator}{spelled}" if readable else spelled


_DEVICE_ID_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._:-]|::")
"""(`::` too: it names a replica, `rules.REPLICA_SEPARATOR`.)"""


def _is_device_id(text: str) -> bool:
    return _DEVICE_ID_UNSAFE.search(text) is None and device_id_problem(text) is None


DEVICE_ID: Final = NameForm(
    unsafe=_DEVICE_ID_UNSAFE,
    keep=_is_device_id,
    separator="-",
    digest=8,
    length=MAX_DEVICE_ID_LENGTH - 9,
    trim_start="-_",
)
"""A device ID from a device's own text: `0000:01:00.0` stays, `a b` is `a_b-<8 hex>`."""

PATH_ID: Final = NameForm(
    unsafe=re.compile(r"[^A-Za-z0-9._-]"),
    keep=None,
    separator="-",
    digest=10,
    length=MAX_DEVICE_ID_LENGTH - 11,
    trim_start="-",
    cut_first=True,
    empty="dev",
    errors="surrogateescape",
)
"""The hashed device ID of a path: `<readable>-<10 hex of the path>`, `dev-<10 hex>`."""

SOCKET_SLUG: Final = NameForm(
    unsafe=re.compile(r"/|[^A-Za-z0-9._/-]+"),
    keep=None,
    separator="-",
    digest=8,
    length=20,
)
"""A socket name's readable part: `vendor.example_fpga-<8 hex>` (each `/` and each run of
other unsafe characters is one `_`)."""

CDI_NAME: Final = NameForm(
    unsafe=re.compile(r"[^A-Za-z0-9_.-]+"),
    keep=lambda text: CDI_DEVICE_NAME.fullmatch(text) is not None and CDI_NAME_ESCAPE not in text,
    separator=CDI_NAME_ESCAPE,
    digest=None,
    trim_start="_.-",
    trim_end="_.-",
    empty="id",
)
"""A CDI device name of a device ID: the ID, or `<readable>::<hex of the ID>`."""

QUOTED_FILE_NAME: Final = NameForm(
    unsafe=re.compile(r"(?!)"),
    keep=lambda text: len(text.encode()) <= MAX_NAME_LENGTH,
    separator="%%",
    digest=32,
    length=MAX_NAME_LENGTH - 2 - 32,
)
"""A file name of percent-encoded text: the text while it fits one path component, else
`<its first 221 characters>%%<32 hex>` (hostile15 F5: a long ID's release lock could not be
made, so its releases were not serialised across hosts)."""
