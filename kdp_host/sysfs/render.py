"""How `kdp-host discover` prints what it found: a table with each device's nodes, errors
and resource entry, or the same as YAML or JSON. Hostile text (a serial, a product string)
is quoted, so it cannot forge a line or move the cursor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import yaml

from ..logs import quote_text
from .describe import driver_text
from .discover import Discovered, HexId


class _EntryDumper(yaml.SafeDumper):
    pass


def _represent_hex(dumper: yaml.SafeDumper, value: HexId) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style='"')


_EntryDumper.add_representer(HexId, _represent_hex)


def render_json(found: Sequence[Discovered], problems: Sequence[str]) -> str:
    document = {"devices": [d.as_dict() for d in found], "problems": list(problems)}
    return json.dumps(document, indent=2, ensure_ascii=False)


def render_yaml(found: Sequence[Discovered], problems: Sequence[str]) -> str:
    document = {"devices": [d.as_dict() for d in found], "problems": list(problems)}
    return yaml.dump(document, Dumper=_EntryDumper, sort_keys=False, allow_unicode=False, width=100)


def entry_yaml(item: Discovered) -> str:
    """The resource entry as a YAML list item, with the serial as a comment to pin it."""
    if item.resource is None:
        return "# no entry: its vendor and product IDs could not be read\n"
    text = yaml.dump(
        [item.resource], Dumper=_EntryDumper, sort_keys=False, default_flow_style=None, width=100
    )
    if not item.exact:
        shown = ", ".join(quote_text(name) for name in item.matches) or "none"
        if item.device.name in item.matches:
            text += f"#   matches {len(item.matches)} devices here, not only this one: {shown}\n"
        else:
            text += f"#   does not advertise this device on its own; it advertises: {shown}\n"
    if item.root_disk:
        shown = ", ".join(quote_text(path) for path in item.root_disk)
        text += (
            f"#   WARNING: hands out the root filesystem's disk: {shown} (a container given it "
            "can read and write every file of the host)\n"
        )
    if item.serial_hint:
        text += f"#   pin it to this one device: add serial: {json.dumps(item.serial_hint)}\n"
        if item.serial_hint != item.device.serial:
            text += "#   (its glob characters in brackets, so it matches only this serial)\n"
    return text


def _shown(text: str) -> str:
    """Printable text as it is; anything with a control character quoted and escaped, so
    a hostile serial or product string cannot forge a line or move the cursor."""
    return text if text.isprintable() else quote_text(text)


def render_table(found: Sequence[Discovered], problems: Sequence[str]) -> str:
    """A table of devices, then each device's nodes, errors and resource entry."""
    quote = _shown
    rows = [("SOURCE", "ADDRESS", "ID", "VENDOR:PRODUCT", "NUMA", "DRIVER", "DESCRIPTION")]
    for item in found:
        device = item.device
        rows.append(
            (
                quote_text(device.source),
                quote_text(device.name),
                quote_text(item.suggested_id),
                quote_text(f"{device.vendor or '?'}:{device.product or '?'}"),
                "-" if device.numa is None else str(device.numa),
                quote_text(driver_text(device)),
                quote(item.description),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    for item in found:
        device = item.device
        lines.append("")
        description = item.description
        lines.append(
            f"# {quote_text(device.source)} {quote_text(device.name)}: "
            + (quote(description) if description else "-")
        )
        if device.serial:
            lines.append(f"#   serial: {quote(device.serial)}")
        for node in device.nodes:
            missing = "" if node.present else "  (not in the dev root)"
            lines.append(
                f"#   node: {quote_text(node.host_path)} ({quote_text(node.subsystem)}){missing}"
            )
        for attribute, reason in sorted(device.errors.items()):
            lines.append(f"#   unreadable: {quote_text(attribute)}: {quote(reason)}")
        lines.append(entry_yaml(item).rstrip("\n"))
    if problems:
        lines.append("")
        lines.extend(f"# not read: {quote(problem)}" for problem in problems)
    if not found:
        lines.append("(no devices found)")
    return "\n".join(lines) + "\n"
