"""Glob scans told what changed (the watcher's names) look again only at that, and always
find what a full scan finds: random trees of nodes, links, dangling links and directory
links, changed one step at a time, compared with a fresh scan after every step."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kdp_host import devices
from kdp_host.config import GlobDriverConfig, GlobGroupMemberConfig
from kdp_host.drivers import glob
from kdp_host.drivers.glob import GlobScan
from kdp_host.drivers.glob_cache import DirLinks, links_on_the_way
from kdp_host.drivers.glob_groups import GlobGroupScan
from kdp_host.drivers.scanner import DirWatch, Listed, ScanResult
from kdp_host.files import FileReader

NAMES = ("a0", "a1", "a2", "b0", "x0_user", "x1_user", "x0_c2h", "x1_c2h")
Step = tuple[str, str, str]
steps = st.lists(
    st.tuples(
        st.sampled_from(
            ["file", "remove", "link", "dangling", "dirlink", "retarget", "unlink_dir"]
        ),
        st.sampled_from(NAMES),
        st.sampled_from(NAMES),
    ),
    max_size=25,
)


def apply(root: Path, step: Step) -> set[str]:
    """Do one step in `root/dev` (links may point into `root/real`); returns the paths the
    watcher would name."""
    op, name, target = step
    dev, real = root / "dev", root / "real"
    path = dev / name
    named = {str(path)}
    if op == "retarget":  # a symlink replaced at once: to `real` if it led to `dev`, or back
        if path.is_symlink():
            before = os.readlink(path)
            path.unlink()
            path.symlink_to(real if before == str(dev) else dev)
        return named
    if op == "remove":
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    elif os.path.lexists(path):
        return set()
    elif op == "file":
        path.touch()
    elif op == "link":
        (real / target).touch()
        named.add(str(real / target))
        path.symlink_to(real / target)
    elif op == "dangling":
        path.symlink_to(real / f"gone-{target}")
    elif op == "dirlink":
        path.symlink_to(dev)
    elif op == "unlink_dir" and (real / target).exists():
        (real / target).unlink()
        named.add(str(real / target))
    return named


def outcome(result: ScanResult) -> tuple[object, ...]:
    return (
        {i: (d.healthy, d.nodes, d.mounts, d.path) for i, d in result.devices.items()},
        sorted((s.reason, s.subject) for s in result.skipped),
    )


def run_steps(make: object, patterns: object, chosen: list[Step]) -> None:
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        (root / "dev").mkdir()
        (root / "real").mkdir()
        (root / "real" / "a1").touch()
        incremental = make(root)  # type: ignore[operator]
        listed = Listed()
        incremental.scan(listed, DirWatch(), None)
        for step in chosen:
            named = apply(root, step)
            result = incremental.scan(listed, DirWatch(), frozenset(named))
            fresh = make(root).scan(Listed(), DirWatch(), None)  # type: ignore[operator]
            assert outcome(result) == outcome(fresh), step
    finally:
        shutil.rmtree(root, ignore_errors=True)


REPLACED_DIR_LINK = [("file", "a1", "a1"), ("dirlink", "b0", "a1"), ("retarget", "b0", "a1")]
"""`dev/b0/a1` reaches `dev/a1`, then (b0 replaced at once) `real/a1`: only `dev/b0` is named."""
RETARGETED_LINK_BEHIND_A_DIR_LINK = [
    ("link", "a1", "a0"),
    ("dirlink", "a0", "a0"),
    ("retarget", "a1", "a0"),
]
"""`dev/a0/a1` reaches `real/a0` through the links `dev/a0 -> dev` and `dev/a1`; then `dev/a1`
is retargeted (only it is named): the kept answer for `dev/a0/a1` depended on it."""


@settings(max_examples=60, deadline=None)
@given(steps)
@example(REPLACED_DIR_LINK)
@example(RETARGETED_LINK_BEHIND_A_DIR_LINK)
def test_an_incremental_glob_scan_finds_what_a_full_scan_finds(chosen: list[Step]) -> None:
    def make(root: Path) -> GlobScan:
        config = GlobDriverConfig(paths=(f"{root}/dev/a*", f"{root}/dev/*0", f"{root}/dev/*/a1"))
        return GlobScan(config, FileReader())

    run_steps(make, None, chosen)


@settings(max_examples=60, deadline=None)
@given(steps)
@example(REPLACED_DIR_LINK)
def test_an_incremental_group_scan_finds_what_a_full_scan_finds(chosen: list[Step]) -> None:
    def make(root: Path) -> GlobGroupScan:
        members = (
            GlobGroupMemberConfig(path=f"{root}/dev/x{{key}}_user"),
            GlobGroupMemberConfig(path=f"{root}/dev/x{{key}}_c2h", optional=True),
            GlobGroupMemberConfig(path=f"{root}/dev/a{{key}}", optional=True),
        )
        return GlobGroupScan(GlobDriverConfig(group=members), FileReader())

    run_steps(make, None, chosen)


@settings(max_examples=60, deadline=None)
@given(steps)
@example(RETARGETED_LINK_BEHIND_A_DIR_LINK)
def test_the_links_above_a_path_are_the_same_learnt_once_per_directory(chosen: list[Step]) -> None:
    """`links_on_the_way` with the directories of one scan remembered (as a scan does) names
    the links a walk of each path alone names, whatever links lie above or at the path."""
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        (root / "dev").mkdir()
        (root / "real").mkdir()
        for step in chosen:
            apply(root, step)
        dirs: DirLinks = {}
        for first in NAMES:
            for path in (f"{root}/dev/{first}", *(f"{root}/dev/{first}/{n}" for n in NAMES)):
                assert links_on_the_way(path, dirs=dirs) == links_on_the_way(path), path
                assert links_on_the_way(path, 1, dirs={}) == links_on_the_way(path, 1), path
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_scan_walks_each_directory_above_its_paths_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan of N paths in one deep directory reached through a link makes N + depth link
    checks, not N x depth (what made the first scan of 100 resources x 1000 devices outlast
    start-up); paths that are their own real paths pass through no link and are checked
    not at all (the scan's lstat said so: the 100 x 1000 start-up spent a third of its scan
    on those checks)."""
    deep = tmp_path / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    for number in range(300):
        (deep / f"dev{number:03d}").touch()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    checked: list[str] = []
    islink = os.path.islink

    def counted(path: str) -> bool:
        checked.append(path)
        return islink(path)

    monkeypatch.setattr(os.path, "islink", counted)
    plain = GlobScan(GlobDriverConfig(paths=(f"{deep}/dev*",)), FileReader())
    assert len(plain.scan(Listed(), DirWatch(), None).devices) == 300
    assert checked == []
    linked = tmp_path / "link" / "b" / "c" / "d"
    scan = GlobScan(GlobDriverConfig(paths=(f"{linked}/dev*",)), FileReader())
    result = scan.scan(Listed(), DirWatch(), None)
    assert len(result.devices) == 300
    depth = len(linked.parts) - 1
    leaves = [path for path in checked if os.path.basename(path).startswith("dev")]
    assert len(leaves) == 300  # one each, and the directory above walked once:
    # (the link's target too, and the links on the way to the pattern's directory, whose
    # directories are watched: hostile18 F12; still O(depth), not O(paths x depth))
    assert len(checked) - len(leaves) <= 3 * depth, len(checked)
    assert len(set(leaves)) == 300, "each path checked once"


