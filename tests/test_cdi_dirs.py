"""A spec file a killed instance left in a former `allocate.cdi.specDir` (hostile17 F3).

kdp-host is SIGKILLed while its spec file is in spec dir D1 and started again with D2 (the
runtime reads both: `/var/run/cdi` and `/etc/cdi`, the former first). The new host writes D2;
D1's file, with what the names meant back then, must not stay to resolve a new pod's name
to another node: the spec dirs a host on `stateDir` wrote in are recorded
(`<stateDir>/cdi-spec-dirs.json`) and looked at like the host's own spec dir (`cdi_dirs`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from kdp_host.atomic_files import write_atomic
from kdp_host.cdi_dirs import RECORD, SpecDirRecord, check_spec_dirs, parse_dirs
from kdp_host.cdi_files import SpecFiles
from kdp_host.config.outputs import owner_path, spec_file_name
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.state_lock import holding

from .conftest import wait_until
from .kubelet_harness import RealKubelet, healthy

FPGA = "example.com/fpga"
KIND = "example.com/fpga"
CLASH = "CDI names defined by another spec file"


def _config(
    kubelet: RealKubelet, short: Path, spec_dir: Path, devices: str, runtime: list[Path]
) -> str:
    dirs = ", ".join(str(d) for d in runtime)
    return (
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\n"
        f"stateDir: {short / 'state'}\n"
        f"cdiRuntimeDirs: [{dirs}]\n"
        "metrics: {listen: '127.0.0.1:0'}\n"
        "resources:\n"
        f"  - name: {FPGA}\n"
        f'    glob: {{paths: ["{short / devices}/fpga*"]}}\n'
        f"    allocate: {{cdi: {{kind: {KIND}, specDir: {spec_dir}}}}}\n"
    )


def _nodes(path: Path) -> dict[str, list[str]]:
    """The names a spec file defines, with their host paths."""
    spec = json.loads(path.read_text())
    return {
        f"{spec['kind']}={d['name']}": [
            n.get("hostPath", n["path"]) for n in d["containerEdits"].get("deviceNodes", [])
        ]
        for d in spec["devices"]
    }


def _defines_both(path: Path) -> bool:
    try:
        return len(_nodes(path)) == 2
    except (OSError, ValueError, KeyError):
        return False


async def _killed_instance(kubelet: RealKubelet, short: Path, run_dir: Path) -> Path:
    """A kdp-host process (spec dir `run_dir`, devices dev1/) SIGKILLed once its spec file is
    written: its file, owner file and record stay."""
    config = short / "first.yaml"
    config.write_text(_config(kubelet, short, run_dir, "dev1", []))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kdp_host", "run", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    left = run_dir / spec_file_name(FPGA)
    try:
        await wait_until(lambda: _defines_both(left), timeout=60, what="the first spec file")
    finally:
        process.kill()
        await process.wait()
    assert parse_dirs(json.loads((short / "state" / RECORD).read_text())) == {str(run_dir)}
    return left


def _devices(short: Path) -> None:
    for directory in ("dev1", "dev2"):
        (short / directory).mkdir()
        for i in (0, 1):
            (short / directory / f"fpga{i}").touch()


async def test_a_file_a_killed_instance_left_in_a_former_spec_dir_is_removed(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """Killed long enough ago for its lease to have run out: the new host, on another spec
    dir (and other devices: the sticks were re-plugged), removes the file at start, before
    its devices are advertised; every name then resolves to the new host's nodes only.
    Fails on the old code: only the current spec dir was looked at."""
    kubelet = real_kubelet_factory()
    _devices(short_dir)
    run_dir, etc_dir = short_dir / "cdi" / "run", short_dir / "cdi" / "etc"
    left = await _killed_instance(kubelet, short_dir, run_dir)
    old = owner_path(str(left))
    os.utime(old, (1, 1))  # (killed more than a lease ago)
    await start_host(_config(kubelet, short_dir, etc_dir, "dev2", []))
    await kubelet.await_for(healthy(FPGA, 2), timeout=30, what="the devices advertised")
    assert not left.exists() and not Path(old).exists()
    new = _nodes(etc_dir / spec_file_name(FPGA))
    assert {p for paths in new.values() for p in paths} == {
        str(short_dir / "dev2" / f"fpga{i}") for i in (0, 1)
    }


async def test_while_the_killed_instances_lease_runs_its_names_are_held(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """Killed just now (its owner file still fresh): the file is not the new host's to
    remove yet, but its owner runs on no host of the stateDir, so the names it defines are
    held: no device is advertised Healthy (no pod can be handed a name the old file may
    resolve) until the lease ran out and the file was removed at a check. Fails on the old
    code: the devices were Healthy at once, the old file staying for good."""
    kubelet = real_kubelet_factory()
    _devices(short_dir)
    run_dir, etc_dir = short_dir / "cdi" / "run", short_dir / "cdi" / "etc"
    left = await _killed_instance(kubelet, short_dir, run_dir)
    running = await start_host(_config(kubelet, short_dir, etc_dir, "dev2", []))
    await wait_until(lambda: CLASH in running.host.not_ready().get(FPGA, ""), what="the names held")
    await wait_until(
        lambda: _defines_both(etc_dir / spec_file_name(FPGA)), what="the new spec file"
    )
    assert left.exists()
    seen = kubelet.resource(FPGA)
    assert seen is None or seen["healthy"] == 0, seen
    os.utime(owner_path(str(left)), (1, 1))  # (the lease runs out)
    await kubelet.await_for(healthy(FPGA, 2), timeout=60, what="the devices advertised")
    assert not left.exists()
    await wait_until(lambda: FPGA not in running.host.not_ready(), what="ready")


async def test_a_rolling_update_that_changes_spec_dir_keeps_the_old_instances_file(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """Two live hosts on one stateDir (maxSurge), the new one with another spec dir: the old
    one's file is its own (it runs), neither removed nor held against the new one."""
    kubelet = real_kubelet_factory()
    _devices(short_dir)
    run_dir, etc_dir = short_dir / "cdi" / "run", short_dir / "cdi" / "etc"
    old = await start_host(_config(kubelet, short_dir, run_dir, "dev1", []))
    theirs = run_dir / spec_file_name(FPGA)
    await wait_until(lambda: _defines_both(theirs), what="the old host's spec file")
    await wait_until(lambda: not old.host.not_ready(), what="the old host ready")
    new = await start_host(_config(kubelet, short_dir, etc_dir, "dev1", []))
    await wait_until(
        lambda: _defines_both(etc_dir / spec_file_name(FPGA)), what="the new spec file"
    )
    await wait_until(lambda: not new.host.not_ready(), timeout=60, what="the new host ready")
    assert theirs.exists()
    await old.shutdown()
    assert not theirs.exists()  # (removed by its owner as it stopped)


