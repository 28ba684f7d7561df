"""Another instance of a resource stopping (a maxSurge rollout; hostile13 M11): when it was
the kubelet's client for the name, this instance registers again (`peer_sockets`)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from kdp_host.api.v1beta1 import DevicePluginOptions
from kdp_host.endpoint import socket_name
from kdp_host.kubelet_absent import AbsentCheck
from kdp_host.peer_sockets import PeerSocketIndex, PeerSockets
from kdp_host.protocol.registration import Registrar
from kdp_host.testing import ManualWatcher

from .conftest import wait_until
from .kubelet_harness import RealKubelet
from .test_plugin_registry import FPGA, PATIENT, registry_config, two_healthy
from .test_shared_state_dir import SHELL, config, probe, view

pytestmark = pytest.mark.fast  # its hosts wait FAST and poll fast (conftest.start_host)


def registrations(kubelet: RealKubelet, since: int, resource: str = SHELL) -> list[str]:
    """The sockets registered for `resource` after event `since`, in order."""
    return [
        e["plugin_socket"]
        for e in kubelet.events(since)
        if e["kind"] == "registered" and e["resource"] == resource
    ]


def listed_after_registering(kubelet: RealKubelet, since: int) -> bool:
    kinds = [e["kind"] for e in kubelet.events(since) if e["resource"] == SHELL]
    return "registered" in kinds and "list_and_watch" in kinds[kinds.index("registered") :]


async def registry_rollout(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> tuple[RealKubelet, Any, Any, int]:
    """`pluginsRegistry`, two devices: the old instance registered, then the new one started
    (patient hosts: no verdict wait gives up); the kubelet's event number before the new."""
    registry, devices = short_dir / "registry", short_dir / "devices"
    devices.mkdir()
    for name in ("fpga0", "fpga1"):
        (devices / name).touch()
    kubelet = real_kubelet_factory(plugins_registry_dir=registry)
    text = registry_config(kubelet.socket_dir, registry, devices)
    old = await start_host(text, registry_wait=PATIENT, instance_id="old")
    await kubelet.await_for(two_healthy, what="the old instance registered")
    since = await kubelet.acall(kubelet.last_seq)
    new = await start_host(text, registry_wait=PATIENT, instance_id="new")
    await wait_until(lambda: FPGA in new.host.resources, what="the new instance started")
    return kubelet, old, new, since


