"""The `kdp-host` command: run, check, version, simulate-kubelet, demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, ConfigError, load_config
from .logs import get_logger, setup_logging

EXIT_OK = 0
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


async def _run(config: Config, config_path: Path) -> int:
    from .host import Host
    from .http import HealthState, HttpServer
    from .metrics import Metrics

    log = get_logger()
    metrics = Metrics()
    health = HealthState()
    try:
        http = HttpServer(config.metrics.host, config.metrics.port, metrics, health)
    except OSError as exc:
        log.error("metrics_listen_failed", listen=config.metrics.listen, reason=str(exc))
        return EXIT_INVALID
    http.start()
    log.info("http_serving", listen=config.metrics.listen, paths="/metrics,/healthz,/readyz")
    host = Host(config=config, metrics=metrics, log=log, config_path=config_path, health=health)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, host.request_reload)
    try:
        await host.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        http.stop()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID
    return _run_async(_run(config, args.config.absolute()), args.loop)


async def _check(config: Config) -> list[tuple[str, str, str]]:
    from .drivers import DriverDeps, DriverError, make_driver
    from .watch import PollingWatcher

    log = get_logger()
    rows: list[tuple[str, str, str]] = []
    for resource in config.resources:
        deps = DriverDeps(log.bind(resource=resource.name), PollingWatcher(log))
        try:
            devices = await make_driver(resource.driver, deps).scan()
        except DriverError as exc:
            rows.append((resource.name, resource.driver.kind, f"driver error: {exc}"))
            continue
        if not devices:
            rows.append((resource.name, resource.driver.kind, "(no devices found now)"))
        for device in devices:
            where = ", ".join(node.host_path for node in device.nodes) or "-"
            numa = "" if device.numa is None else f" numa={device.numa}"
            health = "Healthy" if device.healthy else "Unhealthy"
            rows.append(
                (resource.name, resource.driver.kind, f"{device.id} {health}{numa} {where}")
            )
    return rows


def cmd_check(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID
    rows = asyncio.run(_check(config))
    print(f"{args.config}: valid, {len(config.resources)} resource(s)")
    width = max((len(r[0]) for r in rows), default=8)
    print(f"{'RESOURCE':<{width}}  {'DRIVER':<6}  DEVICE")
    for name, kind, text in rows:
        print(f"{name:<{width}}  {kind:<6}  {text}")
    return EXIT_OK


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdp-host", description="Kubernetes device plugins declared in one YAML file."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> Any:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        p.add_argument("--log-format", choices=("text", "json"), default="text")
        p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
        p.add_argument(
            "--loop",
            choices=("auto", "uvloop", "asyncio"),
            default="auto",
            help="event loop: uvloop when installed (auto), or the standard one",
        )
        return p

    run = add("run", cmd_run, "Serve the configured resources to the kubelet.")
    run.add_argument("--config", type=Path, required=True)
    check = add("check", cmd_check, "Validate a config and list the devices found now.")
    check.add_argument("--config", type=Path, required=True)
    add("version", cmd_version, "Print the version.")
    sim = add("simulate-kubelet", cmd_simulate_kubelet, "Run a kubelet device-manager simulator.")
    sim.add_argument("--socket-dir", required=True)
    demo = add("demo", cmd_demo, "Run kdp-host against the simulator on fake devices.")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
