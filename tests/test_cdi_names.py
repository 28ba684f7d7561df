"""CDI names an Allocate answer carries (issue 17, hostile finding F13): only the container's
own devices may be named by a kind kdp-host writes, whether through CDI devices (an
`allocate.command`'s `cdiDevices`) or through `cdi.k8s.io/...` annotations (the hook's, a
probe device's, or `allocate.annotations`, which the config refuses at load)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from kdp_host.allocation import AllocationBuilder, cdi_device_name, qualified_cdi_name
from kdp_host.cdi_rules import (
    CDI_ANNOTATION_PREFIX,
    cdi_annotation_names,
    cdi_name_parts,
    cdi_qualified_name_problem,
    is_cdi_annotation_key,
)
from kdp_host.cli import main
from kdp_host.command_output import ContainerExtras
from kdp_host.config import ConfigError, load_config_text
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.logs import get_logger
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_shared import PlaceOwned

from .conftest import script
from .kubelet_harness import RealKubelet, healthy

A, B, C = "a.example/a", "b.example/b", "c.example/c"
A_KIND, B_KIND = "a.example/aa", "b.example/bb"
A_PART, B_PART = (cdi_device_name(r, "x").removesuffix("x") for r in (A, B))
"""What a device name of A, B starts with (`<resource>:`, issue 17)."""
VENDOR = "vendor.other/gpu"
"""A kind no resource of the config writes (a vendor's own spec file)."""

# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("b.example/bb=b0", ("b.example/bb", "b0")),
        ("  b.example/bb = b0 ", ("b.example/bb", "b0")),
        ("b.example/bb=x=y", ("b.example/bb", "x=y")),  # CDI splits at the first "="
        ("b.example/bb", ("b.example/bb", "")),
        ("=b0", ("", "b0")),
        ("\tb.example/bb\n=b0", ("b.example/bb", "b0")),
    ],
)
def test_a_qualified_name_is_split_where_cdi_splits_it(name: str, parts: tuple[str, str]) -> None:
    assert cdi_name_parts(name) == parts


def test_the_parts_of_every_valid_qualified_name_join_back() -> None:
    for name in ("b.example/bb=b0", "a.b/c-d.e=x:y.z-1", f"{A_KIND}=id::6162"):
        assert cdi_qualified_name_problem(name) is None
        assert "=".join(cdi_name_parts(name)) == name


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("b.example/bb=b0", ["b.example/bb=b0"]),
        ("vendor.other/gpu=0,b.example/bb=b0", ["vendor.other/gpu=0", "b.example/bb=b0"]),
        (" vendor.other/gpu=0 ,\tb.example/bb=b0\n", ["vendor.other/gpu=0", "b.example/bb=b0"]),
        (",,b.example/bb=b0, ,", ["b.example/bb=b0"]),
        ("", []),
        ("  ", []),
    ],
)
def test_an_annotation_value_lists_names_separated_by_commas(value: str, names: list[str]) -> None:
    assert cdi_annotation_names(value) == names


@pytest.mark.parametrize(
    ("key", "cdi"),
    [
        (f"{CDI_ANNOTATION_PREFIX}x", True),
        ("cdi.k8s.io/vendor.com_dev", True),
        ("CDI.K8s.IO/x", True),  # any case: no spelling a runtime might take slips past
        ("cdi.k8s.io", False),
        ("x.cdi.k8s.io/y", False),
        ("example.com/cdi.k8s.io", False),
        ("FPGA_SLOT", False),
    ],
)
def test_cdi_annotation_keys(key: str, cdi: bool) -> None:
    assert is_cdi_annotation_key(key) is cdi


# ------------------------------------------------------------- what an answer carries


def _resource(hook: bool = True, kind: str | None = A_KIND) -> AllocationBuilder:
    allocate = []
    if kind is not None:
        allocate.append(f"cdi: {{kind: {kind}}}")
    if hook:
        allocate.append("command: [/bin/true]")
    config = load_config_text(
        "resources:\n"
        f"  - name: {A}\n"
        '    glob: {paths: ["/dev/a*"]}\n'
        f"    allocate: {{{', '.join(allocate)}}}\n"
    )
    return AllocationBuilder(config.resources[0])


def _table(*ids: str) -> DeviceTable:
    table = DeviceTable()
    table.publish({i: Device(i, nodes=(DeviceNode(f"/dev/{i}", f"/dev/{i}"),)) for i in ids})
    return table


