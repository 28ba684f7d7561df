"""A place where nothing is yet is claimed where it will be: the real path of its longest
existing prefix, then the rest (hostile4 H4). Spelled through a link to a directory above it,
it was claimed by its text, so two resources each advertised "their" missing place and both
pods got the directory the first container's runtime made. Since hostile9 H5 no such place is
handed out at all (what it reaches on the host is not known): a device mounting one waits,
held, until it is there, then the two spellings are one directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdp_host.devices import Device, DeviceMount
from kdp_host.ownership_claims import NOTHING, Unresolvable, claim_of, reach

from .conftest import wait_until
from .fake_nodes import indexed
from .kubelet_harness import RealKubelet

A = "h4.example/a"
B = "h4.example/b"


def test_a_missing_path_is_claimed_by_the_real_path_of_what_exists_of_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "lnk").symlink_to(run)
    (tmp_path / "alias").symlink_to(run)
    for spelling in ("run/m", "run/lnk/m", "alias/m", "run/lnk/lnk/./m", "run/x/../m"):
        claim = claim_of(str(tmp_path / spelling), reach)
        assert claim[0] == (NOTHING, str(run / "m")), spelling
        assert claim[2] == str(run / "m"), spelling
    # deeper: only the existing prefix is resolved, the rest is kept as written
    assert claim_of(str(tmp_path / "alias/m/n"), reach)[0] == (NOTHING, str(run / "m/n"))
    assert reach(str(tmp_path / "alias/m")) is not None
    assert reach("/no\0such") is None


def mounting(device_id: str, host_path: str) -> Device:
    return Device(device_id, mounts=(DeviceMount(host_path, "/data"),))


async def test_a_missing_place_through_a_link_is_the_same_place(tmp_path: Path) -> None:
    """H4 in the index: a missing mount source is advertised by neither resource (hostile9
    H5: what it reaches on the host is not known) and no answer hands it out; once it is
    there, the second resource's device, which mounts it through a link to its parent, is
    held, not advertised beside the first."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "lnk").symlink_to(run)
    places = ((A, run / "m"), (B, run / "lnk" / "m"))
    devices = {n: [mounting(f"{n[-1]}0", str(p))] for n, p in places}
    index, tables = await indexed(devices)
    assert tables[A].snapshot.devices == tables[B].snapshot.devices == ()
    spelled = str(run / "lnk" / "m")
    with pytest.raises(Unresolvable, match="does not exist in kdp-host's view"):
        await index.hand_out(A, ["a0"], [spelled])
    (run / "m").mkdir()
    index, tables = await indexed(devices)
    assert [d.id for d in tables[A].snapshot.devices] == ["a0"]
    assert tables[B].snapshot.devices == ()
    # what the answer hands out is that place, not the text through the link
    assert await index.hand_out(A, ["a0"], [spelled]) == {spelled: str(run / "m")}


async def test_hostile4_h4_a_missing_mount_source_through_a_link_is_handed_out_once(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """H4 through the real kubelet: two shell probes print the same mount source, one
    through a link to its parent directory. While it is missing neither is advertised
    (hostile9 H5); once it is there, only one of them is, so no two pods get it."""
    kubelet: RealKubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    run = short_dir / "run"
    run.mkdir()
    (run / "lnk").symlink_to(run)
    resources = ""
    for name, path in ((A, run / "m"), (B, run / "lnk" / "m")):
        probe = short_dir / f"{name[-1]}.json"
        device = {"id": f"{name[-1]}0", "mounts": [{"hostPath": str(path), "containerPath": "/d"}]}
        probe.write_text(json.dumps([device]))
        resources += (
            f"  - name: {name}\n"
            f"    shell: {{command: [cat, {probe}], format: json, interval: 1s}}\n"
        )
    running = await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nresources:\n{resources}"
    )

    def both_live(k: RealKubelet) -> bool:
        return all(k.resource(name) is not None for name in (A, B))

    def healthy(k: RealKubelet) -> int:
        seen = [k.resource(name) for name in (A, B)]
        return sum(s["healthy"] for s in seen if s is not None)

    await kubelet.await_for(both_live, what="both resources registered")
    await wait_until(lambda: unsafe(running, A) + unsafe(running, B) == 2, what="both held")
    assert healthy(kubelet) == 0
    (run / "m").mkdir()
    await kubelet.await_for(lambda k: healthy(k) == 1, what="one of the two devices advertised")
    first, second = (A, B) if (kubelet.resource(A) or {}).get("healthy") == 1 else (B, A)
    assert (await kubelet.acall(kubelet.allocate, "pod1", {first: 1}))["error"] == ""
    refused = await kubelet.acall(kubelet.allocate, "pod2", {second: 1})
    assert refused["error"] != "", refused


def unsafe(running: object, resource: str) -> float:
    value = running.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "kdp_driver_skipped_total", {"resource": resource, "reason": "unsafe_mount"}
    )
    return value or 0.0
