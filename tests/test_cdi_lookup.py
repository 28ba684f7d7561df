"""CDI names of the kubelet's checkpoint resolved as the runtime resolves them
(`kdp_host.cdi_lookup`), and an answer's names and DeviceSpecs booked together
(`checkpoint_handed.with_cdi_paths`, hostile27 F3)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from kdp_host.api.v1beta1 import CdiDevice, ContainerAllocateResponse, DeviceSpec, Mount
from kdp_host.cdi_files import Edits
from kdp_host.cdi_lookup import CdiNames
from kdp_host.checkpoint_handed import read_handed
from kdp_host.holdings import Holder, Holdings
from kdp_host.kubelet_checkpoint import Handed, HandedClaims
from kdp_host.ownership import OwnershipIndex
from kdp_host.ownership_claims import Owner, claim_of

from .fake_nodes import FakeNodes
from .test_kubelet_checkpoint import write_checkpoint
from .test_ownership import R1, Host, dev

KIND = "vendor.example/gpu"


def spec(directory: Path, name: str, devices: dict[str, Any], **common: Any) -> None:
    """A spec file of KIND: device -> its containerEdits; `common`: the spec's own."""
    directory.mkdir(exist_ok=True)
    document = {
        "cdiVersion": "0.6.0",
        "kind": KIND,
        "devices": [{"name": n, "containerEdits": e} for n, e in devices.items()],
        **({"containerEdits": common} if common else {}),
    }
    text = json.dumps(document)
    if name.endswith(".yaml"):
        text = "# YAML\n" + json.dumps(document, indent=1)  # (JSON is YAML)
    (directory / name).write_text(text)


def nodes(*paths: str, host: bool = True) -> dict[str, Any]:
    return {"deviceNodes": [{"path": p, **({"hostPath": p} if host else {})} for p in paths]}


def test_a_name_hands_out_its_device_and_spec_edits_of_json_or_yaml(tmp_path: Path) -> None:
    spec(
        tmp_path / "etc",
        "v.yaml",
        {
            "gpu0": {
                **nodes("/dev/g0", host=False),
                "mounts": [{"hostPath": "/lib/g", "containerPath": "/g"}],
            }
        },
        deviceNodes=[{"path": "/dev/ctl"}],
    )
    cdi = CdiNames([str(tmp_path / "etc")])
    found = cdi.resolve([f"{KIND}=gpu0"])
    assert found.edits == Edits(("/dev/g0", "/dev/ctl"), ("/lib/g",))
    assert found.unresolved == ()


def test_a_later_dir_wins_and_two_files_of_one_dir_both_count(tmp_path: Path) -> None:
    low, high = tmp_path / "etc", tmp_path / "run"
    spec(low, "a.json", {"gpu0": nodes("/dev/old"), "gpu1": nodes("/dev/one")})
    spec(high, "b.json", {"gpu0": nodes("/dev/new")})
    cdi = CdiNames([str(low), str(high)])
    assert cdi.resolve([f"{KIND}=gpu0", f"{KIND}=gpu1"]).edits.nodes == ("/dev/new", "/dev/one")
    spec(high, "c.json", {"gpu0": nodes("/dev/other")})
    found = cdi.resolve([f"{KIND}=gpu0"])
    assert found.edits.nodes == ("/dev/new", "/dev/other")
    assert [why for _, why in found.unresolved] == ["defined by two files of one dir: both booked"]


def test_a_name_that_resolves_nowhere_says_why(tmp_path: Path) -> None:
    spec(tmp_path, "a.json", {"gpu0": nodes("/dev/g0")})
    (tmp_path / "bad.yaml").write_text("kind: [")
    cdi = CdiNames([str(tmp_path), str(tmp_path / "absent")])
    found = cdi.resolve([f"{KIND}=gpu9", "other.example/x=y", "no-equals"])
    assert found.edits == Edits()
    why = dict(found.unresolved)
    assert why[f"{KIND}=gpu9"].startswith(f"kind {KIND} has no device gpu9 (unusable: ")
    assert why["other.example/x=y"].startswith("no spec file of kind other.example/x in ")
    assert "bad.yaml is not a CDI spec" in why["other.example/x=y"]
    assert why["no-equals"].startswith("not a qualified CDI name")
    assert cdi.first_said("r", "no-equals", why["no-equals"])
    assert not cdi.first_said("r", "no-equals", why["no-equals"])
    cdi.own_kinds = frozenset({"other.example/x"})  # (this host's own answer: not said)
    assert not cdi.first_said("r", "other.example/x=y", why["other.example/x=y"])


