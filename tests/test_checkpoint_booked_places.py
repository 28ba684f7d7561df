"""A node booked only from the kubelet's checkpoint (another plugin's running pod after a
migration, or a resource removed while kdp-host was down with its stateDir gone) is owned
like any booked node (hostile15 F11, F12): no listed device claims it, and the index's
owner lookup asked only the devices' claims, so an Allocate handed it out through its
`allocate.command` output or `allocate.mounts` (two live pods on one node), and a release
or a preStart ran on a path made anew as it."""

from __future__ import annotations

import functools

import pytest

from kdp_host.allocation import HookFailed
from kdp_host.hooks import check_places
from kdp_host.kubelet_checkpoint import Handed as CheckpointHanded
from kdp_host.kubelet_checkpoint import HandedClaims
from kdp_host.ownership_shared import PlaceOwned

from .fake_nodes import FakeNodes, indexed, node

R, GDP = "vendor.example/one", "gdp.example/gdev"


async def test_a_node_booked_from_the_checkpoint_is_handed_out_by_no_answer() -> None:
    nodes = FakeNodes({"/d/n0": ("c", 3), "/g/g0": ("c", 5), "/g": ("d", 9)}, nothing=True)
    index, _ = await indexed({R: [node("/d/n0")]}, nodes)
    claims = ((("c", 5), "/g/g0", "/g/g0"),)
    index.take_handed([HandedClaims(CheckpointHanded(GDP, ("x1",), ("/g/g0",)), claims)])
    for place in ("/g/g0", "/g"):  # (the node; a directory holding it, mounted)
        with pytest.raises(PlaceOwned, match=f"which device x1 of {GDP} owns"):
            await index.book(R, ["n0"], {"n0": [place]})


async def test_a_release_does_not_act_on_a_path_made_anew_as_a_node_booked_from_it() -> None:
    nodes = FakeNodes({"/d/n0": ("c", 3), "/g/g0": ("c", 5)}, nothing=True)
    n0 = node("/d/n0")
    index, _ = await indexed({R: [n0]}, nodes)
    await index.book(R, ["n0"])
    claims = ((("c", 5), "/g/g0", "/g/g0"),)
    index.take_handed([HandedClaims(CheckpointHanded(GDP, ("x1",), ("/g/g0",)), claims)])
    check = functools.partial(index.changed_places, R)
    handed = {"/d/n0": ("c", 3)}
    await check_places(check, "release of n0:", ["n0"], [n0], handed)
    nodes.nodes["/d/n0"] = ("c", 5)  # made anew as the number the other plugin's pod holds
    with pytest.raises(HookFailed, match=f"device x1 of {GDP}"):
        await check_places(check, "release of n0:", ["n0"], [n0], handed)