async def test_the_runtimes_dirs_are_looked_at_too(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """A stateDir wiped with the config (no record of the old dir): a stale file in one of
    `cdiRuntimeDirs` is removed all the same."""
    kubelet = real_kubelet_factory()
    _devices(short_dir)
    run_dir, etc_dir = short_dir / "cdi" / "run", short_dir / "cdi" / "etc"
    left = await _killed_instance(kubelet, short_dir, run_dir)
    os.utime(owner_path(str(left)), (1, 1))
    (short_dir / "state" / RECORD).unlink()
    await start_host(_config(kubelet, short_dir, etc_dir, "dev2", [run_dir]))
    await kubelet.await_for(healthy(FPGA, 2), timeout=30, what="the devices advertised")
    assert not left.exists()


# ------------------------------------------------------------------------- the record


def _record(state_dir: Path) -> SpecDirRecord:
    return SpecDirRecord(str(state_dir), get_logger(), DaemonThreads(), runtime_dirs=("/rt",))


async def test_the_record_is_written_before_the_spec_dir_and_shared(tmp_path: Path) -> None:
    """Each dir is in the file once `add` returns; two hosts' records merge (the union)."""
    first, second = _record(tmp_path), _record(tmp_path)
    await first.add(str(tmp_path / "a"))
    await second.add(str(tmp_path / "b/"))
    document = json.loads((tmp_path / RECORD).read_text())
    assert document == {"version": 1, "dirs": [str(tmp_path / "a"), str(tmp_path / "b")]}
    third = _record(tmp_path)
    await third.add(str(tmp_path / "a"))
    assert third.dirs() == {str(tmp_path / "a"), str(tmp_path / "b"), "/rt"}


async def test_a_bad_record_is_set_aside_with_an_error_and_kept(
    tmp_path: Path, caplog: Any
) -> None:
    """A file that is not a record (another program's, a hand edit) is renamed aside, never
    replaced, with an error line; the host records its dir in a new one."""
    (tmp_path / RECORD).write_text('{"version": 1, "dirs": ["relative/dir"]}')
    record = _record(tmp_path)
    await record.add("/cdi/here")
    aside = tmp_path / f"{RECORD}.unreadable"
    assert aside.read_text() == '{"version": 1, "dirs": ["relative/dir"]}'
    assert json.loads((tmp_path / RECORD).read_text())["dirs"] == ["/cdi/here"]
    [line] = [r for r in caplog.records if r.getMessage() == "cdi_spec_dirs_unreadable"]
    fields = getattr(line, "kdp_fields", {})
    assert "is not an absolute path" in fields["reason"], fields
    assert "not looked for" in fields["consequence"], fields


def test_a_spec_dir_named_again_through_a_link_is_not_another(tmp_path: Path) -> None:
    """The writer's own file, seen through a recorded link to its own dir, is not another
    file defining its names."""
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    (tmp_path / "link").symlink_to(spec_dir)
    own = spec_dir / spec_file_name(FPGA)
    names = {"example.com_fpga:fpga0"}
    devices = [{"name": n, "containerEdits": {"deviceNodes": [{"path": "/dev/x"}]}} for n in names]
    own.write_text(json.dumps({"cdiVersion": "0.5.0", "kind": KIND, "devices": devices}))
    found = check_spec_dirs(
        str(own), KIND, frozenset(names), 30.0, [str(tmp_path / "link")], lambda i: False, FPGA
    )
    assert found.stale == () and found.clashes == {}
    assert own.exists()


async def test_a_live_host_on_the_state_dir_is_told_from_a_killed_one(tmp_path: Path) -> None:
    """In another dir, a file whose fresh owner file names a host running on stateDir is
    left alone; one naming no such host holds the names it defines; neither is removed."""
    state, other = tmp_path / "state", tmp_path / "other"
    other.mkdir()
    spec = other / spec_file_name(FPGA)
    devices = [{"name": "example.com_fpga:fpga9", "containerEdits": {"deviceNodes": []}}]
    spec.write_text(json.dumps({"cdiVersion": "0.5.0", "kind": KIND, "devices": devices}))
    record = _record(state)
    mine = tmp_path / "mine" / spec_file_name(FPGA)
    mine.parent.mkdir()
    async with holding(str(state), DaemonThreads(), get_logger(), "0badc0de"):
        Path(owner_path(str(spec))).write_text("0badc0de\n")
        live = check_spec_dirs(str(mine), KIND, frozenset(), 30.0, [str(other)], record.runs, FPGA)
        assert live.clashes == {} and live.stale == ()
        Path(owner_path(str(spec))).write_text("deadbeef\n")
        dead = check_spec_dirs(str(mine), KIND, frozenset(), 30.0, [str(other)], record.runs, FPGA)
        assert dead.clashes == {str(spec): {"example.com_fpga:fpga9"}} and dead.stale == ()
    assert spec.exists()


def test_what_a_spec_file_defines_is_read_again_when_it_changes(tmp_path: Path) -> None:
    """`SpecFiles` keeps a file's names while it is the same file (not parsed at each
    check), and reads it again once it was replaced, written in place or removed."""
    path = tmp_path / "vendor.json"

    def spec(*names: str) -> bytes:
        devices = [{"name": n, "containerEdits": {"deviceNodes": []}} for n in names]
        return json.dumps({"cdiVersion": "0.5.0", "kind": KIND, "devices": devices}).encode()

    known = SpecFiles()
    write_atomic(str(path), spec("a"))
    assert set(known.entries(str(path), KIND)) == {"a"}
    assert set(known.entries(str(path), "other.example/x")) == frozenset()
    write_atomic(str(path), spec("b"))  # (renamed into place)
    assert set(known.entries(str(path), KIND)) == {"b"}
    path.write_bytes(spec("cc", "d"))  # (in place)
    assert set(known.entries(str(path), KIND)) == {"cc", "d"}
    path.unlink()
    assert set(known.entries(str(path), KIND)) == frozenset()


async def test_a_killed_owners_file_naming_a_held_device_otherwise_is_taken_at_once(
    tmp_path: Path,
) -> None:
    """hostile21 F3: its lease still runs, its owner runs on no host of stateDir. Naming a
    held device as this host does and a name not held, it only holds the names (as above);
    naming held devices only, as this host does (what a stop leaves: hostile27 F5), or a
    held device otherwise (this host leaves the entry out: None), it is removed at once,
    owner file too; a live host's is left alone whatever it names."""
    state, other = tmp_path / "state", tmp_path / "other"
    other.mkdir()
    spec, name = other / spec_file_name(FPGA), "example.com_fpga:fpga0"
    node = {"path": "/dev/fpga0", "hostPath": "/dev/fpga0"}
    free = {"path": "/dev/fpga1", "hostPath": "/dev/fpga1"}
    devices = [
        {"name": name, "containerEdits": {"deviceNodes": [node]}},
        {"name": "example.com_fpga:fpga1", "containerEdits": {"deviceNodes": [free]}},
    ]
    spec.write_text(json.dumps({"cdiVersion": "0.5.0", "kind": KIND, "devices": devices}))
    owner = Path(owner_path(str(spec)))
    record = _record(state)
    mine = tmp_path / "mine" / spec_file_name(FPGA)
    mine.parent.mkdir()
    others = [str(other)]
    async with holding(str(state), DaemonThreads(), get_logger(), "0badc0de"):
        owner.write_text("0badc0de\n")
        live = check_spec_dirs(
            str(mine), KIND, frozenset(), 30.0, others, record.runs, FPGA, held={name: None}
        )
        assert live.taken == () and spec.exists()
        owner.write_text("deadbeef\n")
        same = check_spec_dirs(
            str(mine), KIND, frozenset(), 30.0, others, record.runs, FPGA,
            held={name: frozenset({"/dev/fpga0"})},
        )  # fmt: skip
        both = {name, "example.com_fpga:fpga1"}
        assert same.taken == () and same.clashes == {str(spec): both} and spec.exists()
        spec.write_text(json.dumps({"cdiVersion": "0.5.0", "kind": KIND, "devices": devices[:1]}))
        held_only = check_spec_dirs(
            str(mine), KIND, frozenset(), 30.0, others, record.runs, FPGA,
            held={name: frozenset({"/dev/fpga0"})},
        )  # fmt: skip
        assert held_only.taken == (str(spec),) and held_only.clashes == {}
        assert not spec.exists() and not owner.exists()
        spec.write_text(json.dumps({"cdiVersion": "0.5.0", "kind": KIND, "devices": devices}))
        owner.write_text("deadbeef\n")
        left_out = check_spec_dirs(
            str(mine), KIND, frozenset(), 30.0, others, record.runs, FPGA, held={name: None}
        )
        assert left_out.taken == (str(spec),) and left_out.clashes == {}
    assert not spec.exists() and not owner.exists()
