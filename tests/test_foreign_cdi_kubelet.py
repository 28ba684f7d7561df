"""Another device plugin that answers Allocate with CDI names (NVIDIA's device plugin with
`deviceListStrategy: cdi-cri` or `cdi-annotations`, Intel's GPU plugin with CDI) hands out a
node kdp-host serves: the names are resolved through the spec files of `cdiRuntimeDirs` and
the node is held while the pod may have it, read at start, followed while the host runs, or
when its spec file comes later (issue 17, hostile27 F3), through the kubelet's real device
manager and a foreign grpclib plugin registered with it. Before, the checkpoint's answers
with CDI names were skipped (their DeviceSpecs too) and the node went to a second pod."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdp_host.api.v1beta1 import (
    AllocateRequest,
    AllocateResponse,
    CdiDevice,
    ContainerAllocateResponse,
    DeviceSpec,
)

from .conftest import wait_until
from .test_checkpoint_bookings import OTHER, config_text, healthy_count, nodes, serve_foreign
from .test_simulator import FakePlugin, dev

pytestmark = pytest.mark.fast

KIND = "vendor.example/gpu"
GPU = "vendor.example/gpu"
"""The other plugin's resource (and its CDI kind)."""
A = "example.com/a"
"""kdp-host's resource over the same nodes (a migration that renames, or any overlap)."""
UNRESOLVED = "kdp_kubelet_checkpoint_cdi_unresolved_total"


class CdiPlugin(FakePlugin):
    """Answers Allocate with CDI names only (`cdi`: in `cdi_devices`, NVIDIA's cdi-cri;
    `annotations`: a `cdi.k8s.io/...` annotation, its cdi-annotations) or with the names
    and the DeviceSpecs (`both`)."""

    def __init__(self, paths: dict[str, str], mode: str) -> None:
        super().__init__([dev(device_id) for device_id in paths])
        self.paths, self.mode = paths, mode

    async def allocate(self, message: AllocateRequest) -> AllocateResponse:
        answers = []
        for request in message.container_requests:
            ids = list(request.devices_ids)
            names = [f"{KIND}={i}" for i in ids]
            if self.mode == "annotations":
                key = "cdi.k8s.io/vendor-gpu_" + "_".join(ids)
                answers.append(ContainerAllocateResponse(annotations={key: ",".join(names)}))
                continue
            specs = [DeviceSpec(container_path=self.paths[i], host_path=self.paths[i]) for i in ids]
            answers.append(
                ContainerAllocateResponse(
                    cdi_devices=[CdiDevice(name=name) for name in names],
                    devices=specs if self.mode == "both" else [],
                )
            )
        return AllocateResponse(container_responses=answers)


def write_spec(directory: Path, paths: dict[str, str]) -> None:
    """The plugin's spec file (its devices' nodes as device-level edits), made by a rename."""
    devices = [
        {"name": i, "containerEdits": {"deviceNodes": [{"path": p, "hostPath": p}]}}
        for i, p in paths.items()
    ]
    spec = {"cdiVersion": "0.5.0", "kind": KIND, "devices": devices}
    (directory / ".vendor-gpu.tmp").write_text(json.dumps(spec))
    os.replace(directory / ".vendor-gpu.tmp", directory / "vendor-gpu.json")


@contextlib.asynccontextmanager
async def serving(kubelet: Any, plugin: FakePlugin, resource: str) -> AsyncIterator[None]:
    """`plugin` served and registered with the kubelet as `resource`, stopped at the end."""
    server = await serve_foreign(kubelet, plugin, resource)
    try:
        yield
    finally:
        plugin.end_stream()
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)


def setup(kubelet: Any, root: Path, *resources: tuple[str, str]) -> tuple[str, dict[str, str]]:
    """dev/fpga0, fpga1, the other plugin's IDs gpu0, gpu1 for them, and a config of
    `resources` (A on them by default) with `cdiRuntimeDirs: [<root>/cdi]`."""
    pattern = nodes(root, "dev", "fpga0", "fpga1")
    (root / "cdi").mkdir()
    text = config_text(kubelet, root, *(resources or ((A, pattern),)))
    text = text.replace("resources:\n", f"cdiRuntimeDirs: [{root / 'cdi'}]\nresources:\n")
    return text, {f"gpu{i}": str(root / "dev" / f"fpga{i}") for i in (0, 1)}