def test_handed_lists_the_cdi_names_besides_the_containers_own() -> None:
    builder = _resource()
    snapshot = _table("a0", "a1", "a2").snapshot
    extras = ContainerExtras(
        annotations={
            "cdi.k8s.io/x": f" {A_KIND}={A_PART}a0 , {B_KIND}={B_PART}b0",
            "example.com/y": f"{B_KIND}={B_PART}b1",  # not a CDI annotation: no name
        },
        cdi_devices=(f"{A_KIND}={A_PART}a1", f"{VENDOR}=0", f"{A_KIND}={A_PART}a0"),
    )
    first = builder.container_response(snapshot, ["a0"], extras)
    second = builder.container_response(snapshot, ["a2"])
    assert [c.name for c in first.cdi_devices] == [
        f"{A_KIND}={A_PART}a0",
        f"{A_KIND}={A_PART}a1",
        f"{VENDOR}=0",
    ]
    handed = builder.handed(snapshot, [["a0"], ["a2"]], [first, second])
    # a0's own name is not "besides"; a2's answer carries only its own name
    assert handed.cdi_names == {
        "a0": [f"{A_KIND}={A_PART}a1", f"{VENDOR}=0", f"{B_KIND}={B_PART}b0"]
    }
    assert handed.places == {}


def test_without_a_kind_of_its_own_every_name_is_besides() -> None:
    builder = _resource(kind=None)
    snapshot = _table("a0").snapshot
    extras = ContainerExtras(cdi_devices=(f"{A_KIND}={A_PART}a0",))
    response = builder.container_response(snapshot, ["a0"], extras)
    assert builder.handed(snapshot, [["a0"]], [response]).cdi_names == {
        "a0": [f"{A_KIND}={A_PART}a0"]
    }


def test_a_device_id_that_is_no_cdi_name_is_its_own_escaped_name() -> None:
    builder = _resource()
    snapshot = _table("a+b").snapshot
    own = qualified_cdi_name(A_KIND, A, "a+b")
    assert own != f"{A_KIND}={A_PART}a+b"
    extras = ContainerExtras(annotations={"cdi.k8s.io/x": own})
    response = builder.container_response(snapshot, ["a+b"], extras)
    assert builder.handed(snapshot, [["a+b"]], [response]).cdi_names == {}


# ------------------------------------------------------------------ the index's rule


def _index() -> OwnershipIndex:
    index = OwnershipIndex()
    for resource, kind, ids in ((A, A_KIND, ("a0", "a1")), (B, B_KIND, ("b0",)), (C, None, ())):
        table = DeviceTable()
        index.attach(resource, table.publish, get_logger(), cdi_kind=kind)
        index.publish(resource, {i: Device(i) for i in ids})
    return index


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        (f"{B_KIND}={B_PART}b0", f"which device b0 of {B} owns"),
        (f"{A_KIND}={A_PART}a1", f"which device a1 of {A} owns"),
        (f" {B_KIND} ={B_PART}b0", f"which device b0 of {B} owns"),
        (f"{B_KIND}={B_PART}b9", f"which names no device of this container (the kind is {B}'s)"),
    ],
)
async def test_a_name_of_a_kind_the_host_writes_is_refused_naming_its_owner(
    name: str, owner: str
) -> None:
    index = _index()
    with pytest.raises(PlaceOwned) as refused:
        await index.book(A, ["a0"], cdi_names={"a0": [f"{VENDOR}=0", name]})
    assert str(refused.value) == (
        f"{A}: the answer for a0 hands out CDI device {name!r}, {owner}; only the "
        "container's own devices may be named by a kind kdp-host writes"
    )
    assert not index.is_booked(A, "a0"), "nothing is booked"


async def test_names_of_kinds_the_host_does_not_write_pass() -> None:
    index = _index()
    await index.book(C, [], cdi_names={"c0": [f"{VENDOR}=0", "c.example/cc=c0", "no-kind"]})
    await index.book(A, ["a0"], cdi_names={"a0": [f"{VENDOR}=0"]})
    assert index.is_booked(A, "a0")


async def test_a_retired_resources_kind_stays_refused() -> None:
    """Its pods may still hold its devices (and a runtime may still have its spec)."""
    index = _index()
    index.retire(B)
    with pytest.raises(PlaceOwned, match=f"which device b0 of {B} owns"):
        await index.book(A, ["a0"], cdi_names={"a0": [f"{B_KIND}={B_PART}b0"]})


# ------------------------------------------------------------------ the static config


def _static(annotation: str, *, b_kind: str = B_KIND) -> str:
    return (
        "resources:\n"
        f"  - name: {A}\n"
        '    glob: {paths: ["/dev/a*"]}\n'
        f"    allocate: {{annotations: {{{annotation}}}}}\n"
        f"  - name: {B}\n"
        '    glob: {paths: ["/dev/b*"]}\n'
        f"    allocate: {{cdi: {{kind: {b_kind}}}}}\n"
    )


