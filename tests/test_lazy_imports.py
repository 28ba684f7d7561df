"""A run imports only what it uses: modules of other commands, drivers and features that no
resource configures stay unloaded (start-up time and memory of every kdp-host process)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kdp_host.simulator import KubeletSimulator

from .conftest import glob_config
from .fake_sysfs import FakeSysfs

FPGA = "vendor.example/fpga"
STICK = "vendor.example/stick"
CARD = "vendor.example/card"

POD_RESOURCES = ("kdp_host.podresources", "kdp_host.holdings", "kdp_host.api.v1")
"""Imported only with PodResources polling on (`podResourcesInterval`, on by default)."""

NOT_IMPORTED_BY_A_GLOB_RUN = (
    # other commands: the simulator and demo, `discover`'s body, `check`'s root-disk probe
    "kdp_host.simulator",
    "kdp_host.demo",
    "kdp_host.testing",
    "kdp_host.sysfs.discover",
    "kdp_host.sysfs.describe",
    "kdp_host.sysfs.ids",
    "kdp_host.sysfs.render",
    "kdp_host.sysfs.rootdisk",
    # the sysfs model and reading sysfs, with no sysfs resource (the config's checks need
    # `sysfs.entry` and `sysfs.match` only)
    "kdp_host.sysfs.model",
    "kdp_host.sysfs.reader",
    "kdp_host.sysfs.tree",
    "kdp_host.sysfs.nodes",
    "kdp_host.sysfs.index",
    "kdp_host.drivers.sysfs",
    "kdp_host.drivers.sysfs_match",
    "kdp_host.drivers.sysfs_advertised",
    # drivers and features no resource uses (made where the config chooses them: `features`;
    # the glob scan of groups where an entry has `glob.group`)
    "kdp_host.drivers.glob_groups",
    "kdp_host.drivers.glob_keys",
    "kdp_host.drivers.shell",
    "kdp_host.drivers.stream",
    "kdp_host.hooks",
    "kdp_host.command_output",
    "kdp_host.recall",
    "kdp_host.release",
    "kdp_host.release_use",
    "kdp_host.health",
    "kdp_host.cdi",
    "kdp_host.cdi_keeper",
    "kdp_host.cdi_pins",
    "kdp_host.cdi_spec",
    "kdp_host.cdi_disk",
    "kdp_host.cdi_resolution",
    "kdp_host.file_lease",
    "kdp_host.nfd",
    # running commands, with no command configured (`commands.Commands`: at the first one)
    "kdp_host.process",
    "kdp_host.process_group",
    "kdp_host.pipes",
    # the Kubernetes API, with no entry selecting by label
    "kdp_host.kubeapi",
    # the plugin manager's side, with `registration: deviceSocket` (the default)
    "kdp_host.serving_registry",
    "kdp_host.protocol.plugin_registry",
    "kdp_host.api.pluginregistration",
    # what only a mistake or a lookup needs: "did you mean" hints of the config's checks, and
    # the idna codec of a reverse name lookup (socket.getfqdn) when the HTTP server binds
    "difflib",
    "encodings.idna",
    "stringprep",
    # random names (instance IDs, temporary files) are os.urandom's: `secrets` brings hmac
    "secrets",
    "hmac",
    # the schema machinery (make schema) and test-only libraries
    "kdp_host.config.docs",
    "jsonschema",
    "hypothesis",
)

_RECORD = """
import atexit, gc, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps({
    "modules": sorted(sys.modules), "frozen": gc.get_freeze_count(), "collects": gc.isenabled()
})))
from kdp_host.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _config_text(socket_dir: Path, devices: Path, extra: str = "", kubelet: str = "") -> str:
    text = glob_config(socket_dir, (FPGA, f"{devices}/fpga*"), extra=extra)
    if kubelet:
        text = text.replace("kubelet: {", f"kubelet: {{{kubelet}, ", 1)
    return text + "metrics: {listen: '127.0.0.1:0', devices: true}\n"


