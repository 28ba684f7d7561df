"""The one record of what each Allocate handed out (issue 17, "one device, one pod"):
`<stateDir>/handed-out.json` (`handed_out.HandedRecord`), read by preStart, the CDI entries
of held devices and the release; it survives a restart, is bounded, fails closed when lost
or unreadable, and keeps a removed resource's held CDI names resolving until no pod holds
them (`cdi_keeper`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from kdp_host import handed_out
from kdp_host.allocation import AllocationError, cdi_device_name
from kdp_host.cdi_spec import build_spec
from kdp_host.config import load_config_text
from kdp_host.config.outputs import spec_file_name
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceMount, DeviceNode
from kdp_host.files import DaemonThreads
from kdp_host.handed_entries import RecordFull
from kdp_host.handed_out import HANDED_FILE, HandedRecord
from kdp_host.holdings import Holdings
from kdp_host.hooks import handed_devices
from kdp_host.kubelet_checkpoint import Handed, HandedClaims
from kdp_host.logs import get_logger
from kdp_host.ownership import OwnershipIndex
from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until
from .test_cdi_reload import resolved
from .test_prestart_handed import FPGA, _builder
from .test_release import _answer, _Commands, _restarted

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)

KIND = "vendor.example/fpga"


def _record(state: Path) -> HandedRecord:
    record = HandedRecord(str(state), get_logger(), DaemonThreads())
    record.load()
    return record


def _table(path: str = "/dev/fpga0") -> DeviceTable:
    table = DeviceTable()
    node = DeviceNode(path, "/dev/fpga", "rw")
    mount = DeviceMount("/opt/fw", "/fw", read_only=True)
    table.publish(
        [
            Device("fpga0", nodes=(node,), env={"FW": "1"}, mounts=(mount,)),
            Device("fpga1", path="/dev/fpga1"),
        ]
    )
    return table


async def test_the_record_survives_a_restart(short_dir: Path) -> None:
    state = short_dir / "state"
    record = _record(state)
    table = _table()
    record.hand_out(FPGA, table.snapshot, ["fpga0"])
    await record.written()
    again = _record(state)  # a new process on the same stateDir
    device = again.devices(FPGA)["fpga0"]
    assert device.nodes == (DeviceNode("/dev/fpga0", "/dev/fpga", "rw"),)
    assert device.mounts == (DeviceMount("/opt/fw", "/fw", read_only=True),)
    assert dict(device.env) == {"FW": "1"}
    assert not again.withheld(FPGA) and not again.file.unknown  # type: ignore[union-attr]
    moved = _table("/dev2/fpga0")  # what the ID names now
    assert handed_devices(_builder(), moved.snapshot, again.of(FPGA), ["fpga0"]) == [device]


async def test_a_corrupt_record_withholds_what_is_booked_until_handed_out_again(
    short_dir: Path,
) -> None:
    state = short_dir / "state"
    state.mkdir()
    (state / HANDED_FILE).write_text("{not json")
    record = _record(state)
    assert record.file is not None and record.file.unknown
    assert (state / f"{HANDED_FILE}.unreadable").exists()
    record.booked_at_start({FPGA: {"fpga0", "fpga1"}})
    handed = record.of(FPGA)
    assert handed.withheld == {"fpga0", "fpga1"}
    table = _table()
    with pytest.raises(AllocationError, match="fpga0,fpga1 was handed out is not known"):
        handed_devices(_builder(), table.snapshot, handed, ["fpga0", "fpga1"])
    config = load_config_text(
        f"resources:\n  - name: {FPGA}\n    glob: {{paths: ['/dev/fpga*']}}\n"
        f"    allocate: {{cdi: {{kind: {KIND}}}}}\n"
    ).resources[0]
    assert build_spec(config, table.snapshot, handed.devices, {"fpga0", "fpga1"}) is None
    handed.hand_out(table.snapshot, ["fpga1"])  # a new Allocate: known again
    handed.let_go(lambda advertised: advertised == "fpga1")  # fpga0's booking ended
    assert handed.withheld == frozenset() and not record.file.unsettled
    await record.written()
    assert json.loads((state / HANDED_FILE).read_text())["resources"][FPGA].keys() == {"fpga1"}


async def test_a_missing_record_fails_closed_only_when_the_bookings_were_lost(
    short_dir: Path,
) -> None:
    """A state directory emptied while kdp-host was down (bookings from the kubelet's
    checkpoint, no ownership.json): the booked IDs are withheld. A record missing beside an
    ownership.json is one an older version never wrote: the devices are taken as listed."""
    emptied = _record(short_dir / "emptied")
    emptied.booked_at_start({FPGA: {"fpga0"}}, bookings_found=False)
    assert emptied.withheld(FPGA) == {"fpga0"}
    upgraded = _record(short_dir / "upgraded")
    upgraded.booked_at_start({FPGA: {"fpga0"}}, bookings_found=True)
    assert upgraded.withheld(FPGA) == frozenset()


def test_the_record_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handed_out, "MAX_DEVICES", 1)
    record, table = HandedRecord(), _table()
    record.check_room(FPGA, table.snapshot, ["fpga0"])
    record.hand_out(FPGA, table.snapshot, ["fpga0"])
    record.check_room(FPGA, table.snapshot, ["fpga0"])  # the same device: no more room needed
    with pytest.raises(RecordFull, match=f"{HANDED_FILE} would keep 2 devices"):
        record.check_room(FPGA, table.snapshot, ["fpga1"])
    record.let_go(lambda resource, advertised: False)  # no ID booked: entries go
    assert record.resources() == []


def _cdi_config(
    kubelet: KubeletSimulator, short_dir: Path, with_a: bool, a_cdi: bool = True
) -> str:
    text = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, "
        f"podResourcesSocket: {short_dir / 'pr' / 'kubelet.sock'}, podResourcesInterval: 1s}}\n"
        f"stateDir: {short_dir / 'state'}\nresources:\n"
    )
    entries = [(FPGA, "k1", "dev")] if with_a else []
    entries.append(("vendor.example/other", "k2", "dev2"))
    for name, kind, directory in entries:
        text += f'  - name: {name}\n    glob: {{paths: ["{short_dir / directory}/fpga*"]}}\n'
        if a_cdi or name != FPGA:
            text += (
                f"    allocate: {{cdi: {{kind: vendor.example/{kind}, "
                f"specDir: {short_dir / 'cdi'}}}}}\n"
            )
    if not a_cdi:
        text += f'  - name: {FPGA}\n    glob: {{paths: ["{short_dir / "dev"}/fpga*"]}}\n'
    return text


@pytest.mark.parametrize("reload", ["removes_it", "turns_cdi_off"])
async def test_a_held_cdi_name_of_a_removed_resource_resolves_until_its_booking_ends(
    pod_resources_kubelet: KubeletSimulator, short_dir: Path, start_host, reload: str
) -> None:
    """p1 holds fpga0 (CDI name vendor.example/k1=...); a reload removes the resource, or
    its `allocate.cdi` (hostile20 F4: the file went at once). p1's container may restart and
    resolve the name again: it keeps resolving to dev/fpga0 while the kubelet holds it (one
    keeper writes the removed resource's file), and goes once p1 ended."""
    kubelet = pod_resources_kubelet
    for directory in ("dev", "dev2"):
        (short_dir / directory).mkdir()
        (short_dir / directory / "fpga0").touch()
    spec_dir, config = short_dir / "cdi", short_dir / "kdp.yaml"
    config.write_text(_cdi_config(kubelet, short_dir, with_a=True))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    held = [name for name in resolved(spec_dir) if name.startswith("vendor.example/k1=")]
    assert [resolved(spec_dir)[name] for name in held] == [[str(short_dir / "dev" / "fpga0")]]
    off = reload == "turns_cdi_off"
    config.write_text(_cdi_config(kubelet, short_dir, with_a=False, a_cdi=not off))
    assert await running.host.reload_from(config) == "ok"
    if off:
        supervisor = running.host._supervisor
        assert supervisor is not None
        await wait_until(lambda: FPGA in supervisor._keepers, what="the keeper runs")
    else:
        await wait_until(lambda: FPGA not in running.host.resources, what="resource stopped")
    await wait_until(lambda: held[0] in resolved(spec_dir), what="the held name kept")
    assert resolved(spec_dir)[held[0]] == [str(short_dir / "dev" / "fpga0")]
    poller = running.host.pod_resources
    assert poller is not None
    seen = poller.holdings
    await wait_until(lambda: poller.holdings is not seen, what="a PodResources answer")
    assert resolved(spec_dir)[held[0]] == [str(short_dir / "dev" / "fpga0")], "p1 holds it"
    await kubelet.release("p1")
    await wait_until(lambda: held[0] not in resolved(spec_dir), what="the held name gone")
    assert not (spec_dir / spec_file_name(FPGA)).exists()


async def test_the_handed_paths_an_older_release_state_kept_are_taken_into_the_record(
    short_dir: Path,
) -> None:
    """An older version kept the release's copy in release-state.json (`handed`): at start
    the tracker gives it to the one record, and the owed release acts on it."""
    state = short_dir / "state"
    state.mkdir()
    entry = {"used": [], "owed": True, "handed": {"nodes": [["/dev/old0", "/dev/fpga"]], "env": {}}}
    (state / "release-state.json").write_text(
        json.dumps({"version": 1, "resources": {FPGA: {"fpga0": entry}}})
    )
    record, commands = _record(state), _Commands()
    tracker = _restarted(short_dir, commands, DeviceTable(), record.of(FPGA))
    tracker.start()
    assert record.devices(FPGA)["fpga0"].nodes == (DeviceNode("/dev/old0", "/dev/fpga"),)
    tracker.holdings(_answer(10.0**9))
    await tracker.before_start(["fpga0"])
    assert commands.runs == [["reset", "fpga0", "/dev/old0"]]
    await tracker.close()


async def test_a_removed_resource_added_back_takes_its_file_over_from_the_keeper(
    pod_resources_kubelet: KubeletSimulator, short_dir: Path, start_host
) -> None:
    """The keeper of a removed resource's held entries stops when the resource comes back
    (one writer a file): the new runtime writes the file, p1's name resolving as before."""
    kubelet = pod_resources_kubelet
    for directory in ("dev", "dev2"):
        (short_dir / directory).mkdir()
        (short_dir / directory / "fpga0").touch()
    spec_dir, config = short_dir / "cdi", short_dir / "kdp.yaml"
    config.write_text(_cdi_config(kubelet, short_dir, with_a=True))
    running = await start_host(config.read_text(), config_path=config)
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    held = [name for name in resolved(spec_dir) if name.startswith("vendor.example/k1=")]
    config.write_text(_cdi_config(kubelet, short_dir, with_a=False))
    assert await running.host.reload_from(config) == "ok"
    supervisor = running.host._supervisor
    await wait_until(lambda: FPGA in supervisor._keepers, what="the keeper runs")
    config.write_text(_cdi_config(kubelet, short_dir, with_a=True))
    assert await running.host.reload_from(config) == "ok"
    await wait_until(lambda: FPGA not in supervisor._keepers, what="the keeper stopped")

    def served() -> bool:
        runtime = running.host.resources.get(FPGA)
        return runtime is not None and runtime.status.ready

    await wait_until(served, what="the resource serves again")
    assert resolved(spec_dir).get(held[0]) == [str(short_dir / "dev" / "fpga0")], [
        (p.name, p.read_text()) for p in spec_dir.iterdir()
    ]
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)


