"""A PodResources answer without the pods (a kubelet between its restart and its pod manager
being filled again) ends no holding (hostile4 H13), through the kubelet's real device manager
and PodResources server, with a forwarder in front of it that answers List empty on demand."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpclib.client
from grpclib.server import Server

from kdp_host.api.v1 import (
    AllocatableResourcesRequest,
    AllocatableResourcesResponse,
    ListPodResourcesRequest,
    ListPodResourcesResponse,
    PodResourcesListerBase,
    PodResourcesListerStub,
)
from kdp_host.holdings import Holder, Holdings, Settle, with_unlisted
from kdp_host.timings import Timings

from .conftest import FAST, wait_until
from .test_podresources import _count
from .test_release import FPGA, _registered, host_yaml, release_lines, release_script

A, B = "h13.example/a", "h13.example/b"


@dataclass
class Forgetful(PodResourcesListerBase):
    """The kubelet's PodResources, except that List answers no pod while `empty` is set."""

    upstream: str
    empty: bool = False
    empty_answers: int = 0

    async def list(self, message: ListPodResourcesRequest) -> ListPodResourcesResponse:
        if self.empty:
            self.empty_answers += 1
            return ListPodResourcesResponse()
        channel = grpclib.client.Channel(path=self.upstream)
        try:
            return await PodResourcesListerStub(channel).list(message, timeout=10)
        finally:
            channel.close()

    async def get_allocatable_resources(
        self, message: AllocatableResourcesRequest
    ) -> AllocatableResourcesResponse:
        channel = grpclib.client.Channel(path=self.upstream)
        try:
            return await PodResourcesListerStub(channel).get_allocatable_resources(
                message, timeout=10
            )
        finally:
            channel.close()


async def _serve(fake: Forgetful, path: Path) -> Server:
    """The fake kubelet's PodResources, on a socket in a directory of its own (no container
    may be handed the PodResources socket's directory: the devices live beside it)."""
    path.parent.mkdir(exist_ok=True)
    server = Server([fake])
    await server.start(path=str(path))
    return server


FORWARDER = Path("fake") / "kubelet.sock"
"""The forwarder's socket, below the test's short directory (`forwarded`)."""


@contextlib.asynccontextmanager
async def forwarded(
    real_kubelet_factory: Any, short_dir: Path, fake_type: type[Forgetful] = Forgetful
) -> AsyncIterator[tuple[Any, Forgetful]]:
    """The kubelet's real device manager, with its PodResources served through a `fake_type`
    forwarder at `FORWARDER` (below `short_dir`): the kubelet and the forwarder."""
    pr = short_dir / "pr"
    kubelet = real_kubelet_factory(pod_resources_dir=pr)
    fake = fake_type(str(pr / "kubelet.sock"))
    server = await _serve(fake, short_dir / FORWARDER)
    try:
        yield kubelet, fake
    finally:
        server.close()
        await server.wait_closed()


def releasing_yaml(kubelet: Any, short_dir: Path, devices: Path) -> str:
    """The config of a host serving FPGA (a release script) to the real kubelet, polling
    PodResources through the forwarder (`forwarded`)."""
    pr = short_dir / "pr"
    return host_yaml(
        kubelet.socket_dir, devices, short_dir / "state", release_script(short_dir),
        pod_resources=pr,
    ).replace(str(pr / "kubelet.sock"), str(short_dir / FORWARDER))  # fmt: skip


async def releasing_host(kubelet: Any, start_host: Any, short_dir: Path, devices: Path) -> Any:
    """A host of `releasing_yaml`, started `fast`; returned once the kubelet registered it."""
    running = await start_host(releasing_yaml(kubelet, short_dir, devices), fast=True)
    await kubelet.await_for(_registered(kubelet), what="fpga registered")
    return running


async def _forget_for(fake: Forgetful, answers: int, restart=None) -> None:  # type: ignore[no-untyped-def]
    """List answers empty for `answers` answers (after a kubelet restart, if given: as its
    pod manager is filled again)."""
    if restart is not None:
        await restart()
    fake.empty, fake.empty_answers = True, 0
    try:
        await wait_until(lambda: fake.empty_answers >= answers, what="empty answers")
    finally:
        fake.empty = False