async def test_hostile13_m11_the_old_host_registered_last_stops_and_the_new_one_registers_again(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """Two hosts, one config, one stateDir and socket dir (a maxSurge rollout). The old host
    is the last to register (as after a kubelet restart, a reload, a socket made again): the
    new host's older stream stays open and the kubelet's client is the old host's. The old
    host stops: the kubelet disconnects its client and has none for the name; the new host
    sees the old one's socket go and registers again, and the kubelet serves the node's
    device again. (Before: nothing told the new host; the resource stayed unallocatable
    while its /readyz said ok.)"""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    node = short_dir / "n0"
    node.touch()
    state, work = short_dir / "state", short_dir / "probes"
    work.mkdir()
    text = config(kubelet, state, probe(work, "dev", "dev0", node, None))
    old = await start_host(text, instance_id="old")
    await kubelet.await_for(lambda k: view(k).get("healthy") == 1, what="the old host serves")
    since = await kubelet.acall(kubelet.last_seq)
    new = await start_host(text, instance_id="new")
    await kubelet.await_for(
        lambda k: listed_after_registering(k, since), timeout=60, what="the new host registered"
    )
    old_socket = old.host.resources[SHELL].socket_path
    new_socket = new.host.resources[SHELL].socket_path
    assert registrations(kubelet, since) == [new_socket]

    since = await kubelet.acall(kubelet.last_seq)
    registrar = Registrar()  # the old host registers last
    try:
        await registrar.register(
            str(kubelet.socket_dir), SHELL, os.path.basename(old_socket), DevicePluginOptions()
        )
    finally:
        registrar.close()
    await kubelet.await_for(
        lambda k: listed_after_registering(k, since), what="the old host is the kubelet's client"
    )
    assert registrations(kubelet, since) == [old_socket]

    since = await kubelet.acall(kubelet.last_seq)
    await old.shutdown()  # the rollout ends
    await kubelet.await_for(
        lambda k: registrations(k, since) and view(k).get("healthy") == 1,
        timeout=60,
        what="the new host registered again and its device is allocatable",
    )
    assert registrations(kubelet, since) == [new_socket]
    runtime = new.host.resources[SHELL]
    await wait_until(lambda: runtime.status.ready, what="the new host ready")
    allocated = await kubelet.acall(kubelet.allocate, "p1", {SHELL: 1})
    assert allocated["error"] == "" and allocated["device_ids"] == {SHELL: ["dev0"]}


async def test_hostile13_m11_plugins_registry_the_old_instance_last_stops_and_the_new_gets_back(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """The same with `registration: pluginsRegistry`: the old instance is the kubelet's
    client (registered last), the new one's stream stays open; the old one stops, the plugin
    watcher deregisters the name and nothing ends the new one's stream. The new instance
    sees the old one's socket go and creates its socket again; the plugin watcher registers
    it. (A patient host: no verdict wait gives up meanwhile.)"""
    kubelet, old, new, since = await registry_rollout(real_kubelet_factory, short_dir, start_host)
    old_socket = old.host.resources[FPGA].socket_path
    new_socket = new.host.resources[FPGA].socket_path
    await kubelet.await_for(
        lambda k: registrations(k, since, FPGA) == [new_socket], what="the new one registered"
    )

    since = await kubelet.acall(kubelet.last_seq)
    registrar = Registrar()  # the old instance registers last (its socket, by Register)
    try:
        endpoint = os.path.relpath(old_socket, kubelet.socket_dir)
        await registrar.register(str(kubelet.socket_dir), FPGA, endpoint, DevicePluginOptions())
    finally:
        registrar.close()
    await kubelet.await_for(
        lambda k: registrations(k, since, FPGA) == [old_socket], what="the old one registered"
    )

    since = await kubelet.acall(kubelet.last_seq)
    await old.shutdown()
    await kubelet.await_for(
        lambda k: registrations(k, since, FPGA) and two_healthy(k),
        timeout=60,
        what="the new instance registered again",
    )
    assert registrations(kubelet, since, FPGA) == [new_socket]
    allocated = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert allocated["error"] == ""


async def test_the_kubelet_serving_no_device_of_the_resource_twice_makes_it_register_again(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """The old host registered last and then ended without its socket going (a SIGKILL
    leaves the file): no socket went, yet the kubelet has no endpoint for the name. Its
    GetAllocatableResources lists no device of the resource on two answers in a row, asked
    after the new host registered: the new host registers again (`kubelet_absent`)."""
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    node = short_dir / "n0"
    node.touch()
    state, work = short_dir / "state", short_dir / "probes"
    work.mkdir()
    text = config(kubelet, state, probe(work, "dev", "dev0", node, None))
    old = await start_host(text, instance_id="old")
    await kubelet.await_for(lambda k: view(k).get("healthy") == 1, what="the old host serves")
    since = await kubelet.acall(kubelet.last_seq)
    new = await start_host(text, instance_id="new")
    await kubelet.await_for(
        lambda k: listed_after_registering(k, since), timeout=60, what="the new host registered"
    )
    old_socket = old.host.resources[SHELL].socket_path
    new_socket = new.host.resources[SHELL].socket_path
    since = await kubelet.acall(kubelet.last_seq)
    registrar = Registrar()  # the old host registers last
    try:
        await registrar.register(
            str(kubelet.socket_dir), SHELL, os.path.basename(old_socket), DevicePluginOptions()
        )
    finally:
        registrar.close()
    await kubelet.await_for(
        lambda k: listed_after_registering(k, since), what="the old host is the kubelet's client"
    )

    since = await kubelet.acall(kubelet.last_seq)
    await old.shutdown()
    Path(old_socket).touch()  # what a killed host leaves: its socket seen back at once
    await kubelet.await_for(
        lambda k: registrations(k, since) and view(k).get("healthy") == 1,
        timeout=120,
        what="the new host registered again",
    )
    assert registrations(kubelet, since) == [new_socket]
    assert new.sample("kdp_registered", resource=SHELL) == 1


# --------------------------------------------------------------------------- the rules


def peers(directory: Path, instance: str = "new") -> PeerSockets:
    name = socket_name(SHELL, instance, str(directory))
    return PeerSockets(SHELL, name, str(directory), asyncio.Event())


def other(directory: Path, instance: str = "old") -> str:
    path = directory / socket_name(SHELL, instance, str(directory))
    path.touch()
    return path.name


async def test_another_instances_socket_gone_calls_for_registering_again(tmp_path: Path) -> None:
    tracker = peers(tmp_path)
    gone = other(tmp_path)
    (tmp_path / gone).unlink()
    tracker.changed(gone)
    assert tracker.wake.is_set()
    peer, wait = tracker.due()
    assert peer is None and wait is not None and wait > 0  # (it may come back at once)
    await wait_until(lambda: tracker.due()[0] == gone, timeout=30, what="registering again")
    assert tracker.due() == (None, None)  # once per socket that went


async def test_a_socket_back_a_stream_the_kubelet_ended_or_a_registration_since_call_for_none(
    tmp_path: Path,
) -> None:
    back = peers(tmp_path)
    name = other(tmp_path)
    (tmp_path / name).unlink()
    back.changed(name)
    (tmp_path / name).touch()  # the other instance serves again (it registers itself)
    back.changed(name)
    assert back.due() == (None, None)

    for then in ("lost", "registered"):
        tracker = peers(tmp_path)
        (tmp_path / name).unlink()
        tracker.changed(name)
        getattr(tracker, then)()
        assert tracker.due() == (None, None), then
        (tmp_path / name).touch()

    lost_before = peers(tmp_path)  # the kubelet ended our stream for the other's (just
    lost_before.lost()  # before its socket went: it ends its streams first), we registered
    lost_before.registered()
    (tmp_path / name).unlink()
    lost_before.changed(name)
    assert lost_before.due() == (None, None)


async def test_a_socket_made_after_our_registration_may_have_registered_last(
    tmp_path: Path,
) -> None:
    """A kubelet restart: our stream ended, we registered, the other made its socket anew
    (and registered, last); it stops: its going calls for registering again, although our
    stream ended shortly before."""
    tracker = peers(tmp_path)
    name = other(tmp_path)
    tracker.lost()
    tracker.registered()
    tracker.changed(name)  # made anew after our registration
    (tmp_path / name).unlink()
    tracker.changed(name)
    await wait_until(lambda: tracker.due()[0] == name, timeout=30, what="registering again")


async def test_a_host_seen_ended_that_registered_after_us_calls_for_registering_at_once(
    tmp_path: Path,
) -> None:
    """hostile25 F4: a host seen ended through stateDir (SIGKILL: its socket stays) whose
    socket was made after our last registration: due at once (nothing to settle). Not when
    its socket was there before our registration (we registered last), nor when we
    registered since, nor for a host that is not an instance of the resource."""
    after = peers(tmp_path)
    after.registered()
    name = other(tmp_path)
    after.changed(name)  # made after our registration
    after.host_ended("old")
    assert after.wake.is_set() and after.due() == (name, None)
    assert after.due() == (None, None)  # once

    before = peers(tmp_path)
    before.changed(name)
    before.registered()
    before.host_ended("old")
    assert before.due() == (None, None)

    since = peers(tmp_path)
    since.registered()
    since.changed(name)
    since.host_ended("old")
    since.registered()  # (the serving loop registered meanwhile)
    assert since.due() == (None, None)

    unknown = peers(tmp_path)
    unknown.host_ended("not an instance")
    assert not unknown.wake.is_set() and unknown.due() == (None, None)


async def test_only_sockets_of_the_same_resource_and_another_instance_count(
    tmp_path: Path,
) -> None:
    tracker = peers(tmp_path)
    for name in (
        tracker.endpoint,  # our own
        socket_name("s.example/other", "old", str(tmp_path)),  # another resource
        "kubelet.sock",
        "kdp-s.example_s.sock",
    ):
        tracker.changed(name)
    tracker.changed(None)
    assert tracker.due() == (None, None) and not tracker.wake.is_set()


def test_a_socket_directorys_events_reach_only_the_resource_they_name() -> None:
    """One subscription per directory for every resource; an event goes to the resource its
    socket's name belongs to (a start of 100 resources made one call per resource each)."""
    directory = "/run/kdp-test"  # (short: readable socket names; nothing is made there)
    watcher, index = ManualWatcher(), PeerSocketIndex()
    heard: dict[str, list[str]] = {}
    stops = {}
    for resource in ("s.example/a", "s.example/b"):
        prefix = PeerSockets(
            resource, socket_name(resource, "mine", directory), directory, asyncio.Event()
        ).prefix
        assert prefix is not None
        heard[resource] = []
        stops[resource] = index.follow(watcher, directory, prefix, heard[resource].append)
    assert len(watcher.directories) == 1
    a_peer = socket_name("s.example/a", "old", directory)
    for name in (a_peer, "kubelet.sock", "kdp-s.example_s.sock", None):
        watcher.change(directory, name)
    assert heard == {"s.example/a": [a_peer], "s.example/b": []}
    stops["s.example/a"]()
    watcher.change(directory, a_peer)
    assert heard["s.example/a"] == [a_peer]
    stops["s.example/b"]()
    assert watcher.directories == set()


async def test_another_instances_socket_made_or_gone_is_the_kubelet_switching(
    tmp_path: Path,
) -> None:
    """hostile13 M18: a stream the kubelet ends just after another instance's socket came or
    went is its switching between the instances, not a refusal (`StreamLosses.lost`)."""
    tracker = peers(tmp_path)
    for name in (tracker.endpoint, socket_name("s.example/other", "old", str(tmp_path))):
        tracker.changed(name)
    assert not tracker.switching()
    made = other(tmp_path)
    tracker.changed(made)
    assert tracker.switching()
    gone = peers(tmp_path)
    (tmp_path / made).unlink()
    gone.changed(made)
    assert gone.switching()


async def test_a_socket_of_the_other_registration_mode_made_or_gone_is_switching_too(
    short_dir: Path,
) -> None:
    """hostile17 F1: a rollout that switches `kubelet.registration` (the old instance serves
    from the plugins registry, the new from the device-plugin directory): the kubelet's
    plugin watcher deregistering the old socket ends the new one's stream. That socket is
    in the other directory: seen there, it is the kubelet switching, nothing to register for
    (before: a refusal, /readyz 503 for a minute)."""
    serving, registry = short_dir / "dp", short_dir / "reg"
    serving.mkdir()
    registry.mkdir()
    name = socket_name(SHELL, "new", str(serving))
    tracker = PeerSockets(SHELL, name, str(serving), asyncio.Event(), str(registry))
    tracker.seen(socket_name(SHELL, "new", str(registry)))  # (ours, by the other's naming)
    tracker.seen(socket_name("s.example/other", "old", str(registry)))
    assert not tracker.switching()
    gone = other(registry)
    (registry / gone).unlink()
    tracker.seen(gone)
    assert tracker.switching()
    # F4: and, as one in the socket directory, its going calls for registering again (a
    # kubelet restart made the old instance the kubelet's client)
    assert tracker.wake.is_set()
    await wait_until(lambda: tracker.due()[0] == gone, timeout=30, what="registering again")


async def test_hostile13_m18_the_new_instance_is_ready_once_served_after_the_old_one_stops(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """`pluginsRegistry`, a maxSurge rollout with no other change: the new instance
    registers, the old one stops. Its socket's going makes the plugin watcher deregister the
    name (the new instance's stream ends); the new instance creates its socket again, and
    the watcher's next pass may end that stream too (the socket it replaced). Those are the
    rollout, not the kubelet refusing the plugin: once the kubelet serves it again the new
    instance is ready (before: "the kubelet keeps ending the stream" for a minute)."""
    kubelet, old, new, since = await registry_rollout(real_kubelet_factory, short_dir, start_host)
    new_socket = new.host.resources[FPGA].socket_path
    await kubelet.await_for(
        lambda k: registrations(k, since, FPGA) == [new_socket], what="the new one registered"
    )
    since = await kubelet.acall(kubelet.last_seq)
    await old.shutdown()
    await kubelet.await_for(
        lambda k: registrations(k, since, FPGA) and two_healthy(k),
        timeout=60,
        what="the new instance registered again",
    )
    runtime = new.host.resources[FPGA]
    await wait_until(
        lambda: runtime.status.ready,
        timeout=30,  # (half the minute a run of losses needs to end by itself)
        what="the new instance ready",
    )
    allocated = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert allocated["error"] == ""


def test_absent_from_the_kubelet_twice_after_registering_is_due() -> None:
    now = [10.0]
    check = AbsentCheck(SHELL, asyncio.Event(), lambda: now[0])
    check.answer({}, 11.0, True, 1)  # (never registered: nothing to say)
    assert check.absent == 0
    check.registered()
    check.answer({}, 9.0, True, 1)  # asked before the registration
    check.answer({SHELL: frozenset({"a"})}, 11.0, True, 1)  # served
    check.answer({}, 12.0, False, 1)  # not ready (a held list, lost streams)
    check.answer({}, 13.0, True, 0)  # no healthy device to serve
    assert check.absent == 0 and not check.due
    check.answer({"other/x": frozenset({"a"})}, 14.0, True, 1)
    assert check.absent == 1 and not check.due
    check.answer({SHELL: frozenset()}, 15.0, True, 1)
    assert check.due and check.wake.is_set()
    check.taken()
    check.answer({}, 16.0, True, 1)  # (not until it registered again)
    assert check.absent == 0 and not check.due


async def test_hostile25_f4_the_new_instance_killed_the_old_one_registers_again_at_once(
    real_kubelet_factory, short_dir: Path, start_host, kdp_process
) -> None:
    """A rollout: the old host serves, the new one (a process of its own) registers last, is
    the kubelet's client and answers a pod; it is SIGKILLed, its socket left behind. The
    kubelet has no client for the name. The old host sees through stateDir that the new one
    ended (`bookings_taken_over`), and as that one registered after it, registers again at
    once, without PodResources (off here). Before: only PodResources' `absent_from_kubelet`
    brought it back (6.7-10.7 s), and never without it."""
    kubelet = real_kubelet_factory()
    node = short_dir / "n0"
    node.touch()
    state, work = short_dir / "state", short_dir / "probes"
    work.mkdir()
    command = probe(work, "dev", "dev0", node, None)
    text = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesInterval: 0s}}\n"
        f"stateDir: {state}\nresources:\n"
        f"  - name: {SHELL}\n    shell: {{command: [{command}], interval: 1s, timeout: 60s}}\n"
    )
    old = await start_host(text, instance_id="old")
    await kubelet.await_for(lambda k: view(k).get("healthy") == 1, what="the old host serves")
    old_socket = old.host.resources[SHELL].socket_path
    since = await kubelet.acall(kubelet.last_seq)
    config_file = short_dir / "new.yaml"
    config_file.write_text(text)
    new = await kdp_process(config_file)
    await kubelet.await_for(
        lambda k: listed_after_registering(k, since), timeout=60, what="the new host registered"
    )
    assert registrations(kubelet, since) != [old_socket]
    allocated = await kubelet.acall(kubelet.allocate, "p1", {SHELL: 1})  # (the new host's)
    assert allocated["error"] == "" and allocated["device_ids"] == {SHELL: ["dev0"]}

    since = await kubelet.acall(kubelet.last_seq)
    await new.stop(signal.SIGKILL)
    await kubelet.await_for(
        lambda k: old_socket in registrations(k, since) and view(k).get("healthy") == 1,
        timeout=20,
        what="the old host registered again",
    )


async def test_a_live_instance_registered_after_this_one_keeps_the_name_while_it_lists_nothing(
    short_dir: Path,
) -> None:
    """hostile26 N1: a rollout's new instance, registered last, whose config holds every
    device back for a while: the kubelet's allocatable listed none of the name, so the old
    instance counted it absent and took the name back (pods then admitted by the old config).
    Another instance's socket made after this instance registered that takes connections is
    that instance's name; a socket a killed instance left (none listening) is not."""
    import socket

    tracker = peers(short_dir)
    tracker.registered()
    live, dead = (short_dir / socket_name(SHELL, i, str(short_dir)) for i in ("live", "dead"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
            gone.bind(str(dead))  # (bound, never listening: what a SIGKILL leaves)
        tracker.changed(dead.name)
        assert tracker.newer_live() is None
        server.bind(str(live))
        server.listen()
        tracker.changed(live.name)
        assert tracker.newer_live() == live.name
        check = AbsentCheck(SHELL, asyncio.Event(), lambda: 1.0, tracker.newer_live)
        check.registered()
        for asked_at in (2.0, 3.0, 4.0):
            check.answer({}, asked_at, True, 1)
        assert not check.due and check.absent == 0
        tracker.registered()  # (this instance registered last again: absence counts)
        for asked_at in (5.0, 6.0):
            check.answer({}, asked_at, True, 1)
        assert check.due