def test_what_a_scan_keeps_for_the_next_is_small(tmp_path: Path) -> None:
    """Of a path that is its own real path, a scan keeps for the next scan its listing
    entry, its identity as its answer, and its device by identity: no tuple of (answer,
    real path, links), no `Found` and no (ID, host path) pair per path (at 100 resources x
    1000 devices those were 19 MiB of the host's 120)."""
    for number in range(2000):
        (tmp_path / f"dev{number:04d}").touch()
    scan = GlobScan(GlobDriverConfig(paths=(f"{tmp_path}/dev*",)), FileReader())
    listed = Listed()
    gc.collect()
    tracemalloc.start()
    try:
        result = scan.scan(listed, DirWatch(), None)
        gc.collect()
        with_scanner = tracemalloc.get_traced_memory()[0]
        del scan
        gc.collect()
        kept = with_scanner - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(result.devices) == 2000
    # per path: two dict entries and a slot of the listing (the identity is handed on in
    # `reached` too); it was 271 bytes
    assert kept / 2000 < 120, f"{kept / 2000:.0f} bytes kept per path"


def test_a_scan_builds_no_device_node_for_a_device_at_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common glob device (one node, its matched path on the host and in the
    container) is built without a DeviceNode, neither in the scan nor to compare it in
    `Device` (two frozen dataclasses per path were a tenth of a 100 x 1000 first scan);
    it is the same device as one built from its node."""
    for number in range(300):
        (tmp_path / f"dev{number:03d}").touch()
    (tmp_path / "elsewhere").touch()
    (tmp_path / "devlink").symlink_to(tmp_path / "elsewhere")
    built: list[tuple[object, ...]] = []
    node = devices.DeviceNode

    def counted(*args: object, **kwargs: object) -> devices.DeviceNode:
        built.append(args)
        return node(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(glob, "DeviceNode", counted)
    monkeypatch.setattr(devices, "DeviceNode", counted)
    result = GlobScan(GlobDriverConfig(paths=(f"{tmp_path}/dev*",)), FileReader()).scan(
        Listed(), DirWatch(), None
    )
    monkeypatch.undo()
    assert len(result.devices) == 301
    assert built == [(str(tmp_path / "elsewhere"), str(tmp_path / "devlink"))]  # the link's
    path = str(tmp_path / "dev007")
    device = result.devices["dev007"]
    assert device == devices.Device("dev007", nodes=(devices.DeviceNode(path, path),), path=path)
    assert device.nodes == (devices.DeviceNode(path, path),)


def test_a_link_to_a_directory_dangles_once_the_directory_goes(tmp_path: Path) -> None:
    """`dev/a0 -> dev/b0`, a directory (a link to a directory is nothing), then `dev/b0`
    removed, only it named: `dev/a0` dangles now (the scan kept the link's answer, nothing,
    while the link itself was not named)."""
    dev = tmp_path / "dev"
    dev.mkdir()
    scan = GlobScan(GlobDriverConfig(paths=(f"{dev}/*",)), FileReader())
    scan.scan(Listed(), DirWatch(), None)
    (dev / "b0").mkdir()
    (dev / "a0").symlink_to(dev / "b0")
    scan.scan(Listed(), DirWatch(), frozenset({str(dev / "b0"), str(dev / "a0")}))
    (dev / "b0").rmdir()
    result = scan.scan(Listed(), DirWatch(), frozenset({str(dev / "b0")}))
    assert [(s.reason, s.subject) for s in result.skipped] == [("dangling_link", str(dev / "a0"))]
