"""Node Feature Discovery labels (issue 20 item 2): the feature file of NFD's local source."""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdp_host.config import ConfigError, load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.nfd import NodeFeatureFile, feature_file_text
from kdp_host.simulator import KubeletSimulator

from .conftest import glob_config, wait_until

FPGA = "vendor.example/fpga"
SERIAL = "vendor.example/serial"


def labels_in(path: Path) -> dict[str, str]:
    """What NFD's local source makes of the file now (`nfd_labels`)."""
    return nfd_labels(path.read_text(), time.time())


def test_the_file_says_present_and_count_per_resource() -> None:
    assert feature_file_text({FPGA: 2, SERIAL: 0}) == (
        "# Written by kdp-host for Node Feature Discovery (local source). Do not edit.\n"
        f"{FPGA}.present=true\n{FPGA}.count=2\n{SERIAL}.present=false\n{SERIAL}.count=0\n"
    )


def test_a_name_too_long_for_a_label_is_refused_with_node_features() -> None:
    name = "vendor.example/" + "x" * 60  # a valid resource name: 60 characters after the /
    resources = f"resources: [{{name: {name}, glob: {{paths: [/dev/x]}}}}]\n"
    assert load_config_text(resources)
    with pytest.raises(ConfigError) as error:
        load_config_text("nodeFeatures: {}\n" + resources)
    assert error.value.problems == [
        f"line 2: resources[0].name: with nodeFeatures, gives the node feature label "
        f"'{name}.present', which name must be at most 63 characters"
    ]


async def test_the_file_follows_the_devices_and_goes_with_the_host(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    short_dir: Path,
    start_host: Callable[..., Any],
) -> None:
    features = short_dir / "features.d" / "kdp-host"  # the directory is created
    config = short_dir / "config.yaml"
    text = (
        glob_config(socket_dir, (FPGA, f"{devices}/fpga*"), (SERIAL, f"{devices}/none*"))
        + f"nodeFeatures: {{file: {features}}}\n"
    )
    config.write_text(text)
    running = await start_host(text, config)
    await wait_until(lambda: features.exists() and len(labels_in(features)) == 4)
    assert labels_in(features) == {
        f"{FPGA}.present": "true",
        f"{FPGA}.count": "2",
        f"{SERIAL}.present": "false",
        f"{SERIAL}.count": "0",
    }
    (devices / "fpga2").touch()  # hot-plug
    await wait_until(lambda: labels_in(features)[f"{FPGA}.count"] == "3", what="count 3")
    # Unplugged: out of the count at once (listed Unhealthy for gracePeriod, not counted).
    (devices / "fpga0").unlink()
    await wait_until(lambda: labels_in(features)[f"{FPGA}.count"] == "2", what="count 2")

    config.write_text(
        glob_config(socket_dir, (FPGA, f"{devices}/fpga*"))
        + f"nodeFeatures: {{file: {features}}}\n"
    )
    assert await running.host.reload_from(config) == "ok"
    await wait_until(lambda: set(labels_in(features)) == {f"{FPGA}.present", f"{FPGA}.count"})
    # no temporary left; the owner file (a dot file NFD skips) names this instance
    assert sorted(p.name for p in features.parent.iterdir()) == [".kdp-host.owner", "kdp-host"]

    await running.shutdown()
    assert list(features.parent.iterdir()) == []  # no stale labels once kdp-host is gone


def nfd_labels(text: str, now: float) -> dict[str, str]:
    """What NFD's local source (v0.14+) makes of a feature file at Unix time `now`: `#`
    lines are comments, except `# +expiry-time=<RFC 3339>`, after which lines count only
    while that time is ahead."""
    out: dict[str, str] = {}
    expires: float | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# +expiry-time="):
            stamp = line.removeprefix("# +expiry-time=")
            expires = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        elif line and not line.startswith("#") and (expires is None or expires > now):
            name, _, value = line.partition("=")
            out[name] = value
    return out


