"""The `kdp-host` command: run, check, discover, status, version, simulate-kubelet, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, heap
from .config import Config, ConfigError, load_config
from .files import DaemonThreads
from .logs import get_logger, quote_text, setup_logging
from .node import NodeInfo, local_node_name, select_for_node

if TYPE_CHECKING:
    from .probes import HealthState

EXIT_OK = 0
EXIT_DRIVER_FAILED = 1
"""`check`: the file is valid, but a resource's driver failed its scan."""
EXIT_INVALID = 2


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise SystemExit("--loop uvloop: uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run_async(main: Coroutine[Any, Any, int], loop: str) -> int:
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        return runner.run(main)


def _load_or_report(path: Path) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"kdp-host: invalid config {exc}", file=sys.stderr)
        return None


async def _run(config: Config, config_path: Path, node: NodeInfo) -> int:
    from .features import KubernetesLabels, held_missing_actions
    from .host import Host
    from .http import HttpServer
    from .metrics import Metrics
    from .status import DevicesAnswer

    log = get_logger()
    offload = DaemonThreads()
    labels = KubernetesLabels(node.name, offload, get_logger().bind(component="kubeapi"))
    metrics = Metrics(histograms=config.metrics.histograms, holders=config.metrics.holders)
    try:
        host = Host(
            config=config,
            offload=offload,
            metrics=metrics,
            log=log,
            config_path=config_path,
            node=node,
            node_labels=labels,
            held_missing=held_missing_actions(config, node.name, offload, metrics, log),
        )
    except ConfigError as exc:  # two entries of a name select this node
        print(f"kdp-host: invalid config {exc}", file=sys.stderr)
        return EXIT_INVALID
    metrics, health = host.metrics, host.health
    try:
        http = HttpServer(
            config.metrics.host,
            config.metrics.port,
            metrics,
            health,
            devices=DevicesAnswer(host) if config.metrics.devices else None,
        )
    except OSError as exc:
        log.error("metrics_listen_failed", listen=config.metrics.listen, reason=str(exc))
        return EXIT_INVALID
    http.start()
    paths = "/metrics,/healthz,/readyz" + (",/devices" if config.metrics.devices else "")
    log.info("http_serving", listen=http.address, paths=paths)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, host.request_reload)
    settling = asyncio.create_task(_settle_heap_when_ready(health), name="heap")
    try:
        await host.run(stop)
    finally:
        settling.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        http.stop()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    with heap.paused():  # what start-up makes to keep: made, then frozen (heap.py)
        config = _load_or_report(args.config)
        if config is None:
            return EXIT_INVALID
        from . import host, http, metrics, status  # noqa: F401 (for `_run`, made here)

        heap.settle()
        node = NodeInfo(args.node_name or local_node_name())
        return _run_async(_run(config, args.config.absolute(), node), args.loop)


async def _settle_heap_when_ready(health: HealthState) -> None:
    """The collector stays paused until the host has started (every resource serving,
    registered, and its first list sent: `HealthState.started`), `heap.START_PAUSE_LIMIT` at
    most; then, once the last lists have left (`written_out`), `heap.settle_started`."""
    from .protocol.server import written_out

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(heap.START_PAUSE_LIMIT):
            await health.started.wait()
    await written_out()  # not collecting while the last first list waits to be sent
    heap.settle_started()


def cmd_check(args: argparse.Namespace) -> int:
    """Prints a table; IDs, paths and errors are quoted (`quote_text`), so a newline or a
    control character in them cannot break it. Exit 2: invalid; 1: a driver failed (unless
    --allow-driver-errors); 0: valid and every driver scanned."""
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID
    node = None
    if args.node_name or args.node_label:
        labels = dict(label.partition("=")[::2] for label in args.node_label)
        node = NodeInfo(args.node_name or local_node_name(), labels if labels else None)
        try:
            select_for_node(config, node)
        except ConfigError as exc:
            print(f"kdp-host: invalid config {exc}", file=sys.stderr)
            return EXIT_INVALID
    from .check import (
        command_warnings,
        deadline_warnings,
        dev_root_warnings,
        handed_warnings,
        held_back,
        overlap_warnings,
        root_disk_warnings,
        scan_entries,
        unseen_source_warnings,
    )
    from .check_paths import container_path_warnings, numa_pair_warnings, shared_path_warnings

    scan = asyncio.run(scan_entries(config, node))
    rows = asyncio.run(held_back(scan.rows, config, args.config))
    where = "" if node is None else f" (node {quote_text(node.name)})"
    print(f"{quote_text(args.config)}: valid, {len(config.resources)} resource(s){where}")
    width = max((len(r.resource) for r in rows), default=8)
    print(f"{'RESOURCE':<{width}}  {'DRIVER':<6}  DEVICE")
    for row in rows:
        print(f"{row.resource:<{width}}  {row.driver:<6}  {row.text}")
    handed = [
        *unseen_source_warnings(config, args.config),
        *command_warnings(config),
        *handed_warnings(rows, config, args.config),
        *dev_root_warnings(rows),
        *deadline_warnings(config),
    ]
    overlaps = [
        *overlap_warnings(rows, config),
        *container_path_warnings(rows, config),
        *shared_path_warnings(rows),
        *numa_pair_warnings(rows),
    ]
    for warning in [*handed, *overlaps, *scan.too_large]:
        print(warning, file=sys.stderr)
    from .sysfs.rootdisk import find_root_disk

    for warning in root_disk_warnings(rows, find_root_disk(args.root_fs, args.sysfs_root)):
        print(warning, file=sys.stderr)
    failed = sorted({row.resource for row in rows if row.failed})
    if failed and not args.allow_driver_errors:
        print(
            f"kdp-host: the driver of {len(failed)} resource(s) failed: {', '.join(failed)} "
            "(--allow-driver-errors exits 0 all the same)",
            file=sys.stderr,
        )
        return EXIT_DRIVER_FAILED
    return EXIT_OK


