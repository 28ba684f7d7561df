"""The glob scan's shortcuts (one lstat per path, reuse of unchanged devices) change nothing
but cost: real paths and directory skipping agree with os.path.realpath / os.path.isdir."""

from __future__ import annotations

import os
from pathlib import Path

from kdp_host.config import GlobDriverConfig
from kdp_host.devices import Device
from kdp_host.drivers import Skipped
from kdp_host.drivers.glob import GlobDriver
from kdp_host.drivers.glob_paths import DeviceIds, examine
from kdp_host.testing import RecordingNotifier, driver_deps


def tree(root: Path) -> None:
    (root / "real" / "sub").mkdir(parents=True)
    for name in ("f1", "f2"):
        (root / "real" / name).touch()
    (root / "real" / "sub" / "f3").touch()
    (root / "link").symlink_to(root / "real")
    (root / "real" / "rel-link").symlink_to("f1")
    (root / "real" / "dir-link").symlink_to(root / "real" / "sub")
    (root / "real" / "dangling").symlink_to(root / "nowhere")


def test_real_paths_and_directories_as_the_os_path_functions_say(tmp_path: Path) -> None:
    tree(tmp_path)
    base = str(tmp_path)
    candidates = []
    for parent in ("real", "link", "real/sub", "link/sub", "link/../real", "/real/"):
        directory = f"{base}/{parent}" if not parent.startswith("/") else f"{base}/{parent}/"
        candidates += [os.path.join(directory, name) for name in os.listdir(directory)]
    candidates += [f"{base}/real/vanished", f"{base}//real//f1"]

    def expected(path: str) -> str | None:
        if os.path.isdir(path) or not os.path.exists(path):
            return None  # a directory, gone, or a symlink that leads nowhere
        return os.path.realpath(path)

    def real_path(path: str, cache: dict[str, str]) -> str | None:
        found = examine(path, cache)
        if isinstance(found, Skipped):
            assert found.reason == "dangling_link", path
            return None
        return None if found is None else found.real_path

    for path in candidates:
        assert real_path(path, {}) == expected(path), path
    cache: dict[str, str] = {}
    assert [real_path(p, cache) for p in candidates] == [expected(p) for p in candidates]


def driver(pattern: str, grace: float = 60.0) -> GlobDriver:
    config = GlobDriverConfig(paths=(pattern,), grace_period=grace)
    return GlobDriver(config, driver_deps())


async def step(glob_driver: GlobDriver, notifier: RecordingNotifier) -> dict[str, Device]:
    await glob_driver.step(notifier)
    return notifier.devices


async def test_rescan_keeps_unchanged_devices_and_sees_changes(tmp_path: Path) -> None:
    tree(tmp_path)
    pattern = f"{tmp_path}/link/*"
    glob_driver = driver(pattern)

    def id_of(name: str) -> str:
        """IDs come from the real path (`real/` is outside the pattern's directory)."""
        return DeviceIds([pattern])(str(tmp_path / "real" / name))

    notifier = RecordingNotifier()
    first = await step(glob_driver, notifier)
    # rel-link reaches the same file as f1 (listed once, under the first path); dangling
    # leads nowhere.
    assert set(first) == {id_of("f1"), id_of("f2")}
    assert {s.subject.rsplit("/", 1)[-1]: s.reason for s in notifier.skipped} == {
        "rel-link": "same_device",
        "dangling": "dangling_link",
    }
    by_id = dict(first)
    assert by_id[id_of("f1")].nodes[0].host_path == str(tmp_path / "real" / "f1")
    assert by_id[id_of("f1")].env == {} and by_id[id_of("f1")].annotations == {}

    (tmp_path / "real" / "rel-link").unlink()
    (tmp_path / "real" / "rel-link").symlink_to("f1")
    (tmp_path / "real" / "f1-new").touch()  # (first: made after f1 went, it could get f1's
    (tmp_path / "real" / "f1").unlink()  # inode number, and be f1 renamed)
    (tmp_path / "real" / "rel-link").unlink()
    (tmp_path / "real" / "rel-link").symlink_to("f1-new")
    second = await step(glob_driver, notifier)
    again = dict(second)
    assert again[id_of("f2")] is by_id[id_of("f2")]  # unchanged: the same object
    assert again[id_of("f1-new")].nodes[0].host_path == str(tmp_path / "real" / "f1-new")
    assert id_of("rel-link") not in again  # the same device as f1-new
    assert not again[id_of("f1")].healthy  # vanished: Unhealthy for the grace period

    third = await step(glob_driver, notifier)
    assert third[id_of("f1")] is again[id_of("f1")]  # the Unhealthy copy is reused
    (tmp_path / "real" / "f1").touch()
    fourth = await step(glob_driver, notifier)
    assert fourth[id_of("f1")].healthy
