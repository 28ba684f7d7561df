"""The `discover` subcommand's arguments and body (kept here, so cli.py stays a list)."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from typing import TYPE_CHECKING

from ..files import DaemonThreads
from ..k8s_names import extended_resource_name_problem
from ..logs import quote_text
from ..rules import sysfs_name_problem
from .entry import DEFAULT_SCAN_TIMEOUT, PCI, USB

if TYPE_CHECKING:
    from .model import SysfsScan

# The command's body (reader, ID databases, discover, render) is imported when it runs:
# every kdp-host command builds this parser, `run` among them.

DEFAULT_DOMAIN = "example.com"
"""The domain of the suggested resource names."""
PCI_IDS_PATHS = ("/usr/share/hwdata/pci.ids", "/usr/share/misc/pci.ids", "/usr/share/pci.ids")
"""Where distributions put pci.ids (hwdata; Debian's pci.ids and pciutils), in that order."""
USB_IDS_PATHS = (
    "/usr/share/hwdata/usb.ids",
    "/usr/share/misc/usb.ids",
    "/var/lib/usbutils/usb.ids",
    "/usr/share/usb.ids",
)

EXIT_OK = 0
EXIT_FAILED = 1


def domain_problem(domain: str) -> str | None:
    """Why `domain` cannot prefix a resource name (the rules module's resource-name rule)."""
    if "/" in domain:
        return "must be a domain without '/', e.g. vendor.example"
    return extended_resource_name_problem(f"{domain}/device")


def domain_argument(text: str) -> str:
    if (why := domain_problem(text)) is not None:
        raise argparse.ArgumentTypeError(f"{quote_text(text)}: {why}")
    return text


def sysfs_name_argument(text: str) -> str:
    if (why := sysfs_name_problem(text)) is not None:
        raise argparse.ArgumentTypeError(f"{quote_text(text)}: {why}")
    return text


def timeout_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{quote_text(text)}: must be a number of seconds > 0")
    return value


def add_discover_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("table", "yaml", "json"), default="table", help="default: table"
    )
    parser.add_argument(
        "--bus",
        action="append",
        default=None,
        type=sysfs_name_argument,
        metavar="BUS",
        help=f"a bus under /sys/bus to list (repeatable; default: {USB} and {PCI})",
    )
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        type=sysfs_name_argument,
        metavar="CLASS",
        help="a class under /sys/class to list, e.g. video4linux, sound, tty (repeatable)",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="also list USB root hubs, PCI bridges and devices without a device node",
    )
    parser.add_argument(
        "--domain",
        default=DEFAULT_DOMAIN,
        type=domain_argument,
        help=f"the domain of the suggested resource names (default: {DEFAULT_DOMAIN})",
    )
    parser.add_argument("--sysfs-root", default="/sys", help="where sysfs is (default: /sys)")
    parser.add_argument("--dev-root", default="/dev", help="where /dev is (default: /dev)")
    parser.add_argument(
        "--root-fs",
        default="/",
        metavar="PATH",
        help="a path on the host's root filesystem, whose disk's entries get a warning "
        "(default: /; in a container, a hostPath mount of the host's /)",
    )
    for bus, defaults in ((PCI, PCI_IDS_PATHS), (USB, USB_IDS_PATHS)):
        parser.add_argument(
            f"--{bus}-ids",
            default=None,
            metavar="PATH",
            help=f"the {bus}.ids database naming devices (default: the first of "
            f"{', '.join(defaults)} that exists; '' for none)",
        )
    parser.add_argument(
        "--timeout",
        type=timeout_argument,
        default=DEFAULT_SCAN_TIMEOUT,
        help="give up on a hung sysfs read after this many seconds "
        f"(default: {DEFAULT_SCAN_TIMEOUT:g})",
    )


def discover_command(args: argparse.Namespace) -> int:
    from .describe import Names
    from .discover import discover
    from .ids import IdsError, find_ids
    from .reader import SysfsReader
    from .render import render_json, render_table, render_yaml
    from .rootdisk import find_root_disk

    reader = SysfsReader(args.sysfs_root, args.dev_root)
    buses = args.bus if args.bus else [USB, PCI]
    extra = ["name"] if args.classes else []
    try:
        names = Names(find_ids(args.pci_ids, PCI_IDS_PATHS), find_ids(args.usb_ids, USB_IDS_PATHS))
    except IdsError as exc:
        print(f"kdp-host discover: {quote_text(exc)}", file=sys.stderr)
        return EXIT_FAILED

    async def read() -> SysfsScan:
        # A read stuck in the kernel is left behind on its daemon thread: the exit waits
        # for no such thread.
        async with asyncio.timeout(args.timeout):
            return await DaemonThreads().run(lambda: reader.scan(buses, args.classes, extra))

    try:
        scan = asyncio.run(read())
    except TimeoutError:
        print(f"kdp-host discover: sysfs: no answer within {args.timeout:g}s", file=sys.stderr)
        return EXIT_FAILED
    root = find_root_disk(args.root_fs, args.sysfs_root)
    found = discover(scan.devices, domain=args.domain, include_all=args.all, names=names, root=root)
    render = {"table": render_table, "yaml": render_yaml, "json": render_json}[args.format]
    skipped = tuple(f"{quote_text(path)}: {why}" for path, why in scan.skipped)
    sys.stdout.write(render(found, (*scan.problems, *skipped)))
    return EXIT_OK