def cmd_discover(args: argparse.Namespace) -> int:
    """List USB, PCI (and any bus or class asked for) devices with a resource entry each."""
    from .sysfs.cli import discover_command

    return discover_command(args)


def cmd_status(args: argparse.Namespace) -> int:
    """Who holds each device, asked of a running host (its `/devices`)."""
    from .status import status_command

    listen, devices_off = "127.0.0.1:9410", False
    if args.config is not None:
        config = _load_or_report(Path(args.config))
        if config is None:
            return EXIT_INVALID
        listen, devices_off = config.metrics.listen, not config.metrics.devices
    return status_command(args, listen, devices_off)


def cmd_version(args: argparse.Namespace) -> int:
    print(f"kdp-host {__version__}")
    return EXIT_OK


def cmd_simulate_kubelet(args: argparse.Namespace) -> int:
    from .simulator import run_simulator

    async def main() -> int:
        await run_simulator(Path(args.socket_dir))
        return EXIT_OK

    try:
        return _run_async(main(), args.loop)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.log_level == "info":
        logging.getLogger("kdp_host.simulator").setLevel(logging.WARNING)
    return run_demo(duration=args.duration, loop=args.loop)


def _add_common_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The flags every command takes, before or after the command name.

    The top-level parser holds the defaults; a subcommand's copy only overrides them when
    given (argparse would otherwise reset a flag given before the command to its default).
    """

    def default(value: str) -> str:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=default("text"),
        help="one event per line as key=value text or as JSON (default: text)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=default("info"),
        help="the lowest level logged (default: info)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default=default("auto"),
        help="event loop: uvloop when installed (auto), uvloop, or the standard asyncio one",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdp-host", description="Kubernetes device plugins declared in one YAML file."
    )
    parser.add_argument(
        "--version", action="version", version=f"kdp-host {__version__}", help="print the version"
    )
    _add_common_flags(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> Any:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        _add_common_flags(p, defaults=False)
        return p

    config_help = "the YAML config file"
    node_help = "this node's name for nodeSelector.names (default: $NODE_NAME, else the host name)"
    run = add("run", cmd_run, "Serve the configured resources to the kubelet.")
    run.add_argument("--config", type=Path, required=True, help=config_help)
    run.add_argument("--node-name", default="", help=node_help)
    check = add("check", cmd_check, "Validate a config and list the devices found now.")
    check.add_argument("--config", type=Path, required=True, help=config_help)
    check.add_argument(
        "--node-name", default="", help="show what this node serves (nodeSelector.names)"
    )
    check.add_argument(
        "--node-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of that node, for nodeSelector.labels (repeat for each)",
    )
    check.add_argument(
        "--allow-driver-errors",
        action="store_true",
        help="exit 0 when the file is valid even if a driver fails its scan (default: exit 1)",
    )
    check.add_argument(
        "--root-fs",
        default="/",
        metavar="PATH",
        help="a path on the host's root filesystem, whose disk `check` warns about handing "
        "out (default: /; in a container, a hostPath mount of the host's /)",
    )
    check.add_argument(
        "--sysfs-root", default="/sys", help="where the host's sysfs is (default: /sys)"
    )
    discover = add(
        "discover", cmd_discover, "List USB and PCI devices with a ready-to-paste sysfs entry each."
    )
    from .sysfs.cli import add_discover_arguments

    add_discover_arguments(discover)
    status = add(
        "status", cmd_status, "Show each device's health, who holds it, and its release state."
    )
    from .status import add_status_arguments

    add_status_arguments(status, config_help)
    from .unbook import UNBOOK_HELP, add_unbook_arguments, cmd_unbook

    add_unbook_arguments(add("unbook", cmd_unbook, UNBOOK_HELP), config_help)
    add("version", cmd_version, "Print the version.")
    sim = add("simulate-kubelet", cmd_simulate_kubelet, "Run a kubelet device-manager simulator.")
    sim.add_argument(
        "--socket-dir", required=True, help="the device-plugin directory to create kubelet.sock in"
    )
    demo = add("demo", cmd_demo, "Run kdp-host against the simulator on fake devices.")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    result: int = args.handler(args)
    return result
