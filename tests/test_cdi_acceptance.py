"""A spec file the runtime's CDI library refuses defines nothing; one it may read or not
(a newer cdiVersion) adds its definition to the one it would replace (`cdi_acceptance`, the
one rule `cdi_files`; issue 17, hostile28 G2).

Before, any YAML or JSON file with `kind` and `devices` counted: a later dir's file with an
unknown field, an unknown cdiVersion or an invalid device name won for kdp-host, so it booked
that file's node while the runtime handed out the earlier valid file's, which kdp-host then
gave to its own pod (one node in two live pods).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdp_host.cdi_acceptance import judge
from kdp_host.cdi_dirs import check_spec_dirs
from kdp_host.cdi_files import SpecFiles, parse_spec, winning
from kdp_host.cdi_lookup import CdiNames
from kdp_host.cdi_resolution import winning_entries

from .test_checkpoint_bookings import healthy_count
from .test_foreign_cdi_kubelet import GPU, KIND, A, CdiPlugin, serving, setup, write_spec

OWN = "example.com_fpga:fpga0"


def _spec(node: str = "/dev/b", **change: Any) -> dict[str, Any]:
    edits = {"deviceNodes": [{"path": "/dev/gpu0", "hostPath": node}]}
    return {
        "cdiVersion": "0.5.0",
        "kind": KIND,
        "devices": [{"name": "gpu0", "containerEdits": edits}],
        **change,
    }


VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "valid": ("vendor.json", _spec()),
    "yml": ("vendor.yml", _spec()),
    "field": ("vendor.json", _spec(**{"x-generated-by": "tool 2.0"})),
    "version": ("vendor.json", _spec(cdiVersion="9.9.9")),
    "nodevs": ("vendor.json", {**_spec(), "devices": [*_spec()["devices"], {"name": ""}]}),
    "case": (
        "vendor.json",
        {
            **_spec(),
            "devices": [
                {
                    "name": "gpu0",
                    "ContainerEdits": {
                        "DeviceNodes": [{"Path": "/dev/gpu0", "HOSTPATH": "/dev/b"}]
                    },
                }
            ],
        },
    ),
}


def _edited(**node: Any) -> dict[str, Any]:
    """`_spec` with its node given `node`'s fields, or (`hookName`) a hook besides."""
    spec = _spec()
    edits = spec["devices"][0]["containerEdits"]
    if "hookName" in node:
        edits["hooks"] = [{"path": "/bin/true", **node}]
    else:
        edits["deviceNodes"][0].update(node)
    return spec


VARIANTS.update(
    perm=("vendor.json", _edited(permissions="rwx")),
    hook=("vendor.json", _edited(hookName="postStartContainer")),
    nodetype=("vendor.json", _edited(type="x")),
)
"""A later dir's file defining gpu0 = /dev/b (hostile28 G2's variants; G10's: its fields in
another case, which the library matches: what they say is booked, with the union; G2b's:
an edit some library versions refuse the file for, the union too)."""
UNSURE = ("version", "case", "perm", "hook", "nodetype")
"""Variants the runtime may or may not take: both definitions booked."""


def _old(declared: str, needed: str) -> tuple[str, str]:
    return f"cdiVersion {declared} is older than its content needs ({needed})", ""


def _table(node: str) -> dict[str, Any]:
    return {"deviceNodes": [{"path": node, "hostPath": node}]}


@pytest.mark.parametrize(
    ("change", "verdict"),
    [
        ({}, ("", "")),
        ({"cdiVersion": "v0.5.0"}, ("", "")),
        ({"cdiVersion": None, "CDIVersion": "0.5.0"},
         ("", "field spec.CDIVersion in another case")),
        ({"x-generated-by": "t"}, ("unknown field spec.x-generated-by", "")),
        ({"Kind": KIND}, ("", "field spec.Kind in another case")),  # (the library takes it)
        ({"cdiVersion": "0.4.0"}, _old("0.4.0", "0.5.0")),
        ({"cdiVersion": "0.2.0"}, _old("0.2.0", "0.5.0")),
        ({"cdiVersion": "0.9.0"}, ("unknown cdiVersion '0.9.0'", "")),
        ({"cdiVersion": "9.9.9"}, ("", "cdiVersion 9.9.9 is newer than kdp-host knows (1.1.0)")),
        ({"kind": "vendor.example"}, ("invalid kind 'vendor.example'", "")),
        ({"devices": []}, ("no devices", "")),
        ({"devices": [{"name": "-x", "containerEdits": {}}]}, ("invalid device name '-x'", "")),
        ({"devices": [{"name": "a", "containerEdits": {"deviceNodes": [{"path": "/d", "x": 0}]}}]},
         ("unknown field devices[0].containerEdits.deviceNodes[0].x", "")),
        ({"devices": [{"name": "a", "annotations": {"k": "v"}, "containerEdits": _table("/d")}]},
         _old("0.5.0", "0.6.0")),
        ({"cdiVersion": "1.1.0", "containerEdits": {"netDevices": [{"name": "n"}]}}, ("", "")),
        ({"containerEdits": {"netDevices": [{"name": "n"}]}},
         _old("0.5.0", "1.1.0")),
    ],
)  # fmt: skip
def test_a_spec_is_judged_as_the_cdi_library_reads_it(
    change: dict[str, Any], verdict: tuple[str, str]
) -> None:
    found = judge({k: v for k, v in _spec(**change).items() if v is not None})
    assert (found.refused, found.unsure) == verdict


