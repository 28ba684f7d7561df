"""The one rule of what a CDI spec file is, what it defines and which definition wins
(`cdi_files`), and every reader of the runtime's dirs holding to it (issue 17).

Before, the rule lived twice: the foreign-name lookup (`cdi_lookup`) read `.json`, `.yaml`
and `.yml` files and let a later dir's definition win over a name two files of an earlier dir
define; the own spec file's checks (`cdi_dirs.check_spec_dirs`, `cdi_resolution`) read
`.json` files only. The runtime (the CDI library) reads `.json` and `.yaml` files and drops a
name two files of any one dir define.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdp_host.cdi_dirs import check_spec_dirs
from kdp_host.cdi_files import Edits, SpecFiles, is_spec_file, parse_spec, winning
from kdp_host.cdi_lookup import CdiNames
from kdp_host.cdi_resolution import winning_entries

KIND = "example.com/fpga"
OWN = "example.com_fpga:fpga0"


def _write(path: Path, devices: dict[str, str], kind: str = KIND) -> None:
    """A spec file of `kind` (JSON or YAML by its suffix): device name -> its node."""
    spec: dict[str, Any] = {
        "cdiVersion": "0.5.0",
        "kind": kind,
        "devices": [
            {"name": n, "containerEdits": {"deviceNodes": [{"path": p}]}}
            for n, p in devices.items()
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec) if path.suffix == ".json" else yaml.safe_dump(spec))


def test_a_spec_file_is_what_the_runtime_reads() -> None:
    assert is_spec_file("vendor.json") and is_spec_file("vendor.yaml")
    for name in ("vendor.yml", ".kdp-host_x.owner", "kdp-host_x.json.tmp1", "vendor.JSON"):
        assert not is_spec_file(name), name


def test_one_parser_reads_json_and_yaml_alike(tmp_path: Path) -> None:
    _write(tmp_path / "a.json", {"d": "/dev/d"})
    _write(tmp_path / "a.yaml", {"d": "/dev/d"})
    one = parse_spec((tmp_path / "a.json").read_bytes())
    assert one == parse_spec((tmp_path / "a.yaml").read_bytes())
    assert not isinstance(one, str) and one.entries(KIND) == {"d": {"/dev/d"}}
    assert isinstance(parse_spec(b"kind: ["), str)


def test_a_yaml_file_defining_an_own_name_clashes_in_the_spec_dir(tmp_path: Path) -> None:
    """The own spec file's check sees a `.yaml` file of its dir that defines one of its
    names (the runtime drops the name); before, only `.json` files were looked at."""
    own = tmp_path / "spec" / "kdp-host_example.com_fpga.json"
    _write(own, {OWN: "/dev/fpga0"})
    _write(tmp_path / "spec" / "vendor.yaml", {OWN: "/dev/other"})
    _write(tmp_path / "spec" / "ignored.yml", {"example.com_fpga:fpga1": "/dev/other"})
    names = frozenset({OWN, "example.com_fpga:fpga1"})
    found = check_spec_dirs(str(own), KIND, names, 60.0)
    assert found.clashes == {str(tmp_path / "spec" / "vendor.yaml"): {OWN}}


def test_a_yaml_file_of_a_later_dir_wins_over_the_own_file(tmp_path: Path) -> None:
    """`follow_above`'s reading: a later dir's `.yaml` file defines the name the runtime
    resolves; before, the answer went out by the own file's entry."""
    _write(tmp_path / "run" / "vendor.yaml", {OWN: "/dev/other"})
    assert winning_entries([str(tmp_path / "run")], KIND, SpecFiles()) == {OWN: {"/dev/other"}}


def test_a_name_dropped_in_one_dir_stays_dropped_whatever_a_later_dir_defines(
    tmp_path: Path,
) -> None:
    """The CDI library's rule: two files of one dir that define a name drop it, a later
    dir's definition notwithstanding (its cache deletes each conflict at the end). Before,
    the foreign lookup let the later dir's definition win and booked its node only."""
    low, high = tmp_path / "etc", tmp_path / "run"
    _write(low / "a.json", {"g": "/dev/a"})
    _write(low / "b.yaml", {"g": "/dev/b"})
    _write(high / "c.json", {"g": "/dev/c"})
    dirs = [str(low), str(high)]
    assert winning_entries(dirs, KIND, SpecFiles()) == {"g": None}
    found = CdiNames(dirs).resolve([f"{KIND}=g"])
    assert set(found.edits.nodes) == {"/dev/a", "/dev/b", "/dev/c"}  # (all booked)
    assert [why for _, why in found.unresolved] == ["defined by two files of one dir: both booked"]


