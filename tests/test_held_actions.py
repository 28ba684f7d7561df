"""`heldMissing` (issue 20 item 3, GDP#74): a Warning Event on a pod whose device was
unplugged, and the deletion of such a pod when its labels match, against the fake API server
(tests/fake_apiserver.py: what was called, with what bodies), the held-missing detection
through the simulator's kubelet and its PodResources server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils
from packaging.version import Version

from kdp_host.config import ConfigError, load_config_text
from kdp_host.files import DaemonThreads
from kdp_host.held_actions import EVENT_BURST, HeldMissingActions, TokenBucket
from kdp_host.holdings import Holder
from kdp_host.kubeapi import ApiServer
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.pod_api import Pod, PodApi
from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until
from .fake_apiserver import TOKEN, FakeApiServer, pod_object, self_signed
from .kubelet_harness import healthy
from .test_held_missing import FPGA, config_text

pytestmark = pytest.mark.fast

NODE = "node-a"
KUBE_VERSIONS = [v for v in kv_utils.all_versions() if Version(v) >= Version("1.25")]
"""The chart's floor on (its kubeVersion)."""


@pytest.fixture
def sim(pod_resources_kubelet: KubeletSimulator) -> KubeletSimulator:
    return pod_resources_kubelet


@pytest.fixture
async def apiserver(short_dir: Path) -> AsyncIterator[tuple[FakeApiServer, ApiServer]]:
    certificate = self_signed(short_dir)
    server = FakeApiServer(NODE, certificate=certificate)
    url = await server.start()
    token = short_dir / "token"
    token.write_text(TOKEN + "\n")
    try:
        yield server, ApiServer(url, str(token), str(certificate[0]) if certificate else None)
    finally:
        await server.close()


def count(metrics: Metrics, action: str, result: str) -> float:
    labels = {"resource": FPGA, "action": action, "result": result}
    return metrics.registry.get_sample_value("kdp_held_missing_actions_total", labels) or 0.0


async def start_acting(
    start_host: Callable[..., Any], text: str, api: ApiServer | None, problem: str | None = None
) -> tuple[Any, HeldMissingActions]:
    """A host whose `heldMissing` calls the fake API server as `kdp-host run` would."""
    config = load_config_text(text)
    metrics = Metrics()
    calls = None if api is None else PodApi(api, DaemonThreads())
    actions = HeldMissingActions(config.held_missing, calls, NODE, metrics, get_logger(), problem)
    running = await start_host(config, metrics=metrics, held_missing=actions)
    return running, actions


async def polled(running: Any, times: int = 3) -> None:
    """`times` more PodResources answers (each one a held-missing check)."""
    poller = running.host.pod_resources
    for _ in range(times):
        seen = poller.status.last_ok
        await wait_until(lambda s=seen: poller.status.last_ok not in (None, s), what="an answer")


async def test_an_unplugged_device_puts_one_warning_event_on_its_pod(
    sim: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Callable[..., Any],
    apiserver: tuple[FakeApiServer, ApiServer],
) -> None:
    server, api = apiserver
    server.add_pod(pod_object("default", "train-7", "uid-7", NODE, app="trainer"))
    text = config_text(socket_dir, short_dir, devices, "heldMissing: {events: true}\n")
    running, _ = await start_acting(start_host, text, api)
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
    response = await sim.allocate(FPGA, 1, pod_uid="train-7", container="worker")
    assert response is not None
    held = Path(response.devices[0].host_path)
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="held")
    await polled(running)
    assert server.calls == []  # nothing missing: no call at all

    kept = short_dir / "kept"
    os.link(held, kept)
    held.unlink()  # the stick is pulled; the pod keeps running
    await wait_until(lambda: count(running.metrics, "event", "sent") == 1, what="the Event")
    [get, post] = server.calls
    assert (get.method, get.target) == ("GET", "/api/v1/namespaces/default/pods/train-7")
    assert (post.method, post.target) == ("POST", "/api/v1/namespaces/default/events")
    assert post.headers["authorization"] == f"Bearer {TOKEN}"
    assert post.headers["content-type"] == "application/json"
    event = post.body
    assert event["involvedObject"] == {
        "apiVersion": "v1", "kind": "Pod", "namespace": "default", "name": "train-7",
        "uid": "uid-7",
    }  # fmt: skip
    assert (event["type"], event["reason"], event["count"]) == ("Warning", "DeviceMissing", 1)
    assert event["metadata"] == {"generateName": "train-7.", "namespace": "default"}
    assert event["source"] == {"component": "kdp-host", "host": NODE}
    assert event["firstTimestamp"] == event["lastTimestamp"]
    for version in KUBE_VERSIONS:  # what the API server takes (strict: no unknown field)
        kubernetes_validate.validate(event, version, strict=True)
    message = event["message"]
    assert FPGA in message and held.name in message and "unhealthy" in message
    assert "worker" in message

    await polled(running)  # checked again at each answer: still the one Event
    assert len(server.events) == 1 and len(server.calls) == 2
    assert count(running.metrics, "event", "sent") == 1

    os.link(kept, held)  # plugged back in: nothing to say
    await wait_until(lambda: poller_missing(running) == 0, what="back")
    await polled(running)
    held.unlink()  # pulled again: a new Event
    await wait_until(lambda: count(running.metrics, "event", "sent") == 2, what="the second")
    assert len(server.events) == 2
    assert server.calls[-1].method == "POST" and not [
        c for c in server.calls if c.method == "DELETE"
    ]