@pytest.mark.parametrize(
    "annotation",
    [
        f'"cdi.k8s.io/x": "{B_KIND}={B_PART}b0"',
        f'"cdi.k8s.io/x": "{VENDOR}=0, {B_KIND}={B_PART}{{ids}}"',
        f'"CDI.k8s.io/x": " {B_KIND} = {B_PART}b0"',
    ],
)
def test_a_static_cdi_annotation_naming_a_kind_of_the_config_is_a_config_error(
    annotation: str,
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config_text(_static(annotation))
    text = str(error.value)
    assert "resources[0].allocate.annotations" in text, text
    assert f"of kind '{B_KIND}', whose spec file kdp-host writes for resource '{B}'" in text


@pytest.mark.parametrize(
    "annotation",
    [
        f'"cdi.k8s.io/x": "{VENDOR}=0"',
        f'"example.com/x": "{B_KIND}={B_PART}b0"',  # not read by CDI
    ],
)
def test_other_static_annotations_load(annotation: str) -> None:
    load_config_text(_static(annotation))


def test_check_names_the_static_annotation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kdp.yaml"
    config.write_text(_static(f'"cdi.k8s.io/x": "{B_KIND}={B_PART}b0"'))
    assert main(["check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"names the CDI device '{B_KIND}={B_PART}b0'" in err, err


# ------------------------------------------------------------- through the real kubelet


def _names(answer: dict[str, Any]) -> list[str]:
    return [c.get("Name", c.get("name")) for c in answer["cdi_devices"]]


def _refused(answer: dict[str, Any], *texts: str) -> None:
    error = answer["error"]
    assert "InvalidArgument" in error or "INVALID_ARGUMENT" in error, answer
    for text in texts:
        assert text in error, answer


async def _cdi_host(
    kubelet: RealKubelet, short_dir: Path, start_host: Any, probe_annotations: dict[str, str]
) -> Path:
    """a (a0, a1; kind a.example/aa; an allocate.command printing `out.json`, where the
    pod's own device's name is written `OWN` and the other a-device's `OTHER`), b (b0; kind
    b.example/bb) and c (a probe device whose annotations are `probe_annotations`)."""
    dev = short_dir / "dev"
    for side in ("a", "b"):
        (dev / side).mkdir(parents=True)
    for name in ("a/a0", "a/a1", "b/b0"):
        (dev / name).touch()
    out = short_dir / "out.json"
    out.write_text("{}")
    hook = script(
        short_dir,
        "hook.sh",
        'if [ "$1" = a0 ]; then own=a0 other=a1; else own=a1 other=a0; fi\n'
        f'sed -e "s/OWN/$own/g" -e "s/OTHER/$other/g" {out}\n',
    )
    listed = [{"id": "c0", "paths": [f"{dev}/c0"], "annotations": probe_annotations}]
    probe = script(short_dir, "probe.sh", f"cat <<'END'\n{json.dumps(listed)}\nEND\n")
    (dev / "c0").touch()
    cdi = short_dir / "cdi"
    await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\n"
        f"stateDir: {short_dir / 'state'}\nresources:\n"
        f'  - name: {A}\n    glob: {{paths: ["{dev}/a/*"]}}\n'
        f"    allocate: {{cdi: {{kind: {A_KIND}, specDir: {cdi}}}, "
        f'command: ["{hook}", "{{ids}}"]}}\n'
        f'  - name: {B}\n    glob: {{paths: ["{dev}/b/*"]}}\n'
        f"    allocate: {{cdi: {{kind: {B_KIND}, specDir: {cdi}}}}}\n"
        f"  - name: {C}\n"
        f'    shell: {{command: ["{probe}"], format: json, interval: 1h}}\n'
    )
    await kubelet.await_for(
        lambda k: healthy(A, 2)(k) and healthy(B, 1)(k) and healthy(C, 1)(k),
        what="a0, a1, b0 and c0 advertised",
    )
    return out


HELD_B0 = (f"hands out CDI device '{B_KIND}={B_PART}b0'", f"which device b0 of {B} owns")


@pytest.mark.parametrize(
    ("output", "texts"),
    [
        pytest.param({"cdiDevices": [f"{B_KIND}={B_PART}b0"]}, HELD_B0, id="cdiDevices"),
        pytest.param(
            {"cdiDevices": [f"{A_KIND}={A_PART}OTHER"]},
            (f"hands out CDI device '{A_KIND}={A_PART}a", "which device a", f" of {A} owns"),
            id="cdiDevices-own-resource-other-device",
        ),
        pytest.param(
            {"annotations": {"cdi.k8s.io/x": f"{VENDOR}=0,{B_KIND}={B_PART}b0"}},
            HELD_B0,
            id="annotation",
        ),
        pytest.param(
            {"annotations": {"cdi.k8s.io/x": f"{A_KIND}={A_PART}OWN , {B_KIND}={B_PART}b0 "}},
            HELD_B0,
            id="annotation-list-with-blanks",
        ),
    ],
)
async def test_hostile2_13_allocate_command_naming_another_cdi_device_is_refused(
    real_kubelet_factory, short_dir: Path, start_host, output: dict[str, Any],
    texts: tuple[str, ...],
) -> None:  # fmt: skip
    """F13: the hook printed another resource's CDI name (`b.example/bb=b0`, held by pod2),
    or its own resource's other device's, as a CDI device or in a `cdi.k8s.io/...`
    annotation: passed through, the runtime resolved it from the other spec, one node in two
    pods. Refused with INVALID_ARGUMENT naming the name and its owner; the pod is not
    admitted and the device goes back."""
    kubelet = real_kubelet_factory()
    out = await _cdi_host(kubelet, short_dir, start_host, {})
    holder = await kubelet.acall(kubelet.allocate, "pod2", {B: 1})
    assert holder["error"] == "" and _names(holder) == [f"{B_KIND}={B_PART}b0"], holder
    out.write_text(json.dumps(output))
    refused = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    _refused(refused, *texts)
    assert (await kubelet.acall(kubelet.resource, A))["allocated"] == 0


async def test_hostile2_13_own_names_and_vendor_kinds_pass(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """The container's own device's name (as a CDI device and in an annotation, blanks and
    all) and names of kinds kdp-host does not write (a vendor's spec) pass through."""
    kubelet = real_kubelet_factory()
    out = await _cdi_host(kubelet, short_dir, start_host, {})
    out.write_text(
        json.dumps(
            {
                "cdiDevices": [f"{A_KIND}={A_PART}OWN", f"{VENDOR}=0"],
                "annotations": {"cdi.k8s.io/x": f" {A_KIND}={A_PART}OWN, {VENDOR}=1"},
            }
        )
    )
    answer = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert answer["error"] == "", answer
    [own] = answer["device_ids"][A]
    assert _names(answer) == [f"{A_KIND}={A_PART}{own}", f"{VENDOR}=0"]
    assert answer["annotations"]["cdi.k8s.io/x"] == f" {A_KIND}={A_PART}{own}, {VENDOR}=1"


async def test_hostile2_13_a_probe_devices_cdi_annotation_is_checked_too(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """A device's own annotations (a shell probe's JSON) reach the answer the same way: one
    naming b0 refuses c0's Allocate."""
    kubelet = real_kubelet_factory()
    await _cdi_host(kubelet, short_dir, start_host, {"cdi.k8s.io/c": f"{B_KIND}={B_PART}b0"})
    refused = await kubelet.acall(kubelet.allocate, "pod1", {C: 1})
    _refused(
        refused, f"{C}: the answer for c0 hands out CDI device '{B_KIND}={B_PART}b0'", f"b0 of {B}"
    )


async def test_hostile2_13_a_static_cdi_annotation_is_refused_at_load_and_on_reload(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """F13's static variant: `allocate.annotations: {"cdi.k8s.io/x": "b.example/bb=b0"}` was
    passed to every pod of a. It is a config error (`check`, `run`, and a reload to it is
    refused, the config in force kept)."""
    kubelet = real_kubelet_factory()
    dev = short_dir / "dev"
    dev.mkdir()
    (dev / "a0").touch()
    (dev / "b0").touch()
    good = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\n"
        f"stateDir: {short_dir / 'state'}\nresources:\n"
        f'  - name: {A}\n    glob: {{paths: ["{dev}/a*"]}}\n'
        f'    allocate: {{annotations: {{"cdi.k8s.io/x": "{VENDOR}=0"}}}}\n'
        f'  - name: {B}\n    glob: {{paths: ["{dev}/b*"]}}\n'
        f"    allocate: {{cdi: {{kind: {B_KIND}, specDir: {short_dir / 'cdi'}}}}}\n"
    )
    bad = good.replace(f"{VENDOR}=0", f"{B_KIND}={B_PART}b0")
    config = short_dir / "kdp.yaml"
    config.write_text(bad)
    assert await asyncio.to_thread(main, ["check", "--config", str(config)]) == 2
    config.write_text(good)
    running = await start_host(good, config_path=config)
    await kubelet.await_for(lambda k: healthy(A, 1)(k) and healthy(B, 1)(k), what="registered")
    config.write_text(bad)
    assert await running.host.reload_from(config) == "invalid"
    answer = await kubelet.acall(kubelet.allocate, "pod1", {A: 1})
    assert answer["error"] == "" and answer["annotations"] == {"cdi.k8s.io/x": f"{VENDOR}=0"}