@pytest.mark.parametrize("layout", range(6))
def test_every_reader_resolves_a_name_as_the_others_do(tmp_path: Path, layout: int) -> None:
    """The own file's checks, the winning files over it and the foreign lookup agree on
    every layout of files over two dirs (one rule: `cdi_files.winning`)."""
    low, high = tmp_path / "etc", tmp_path / "run"
    low.mkdir()
    high.mkdir()
    layouts: list[list[tuple[Path, str]]] = [
        [(low / "a.yaml", "/dev/a")],
        [(low / "a.json", "/dev/a"), (high / "b.yaml", "/dev/b")],
        [(low / "a.json", "/dev/a"), (low / "b.yaml", "/dev/b")],
        [(high / "a.yml", "/dev/a"), (low / "b.json", "/dev/b")],
        [(low / "a.yaml", "/dev/a"), (high / "b.json", "/dev/b"), (high / "c.yaml", "/dev/c")],
        [(low / "a.json", "/dev/a"), (low / "b.json", "/dev/b"), (high / "c.yaml", "/dev/c")],
    ]
    for path, node in layouts[layout]:
        _write(path, {OWN: node})
    dirs, files = [str(low), str(high)], SpecFiles()
    won = winning_entries(dirs, KIND, files).get(OWN, frozenset())
    found = CdiNames(dirs).resolve([f"{KIND}={OWN}"])
    defining = [p for p, _ in layouts[layout] if is_spec_file(p.name)]
    if won is None:
        assert found.unresolved and len(set(found.edits.nodes)) > 1
    elif won:
        assert not found.unresolved and frozenset(found.edits.nodes) == won
    else:
        assert not defining and found.unresolved
    own = tmp_path / "spec" / "kdp-host_example.com_fpga.json"
    _write(own, {OWN: "/dev/fpga0"})
    clashes = check_spec_dirs(str(own), KIND, frozenset({OWN}), 60.0, dirs, known=files).clashes
    assert set(clashes) == {str(p) for p in defining}
    assert winning(dirs, files).bad == {}


def _one_node(node: dict[str, Any]) -> bytes:
    spec = {"cdiVersion": "0.5.0", "kind": KIND, "devices": [{"name": "d", "containerEdits": {}}]}
    spec["devices"][0]["containerEdits"] = {"deviceNodes": [node]}
    return json.dumps(spec).encode()


def test_a_node_given_by_number_hands_out_that_number() -> None:
    """`type` c/u/b with a `major`: the runtime makes the node from the numbers whatever is at
    its path (hostile28 G9); a FIFO is no device; without a major, the path is stat'ed."""
    given = parse_spec(_one_node({"path": "/dev/x", "type": "u", "major": 240, "minor": 3}))
    assert not isinstance(given, str)
    [number] = given.handed("d").numbers
    assert (number.kind, number.rdev) == ("c", os.makedev(240, 3)) and not given.handed("d").nodes
    fifo = parse_spec(_one_node({"path": "/dev/p", "type": "p"}))
    assert not isinstance(fifo, str) and fifo.handed("d") == Edits()
    by_path = parse_spec(_one_node({"path": "/dev/x", "type": "c"}))
    assert not isinstance(by_path, str) and by_path.handed("d").nodes == ("/dev/x",)
    assert isinstance(
        parse_spec(_one_node({"path": "/x", "type": "b", "major": 8, "minor": -1})), str
    )


def test_a_wildcard_node_is_every_node_it_matches_now(tmp_path: Path) -> None:
    edits = Edits((f"{tmp_path}/fpga*", "/dev/plain"), ("/m",))
    assert edits.matched().nodes == (f"{tmp_path}/fpga*", "/dev/plain"), "none matches: as written"
    for name in ("fpga1", "fpga0", "other"):
        (tmp_path / name).touch()
    expected = (f"{tmp_path}/fpga0", f"{tmp_path}/fpga1", "/dev/plain")
    assert edits.matched() == Edits(expected, ("/m",))