def poller_missing(running: Any) -> float | None:
    labels = {"resource": FPGA}
    return running.metrics.registry.get_sample_value("kdp_devices_held_missing", labels)


async def test_a_silent_or_refusing_api_server_blocks_no_allocate_and_is_counted(
    sim: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Callable[..., Any],
    apiserver: tuple[FakeApiServer, ApiServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An API server that never answers: the Event's call waits, and an Allocate meanwhile is
    answered; the connection lost is counted `unreachable`. Then a 403 (no RBAC for
    events): logged with its reason and counted `refused`."""
    server, api = apiserver
    server.add_pod(pod_object("default", "train-8", "uid-8", NODE))
    server.refuse[("POST", "/api/v1/namespaces/default/events")] = 403
    silent_calls: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent_calls.append(writer)  # accepts, and never answers

    hang = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = hang.sockets[0].getsockname()[1]
    text = config_text(socket_dir, short_dir, devices, "heldMissing: {events: true}\n")
    running, actions = await start_acting(start_host, text, ApiServer(f"http://127.0.0.1:{port}"))
    caplog.set_level("WARNING", logger="kdp_host")
    try:
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
        metrics, poller = running.metrics, running.host.pod_resources
        first = await sim.allocate(FPGA, 1, pod_uid="train-7", container="worker")
        assert first is not None
        await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="held")
        Path(first.devices[0].host_path).unlink()
        await wait_until(lambda: silent_calls, what="the call to the silent server")
        second = await asyncio.wait_for(  # answered while the Event's call waits
            sim.allocate(FPGA, 1, pod_uid="train-8", container="worker"), 60
        )
        assert second is not None and second.devices
        assert count(metrics, "event", "unreachable") == 0  # (still waiting)

        actions.calls = PodApi(api, DaemonThreads())  # from now on, the refusing server
        for writer in silent_calls:
            writer.close()
        await wait_until(lambda: count(metrics, "event", "unreachable") == 1, what="lost")
        await wait_until(lambda: len(poller.holdings.of(FPGA)) == 2, what="both held")
        Path(second.devices[0].host_path).unlink()
        await wait_until(lambda: count(metrics, "event", "refused") == 1, what="the 403")
        lines = [r for r in caplog.records if r.getMessage() == "held_missing_event_failed"]
        results = [getattr(r, "kdp_fields", {}).get("result") for r in lines]
        assert results == ["unreachable", "refused"]
        fields = getattr(lines[1], "kdp_fields", {})
        assert "RBAC: create events" in fields["reason"]
        assert fields["resource"] == FPGA and fields["pod"] == "train-8"
        assert server.events == [] and count(metrics, "event", "sent") == 0
    finally:
        for writer in silent_calls:
            writer.close()
        hang.close()


async def test_no_cluster_counts_every_action_unreachable(
    sim: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Callable[..., Any],
) -> None:
    text = config_text(socket_dir, short_dir, devices, "heldMissing: {events: true}\n")
    running, _ = await start_acting(start_host, text, None, "not in a cluster")
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
    response = await sim.allocate(FPGA, 1, pod_uid="train-7", container="worker")
    assert response is not None
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="held")
    Path(response.devices[0].host_path).unlink()
    await wait_until(lambda: count(running.metrics, "event", "unreachable") == 1, what="counted")


async def test_pods_are_deleted_only_inside_the_selector_after_the_wait(
    sim: KubeletSimulator,
    socket_dir: Path,
    short_dir: Path,
    devices: Path,
    start_host: Callable[..., Any],
    apiserver: tuple[FakeApiServer, ApiServer],
) -> None:
    """Both devices are pulled: train-7 (app=trainer) is deleted, on the uid read just before;
    other-8 (app=other) is kept, never a DELETE for it."""
    server, api = apiserver
    server.add_pod(pod_object("default", "train-7", "uid-7", NODE, app="trainer"))
    server.add_pod(pod_object("default", "other-8", "uid-8", NODE, app="other"))
    extra = "heldMissing: {deletePods: {selector: {app: trainer}, after: 1s}}\n"
    running, _ = await start_acting(
        start_host, config_text(socket_dir, short_dir, devices, extra), api
    )
    await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
    paths = []
    for pod in ("train-7", "other-8"):
        response = await sim.allocate(FPGA, 1, pod_uid=pod, container="worker")
        assert response is not None
        paths.append(Path(response.devices[0].host_path))
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and len(poller.holdings.of(FPGA)) == 2, what="held")
    for path in paths:
        path.unlink()
    metrics = running.metrics
    await wait_until(lambda: count(metrics, "delete", "deleted") == 1, what="deleted")
    await wait_until(lambda: count(metrics, "delete", "not_selected") == 1, what="kept")
    deletes = [c for c in server.calls if c.method == "DELETE"]
    assert [c.target for c in deletes] == ["/api/v1/namespaces/default/pods/train-7"]
    assert deletes[0].body == {
        "kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "uid-7"},
    }  # fmt: skip
    assert ("default", "other-8") in server.pods and ("default", "train-7") not in server.pods
    assert server.events == []  # (events: off)


# ------------------------------------------------------------------ the actions alone


class FakeCalls:
    """`PodCalls` that answer at once and keep what they were asked."""

    def __init__(self, pods: dict[tuple[str, str], Pod]) -> None:
        self.pods = pods
        self.events: list[tuple[str, Any]] = []
        self.deleted: list[tuple[str, str, str]] = []
        self.asked = asyncio.Event()

    async def pod(self, namespace: str, name: str) -> Pod | None:
        self.asked.set()
        return self.pods.get((namespace, name))

    async def create_event(self, namespace: str, event: Any) -> None:
        self.events.append((namespace, event))

    async def delete_pod(self, namespace: str, name: str, uid: str) -> bool:
        self.deleted.append((namespace, name, uid))
        return True


def holders(*pods: str) -> tuple[Holder, ...]:
    return tuple(Holder("default", pod, "worker", 0.0) for pod in pods)


def actions_for(text: str, calls: FakeCalls) -> tuple[HeldMissingActions, Metrics]:
    config = load_config_text(
        "kubelet: {podResourcesInterval: 1s}\nresources:\n"
        f"  - name: {FPGA}\n    glob: {{paths: [/dev/fpga*]}}\n{text}"
    )
    metrics = Metrics()
    return HeldMissingActions(config.held_missing, calls, NODE, metrics, get_logger()), metrics


async def test_events_are_bounded_by_a_token_bucket_and_dropped_beyond() -> None:
    now = [0.0]
    calls = FakeCalls({("default", f"p{i}"): Pod(f"u{i}", {}, NODE) for i in range(40)})
    actions, metrics = actions_for("heldMissing: {events: true}\n", calls)
    actions.bucket = TokenBucket(EVENT_BURST, 10.0, clock=lambda: now[0])
    states = {f"d{i}": "gone" for i in range(EVENT_BURST + 5)}
    held = {f"d{i}": holders(f"p{i}") for i in range(40)}
    worker = asyncio.create_task(actions.run())
    try:
        actions.update(FPGA, states, held)
        await wait_until(lambda: len(calls.events) == EVENT_BURST, what="the burst")
        assert count(metrics, "event", "dropped") == 5
        actions.update(FPGA, states, held)  # the same again: nothing new to say
        now[0] += 10.0  # one token back
        states["d39"] = "gone"
        actions.update(FPGA, states, held)
        await wait_until(lambda: len(calls.events) == EVENT_BURST + 1, what="one more")
        assert count(metrics, "event", "dropped") == 5 and count(metrics, "event", "sent") == 26
        states["d39"] = "unhealthy"  # now state: a transition, but no token
        actions.update(FPGA, states, held)
        assert count(metrics, "event", "dropped") == 6
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_a_pod_whose_device_comes_back_in_time_is_not_deleted() -> None:
    calls = FakeCalls({("default", "p"): Pod("u", {"app": "t"}, NODE)})
    actions, metrics = actions_for(
        "heldMissing: {deletePods: {selector: {app: t}, after: 1s}}\n", calls
    )
    worker = asyncio.create_task(actions.run())
    try:
        actions.update(FPGA, {"d": "gone"}, {"d": holders("p")})
        assert actions.waiting == {(FPGA, "default", "p", "d")}
        actions.update(FPGA, {}, {"d": holders("p")})  # back before `after`
        assert actions.waiting == set()
        actions.update(FPGA, {"d": "unhealthy"}, {"d": holders("p")})  # missing again
        actions.forget(FPGA)  # the runtime stopped: its next one starts the wait anew
        assert actions.waiting == set()
        actions.update(FPGA, {"d": "gone"}, {"d": holders("p")})
        await wait_until(lambda: calls.deleted == [("default", "p", "u")], what="deleted")
        assert count(metrics, "delete", "deleted") == 1
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_a_pod_on_another_node_or_unlisted_holders_are_left_alone() -> None:
    calls = FakeCalls({("default", "p"): Pod("u", {"app": "t"}, "node-b")})
    actions, metrics = actions_for(
        "heldMissing: {events: true, deletePods: {selector: {app: t}, after: 1s}}\n", calls
    )
    worker = asyncio.create_task(actions.run())
    try:
        unlisted = Holder("", "", "", 0.0, listed=False)
        actions.update(FPGA, {"d": "gone", "e": "gone"}, {"d": holders("p"), "e": (unlisted,)})
        await wait_until(lambda: count(metrics, "delete", "pod_gone") == 1, what="not ours")
        assert count(metrics, "event", "pod_gone") == 1
        assert calls.events == [] and calls.deleted == []
        assert actions.waiting == {(FPGA, "default", "p", "d")}  # (the unlisted: no pod)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("heldMissing: {deletePods: {selector: {}}}\n", "needs a label"),
        ("heldMissing: {deletePods: {after: 1m}}\n", "selector"),
        ("heldMissing: {deletePods: {selector: {'a b': x}}}\n", "a b"),
    ],
)
def test_a_delete_without_a_selector_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config_text(
            "kubelet: {podResourcesInterval: 1s}\nresources:\n"
            f"  - name: {FPGA}\n    glob: {{paths: [/dev/fpga*]}}\n{text}"
        )


def test_held_missing_needs_pod_resources_polling() -> None:
    with pytest.raises(ConfigError, match="podResourcesInterval above 0s"):
        load_config_text(
            "kubelet: {podResourcesInterval: 0s}\nresources:\n"
            f"  - name: {FPGA}\n    glob: {{paths: [/dev/fpga*]}}\n"
            "heldMissing: {events: true}\n"
        )
    config = load_config_text(
        f"kubelet: {{podResourcesInterval: 0s}}\nresources:\n  - name: {FPGA}\n"
        "    glob: {paths: [/dev/fpga*]}\n"
    )
    assert not config.held_missing.events and config.held_missing.delete_pods is None


async def test_through_the_real_kubelet_an_event_then_the_deletion(
    real_kubelet_factory: Any,
    short_dir: Path,
    start_host: Callable[..., Any],
    apiserver: tuple[FakeApiServer, ApiServer],
) -> None:
    """The kubelet's real device manager and PodResources server: p1 holds fpga0, which is
    pulled; its pod gets the Event, then (app=trainer) is deleted on its uid."""
    server, api = apiserver
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    (short_dir / "dev").mkdir()
    (short_dir / "dev" / "fpga0").touch()
    text = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{short_dir}/pr/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {short_dir}/state\nresources:\n  - name: {FPGA}\n"
        f'    glob: {{paths: ["{short_dir}/dev/fpga*"]}}\n'
        "heldMissing: {events: true, deletePods: {selector: {app: trainer}, after: 1s}}\n"
    )
    running, _ = await start_acting(start_host, text, api)
    await kubelet.await_for(healthy(FPGA, 1), what="fpga0 advertised")
    answer = await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1})
    assert answer["error"] == "", answer
    poller = running.host.pod_resources
    await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="held")
    [(holder,)] = poller.holdings.of(FPGA).values()
    server.add_pod(pod_object(holder.namespace, holder.pod, "uid-p1", NODE, app="trainer"))

    (short_dir / "dev" / "fpga0").unlink()
    metrics = running.metrics
    await wait_until(lambda: count(metrics, "delete", "deleted") == 1, what="deleted")
    assert count(metrics, "event", "sent") == 1
    [event] = server.events
    assert event["involvedObject"]["uid"] == "uid-p1" and event["reason"] == "DeviceMissing"
    assert "fpga0" in event["message"]
    pods = f"/api/v1/namespaces/{holder.namespace}/pods/{holder.pod}"
    assert [(c.method, c.target) for c in server.calls] == [
        ("GET", pods),
        ("POST", f"/api/v1/namespaces/{holder.namespace}/events"),
        ("GET", pods),
        ("DELETE", pods),
    ]
