"""Node Feature Discovery labels (issue 20 item 2): the feature file of NFD's local source."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdp_host.config import ConfigError, load_config_text
from kdp_host.nfd import feature_file_text
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
    assert [p.name for p in features.parent.iterdir()] == ["kdp-host"]  # no temporary left

    await running.shutdown()
    assert not features.exists()  # no stale labels once kdp-host is gone


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
