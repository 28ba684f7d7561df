"""An Allocate's bookings while its answer is on its way (kdp_host/ownership_answering.py;
issue 17; through the real kubelet and a SIGKILL: tests/test_booked_moves_down.py): no
PodResources answer ends them before the answer goes out, and the wait for an answer that
shows their pod counts from when it went."""

from __future__ import annotations

from kdp_host.holdings import Holdings
from kdp_host.ownership import OwnershipIndex
from kdp_host.timings import Timings

from .fake_nodes import FakeNodes
from .test_ownership import R1, Host, node

HEARD_AFTER = Timings().heard_after


def _host(now: list[float]) -> Host:
    nodes = FakeNodes({"/dev/fpga0": ("c", 5)})
    host = Host(nodes)
    host.index = OwnershipIndex(host.metrics, nodes, clock=lambda: now[0])
    host.publish(R1, node("/dev/fpga0"))
    return host


async def test_no_answer_ends_a_booking_whose_allocate_is_still_answered() -> None:
    now = [100.0]
    host = _host(now)
    index = host.index
    async with index.fenced(R1, ["fpga0"], {}, {}):
        await index.book(R1, ["fpga0"], wait=False)
        now[0] += 2 * HEARD_AFTER  # (its files' writes stalled: the kubelet has not heard)
        index.holdings(Holdings(now[0], 0.0, {}))
        assert index.is_booked(R1, "fpga0"), "ended before the kubelet could show it"
    answered = now[0]
    index.holdings(Holdings(answered + HEARD_AFTER - 0.5, 0.0, {}))  # (asked too soon)
    assert index.is_booked(R1, "fpga0")
    index.holdings(Holdings(answered + HEARD_AFTER, 0.0, {}))  # (no pod holds it: ends)
    assert not index.is_booked(R1, "fpga0")


async def test_a_refused_answer_lets_its_booking_end_as_any_other() -> None:
    now = [100.0]
    host = _host(now)
    index = host.index
    try:
        async with index.fenced(R1, ["fpga0"], {}, {}):
            await index.book(R1, ["fpga0"], wait=False)
            raise RuntimeError("refused: handed-out.json not written")
    except RuntimeError:
        pass
    index.holdings(Holdings(now[0] + HEARD_AFTER, 0.0, {}))
    assert not index.is_booked(R1, "fpga0")


async def test_two_answers_of_one_id_hold_it_until_both_went() -> None:
    """The kubelet asks again (its first Allocate timed out): the booking is held until the
    last answer of it went."""
    now = [100.0]
    host = _host(now)
    index = host.index
    first = index.fenced(R1, ["fpga0"], {}, {})
    await first.__aenter__()
    await index.book(R1, ["fpga0"], wait=False)
    async with index.fenced(R1, ["fpga0"], {}, {}):
        await index.book(R1, ["fpga0"], wait=False)
    now[0] += 2 * HEARD_AFTER
    index.holdings(Holdings(now[0], 0.0, {}))
    assert index.is_booked(R1, "fpga0")
    await first.__aexit__(None, None, None)
    index.holdings(Holdings(now[0] + HEARD_AFTER, 0.0, {}))
    assert not index.is_booked(R1, "fpga0")