def expiry_of(path: Path) -> float:
    (stamp,) = re.findall(r"^# \+expiry-time=(\S+)$", path.read_text(), re.M)
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_the_labels_of_a_host_that_stopped_refreshing_expire() -> None:
    """A kdp-host killed without removing its file: NFD drops the labels once the expiry time
    written passes."""
    written = 1_767_225_600.25  # 2026-01-01T00:00:00.25Z
    text = feature_file_text({FPGA: 2}, expires=written + 600)
    assert "# +expiry-time=2026-01-01T00:10:01Z\n" in text  # rounded up, never early
    assert nfd_labels(text, now=written) == {f"{FPGA}.present": "true", f"{FPGA}.count": "2"}
    assert nfd_labels(text, now=written + 599) == nfd_labels(text, now=written)
    assert nfd_labels(text, now=written + 602) == {}


async def test_the_file_is_refreshed_before_it_expires(
    kubelet: KubeletSimulator,
    socket_dir: Path,
    devices: Path,
    short_dir: Path,
    start_host: Callable[..., Any],
) -> None:
    """With nothing changing, the expiry time moves on (every third of `expiry`), so a
    running kdp-host's labels never expire."""
    features = short_dir / "features.d" / "kdp-host"
    text = glob_config(socket_dir, (FPGA, f"{devices}/fpga*")) + (
        f"nodeFeatures: {{file: {features}, expiry: 6s}}\n"
    )
    before = time.time()
    await start_host(text)
    await wait_until(lambda: features.exists() and len(labels_in(features)) == 2)
    first = expiry_of(features)
    assert before + 6 <= first <= time.time() + 7
    for _ in range(2):
        previous = expiry_of(features)
        await wait_until(lambda p=previous: expiry_of(features) > p, what="refreshed")
        now = time.time()
        assert nfd_labels(features.read_text(), now) == {
            f"{FPGA}.present": "true",
            f"{FPGA}.count": "2",
        }


def start_instance(
    features: Path, instance: str, started: list[asyncio.Task[None]], lease: float = 30.0
) -> NodeFeatureFile:
    """One host instance's feature file writer (serving FPGA with two devices), running."""
    config = load_config_text(
        f"nodeFeatures: {{file: {features}}}\n"
        f"resources: [{{name: {FPGA}, glob: {{paths: [/dev/fpga*]}}}}]\n"
    ).node_features
    assert config is not None
    writer = NodeFeatureFile(config, get_logger(), DaemonThreads(), instance, lease=lease)
    table = DeviceTable()
    table.publish([Device("fpga0"), Device("fpga1")])
    writer.update(FPGA, table.snapshot)
    started.append(asyncio.create_task(writer.run()))
    return writer


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_stopping_old_instance_leaves_the_file_the_new_instance_owns(
    short_dir: Path,
) -> None:
    """hostile4 H15, a rolling upgrade (maxSurge): the new instance starts beside the old one
    and takes the file over; the old one, stopping, must not remove it (NFD would drop the
    node's labels until the new one happens to rewrite it)."""
    features = short_dir / "features.d" / "kdp-host"
    owner = features.parent / ".kdp-host.owner"
    started: list[asyncio.Task[None]] = []
    try:
        start_instance(features, "old", started)
        await wait_until(lambda: features.exists() and owner.exists(), what="old wrote")
        start_instance(features, "new", started)
        await wait_until(lambda: owner.read_text().strip() == "new", what="new took over")
        await stop(started[0])
        assert features.exists(), "the old instance removed the new instance's file"
        assert labels_in(features) == {f"{FPGA}.present": "true", f"{FPGA}.count": "2"}
        await stop(started[1])
        assert list(features.parent.iterdir()) == [], "the owner leaves nothing behind"
    finally:
        for task in started:
            await stop(task)


async def test_a_file_its_owner_left_is_taken_back(short_dir: Path) -> None:
    """The new instance stops first (a rollback): it removes the file it owns; the old one,
    still running, writes it again within its lease check (here 0.2 s)."""
    features = short_dir / "features.d" / "kdp-host"
    owner = features.parent / ".kdp-host.owner"
    started: list[asyncio.Task[None]] = []
    try:
        start_instance(features, "old", started, lease=0.6)
        await wait_until(lambda: features.exists(), what="old wrote")
        start_instance(features, "new", started, lease=0.6)
        await wait_until(lambda: owner.read_text().strip() == "new", what="new took over")
        await stop(started[1])
        await wait_until(
            lambda: features.exists() and owner.exists() and owner.read_text().strip() == "old",
            what="the old instance writes the file again",
        )
        assert labels_in(features) == {f"{FPGA}.present": "true", f"{FPGA}.count": "2"}
    finally:
        for task in started:
            await stop(task)
