"""The CDI spec file: content against the CDI spec's rules, atomic writes, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdp_host import cdi as cdi_module
from kdp_host.allocation import AllocationBuilder
from kdp_host.cdi import (
    CdiSpecWriter,
    build_spec,
    minimum_cdi_version,
    owner_path,
    read_owner,
    render_spec_file,
    spec_file_name,
    spec_path,
    write_atomic,
)
from kdp_host.config import (
    AllocateConfig,
    CdiConfig,
    GlobDriverConfig,
    MountConfig,
    ResourceConfig,
)
from kdp_host.devices import Device, DeviceMount, DeviceNode, DeviceTable, Snapshot
from kdp_host.logs import get_logger
from kdp_host.rules import cdi_kind_problem, extended_resource_name_problem
from kdp_host.watch import make_watcher

from .conftest import wait_until

RESOURCE = "vendor.example/fpga"
KIND = "vendor.example/fpga"

# ---------------------------------------------------------------- the CDI spec's own rules
# From the CDI specification repository (cncf-tags/container-device-interface):
# schema/schema.json + schema/defs.json (required fields), pkg/parser/parser.go (names),
# specs-go/version.go (minimum version per feature), pkg/cdi/spec.go + container-edits.go
# (no devices / empty device edits / duplicate names are errors).

KNOWN_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]*")
_DEVICE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?")

CDI_SCHEMA_ENV = "KDP_CDI_SCHEMA_DIR"
"""A directory holding the official CDI JSON schema, `schema.json` and `defs.json` as the CDI
repository (cncf-tags/container-device-interface, `schema/`) ships them. No package on the
registries this project uses ships that schema and the project does not copy it, so the
tests look for it here or beside the repository (`../shared/cdi-schema`)."""


def cdi_schema_dir() -> Path:
    configured = os.environ.get(CDI_SCHEMA_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "cdi-schema"


@functools.cache
def official_cdi_validator() -> Any | None:
    """A validator of the official schema (its `defs.json` references resolved), or None
    where the schema is not present."""
    directory = cdi_schema_dir()
    if not ((directory / "schema.json").is_file() and (directory / "defs.json").is_file()):
        return None
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    from referencing.jsonschema import DRAFT7

    schema = json.loads((directory / "schema.json").read_text())
    defs = json.loads((directory / "defs.json").read_text())
    registry = referencing.Registry().with_resource(
        "defs.json", referencing.Resource.from_contents(defs, default_specification=DRAFT7)
    )
    return jsonschema.Draft7Validator(schema, registry=registry)


def _vendor_or_class_ok(name: str) -> bool:
    return (
        len(name) >= 2
        and name[0].isascii()
        and name[0].isalpha()
        and name[-1].isascii()
        and name[-1].isalnum()
        and _NAME_CHARS.fullmatch(name) is not None
    )


def _required_version(spec: dict[str, Any]) -> tuple[int, ...]:
    required = (0, 3, 0)
    _, _, klass = spec["kind"].partition("/")
    edits = [d["containerEdits"] for d in spec["devices"]] + [spec.get("containerEdits", {})]
    if any(m.get("type") for e in edits for m in e.get("mounts", [])):
        required = max(required, (0, 4, 0))
    if any(not d["name"][0].isalpha() for d in spec["devices"]) or any(
        n.get("hostPath") for e in edits for n in e.get("deviceNodes", [])
    ):
        required = max(required, (0, 5, 0))
    if (
        "." in klass
        or spec.get("annotations")
        or any(d.get("annotations") for d in spec["devices"])
    ):
        required = max(required, (0, 6, 0))
    if any(e.get("additionalGids") or e.get("intelRdt") for e in edits):
        required = max(required, (0, 7, 0))
    return required


def _check_edits(edits: dict[str, Any], *, device: bool) -> None:
    allowed = {"env", "deviceNodes", "mounts", "hooks", "netDevices", "intelRdt", "additionalGids"}
    assert set(edits) <= allowed, edits
    if device:
        assert any(edits.get(key) for key in allowed), "CDI: invalid device, empty device edits"
    for entry in edits.get("env", []):
        assert entry.find("=") > 0, f"CDI: invalid environment variable {entry!r}"
    for node in edits.get("deviceNodes", []):
        assert node["path"], "CDI: invalid (empty) device path"
        assert node["path"].startswith("/") and node.get("hostPath", "/").startswith("/")
        permissions = node.get("permissions", "")
        assert permissions == "none" or not permissions.strip("rwm"), permissions
    for mount in edits.get("mounts", []):
        assert mount["hostPath"] and mount["containerPath"]
        assert set(mount.get("options", [])) <= {"ro", "rw", "bind", "rbind"}


def validate_cdi_spec(spec: dict[str, Any]) -> None:
    """The official CDI JSON schema where present (`cdi_schema_dir`), and what CDI's Go code
    enforces beyond the schema (names, versions, edits), for the fields kdp-host writes."""
    validator = official_cdi_validator()
    if validator is not None:
        validator.validate(spec)
    assert spec["cdiVersion"] in KNOWN_VERSIONS
    declared = tuple(int(p) for p in spec["cdiVersion"].split("."))
    assert declared >= _required_version(spec), "CDI: the spec version must be at least ..."
    vendor, sep, klass = spec["kind"].partition("/")
    assert sep and _vendor_or_class_ok(vendor) and _vendor_or_class_ok(klass), spec["kind"]
    assert spec["devices"], "CDI: invalid spec, no devices"
    names = [d["name"] for d in spec["devices"]]
    assert len(names) == len(set(names)), "CDI: invalid spec, multiple device"
    for device in spec["devices"]:
        assert _DEVICE_NAME.fullmatch(device["name"]), device["name"]
        _check_edits(device["containerEdits"], device=True)
    _check_edits(spec.get("containerEdits", {}), device=False)


# --------------------------------------------------------------------------- helpers


def resource(
    spec_dir: Path | None = None,
    *,
    kind: str = KIND,
    env: dict[str, str] | None = None,
    mounts: tuple[MountConfig, ...] = (),
    replicas: int = 1,
    also_device_specs: bool = False,
    permissions: str = "rw",
) -> ResourceConfig:
    return ResourceConfig(
        name=RESOURCE,
        driver=GlobDriverConfig(paths=("/dev/fpga*",)),
        allocate=AllocateConfig(
            env=env or {},
            mounts=mounts,
            permissions=permissions,
            cdi=CdiConfig(
                kind=kind,
                also_device_specs=also_device_specs,
                spec_dir=str(spec_dir) if spec_dir is not None else None,
            ),
        ),
        replicas=replicas,
    )


def dev(device_id: str, **extra: Any) -> Device:
    nodes = extra.pop("nodes", (DeviceNode(f"/dev/{device_id}", f"/dev/{device_id}"),))
    return Device(id=device_id, nodes=nodes, **extra)


def snapshot(devices: Sequence[Device], replicas: int = 1) -> Snapshot:
    table = DeviceTable(replicas=replicas)
    table.publish(devices)
    return table.snapshot


def cdi_names(response: Any) -> list[str]:
    return [c.name.split("=", 1)[1] for c in response.cdi_devices]


# --------------------------------------------------------------------------- content


def test_spec_content() -> None:
    config = resource(
        env={"DEVS": "{ids}", "N": "{count}", "MODE": "fast", "RES": "{resource}"},
        mounts=(MountConfig("/opt/fw", "/fw"), MountConfig("/var/state", "/state", False)),
        replicas=4,
        permissions="rwm",
    )
    devices = [
        dev("fpga0", numa=0, env={"SLOT": "0", "VENDOR": "acme"}),
        dev(
            "fpga1",
            numa=1,
            env={"SLOT": "1", "VENDOR": "acme"},
            mounts=(DeviceMount("/lib/fpga1", "/lib/fpga", True),),
        ),
    ]
    spec = build_spec(config, snapshot(devices, replicas=4))
    assert spec is not None
    validate_cdi_spec(spec)
    assert spec == {
        "cdiVersion": "0.5.0",
        "kind": KIND,
        "devices": [
            {
                "name": "fpga0",
                "containerEdits": {
                    "deviceNodes": [
                        {"path": "/dev/fpga0", "hostPath": "/dev/fpga0", "permissions": "rwm"}
                    ],
                    "env": ["VENDOR=acme"],
                },
            },
            {
                "name": "fpga1",
                "containerEdits": {
                    "deviceNodes": [
                        {"path": "/dev/fpga1", "hostPath": "/dev/fpga1", "permissions": "rwm"}
                    ],
                    "env": ["VENDOR=acme"],
                    "mounts": [
                        {
                            "hostPath": "/lib/fpga1",
                            "containerPath": "/lib/fpga",
                            "options": ["ro", "bind"],
                        }
                    ],
                },
            },
        ],
        # allocation-dependent templates ({ids}, {count}) and per-device values that differ
        # between devices (SLOT) only travel in the Allocate response
        "containerEdits": {
            "env": ["MODE=fast", f"RES={RESOURCE}"],
            "mounts": [
                {"hostPath": "/opt/fw", "containerPath": "/fw", "options": ["ro", "bind"]},
                {"hostPath": "/var/state", "containerPath": "/state", "options": ["rw", "bind"]},
            ],
        },
    }


def test_escaped_braces_are_text_in_the_spec_env() -> None:
    """`{{ids}}` is the text `{ids}`, not a field: it does not depend on the allocation, so
    it travels in the spec like any fixed value (and `{}` stays as it is)."""
    config = resource(env={"HINT": "{{ids}} {}", "DEVS": "{ids}"})
    spec = build_spec(config, snapshot([dev("fpga0")]))
    assert spec is not None
    assert spec["containerEdits"]["env"] == ["HINT={ids} {}"]


def test_spec_version_and_kind_rules() -> None:
    assert minimum_cdi_version("vendor.example/fpga") == "0.5.0"
    assert minimum_cdi_version("vendor.example/fpga.v2") == "0.6.0"
    spec = build_spec(resource(kind="vendor.example/fpga.v2"), snapshot([dev("0fpga")]))
    assert spec is not None and spec["cdiVersion"] == "0.6.0"
    validate_cdi_spec(spec)
    assert cdi_kind_problem("vendor.example/fpga") is None
    assert cdi_kind_problem("vendor.example/fpga.v2") is None
    for bad in ("fpga", "/fpga", "vendor/", "1vendor.example/fpga", "vendor/fpga_", "v/fpga"):
        assert cdi_kind_problem(bad) is not None, bad


def test_no_spec_without_devices_with_edits() -> None:
    config = resource()
    assert build_spec(config, snapshot([])) is None
    assert build_spec(config, snapshot([dev("bare", nodes=(), env={"K": "v"})])) is None
    assert render_spec_file(config, snapshot([])) is None


def test_spec_names_match_allocate_names() -> None:
    odd = ["dongle/1", "_hidden", "a b", "ok-1", "tail.", "x"]
    devices = [dev(i, nodes=(DeviceNode("/dev/null", f"/dev/d{n}"),)) for n, i in enumerate(odd)]
    config = resource(replicas=2)
    snap = snapshot(devices, replicas=2)
    spec = build_spec(config, snap)
    assert spec is not None
    validate_cdi_spec(spec)
    names = {d["name"] for d in spec["devices"]}
    response = AllocationBuilder(config).container_response(snap, [e.id for e in snap.advertised])
    assert set(cdi_names(response)) == names
    assert all(c.name.startswith(f"{KIND}=") for c in response.cdi_devices)
    assert response.devices == []
    with_specs = AllocationBuilder(resource(also_device_specs=True, replicas=2))
    assert len(with_specs.container_response(snap, ["x::0", "x::1"]).devices) == 1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=6, unique=True),
    st.integers(1, 3),
    st.data(),
)
def test_every_allocate_cdi_name_is_in_the_spec(
    device_ids: list[str], replicas: int, data: st.DataObject
) -> None:
    devices = [
        Device(id=i, nodes=(DeviceNode("/dev/null", f"/dev/d{n}"),))
        for n, i in enumerate(device_ids)
    ]
    config = resource(replicas=replicas)
    snap = snapshot(devices, replicas)
    spec = build_spec(config, snap)
    assert spec is not None
    validate_cdi_spec(spec)
    chosen = data.draw(
        st.lists(st.sampled_from([e.id for e in snap.advertised]), min_size=1, unique=True)
    )
    response = AllocationBuilder(config).container_response(snap, chosen)
    assert set(cdi_names(response)) <= {d["name"] for d in spec["devices"]}
    assert len(response.cdi_devices) == len({snap.by_advertised_id[i].device.id for i in chosen})


def test_file_names() -> None:
    assert spec_file_name("vendor.example/fpga") == "kdp-host_vendor.example_fpga.json"
    # one-to-one because a resource name's domain cannot hold "_" (the first "_" is the "/")
    assert spec_file_name("a.b/c_d") == "kdp-host_a.b_c_d.json"
    assert extended_resource_name_problem("a.b_c/d") is not None
    long_name = "a" * 250 + ".example/x"
    assert len(spec_file_name(long_name)) < 255
    assert spec_file_name(long_name) != spec_file_name("a" * 250 + ".example/y")
    default = ResourceConfig(
        name=RESOURCE,
        driver=GlobDriverConfig(paths=("/dev/x",)),
        allocate=AllocateConfig(cdi=CdiConfig(kind=KIND)),
    )
    assert spec_path(default) == "/var/run/cdi/kdp-host_vendor.example_fpga.json"


# --------------------------------------------------------------------------- atomic write


def test_write_atomic_replaces_by_rename(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "spec.json"
    write_atomic(str(target), b"one")
    assert target.read_bytes() == b"one"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    reader = os.open(target, os.O_RDONLY)  # an open reader keeps the old inode
    try:
        old_inode = target.stat().st_ino
        write_atomic(str(target), b"two")
        assert target.read_bytes() == b"two"
        assert target.stat().st_ino != old_inode
        assert os.read(reader, 16) == b"one"  # the old file was never modified in place
    finally:
        os.close(reader)
    assert sorted(p.name for p in target.parent.iterdir()) == ["spec.json"]


def test_write_atomic_failure_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "spec.json"
    write_atomic(str(target), b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cdi_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        write_atomic(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["spec.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- the writer


class RunningWriter:
    def __init__(self, writer: CdiSpecWriter) -> None:
        self.writer = writer
        self.task = asyncio.create_task(writer.run())

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def running() -> AsyncIterator[list[RunningWriter]]:
    started: list[RunningWriter] = []
    yield started
    for item in started:
        if not item.task.done():
            await item.stop()


def start_writer(
    running: list[RunningWriter], config: ResourceConfig, table: DeviceTable, **options: Any
) -> CdiSpecWriter:
    writer = CdiSpecWriter(config, table, get_logger(), **options)
    running.append(RunningWriter(writer))
    return writer


def synced(writer: CdiSpecWriter, table: DeviceTable) -> bool:
    return writer.synced_version == table.snapshot.version


async def test_writer_keeps_file_current_and_removes_it(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    config = resource(tmp_path / "cdi")
    table = DeviceTable()
    writer = start_writer(running, config, table, debounce=0.01)
    path = Path(writer.path)
    assert path == tmp_path / "cdi" / "kdp-host_vendor.example_fpga.json"

    table.publish([dev("fpga0"), dev("fpga1")])
    await wait_until(lambda: synced(writer, table), what="first write")
    spec = json.loads(path.read_text())
    validate_cdi_spec(spec)
    assert [d["name"] for d in spec["devices"]] == ["fpga0", "fpga1"]
    assert writer.writes == 1

    # health does not change the spec: no write
    table.set_check_result("fpga1", False)
    await wait_until(lambda: synced(writer, table), what="health change seen")
    assert writer.writes == 1

    table.publish([dev("fpga0"), dev("fpga1"), dev("fpga2")])
    await wait_until(lambda: synced(writer, table), what="hot-plug")
    assert [d["name"] for d in json.loads(path.read_text())["devices"]] == [
        "fpga0",
        "fpga1",
        "fpga2",
    ]
    assert writer.writes == 2

    # every device gone: CDI rejects a spec without devices, so the file goes
    table.publish([])
    await wait_until(lambda: synced(writer, table), what="empty list")
    assert not path.exists()

    table.publish([dev("fpga0")])
    await wait_until(lambda: path.exists() and synced(writer, table), what="rewrite")
    await running[0].stop()
    assert not path.exists()
    assert list((tmp_path / "cdi").iterdir()) == []


async def test_writer_coalesces_a_burst(tmp_path: Path, running: list[RunningWriter]) -> None:
    table = DeviceTable()
    table.publish([dev("fpga0")])
    # A debounce far longer than the burst takes even on a loaded machine.
    writer = start_writer(running, resource(tmp_path), table, debounce=1.0)
    await wait_until(lambda: synced(writer, table), what="first write")
    assert writer.writes == 1
    for n in range(2, 30):
        table.publish([dev(f"fpga{i}") for i in range(n)])
        await asyncio.sleep(0)  # the writer runs between changes, as during a real burst
    await wait_until(lambda: synced(writer, table), what="burst written")
    assert writer.writes == 2
    assert len(json.loads(Path(writer.path).read_text())["devices"]) == 29


async def test_writer_leaves_identical_file_alone(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    config = resource(tmp_path)
    table = DeviceTable()
    table.publish([dev("fpga0")])
    content = render_spec_file(config, table.snapshot)
    assert content is not None
    path = Path(spec_path(config))
    path.write_bytes(content)  # left by a previous run of the host
    inode = path.stat().st_ino
    writer = start_writer(running, config, table)
    await wait_until(lambda: synced(writer, table), what="sync")
    assert writer.writes == 0 and path.stat().st_ino == inode


async def test_writer_survives_write_errors(tmp_path: Path, running: list[RunningWriter]) -> None:
    blocker = tmp_path / "cdi"
    blocker.write_text("a file where the directory should be")
    table = DeviceTable()
    table.publish([dev("fpga0")])
    writer = start_writer(running, resource(blocker), table, retry_interval=0.01, debounce=0.0)
    await wait_until(lambda: writer.failures >= 3, what="failed attempts, retried")
    assert not running[0].task.done() and writer.writes == 0
    blocker.unlink()
    await wait_until(lambda: synced(writer, table), what="retry after the error cleared")
    assert writer.writes == 1 and Path(writer.path).exists()


async def test_writer_restores_a_spec_file_removed_behind_its_back(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """During a rolling upgrade the stopping instance removes the same file name."""
    table = DeviceTable()
    table.publish([dev("fpga0")])
    writer = start_writer(running, resource(tmp_path), table, debounce=0.01, verify_interval=0.05)
    await wait_until(lambda: synced(writer, table), what="first write")
    Path(writer.path).unlink()
    # The file reappears (atomic rename) a moment before the writer counts the write.
    await wait_until(
        lambda: Path(writer.path).exists() and writer.writes >= 2, what="file written again"
    )
    assert writer.writes == 2
    validate_cdi_spec(json.loads(Path(writer.path).read_text()))


async def test_an_unwritable_spec_file_holds_devices_unhealthy_and_is_reported(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """Issue 10 item 17: no healthy device whose CDI name cannot resolve; the failure is
    counted and reported (the resource is then not ready) with a reason naming no path."""
    blocker = tmp_path / "cdi"
    blocker.write_text("a file where the directory should be")
    table = DeviceTable()
    table.publish([dev("fpga0"), dev("fpga1")])
    reports: list[str | None] = []
    counted: list[int] = []
    writer = CdiSpecWriter(
        resource(blocker),
        table,
        get_logger(),
        retry_interval=0.01,
        debounce=0.0,
        report=reports.append,
        count_failure=lambda: counted.append(1),
    )
    running.append(RunningWriter(writer))
    await wait_until(lambda: writer.failures >= 2, what="failed attempts")
    assert table.snapshot.healthy_count == 0 and table.snapshot.unhealthy_count == 2
    assert len(counted) == writer.failures
    assert reports and reports[-1] is not None and "CDI spec file not written" in reports[-1]
    assert str(tmp_path) not in reports[-1]

    blocker.unlink()
    await wait_until(lambda: synced(writer, table), what="written after the error cleared")
    assert reports[-1] is None
    await wait_until(lambda: table.snapshot.healthy_count == 2, what="devices healthy again")


async def test_a_new_device_is_unhealthy_until_its_spec_is_written(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    table = DeviceTable()
    writer = start_writer(running, resource(tmp_path), table, debounce=0.01)
    table.publish([dev("fpga0")])
    assert table.snapshot.unhealthy_count == 1  # before the writer ran
    await wait_until(lambda: table.snapshot.healthy_count == 1, what="fpga0 written")
    assert "fpga0" in json.loads(Path(writer.path).read_text())["devices"][0]["name"]
    table.publish([dev("fpga0"), dev("fpga1")])
    assert [d.healthy for d in table.snapshot.devices] == [True, False]
    await wait_until(lambda: table.snapshot.healthy_count == 2, what="fpga1 written")


async def test_a_spec_file_of_another_kind_resolves_nothing(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """A file left with the same name by a config with another kind: its names do not
    resolve for this kind until it is rewritten."""
    from kdp_host.cdi import spec_device_names

    config = resource(tmp_path)
    table = DeviceTable()
    table.publish([dev("fpga0")])
    content = render_spec_file(config, table.snapshot)
    assert content is not None
    assert spec_device_names(content, KIND) == {"fpga0"}
    assert spec_device_names(content, "other.example/kind") == frozenset()
    assert spec_device_names(b"{not json", KIND) == frozenset()
    assert spec_device_names(b'{"kind": "%s", "devices": "x"}' % KIND.encode(), KIND) == set()


# --------------------------------------------------------------------------- handover


async def test_a_stopping_instance_leaves_the_spec_file_the_new_instance_owns(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """A rolling upgrade (maxSurge: two instances on one node): the old instance stops while
    the new one serves the same resource from the same file name. The old one must neither
    remove the file nor fight over it."""
    config = resource(tmp_path)
    old_table, new_table = DeviceTable(), DeviceTable()
    for table in (old_table, new_table):
        table.publish([dev("fpga0"), dev("fpga1")])
    old = start_writer(running, config, old_table, debounce=0.0, instance="old")
    await wait_until(lambda: synced(old, old_table), what="the old instance wrote")
    new = start_writer(running, config, new_table, debounce=0.0, instance="new")
    await wait_until(lambda: synced(new, new_table), what="the new instance took over")
    assert Path(new.owner_file).read_text().strip() == "new"
    # a device the old one still sees changes: it leaves the file to the owner
    old_table.publish([dev("fpga0")])
    await wait_until(lambda: synced(old, old_table), what="the old instance saw its change")
    await running[0].stop()
    path = Path(new.path)
    assert path.exists(), "the old instance removed the new instance's spec file"
    assert [d["name"] for d in json.loads(path.read_text())["devices"]] == ["fpga0", "fpga1"]
    assert all(d.healthy for d in new_table.snapshot.devices)
    await running[1].stop()
    assert list(tmp_path.iterdir()) == []


async def test_a_spec_file_removed_behind_the_writers_back_is_seen_at_once(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """The spec dir is watched: a removal is noticed (devices held Unhealthy) and repaired
    without waiting for the periodic check (here: never)."""
    log = get_logger()
    watcher = make_watcher(log)
    watch_task = asyncio.create_task(watcher.run())
    try:
        table = DeviceTable()
        table.publish([dev("fpga0")])
        writer = start_writer(
            running, resource(tmp_path), table, debounce=0.0, verify_interval=3600.0,
            watcher=watcher,
        )  # fmt: skip
        await wait_until(lambda: synced(writer, table), what="first write")
        Path(writer.path).unlink()
        await wait_until(
            lambda: Path(writer.path).exists() and writer.writes == 2, what="written again"
        )
        validate_cdi_spec(json.loads(Path(writer.path).read_text()))
    finally:
        for item in running:
            await item.stop()
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task


async def test_an_owner_whose_lease_ran_out_is_taken_over(
    tmp_path: Path, running: list[RunningWriter]
) -> None:
    """An instance killed without cleanup leaves its owner file: once its lease is over,
    another instance writes the spec file again."""
    config = resource(tmp_path)
    owner = Path(owner_path(spec_path(config)))
    owner.write_text("killed\n")
    os.utime(owner, (0, 0))
    assert read_owner(str(owner), lease=30.0) is None
    table = DeviceTable()
    table.publish([dev("fpga0")])
    writer = start_writer(running, config, table, debounce=0.0, instance="live")
    await wait_until(lambda: synced(writer, table), what="written")
    assert owner.read_text().strip() == "live" and Path(writer.path).exists()
    os.utime(owner)
    assert read_owner(str(owner), lease=30.0) == "live"


# --------------------------------------------------------------------------- official schema


def test_specs_validate_against_the_official_cdi_schema() -> None:
    """Every shape of spec the host writes, against the official CDI JSON schema (issue 20
    item 10). The schema is not shipped by any package the project installs and is not
    copied into the repository: the test runs where it is present (see `cdi_schema_dir`)."""
    validator = official_cdi_validator()
    if validator is None:
        pytest.skip(
            f"the official CDI JSON schema (schema.json, defs.json) is not at {cdi_schema_dir()} "
            f"(set {CDI_SCHEMA_ENV} to a directory holding them)"
        )
    full = ResourceConfig(
        name=RESOURCE,
        driver=GlobDriverConfig(paths=("/dev/fpga*",)),
        allocate=AllocateConfig(
            env={"MODE": "fast", "IDS": "{ids}"},
            mounts=(MountConfig("/opt/fw", "/fw"),),
            cdi=CdiConfig(
                kind="vendor.example/fpga.v2",
                device_gid=44,
                device_file_mode="0660",
                additional_gids=(44, 107),
            ),
        ),
    )
    devices = [
        dev("fpga0", env={"SLOT": "0"}),
        dev("0dev", nodes=(DeviceNode("/dev/a", "/dev/x", "r"), DeviceNode("/dev/b", "/dev/y"))),
        dev("dongle/1", mounts=(DeviceMount("/srv/d1", "/d", read_only=False),)),
    ]
    specs = [build_spec(full, snapshot(devices)), build_spec(resource(), snapshot(devices[:1]))]
    for spec in specs:
        assert spec is not None
        validator.validate(spec)
        validate_cdi_spec(spec)
    # not vacuous: what CDI refuses, the schema refuses
    broken = dict(specs[1])  # type: ignore[arg-type]
    del broken["devices"]
    assert list(validator.iter_errors(broken))
    bad_node = json.loads(json.dumps(specs[1]))
    del bad_node["devices"][0]["containerEdits"]["deviceNodes"][0]["path"]
    assert list(validator.iter_errors(bad_node))