async def _next_answer(poller) -> None:  # type: ignore[no-untyped-def]
    answered = poller.status.last_ok
    await wait_until(lambda: poller.status.last_ok != answered, what="an answer")


async def _release_form(
    real_kubelet_factory, start_host, short_dir: Path, devices: Path, restart: bool
) -> None:  # type: ignore[no-untyped-def]
    async with forwarded(real_kubelet_factory, short_dir) as (kubelet, fake):
        running = await releasing_host(kubelet, start_host, short_dir, devices)
        assert (await kubelet.acall(kubelet.allocate, "p1", {FPGA: 1}))["error"] == ""
        poller = running.host.pod_resources
        await wait_until(lambda: poller.holdings and poller.holdings.of(FPGA), what="p1 seen")
        # two answers without p1 are no proof (they are `gone_after` apart only on a very slow
        # machine: four polls); after a restart no number of answers within its window is
        await _forget_for(
            fake, 3 if restart else 2, (lambda: kubelet.acall(kubelet.restart)) if restart else None
        )
        await _next_answer(poller)
        assert release_lines(short_dir) == [], "released while p1 still runs on fpga0"
        # counted as incomplete only in the window after a kubelet restart
        assert (_count(poller, "incomplete") >= 3) == restart, _count(poller, "incomplete")
        assert poller.holdings is not None and poller.holdings.of(FPGA)
        # a pod that really ended is still released, once
        await kubelet.acall(kubelet.release, "p1")
        await wait_until(lambda: len(release_lines(short_dir)) == 2, timeout=60, what="released")
        assert release_lines(short_dir) == ["fpga0 default/p1/c start", "fpga0 default/p1/c done"]


async def test_empty_answers_release_nothing_under_a_running_pod(
    real_kubelet_factory, start_host, short_dir: Path, devices: Path
) -> None:
    await _release_form(real_kubelet_factory, start_host, short_dir, devices, restart=False)


async def test_empty_answers_after_a_kubelet_restart_release_nothing_under_a_running_pod(
    real_kubelet_factory, start_host, short_dir: Path, devices: Path
) -> None:
    await _release_form(real_kubelet_factory, start_host, short_dir, devices, restart=True)


async def test_empty_answers_after_a_restart_keep_a_lingering_claim_from_a_second_pod(
    real_kubelet_factory, start_host, short_dir: Path
) -> None:
    """a (glob) hands dev/x to p1; a reload removes a (its claim lingers while p1 holds x);
    the kubelet restarts and answers without p1: b (a shell probe of the same node) stays
    out, so no second pod gets dev/x."""
    node = short_dir / "dev" / "x"
    node.parent.mkdir()
    node.touch()
    async with forwarded(real_kubelet_factory, short_dir) as (kubelet, fake):
        head = (
            f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
            f"{short_dir / FORWARDER}, podResourcesInterval: 1s}}\n"
            f"stateDir: {short_dir / 'state'}\nmetrics: {{listen: 127.0.0.1:0}}\nresources:\n"
        )
        a = f'  - name: {A}\n    glob: {{paths: ["{node}"]}}\n'
        b = f"  - name: {B}\n    shell: {{command: [sh, -c, 'echo bx Healthy path={node}']}}\n"
        config = short_dir / "config.yaml"
        config.write_text(head + a + b)
        running = await start_host(config.read_text(), config_path=config, fast=True)
        await kubelet.await_for(
            lambda k: (k.resource(A) or {}).get("healthy") == 1, what="a advertised"
        )
        assert (await kubelet.acall(kubelet.allocate, "p1", {A: 1}))["error"] == ""
        poller = running.host.pod_resources
        await wait_until(lambda: poller.holdings and poller.holdings.of(A), what="p1 seen")
        config.write_text(head + b)
        await running.host.reload_from(config)
        went = poller.clock()
        await wait_until(  # the claim could go now, on an answer without p1
            lambda: poller.holdings.asked_at > went + FAST.heard_after + poller.interval,
            what="answers later",
        )
        await _forget_for(fake, 3, lambda: kubelet.acall(kubelet.restart))
        for _ in range(3):  # complete answers again: p1 holds a/x
            await _next_answer(poller)
        assert not (kubelet.resource(B) or {}).get("healthy"), "b advertises p1's node"
        granted = await kubelet.acall(kubelet.allocate, "p2", {B: 1})
        assert granted["error"] != "", f"p2 got p1's node: {granted}"