class _Booked:
    def __init__(self, *ids: str) -> None:
        self.ids, self.gone = set(ids), 0

    def is_booked(self, resource: str, advertised_id: str) -> bool:
        return advertised_id in self.ids

    def drops(self) -> int:
        return self.gone


def test_after_a_podresources_answer_entries_go_once_their_booking_went() -> None:
    """Each answer walks the record only when a booking went since the last (issue 19)."""
    record, table = HandedRecord(), _table()
    record.hand_out(FPGA, table.snapshot, ["fpga0"])
    bookings = _Booked("fpga0")
    after_answer = record.after_answers(bookings)
    after_answer(None)
    assert list(record.devices(FPGA)) == ["fpga0"]
    bookings.ids.clear()  # (not counted: no walk, nothing could have gone)
    after_answer(None)
    assert list(record.devices(FPGA)) == ["fpga0"]
    bookings.gone += 1
    after_answer(None)
    assert record.resources() == []


async def test_an_allocates_write_renders_and_checks_only_what_changed(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: each write of the record rendered every device handed out on the loop, and
    the merge under the lock checked every entry of the file again (twice: the union and each
    writer's) and of this host's own document: at 640 devices an Allocate waited ~0.3 s
    (under load). Now an entry is rendered once per device as handed out, and the file
    as this host last wrote it is not read again; the bytes are those `json.dumps` wrote."""
    from kdp_host import handed_entries
    from kdp_host.state_lock import hold_instance

    state = short_dir / "state"
    state.mkdir()
    held = hold_instance(str(state), "me000001", get_logger())
    try:
        record = HandedRecord(str(state), get_logger(), DaemonThreads(), "me000001")
        record.load()
        table = DeviceTable()
        table.publish([Device(f"d{i}", path=f"/dev/d{i}", env={"N": "é"}) for i in range(41)])
        for i in range(40):
            record.hand_out(FPGA, table.snapshot, [f"d{i}"])
        await record.written()
        rendered, checked = 0, 0
        entry, handed = handed_entries.entry, handed_entries.handed

        def counted_entry(*args: object) -> object:
            nonlocal rendered
            rendered += 1
            return entry(*args)  # type: ignore[arg-type]

        def counted_handed(*args: object) -> object:
            nonlocal checked
            checked += 1
            return handed(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(handed_entries, "entry", counted_entry)
        monkeypatch.setattr(handed_entries, "handed", counted_handed)
        record.hand_out(FPGA, table.snapshot, ["d40"])
        await record.written()
        assert (rendered, checked) == (1, 0)
        raw = (state / HANDED_FILE).read_bytes()
        assert raw == json.dumps(json.loads(raw), sort_keys=True).encode()
        again = _record(state)  # read in full, as another process reads it
        assert sorted(again.devices(FPGA)) == sorted(f"d{i}" for i in range(41))
        assert again.devices(FPGA)["d40"].env == {"N": "é"}
    finally:
        import os

        os.close(held)


class _Index:
    """The ownership index's bookings (`handed_out.Bookings`): the IDs in `booked`."""

    def __init__(self) -> None:
        self.booked: set[str] = set()

    def is_booked(self, resource: str, advertised_id: str) -> bool:
        return advertised_id in self.booked

    def drops(self) -> int:
        return 0


async def test_an_id_podresources_shows_held_has_no_cdi_entry_while_the_record_is_lost(
    short_dir: Path,
) -> None:
    """hostile10 F4: the state directory emptied while kdp-host was down; p1 holds fpga0,
    handed out through a CDI name (the checkpoint leaves such an answer to PodResources),
    and the probe moved fpga0 to another node meanwhile. Shown held with no entry, it is
    withheld: its CDI entry is left out (the name fails closed) instead of written from
    the driver's list, also while not booked yet, until an answer shows it no longer held
    or an Allocate hands it out again. With the record kept, nothing is withheld."""
    config = load_config_text(
        f"resources:\n  - name: {FPGA}\n    glob: {{paths: ['/dev/fpga*']}}\n"
        f"    allocate: {{cdi: {{kind: {KIND}}}}}\n"
    ).resources[0]
    table, index = DeviceTable(), _Index()
    table.publish(
        [
            Device(f"fpga{i}", nodes=(DeviceNode(p, "/dev/fpga", "rw"),))
            for i, p in enumerate(["/dev/B", "/dev/A"])
        ]
    )  # fmt: skip (swapped)
    record = _record(short_dir / "emptied")
    record.booked_at_start({}, bookings_found=False, served=[FPGA])
    heard = record.after_answers(index)
    index.booked.add("fpga0")  # booked from the answer (`ownership_adopt`)
    heard(Holdings(1.0, 0.0, {FPGA: {"fpga0": ()}, "other.io/gpu": {"g0": ()}}))
    assert record.withheld(FPGA) == {"fpga0"} and record.resources() == []
    assert not record.withheld("other.io/gpu"), "another plugin's"
    spec = build_spec(config, table.snapshot, record.devices(FPGA), record.withheld(FPGA))
    assert spec is not None and [d["name"] for d in spec["devices"]] == [
        cdi_device_name(FPGA, "fpga1")
    ]
    index.booked.clear()  # not booked (its device not listed yet): still shown held
    heard(Holdings(2.0, 0.0, {FPGA: {"fpga0": ()}}))
    record.of(FPGA).let_go(index.booked.__contains__)  # (the CDI writer's sync)
    assert record.withheld(FPGA) == {"fpga0"}
    heard(Holdings(3.0, 0.0, {}))  # p1 ended
    assert record.withheld(FPGA) == frozenset()
    record.hand_out(FPGA, table.snapshot, ["fpga1"])  # an Allocate after: known
    heard(Holdings(4.0, 0.0, {FPGA: {"fpga1": ()}}))
    assert record.withheld(FPGA) == frozenset()

    kept = _record(short_dir / "kept")
    kept.booked_at_start({}, bookings_found=True, served=[FPGA])
    kept.after_answers(index)(Holdings(1.0, 0.0, {FPGA: {"fpga0": ()}}))
    assert kept.withheld(FPGA) == frozenset()


async def test_a_held_cdi_name_resolves_nowhere_after_a_start_that_lost_the_state_dir(
    pod_resources_kubelet: KubeletSimulator, short_dir: Path, start_host
) -> None:
    """hostile10 F4: p1 holds s0 (node A) and s1 (node B) through CDI names. kdp-host stops
    (its spec file goes), the state directory is emptied, the probe swaps them (s0 -> B),
    kdp-host starts: s0 and s1 are not written from the driver's list (s0 would resolve to
    B, the node p1 has as s1, or another pod's) but left out, until p1 ends; then they
    follow the list."""
    kubelet, dev, probe = pod_resources_kubelet, short_dir / "dev", short_dir / "list"
    dev.mkdir()
    for node in ("A", "B"):
        (dev / node).touch()

    def lists(s0: str, s1: str) -> None:
        probe.write_text(
            f"s0 Healthy path={dev / s0}:/dev/f0\ns1 Healthy path={dev / s1}:/dev/f1\n"
        )

    lists("A", "B")
    spec_dir, state = short_dir / "cdi", short_dir / "state"
    config = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, "
        f"podResourcesSocket: {short_dir / 'pr' / 'kubelet.sock'}, podResourcesInterval: 1s}}\n"
        f"stateDir: {state}\nresources:\n  - name: {FPGA}\n"
        f"    shell: {{command: [cat, {probe}], interval: 1s}}\n"
        f"    allocate: {{cdi: {{kind: {KIND}, specDir: {spec_dir}}}}}\n"
    )
    s0, s1 = (f"{KIND}={cdi_device_name(FPGA, i)}" for i in ("s0", "s1"))
    running = await start_host(config)
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 2)
    await kubelet.allocate(FPGA, 2, pod_uid="p1")
    assert (resolved(spec_dir)[s0], resolved(spec_dir)[s1]) == ([f"{dev}/A"], [f"{dev}/B"])
    await running.shutdown()  # (its spec file goes with it)
    shutil.rmtree(state)
    lists("B", "A")  # the probe swaps them (while kdp-host runs, the IDs keep their nodes)

    again = await start_host(config)
    await wait_until(lambda: FPGA in again.host.resources, what="the resource")
    runtime = again.host.resources[FPGA]
    await wait_until(
        lambda: runtime._cdi is not None and runtime._cdi.first_sync.is_set(), what="written"
    )
    poller = again.host.pod_resources
    assert poller is not None
    seen = poller.holdings
    await wait_until(lambda: poller.holdings is not seen, what="a PodResources answer")
    await wait_until(
        lambda: not {s0, s1} & resolved(spec_dir).keys(),
        what="s0 and s1 left out of the spec, not written as listed now",
    )
    assert runtime._handed.withheld == {"s0", "s1"}
    await kubelet.release("p1")
    await wait_until(lambda: resolved(spec_dir).get(s0) == [f"{dev}/B"], what="as listed")