async def record_a_run(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    short_dir: Path,
    *,
    kubelet_keys: str = "",
    while_running: Callable[[Path], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """A `kdp-host run` of a glob resource, registered, its HTTP paths asked, then stopped:
    what it had loaded (`modules`) and its collector's state (`frozen`, `collects`) at exit.
    `kubelet_keys` go in its `kubelet` section; `while_running` is awaited (given the config
    file) before it is stopped."""
    config = short_dir / "config.yaml"
    config.write_text(_config_text(socket_dir, devices, kubelet=kubelet_keys))
    record = short_dir / "run.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RECORD,
        str(record),
        "run",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        address = None
        while address is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "kdp-host ended before it served HTTP"
            if match := re.search(r"event=http_serving listen=(\S+)", line):
                address = match.group(1)
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=30)
        for path in ("/metrics", "/readyz", "/healthz", "/devices"):
            await asyncio.to_thread(_get, f"http://{address}{path}")
        if while_running is not None:
            await while_running(config)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    recorded: dict[str, Any] = json.loads(record.read_text())
    return recorded


async def test_a_glob_run_imports_no_module_it_does_not_use(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path
) -> None:
    """The modules a glob run loaded on the way hold none of the list above."""
    modules = set((await record_a_run(kubelet, socket_dir, devices, short_dir))["modules"])
    assert "kdp_host.drivers.glob" in modules  # the list is the run's own
    assert set(POD_RESOURCES) <= modules  # polling is on by default
    assert _among(modules, NOT_IMPORTED_BY_A_GLOB_RUN) == []


async def test_a_run_without_pod_resources_polling_imports_no_poller(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path
) -> None:
    """`podResourcesInterval: 0s`: neither the poller nor the PodResources API is loaded."""
    recorded = await record_a_run(
        kubelet, socket_dir, devices, short_dir, kubelet_keys="podResourcesInterval: 0s"
    )
    assert _among(set(recorded["modules"]), (*NOT_IMPORTED_BY_A_GLOB_RUN, *POD_RESOURCES)) == []


async def test_a_reload_that_turns_a_hook_on_imports_it_and_the_hook_runs(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path
) -> None:
    """A glob run (no hook module loaded: the test above) reloaded with `preStart` and
    `allocate.command`: the kubelet is asked for PreStartContainer, an Allocate runs both
    commands, and the hooks' modules were loaded by then."""
    ran = short_dir / "hooks.log"
    hooks = (
        f'preStart: {{command: ["sh", "-c", "echo preStart {{ids}} >> {ran}"]}}\n'
        f'allocate: {{command: ["sh", "-c", "echo allocate {{ids}} >> {ran}; echo {{{{}}}}"]}}\n'
    )

    async def reload_with_hooks(config: Path) -> None:
        config.write_text(_config_text(socket_dir, devices, extra=hooks))
        await kubelet.wait_for(
            lambda: (options := kubelet.options(FPGA)) is not None and options.pre_start_required,
            timeout=30,
            description="the resource registered again, asking for PreStartContainer",
        )
        await kubelet.wait_for(lambda: kubelet.resource(FPGA).allocatable == 2, timeout=30)
        await kubelet.allocate(FPGA, 1, pod_uid="p1")

    recorded = await record_a_run(
        kubelet, socket_dir, devices, short_dir, while_running=reload_with_hooks
    )
    assert [line.split()[0] for line in ran.read_text().splitlines()] == ["allocate", "preStart"]
    assert {"kdp_host.hooks", "kdp_host.command_output", "kdp_host.process"} <= set(
        recorded["modules"]
    )


async def test_a_reload_that_adds_a_sysfs_and_a_cdi_resource_serves_them(
    kubelet: KubeletSimulator, socket_dir: Path, devices: Path, short_dir: Path
) -> None:
    """A glob run (neither the sysfs reader nor the CDI writer loaded: the first test)
    reloaded with a sysfs entry (a USB serial adapter of a fake tree) and a glob entry with
    `allocate.cdi`: the kubelet gets both lists, an Allocate of the CDI entry names its CDI
    device, and their modules were loaded by then (each seam imports on the reload)."""
    fake = FakeSysfs(short_dir / "root")
    fake.usb_serial_adapter(fake.usb_controller(), "1-1", devnum=2, serial="A10K")
    cards = short_dir / "cards"
    cards.mkdir()
    for name in ("card0", "card1"):
        (cards / name).touch()
    added = (
        f"  - name: {STICK}\n"
        f'    sysfs: {{usb: [{{vendor: "0403"}}], sysfsRoot: {fake.sys}, devRoot: {fake.dev}}}\n'
        f"  - name: {CARD}\n"
        f'    glob: {{paths: ["{cards}/card*"]}}\n'
        f"    allocate: {{cdi: {{kind: {CARD}, specDir: {short_dir / 'cdi'}}}}}\n"
    )

    async def reload_with_sysfs_and_cdi(config: Path) -> None:
        text = _config_text(socket_dir, devices)
        head, metrics = text.rsplit("metrics:", 1)
        config.write_text(f"{head}{added}metrics:{metrics}")
        await kubelet.wait_for(
            lambda: (stick := kubelet.resource(STICK)) is not None and stick.allocatable == 1,
            timeout=30,
            description="the sysfs entry's adapter listed",
        )
        await kubelet.wait_for(
            lambda: (card := kubelet.resource(CARD)) is not None and card.allocatable == 2,
            timeout=30,
            description="the CDI entry's cards listed",
        )
        response = await kubelet.allocate(CARD, 1, pod_uid="p1")
        assert response is not None and len(response.cdi_devices) == 1, response

    recorded = await record_a_run(
        kubelet, socket_dir, devices, short_dir, while_running=reload_with_sysfs_and_cdi
    )
    assert {"kdp_host.drivers.sysfs", "kdp_host.sysfs.reader", "kdp_host.cdi"} <= set(
        recorded["modules"]
    )


def _among(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The modules that are one of `names` or inside one of them."""
    return [m for m in sorted(modules) if any(m == n or m.startswith(f"{n}.") for n in names)]


def _get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()