def _dirs(tmp_path: Path, variant: str) -> list[str]:
    low, high = tmp_path / "etc", tmp_path / "run"
    low.mkdir()
    high.mkdir()
    (low / "a.json").write_text(json.dumps(_spec("/dev/a")))
    name, spec = VARIANTS[variant]
    (high / name).write_text(json.dumps(spec))
    return [str(low), str(high)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_later_file_the_runtime_refuses_does_not_win(tmp_path: Path, variant: str) -> None:
    """The runtime resolves gpu0 by the earlier file where the later one is refused, by the
    later one where it is valid; where that is not known (a newer cdiVersion) both nodes
    are booked and the own-file check takes the name as not resolved as it says."""
    dirs = _dirs(tmp_path, variant)
    found = CdiNames(dirs).resolve([f"{KIND}=gpu0"])
    expected = (
        {"/dev/a", "/dev/b"}
        if variant in UNSURE
        else {"valid": {"/dev/b"}}.get(variant, {"/dev/a"})
    )
    assert set(found.edits.nodes) == expected
    assert bool(found.unresolved) == (variant in UNSURE), found.unresolved
    won = winning_entries(dirs, KIND, SpecFiles())
    assert won == {"gpu0": None if variant in UNSURE else frozenset(expected)}
    if variant in ("field", "nodevs"):
        assert "refused by the runtime's CDI library" in next(
            iter(winning(dirs, SpecFiles()).bad.values())
        )


@pytest.mark.parametrize("variant", ["field", "version"])
def test_the_own_file_clashes_only_with_a_file_the_runtime_may_read(
    tmp_path: Path, variant: str
) -> None:
    """A file of the spec dir defining an own name: refused, no clash (the runtime skips
    it: before, the device was held); unsure, a clash (it may drop the name)."""
    own = tmp_path / "spec" / "kdp-host_example.com_fpga.json"
    own.parent.mkdir()
    own.write_text(json.dumps({**_spec(), "kind": "example.com/fpga"}))
    _, spec = VARIANTS[variant]
    devices = [{**spec["devices"][0], "name": OWN}]
    other = tmp_path / "spec" / "vendor.json"
    other.write_text(json.dumps({**spec, "kind": "example.com/fpga", "devices": devices}))
    found = check_spec_dirs(str(own), "example.com/fpga", frozenset({OWN}), 60.0)
    assert found.clashes == ({} if variant == "field" else {str(other): {OWN}})


@pytest.mark.parametrize("variant", ["field", "yml", "version", "nodevs", "valid", "case", "perm"])
async def test_a_later_dirs_file_the_runtime_refuses_leaves_the_foreign_pods_node_held(
    real_kubelet_factory: Any, start_host: Any, short_dir: Path, variant: str, caplog: Any
) -> None:
    """hostile28 G2 through the kubelet's real device manager: the other plugin hands gpu0
    (= fpga0 by its file in the earlier dir) to g0 by CDI name; the later dir holds a file
    defining gpu0 = fpga1 that the runtime refuses (field, yml, nodevs: fpga0 held, p0 gets
    fpga1), may take (version: both held, p0 gets none) or takes (valid: fpga1 held). Before,
    fpga1 was held for every variant and fpga0 handed to p0: in two live pods. G10 (case:
    fields in another case, which the library matches): both held, as for version (before,
    its definition had no paths: fpga1 went to p0 too); G2b (perm: a node's permissions
    `rwx`, which library versions that check refuse the file for): both held. A refused
    file is said once, with why."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    config, paths = setup(kubelet, short_dir)
    later = short_dir / "cdiB"
    later.mkdir()
    config = config.replace(
        f"cdiRuntimeDirs: [{short_dir / 'cdi'}]", f"cdiRuntimeDirs: [{short_dir / 'cdi'}, {later}]"
    )
    gpu = {"gpu0": paths["gpu0"]}
    write_spec(short_dir / "cdi", gpu)
    name, spec = VARIANTS[variant]
    spec = json.loads(json.dumps(spec).replace("/dev/b", paths["gpu1"]))
    (later / name).write_text(json.dumps(spec))
    async with serving(kubelet, CdiPlugin(gpu, "cdi"), GPU):
        await kubelet.await_for(healthy_count(GPU, 1), what="the other plugin lists")
        g0 = await kubelet.acall(kubelet.allocate, "g0", {GPU: 1})
        assert g0["error"] == "", g0
        await start_host(config)
        free = 0 if variant in UNSURE else 1
        await kubelet.await_for(healthy_count(A, free), what="the runtime's node held")
        p0 = await kubelet.acall(kubelet.allocate, "p0", {A: 1})
        got = [d["PathOnHost"] for d in p0["devices"]]
        if variant in UNSURE:
            assert p0["error"] and not got, p0
        else:
            assert got == [paths["gpu0" if variant == "valid" else "gpu1"]], p0
    said = [
        r.__dict__["kdp_fields"]
        for r in caplog.records
        if r.getMessage() == "cdi_spec_file_skipped"
    ]
    if variant in ("field", "nodevs"):
        assert [f["path"] for f in said] == [str(later / name)], said
        assert "refused by the runtime's CDI library" in said[0]["reason"]
    else:
        assert not said


@pytest.mark.parametrize("form", ["json", "yaml"])
def test_a_key_given_twice_is_refused(form: str) -> None:
    """The library decodes strictly (JSON as YAML): a key twice in one object refuses the
    file; Python's readers took the last one."""
    text = json.dumps(_spec())
    if form == "yaml":
        text = yaml.safe_dump(_spec())
    twice = text.replace("kind:", "kind: a.example/b\nkind:", 1)
    if form == "json":
        twice = text.replace('"kind":', '"kind": "a.example/b", "kind":')
    assert parse_spec(twice.encode()) == (
        "is refused by the runtime's CDI library (key 'kind' given twice): skipped"
    )
    assert not isinstance(parse_spec(text.encode()), str)