async def only_the_other_node(
    kubelet: Any, resource: str, held: str, paths: dict[str, str]
) -> None:
    """The next pod of `resource` gets the node the other plugin's pod does not hold, and
    the one after gets none."""
    p0 = await kubelet.acall(kubelet.allocate, "p0", {resource: 1})
    assert p0["error"] == "", p0
    assert [d["PathOnHost"] for d in p0["devices"]] != [paths[held]], p0
    p1 = await kubelet.acall(kubelet.allocate, "p1", {resource: 1})
    assert p1["error"] and not p1["device_ids"], p1


@pytest.mark.parametrize("order", ["start", "follow"])
@pytest.mark.parametrize("mode", ["cdi", "annotations", "both"])
async def test_a_node_another_plugin_hands_out_by_cdi_name_is_held(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, mode: str, order: str
) -> None:
    """The other plugin serves gpu0, gpu1 (= fpga0, fpga1 by its spec file) and hands one
    to g0 by CDI name; kdp-host serves A over fpga*: it holds g0's node, booked from the
    checkpoint at start (g0 admitted before it started) or followed while it runs (before:
    both listed, g0's node handed to p0 or p1)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    config, paths = setup(kubelet, short_dir)
    write_spec(short_dir / "cdi", paths)
    async with serving(kubelet, CdiPlugin(paths, mode), GPU):
        await kubelet.await_for(healthy_count(GPU, 2), what="the other plugin lists")
        if order == "follow":
            await start_host(config)
            await kubelet.await_for(healthy_count(A, 2), what="kdp-host lists both")
        g0 = await kubelet.acall(kubelet.allocate, "g0", {GPU: 1})
        assert g0["error"] == "", g0
        [held] = g0["device_ids"][GPU]
        if order == "start":
            await start_host(config)
        await kubelet.await_for(healthy_count(A, 1), what="g0's node held")
        await only_the_other_node(kubelet, A, held, paths)


async def test_a_cdi_name_no_spec_file_defines_is_said_and_held_once_one_does(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, caplog: Any
) -> None:
    """The other plugin writes its spec file only after g0 was admitted: the name is said
    (a warning line with the resource and the name, counted) and, once the file comes,
    resolved again (the dirs followed) and g0's node held (before: never)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    config, paths = setup(kubelet, short_dir)
    running = await start_host(config)
    await kubelet.await_for(healthy_count(A, 2), what="kdp-host lists both")
    async with serving(kubelet, CdiPlugin(paths, "cdi"), GPU):
        await kubelet.await_for(healthy_count(GPU, 2), what="the other plugin lists")
        g0 = await kubelet.acall(kubelet.allocate, "g0", {GPU: 1})
        assert g0["error"] == "", g0
        [held] = g0["device_ids"][GPU]
        await wait_until(lambda: running.sample(UNRESOLVED, resource=GPU) == 1, timeout=10)
        said = [
            r.__dict__["kdp_fields"]
            for r in caplog.records
            if r.getMessage() == "kubelet_checkpoint_cdi_unresolved"
        ]
        assert [(f["resource"], f["name"]) for f in said] == [(GPU, f"{KIND}={held}")], said
        write_spec(short_dir / "cdi", paths)
        await kubelet.await_for(healthy_count(A, 1), what="g0's node held once defined")
        await only_the_other_node(kubelet, A, held, paths)
    assert running.sample(UNRESOLVED, resource=GPU) == 1  # (said once)


