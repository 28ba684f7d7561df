"""What a stop leaves of a CDI spec file, on the real kubelet (issue 17, hostile27 F5).

A container of a pod that holds a device by CDI name resolves the name again when it
restarts, without a new Allocate. The chart's default upgrade stops the old instance first
(maxSurge 0): a stop that removed the spec file left such a container unable to start until
the next instance wrote it. So a stop keeps the entries of the IDs a booking holds, only those
(what a keeper writes for a resource a reload removed), and the next instance takes the
file over; with none held the file goes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdp_host.config.outputs import owner_path, spec_file_name

from .conftest import wait_until
from .kubelet_harness import healthy
from .test_cdi_reload import resolved

A = "example.com/a"


def _config(socket_dir: Path, short_dir: Path, spec_dir: str = "cdi") -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}}}\nstateDir: {short_dir / 'state'}\n"
        f"cdiRuntimeDirs: [{short_dir / 'cdi'}, {short_dir / 'later'}]\n"
        f'resources:\n  - name: {A}\n    glob: {{paths: ["{short_dir / "dev"}/fpga*"]}}\n'
        f"    allocate: {{cdi: {{kind: example.com/fpga, specDir: {short_dir / spec_dir}}}}}\n"
    )


async def _held_at_stop(kubelet: Any, short_dir: Path, start_host: Any) -> tuple[str, list[str]]:
    """fpga0 and fpga1 served from `cdi`; p0 holds one of them; the host stopped: p0's CDI
    name, and the node it resolves to."""
    (short_dir / "dev").mkdir()
    for i in (0, 1):
        (short_dir / "dev" / f"fpga{i}").touch()
    running = await start_host(_config(kubelet.socket_dir, short_dir))
    await kubelet.await_for(healthy(A, 2), what="fpga0 and fpga1 advertised")
    p0 = await kubelet.acall(kubelet.allocate, "p0", {A: 1})
    assert p0["error"] == "", p0
    (name,) = [c.get("Name", c.get("name")) for c in p0["cdi_devices"]]
    (held,) = p0["device_ids"][A]
    node = [str(short_dir / "dev" / held)]
    assert resolved(short_dir / "cdi")[name] == node
    await running.shutdown()
    return name, node


async def test_a_stop_keeps_the_held_entries_for_the_next_instance(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """p0 holds one of fpga0/fpga1 by CDI name. A graceful stop leaves the file with p0's
    entry alone (not the free device's), its owner file with it; the next instance takes it
    over and writes both again. Before: the spec dir was empty after the stop."""
    kubelet = real_kubelet_factory()
    spec_dir = short_dir / "cdi"
    spec, config = spec_dir / spec_file_name(A), _config(kubelet.socket_dir, short_dir)
    name, node = await _held_at_stop(kubelet, short_dir, start_host)
    assert resolved(spec_dir) == {name: node}, "a stop must keep the held entry, only it"
    owner = Path(owner_path(str(spec)))
    old_owner = owner.read_text()

    await start_host(config)
    await kubelet.await_for(healthy(A, 2), what="the next instance registered")
    await wait_until(lambda: len(resolved(spec_dir)) == 2, what="both entries written again")
    assert resolved(spec_dir)[name] == node
    assert owner.read_text() != old_owner, "the next instance takes the file over"


async def test_a_stop_with_nothing_held_removes_the_file(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    kubelet = real_kubelet_factory()
    (short_dir / "dev").mkdir()
    (short_dir / "dev" / "fpga0").touch()
    spec = short_dir / "cdi" / spec_file_name(A)
    running = await start_host(_config(kubelet.socket_dir, short_dir))
    await kubelet.await_for(healthy(A, 1), what="fpga0 advertised")
    await wait_until(spec.exists, what="the spec file written")
    await running.shutdown()
    assert not spec.exists() and not Path(owner_path(str(spec))).exists()


async def test_what_a_stop_left_in_another_spec_dir_goes_once_the_next_instance_wrote_it(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    """The update also moves specDir to a later runtime dir: the next instance writes p0's
    entry there, and the file left in the old dir (held entries only, as this host defines
    them) is removed then, not held as a clash until its lease runs out (30 s: fpga0 or
    fpga1 Unhealthy, /readyz not ready meanwhile)."""
    kubelet = real_kubelet_factory()
    name, node = await _held_at_stop(kubelet, short_dir, start_host)
    left = short_dir / "cdi" / spec_file_name(A)
    assert left.exists()
    await start_host(_config(kubelet.socket_dir, short_dir, "later"))
    await kubelet.await_for(healthy(A, 2), 10.0, what="no clash with the left file")
    assert not left.exists() and not Path(owner_path(str(left))).exists()
    assert resolved(short_dir / "later")[name] == node
