"""`kdp-host check`'s table says what a run holds back where a device mounts a directory
(issue 17, hostile21 F4): a run reads the trees of claimed directories, and a node (here a
file, claimed by its inode) of another resource's device found in a glob group's directory
holds the group's device (`owned`), in either config order, where o0 was listed before the
group's tree was read (at start, usually; here o0 is listed first). check's index read no
tree and showed it Healthy; it now reads them as a run's does (`check.held_back`: every
list admitted, then the trees read)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from kdp_host.cli import main
from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until
from .handed_setup import head, made_dirs

GROUP, OTHER = "vendor.example/grp", "vendor.example/other"


def _config(d: Path, group_first: bool) -> str:
    group = (
        f"  - name: {GROUP}\n    glob:\n      group:\n"
        f"        - {{path: '{d}/cards/card{{key}}'}}\n"
        f"        - {{path: '{d}/data/d{{key}}', containerPath: '/data{{key}}', readOnly: false}}\n"
    )
    other = f"  - name: {OTHER}\n    glob: {{paths: ['{d}/other/o*']}}\n"
    return head(d) + (group + other if group_first else other + group)


def _table(out: str) -> dict[str, dict[str, str]]:
    """check's table: resource -> device ID -> its state (`Healthy`, `held(owned)`, ...)."""
    table: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4 and words[0] in (GROUP, OTHER):
            table.setdefault(words[0], {})[words[2]] = words[3]
    return table


@pytest.mark.parametrize("group_first", [True, False])
async def test_check_holds_what_a_run_holds_for_a_node_in_a_mounted_directory(
    short_dir: Path, start_host: Any, capsys: pytest.CaptureFixture[str], group_first: bool
) -> None:
    d = made_dirs(short_dir, "cards", "data", "other")
    (d / "cards" / "card0").touch()
    (d / "data" / "d0").mkdir()
    (d / "other" / "o0").touch()
    os.link(d / "other" / "o0", d / "data" / "d0" / "o0")  # (other's node, in grp's directory)
    config = d / "kdp.yaml"
    config.write_text(_config(d, group_first))
    assert await asyncio.to_thread(main, ["check", "--config", str(config)]) == 0
    checked = _table(capsys.readouterr().out)
    assert checked == {GROUP: {"0": "held(owned)"}, OTHER: {"o0": "Healthy"}}, checked

    (d / "cards" / "card0").unlink()  # (the run lists the group once other's o0 is listed)
    async with KubeletSimulator(d / "dp", dial_timeout=5.0) as sim:
        running = await start_host(config.read_text(), config_path=config)
        held = running.host.ownership.held_now
        await sim.wait_for(lambda: GROUP in sim.snapshot() and sim.allocatable(OTHER) == 1)
        (d / "cards" / "card0").touch()
        await wait_until(
            lambda: held(GROUP) and not sim.capacity(GROUP) and sim.allocatable(OTHER) == 1,
            what="the run held the group's device and advertised o0",
        )
        ran = {
            name: {
                **{i: "Healthy" for i in sim.resource(name).healthy_ids},
                **{i: f"held({h.reason})" for i, h in held(name).items()},
            }
            for name in (GROUP, OTHER)
        }
        assert ran == checked, "check's table and what the run advertises and holds"