def test_changed_kinds_are_those_looked_up_whose_definitions_changed(tmp_path: Path) -> None:
    spec(tmp_path, "a.json", {"gpu0": nodes("/dev/g0")})
    cdi = CdiNames([str(tmp_path)])
    assert cdi.changed_kinds() == frozenset()  # (nothing looked up yet)
    cdi.resolve([f"{KIND}=gpu1"])
    assert cdi.changed_kinds() == frozenset()
    other = {"cdiVersion": "0.3.0", "kind": "o.example/x", "devices": [{"name": "x"}]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert cdi.changed_kinds() == frozenset()  # (a kind nobody looked up)
    spec(tmp_path, "a.json", {"gpu0": nodes("/dev/g0"), "gpu1": nodes("/dev/g1")})
    os.utime(tmp_path / "a.json", ns=(1, 1))  # (a new signature even within one tick)
    assert cdi.changed_kinds() == {KIND}
    assert cdi.resolve([f"{KIND}=gpu1"]).edits.nodes == ("/dev/g1",)


def test_an_answers_device_specs_cdi_names_and_annotations_are_booked_together(
    tmp_path: Path,
) -> None:
    spec(tmp_path / "cdi", "a.json", {"gpu0": nodes("/dev/g0"), "gpu1": nodes("/dev/g1")})
    answer = ContainerAllocateResponse(
        devices=[DeviceSpec(container_path="/dev/g0", host_path="/dev/g0")],
        mounts=[Mount(container_path="/m", host_path="/m")],
        cdi_devices=[CdiDevice(name=f"{KIND}=gpu0")],
        annotations={"cdi.k8s.io/x": f"{KIND}=gpu1, {KIND}=gpu7", "other": f"{KIND}=gpu8"},
    )
    entry = {
        "PodUID": "u",
        "ContainerName": "c",
        "ResourceName": KIND,
        "DeviceIDs": {"-1": ["gpu0", "gpu1"]},
        "AllocResp": base64.b64encode(bytes(answer)).decode(),
    }
    write_checkpoint(tmp_path, entry)
    cdi = CdiNames([str(tmp_path / "cdi")])
    [found] = read_handed(str(tmp_path), None, resolve=lambda p: None, cdi=cdi) or []
    handed = found.handed
    assert handed.cdi_names == (f"{KIND}=gpu0", f"{KIND}=gpu1", f"{KIND}=gpu7")
    assert (handed.paths, handed.nodes) == (("/dev/g0", "/dev/g1", "/m"), 2)
    assert [name for name, _ in handed.unresolved] == [f"{KIND}=gpu7"]


def test_podresources_adds_its_devices_claims_to_an_id_booked_with_an_unresolved_name() -> None:
    """An answer of a resource of this host with a CDI name no spec file defines and a
    static mount: the checkpoint books the mount, and PodResources, showing a pod hold the
    ID, adds the claims of its device (before: the answer was skipped whole, and booking
    the mount alone would have kept PodResources from booking the device's node)."""
    now = [100.0]
    nodes = FakeNodes({"/dev/a": ("c", 1), "/m": ("d", 9)})
    host = Host(nodes)
    host.index = OwnershipIndex(host.metrics, nodes, clock=lambda: now[0])
    unresolved = ((f"{KIND}=a", "no spec file"),)
    handed = Handed(R1, ("a",), ("/m",), (f"{KIND}=a",), 0, unresolved)
    host.index.take_handed([HandedClaims(handed, (claim_of("/m", nodes),))])
    host.publish(R1, dev("a", "/dev/a"))
    owner = Owner(R1, "a")
    assert host.index._ledger.bookings[owner].claims == ()
    pod = (Holder("ns", "p1", "c", 0.0),)
    host.index.holdings(Holdings(now[0] + 60, 0.0, {R1: {"a": pod}}))
    booking = host.index._ledger.bookings[owner]
    assert [path for _, path, _ in booking.claims] == ["/dev/a"]
    assert [path for _, path, _ in booking.places] == ["/m"]
    assert owner not in host.index._ledger.unresolved