@pytest.mark.parametrize("how", ["start", "reload"])
async def test_taking_the_name_of_a_cdi_plugin_keeps_its_pods_node(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, how: str
) -> None:
    """The README's migration keeping the name: the old plugin served A as gpu0, gpu1 (by
    CDI name) and g0 holds one; it stops, and kdp-host takes A over fpga* at its start or by
    a reload: its first list holds g0's node back (before: both listed, `held_id_not_present`
    said and g0's node handed to p0)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    other = nodes(short_dir, "odev", "o0")
    config, paths = setup(kubelet, short_dir, (OTHER, other))
    write_spec(short_dir / "cdi", paths)
    async with serving(kubelet, CdiPlugin(paths, "cdi"), A):
        await kubelet.await_for(healthy_count(A, 2), what="the old plugin lists")
        g0 = await kubelet.acall(kubelet.allocate, "g0", {A: 1})
        assert g0["error"] == "", g0
        [held] = g0["device_ids"][A]
    taken = config.replace(
        "resources:\n",
        f'resources:\n  - name: {A}\n    glob: {{paths: ["{short_dir}/dev/fpga*"]}}\n',
    )
    since = await kubelet.acall(kubelet.last_seq)
    if how == "start":
        await start_host(taken)
    else:
        path = short_dir / "kdp.yaml"
        path.write_text(config)
        running = await start_host(config, config_path=path)
        await kubelet.await_for(healthy_count(OTHER, 1), what="kdp-host serves OTHER")
        path.write_text(taken)
        assert await running.host.reload_from(path) == "ok"
    first = await kubelet.acall(kubelet.first_list_after_registering, A, since)
    assert first["healthy"] == 1, "kdp-host's first list holds g0's node back"
    await only_the_other_node(kubelet, A, held, paths)


def as_yaml_only(text: str, form: str) -> str:
    """A JSON spec's text as the runtime still reads it (as YAML, whatever the suffix) and
    `json.loads` does not: in YAML syntax, after a `# comment` line, with single quotes."""
    if form == "yaml":
        return yaml.safe_dump(json.loads(text))
    if form == "comment":
        return "# generated by vendor-tool 2.1\n" + text
    return text.replace('"', "'")


async def g0_then_host(kubelet: Any, start_host: Any, config: str) -> str:
    """Once the other plugin lists both, g0 admitted with one of them (its ID returned),
    then kdp-host started on `config` (it books g0's answer from the checkpoint)."""
    await kubelet.await_for(healthy_count(GPU, 2), what="the other plugin lists")
    g0 = await kubelet.acall(kubelet.allocate, "g0", {GPU: 1})
    assert g0["error"] == "", g0
    [held] = g0["device_ids"][GPU]
    await start_host(config)
    return str(held)


@pytest.mark.parametrize("form", ["yaml", "comment", "single"])
async def test_a_json_spec_file_is_read_as_the_runtime_reads_it_as_yaml(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, form: str
) -> None:
    """The other plugin's `vendor-gpu.json` is valid to the runtime only as YAML (its CDI
    library reads every spec file so): g0's node is held by kdp-host started after g0 was
    admitted (before: the file was not JSON to kdp-host, the name unresolved, both nodes
    listed and g0's handed to p0; hostile28 G8)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    config, paths = setup(kubelet, short_dir)
    write_spec(short_dir / "cdi", paths)
    spec = short_dir / "cdi" / "vendor-gpu.json"
    spec.write_text(as_yaml_only(spec.read_text(), form))
    async with serving(kubelet, CdiPlugin(paths, "cdi"), GPU):
        held = await g0_then_host(kubelet, start_host, config)
        await kubelet.await_for(healthy_count(A, 1), what="g0's node held")
        await only_the_other_node(kubelet, A, held, paths)


def char_nodes(root: Path) -> tuple[str, dict[str, str]]:
    """dev/fpga0, fpga1 as real character nodes 240:0, 240:1 (skips without CAP_MKNOD), a
    config of A over them, and the other plugin's IDs gpu0, gpu1 for them."""
    (root / "dev").mkdir()
    (root / "cdi").mkdir()
    try:
        for minor in (0, 1):
            os.mknod(root / "dev" / f"fpga{minor}", 0o600 | stat.S_IFCHR, os.makedev(240, minor))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    return str(root / "dev" / "fpga*"), {f"gpu{i}": str(root / "dev" / f"fpga{i}") for i in (0, 1)}


def write_nodes(directory: Path, nodes: dict[str, dict[str, Any]]) -> None:
    """The other plugin's spec file, each device with one `deviceNodes` entry as given."""
    devices = [{"name": i, "containerEdits": {"deviceNodes": [n]}} for i, n in nodes.items()]
    spec = {"cdiVersion": "0.5.0", "kind": KIND, "devices": devices}
    (directory / "vendor-gpu.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("form", ["numbers", "wildcard"])
async def test_a_cdi_node_the_runtime_makes_by_number_or_wildcard_is_held(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, form: str
) -> None:
    """The other plugin's spec gives each device's node by number (`type: c, major: 240,
    minor: i` at a container path, nothing at it on the host: the runtime makes 240:i) or
    by a wildcard host path (`<root>/dev/fpga*`: the CDI library hands out every node it
    matches); kdp-host serves A over the real nodes fpga0 = 240:0, fpga1 = 240:1, started
    after g0 was admitted: the nodes g0 has are held (before: the text was booked, both
    nodes listed and g0's handed to p0, or both; hostile28 G9)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    pattern, paths = char_nodes(short_dir)
    config = config_text(kubelet, short_dir, (A, pattern))
    config = config.replace("resources:\n", f"cdiRuntimeDirs: [{short_dir / 'cdi'}]\nresources:\n")
    if form == "numbers":
        nodes = {
            f"gpu{i}": {"path": f"/dev/vendor-gpu{i}", "type": "c", "major": 240, "minor": i}
            for i in (0, 1)
        }
    else:
        nodes = {i: {"path": "/dev/fpga*", "hostPath": pattern} for i in paths}
    write_nodes(short_dir / "cdi", nodes)
    async with serving(kubelet, CdiPlugin(paths, "cdi"), GPU):
        held = await g0_then_host(kubelet, start_host, config)
        if form == "numbers":
            await kubelet.await_for(healthy_count(A, 1), what="g0's node held")
            await only_the_other_node(kubelet, A, held, paths)
            return
        await kubelet.await_for(healthy_count(A, 0), what="both nodes g0 has held")
        p0 = await kubelet.acall(kubelet.allocate, "p0", {A: 1})
        assert p0["error"] and not p0["device_ids"], p0


def held(caplog: Any, device: str) -> bool:
    """Whether kdp-host said `device` is held (`device_held`)."""
    return any(
        r.getMessage() == "device_held" and r.__dict__["kdp_fields"].get("device") == device
        for r in caplog.records
    )


async def test_a_node_a_cdi_wildcard_matches_later_is_held(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, caplog: Any
) -> None:
    """g0 holds the other plugin's gpu0, whose node is the wildcard `<root>/dev/fpga*`
    (fpga0 alone then); fpga1 made later is matched by it too (the runtime's next container
    start of g0 hands it out): kdp-host lists it held (before: Healthy, handed to p0)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    pattern, paths = char_nodes(short_dir)
    os.unlink(paths["gpu1"])
    config = config_text(kubelet, short_dir, (A, pattern))
    config = config.replace("resources:\n", f"cdiRuntimeDirs: [{short_dir / 'cdi'}]\nresources:\n")
    write_nodes(short_dir / "cdi", {"gpu0": {"path": "/dev/fpga*", "hostPath": pattern}})
    async with serving(kubelet, CdiPlugin({"gpu0": paths["gpu0"]}, "cdi"), GPU):
        await kubelet.await_for(healthy_count(GPU, 1), what="the other plugin lists")
        g0 = await kubelet.acall(kubelet.allocate, "g0", {GPU: 1})
        assert g0["error"] == "", g0
        await start_host(config)
        await wait_until(lambda: held(caplog, "fpga0"), timeout=30)
        os.mknod(paths["gpu1"], 0o600 | stat.S_IFCHR, os.makedev(240, 1))
        await wait_until(lambda: held(caplog, "fpga1"), timeout=30)
        await kubelet.await_for(healthy_count(A, 0), what="fpga1, matched later, held")
        p0 = await kubelet.acall(kubelet.allocate, "p0", {A: 1})
        assert p0["error"] and not p0["device_ids"], p0