async def test_a_restart_does_not_call_held_cdi_devices_unhealthy_before_its_spec_is_written(
    pod_resources_kubelet: KubeletSimulator,
    short_dir: Path,
    start_host,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """hostile10 F4's `held_device_missing state=unhealthy` for devices healthy a few ms
    later: at start each CDI device is held Unhealthy until the spec names it; the check of
    held devices waits for that first write."""
    kubelet = pod_resources_kubelet
    (short_dir / "dev").mkdir()
    (short_dir / "dev" / "fpga0").touch()
    config = _cdi_config(kubelet, short_dir, with_a=True)
    running = await start_host(config)
    await kubelet.wait_for(lambda: kubelet.allocatable(FPGA) == 1)
    await kubelet.allocate(FPGA, 1, pod_uid="p1")
    await running.shutdown()
    with caplog.at_level("WARNING", logger="kdp_host"):
        again = await start_host(config)
        await wait_until(lambda: again.host.pod_resources is not None, what="the poller")
        poller = again.host.pod_resources
        await wait_until(lambda: FPGA in again.host.resources, what="the resource")
        runtime = again.host.resources[FPGA]
        await wait_until(
            lambda: runtime._cdi is not None and runtime._cdi.first_sync.is_set(), what="written"
        )
        for _ in range(2):
            seen = poller.holdings
            await wait_until(lambda seen=seen: poller.holdings is not seen, what="an answer")
    assert [r for r in caplog.records if r.getMessage() == "held_device_missing"] == []


async def test_the_checkpoints_cdi_answers_are_withheld_from_the_start_until_an_answer(
    short_dir: Path,
) -> None:
    """hostile10 F4 before the first PodResources answer: the checkpoint's answers with CDI
    names are booked by none yet (PodResources books them), so with the record lost their
    IDs are withheld from the start: the CDI writer's first sync leaves them out too. The
    first answer lets go those no pod holds."""
    index = OwnershipIndex()
    cdi = HandedClaims(Handed(FPGA, ("fpga0", "fpga1"), ("/m",), (f"{KIND}=a",)), ())
    index.take_handed([cdi])
    assert index.handed_at_start([FPGA]) == {FPGA: {"fpga0", "fpga1"}}
    assert index.handed_at_start(["other.io/gpu"]) == {}
    record = _record(short_dir / "emptied")
    at_start = index.handed_at_start([FPGA])
    record.booked_at_start(at_start, False, [FPGA], index.is_booked)  # (as the host does)
    record.of(FPGA).let_go(lambda advertised: False)  # the writer's first sync: none booked
    assert record.withheld(FPGA) == {"fpga0", "fpga1"}
    record.after_answers(_Index())(Holdings(1.0, 0.0, {FPGA: {"fpga1": ()}}))
    assert record.withheld(FPGA) == {"fpga1"}


async def test_another_hosts_write_of_a_shared_record_is_no_loss_a_replacement_is(
    short_dir: Path,
) -> None:
    """hostile12 L6, two hosts on one stateDir: each one's write changes the file (another
    inode), which is no loss of the other's part (it keeps it as written: no rewrite, and no
    ping-pong of rewrites); a valid file without a host's part renamed over it is one."""
    from kdp_host.release_state import ReleaseStateStore
    from kdp_host.state_lock import hold_instance
    from kdp_host.state_presence import lost

    state = short_dir / "state"
    state.mkdir()
    locks = [hold_instance(str(state), name, get_logger()) for name in ("aaaa0001", "bbbb0002")]
    try:
        table = DeviceTable()
        table.publish([Device(f"d{i}", path=f"/dev/d{i}", env={"N": "é"}) for i in range(2)])
        records, stores = [], []
        for at, name in enumerate(("aaaa0001", "bbbb0002")):
            record = HandedRecord(str(state), get_logger(), DaemonThreads(), name)
            record.load()
            record.hand_out(FPGA, table.snapshot, [f"d{at}"])
            assert await record.written() is None
            records.append(record)
            store = ReleaseStateStore(str(state), get_logger(), DaemonThreads(), name)
            store.load()
            store.update(FPGA, {f"d{at}": {"used": [f"d{at}"], "owed": False, "allocatedAt": 1.5}})
            await store.flush()
            stores.append(store)
        files = [r.file for r in records] + [s.file for s in stores]
        assert all(f is not None and lost(f) is None for f in files)  # b's writes: a's part kept
        records[0].hand_out(FPGA, table.snapshot, ["d1"])  # a writes again (b's part re-rendered)
        assert await records[0].written() is None
        stores[0].update(FPGA, {"d0": {"used": [], "owed": True, "allocatedAt": 2.0}})
        await stores[0].flush()
        assert all(f is not None and lost(f) is None for f in files)
        for name in (HANDED_FILE, "release-state.json"):
            staged = state / "staged.json"
            staged.write_text(json.dumps({"version": 1, "resources": {}, "writers": {}}))
            staged.replace(state / name)
        assert all(f is not None and lost(f) is not None for f in files)
    finally:
        for fd in locks:
            os.close(fd)