DEFAULTS = Timings()


def _holdings(asked_at: float, *pods: str) -> Holdings:
    return Holdings(
        asked_at, asked_at, {FPGA: {f"d-{p}": (Holder("ns", p, "c", 0.0),) for p in pods}}
    )


def test_a_holder_goes_after_two_answers_gone_after_apart() -> None:
    settle = Settle()
    shown, _ = settle.apply(_holdings(0.0, "p1", "p2"), None)
    one, carried = settle.apply(_holdings(1.0, "p2"), shown)
    assert carried == 1 and set(one.of(FPGA)) == {"d-p1", "d-p2"}
    two, _ = settle.apply(_holdings(1.0 + DEFAULTS.gone_after / 2, "p2"), one)
    assert set(two.of(FPGA)) == {"d-p1", "d-p2"}  # not long enough
    gone, carried = settle.apply(_holdings(1.0 + DEFAULTS.gone_after, "p2"), two)
    assert carried == 0 and set(gone.of(FPGA)) == {"d-p2"}


def test_an_id_held_by_carried_or_unlisted_holders_alone_is_marked_unshown() -> None:
    """hostile14 N8: the published holdings say which IDs the kubelet's answer itself did
    not list (`Holdings.unshown`): a release tracker takes no news of a use from them."""
    settle = Settle()
    shown, _ = settle.apply(_holdings(0.0, "p1", "p2"), None)
    one, _ = settle.apply(_holdings(1.0, "p2"), shown)  # p1 carried
    assert set(one.of(FPGA)) == {"d-p1", "d-p2"}
    assert not one.shows(FPGA, "d-p1") and one.shows(FPGA, "d-p2")
    both = with_unlisted(one, {FPGA: {"d-p2": 0.0, "d-new": 0.0}})
    assert both.unshown == {(FPGA, "d-p1"), (FPGA, "d-new")}  # (d-p2 listed as well)


def test_answers_soon_after_a_restart_are_no_evidence() -> None:
    settle = Settle()
    held, _ = settle.apply(_holdings(0.0, "p1"), None)
    settle.restarted(1.0)
    t = 2.0
    while (
        t < 1.0 + DEFAULTS.restart_settle + DEFAULTS.gone_after
    ):  # in the window: no answer counts
        held, _ = settle.apply(_holdings(t), held)
        if t < 1.0 + DEFAULTS.restart_settle:
            assert set(held.of(FPGA)) == {"d-p1"}, t
        t += 1.0
    # after the window: gone once missing from answers DEFAULTS.gone_after apart, counted from it
    held, _ = settle.apply(_holdings(t), held)
    assert held.of(FPGA) == {}


def test_a_restarts_holder_goes_only_on_its_own_news() -> None:
    """hostile10 F5: after a kubelet restart, a holder not shown since (an API pod while
    the API server is away) is carried while the checkpoint lists its ID, whatever other
    pods are shown (a static pod) or allocated; it goes once its pod is shown again and
    then missing, once its own ID is allocated again, or once the checkpoint drops it."""
    settle = Settle()
    held, _ = settle.apply(_holdings(0.0, "p1", "p2", "p3", "static"), None)
    settle.restarted(1.0, held)
    listed = {"d-p1", "d-p2", "d-p3", "d-static"}
    settle.allocated(FPGA, ["d-new"])  # a static pod admitted: another ID
    t = 2.0
    while t < 1.0 + DEFAULTS.restart_settle + 3 * DEFAULTS.gone_after:
        held, _ = settle.apply(_holdings(t, "static"), held, lambda _r, d: d in listed)
        t += 1.0
    assert set(held.of(FPGA)) == {"d-p1", "d-p2", "d-p3", "d-static"} and settle.waiting
    settle.allocated(FPGA, ["d-p1"])  # p1's device given anew: p1 is gone
    listed.discard("d-p2")  # the kubelet freed p2 and wrote its checkpoint
    held, _ = settle.apply(_holdings(t, "static", "p3"), held, lambda _r, d: d in listed)
    for step in (1.0, 1.0 + DEFAULTS.gone_after):
        held, _ = settle.apply(_holdings(t + step, "static"), held, lambda _r, d: d in listed)
    assert set(held.of(FPGA)) == {"d-static"} and not settle.waiting
