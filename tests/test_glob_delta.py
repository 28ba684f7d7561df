"""A glob scan told what changed costs what changed (issue 19): one file event among N
matched paths looks at that path alone (a few system calls, one device built) and hands on a
list that says what changed, and it always finds what a full scan finds (random steps of
files, hard links, directories, bad names and links, compared after each with a scanner of
the same history that looks at everything)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kdp_host.config import GlobDriverConfig
from kdp_host.device_changes import changed_between
from kdp_host.drivers import glob
from kdp_host.drivers.glob import GlobScan
from kdp_host.drivers.scanner import DirWatch, Listed, ScanResult
from kdp_host.files import FileReader

NAMES = ("a0", "a1", "a2", "b0", "b1", "c\nx")  # (a control character: a bad name)
Step = tuple[str, str, str]
steps = st.lists(
    st.tuples(
        st.sampled_from(["file", "remove", "hardlink", "dir", "link", "replace"]),
        st.sampled_from(NAMES),
        st.sampled_from(NAMES),
    ),
    max_size=30,
)


def apply(dev: Path, step: Step) -> set[str]:
    """One step in `dev`; the paths the watcher would name."""
    op, name, other = step
    path, target = dev / name, dev / other
    if op == "remove":
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
        return {str(path)}
    if op == "replace":  # a node replaced at once (a new inode under the same name)
        if path.is_file() and not path.is_symlink():
            (dev / ".new").touch()
            os.replace(dev / ".new", path)
        return {str(path), str(dev / ".new")}
    if os.path.lexists(path):
        return set()
    if op == "file":
        path.touch()
    elif op == "hardlink" and target.is_file() and not target.is_symlink():
        os.link(target, path)  # (the same inode: one device, listed once)
    elif op == "dir":
        path.mkdir()
    elif op == "link" and os.path.lexists(target):
        path.symlink_to(target)
    return {str(path)}


def outcome(result: ScanResult) -> tuple[object, ...]:
    return (
        {i: (d.healthy, d.nodes, d.mounts, d.path) for i, d in result.devices.items()},
        sorted((s.reason, s.subject, s.message) for s in result.skipped),
    )


def make(dev: Path) -> GlobScan:
    return GlobScan(GlobDriverConfig(paths=(f"{dev}/a*", f"{dev}/*0", f"{dev}/*")), FileReader())


LINK_TO_A_REMOVED_DIR = [("dir", "b0", "a0"), ("link", "a0", "b0"), ("remove", "b0", "a0")]
"""`a0 -> b0`, a directory (nothing), then `b0` removed (only it named): `a0` now dangles (the
old cache kept the link's answer, nothing, while it was not named)."""


@settings(max_examples=80, deadline=None)
@given(steps)
@example(LINK_TO_A_REMOVED_DIR)
def test_a_scan_of_named_paths_finds_what_a_full_scan_finds(chosen: list[Step]) -> None:
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        dev = root / "dev"
        dev.mkdir()
        (dev / "a1").touch()
        incremental, full = make(dev), make(dev)  # (the same history: IDs are kept)
        # (each told what it listed last: a device gone since takes its ID back)
        listed = Listed(incremental.scan(Listed(), DirWatch(), None).devices)
        full.scan(Listed(), DirWatch(), None)
        for step in chosen:
            named = apply(dev, step)
            result = incremental.scan(listed, DirWatch(), frozenset(named))
            fresh = full.scan(listed, DirWatch(), None)
            listed = Listed(dict(fresh.devices))
            assert outcome(result) == outcome(fresh), step
            assert result.devices.keys() == fresh.devices.keys()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_one_event_among_many_paths_looks_at_that_path_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file created among 500 matched paths: a few lstats (not one per path), one device
    built (not 500 compared), and the list says which ID changed (the grace period, the
    reporter and the ownership index then skip their walks)."""
    for number in range(500):
        (tmp_path / f"f{number:03d}").touch()
    scan = GlobScan(GlobDriverConfig(paths=(f"{tmp_path}/*",)), FileReader())
    first = scan.scan(Listed(), DirWatch(), None)
    assert len(first.devices) == 500
    stats: list[str] = []
    built: list[str] = []
    lstat, numa_node = os.lstat, glob.numa_node

    def counted_lstat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        stats.append(str(path))
        return lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    def counted_numa_node(config: GlobDriverConfig, files: FileReader, path: str, *a: Any) -> Any:
        built.append(os.path.basename(path))  # (asked once per device the scan looks at)
        return numa_node(config, files, path, *a)

    monkeypatch.setattr(os, "lstat", counted_lstat)
    monkeypatch.setattr(glob, "numa_node", counted_numa_node)
    new = tmp_path / "g000"
    new.touch()
    second = scan.scan(Listed(first.devices), DirWatch(), frozenset({str(new)}))
    assert len(second.devices) == 501
    assert len(stats) <= 2 + len(tmp_path.parts), stats  # (the path, its directory's real path)
    assert built == ["g000"]
    assert [i for i, d in second.devices.items() if d is not first.devices.get(i)] == ["g000"]
    assert changed_between(first.devices, second.devices) == {"g000"}
    new.unlink()
    third = scan.scan(Listed(second.devices), DirWatch(), frozenset({str(new)}))
    assert set(third.devices) == set(first.devices)
    assert changed_between(second.devices, third.devices) == {"g000"}
    assert built == ["g000"]
