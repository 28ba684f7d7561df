"""`backoff.Retries`, the one rule of retrying what keeps failing (a crashed resource, an
exited stream command, a stream the kubelet keeps ending), and `stream_losses` on it."""

from __future__ import annotations

from kdp_host.backoff import Retries, Retry
from kdp_host.metrics import Metrics
from kdp_host.stream_losses import LOSSES_REASON, LOST_STREAMS, NOT_READY_AFTER, StreamLosses
from kdp_host.testing import ManualClock


def test_failures_in_a_row_back_off_and_a_stable_run_starts_over() -> None:
    clock = ManualClock()
    retries = Retries(Retry(first=1.0, maximum=4.0, stable=10.0), clock)
    delays = []
    for _ in range(4):
        retries.started()
        clock.advance(1.0)
        delays.append(retries.failed())
    assert delays == [1.0, 2.0, 4.0, 4.0] and retries.in_a_row == 4
    retries.started()
    assert retries.until_stable() == 10.0
    clock.advance(10.0)
    assert retries.failed() == 1.0 and retries.in_a_row == 1  # the stable run started over


def test_at_once_retries_the_first_failure_of_a_run_without_waiting() -> None:
    clock = ManualClock()
    retries = Retries(Retry(first=0.5, maximum=8.0, stable=10.0, at_once=True), clock)
    assert [retries.failed() for _ in range(4)] == [0.0, 0.5, 1.0, 2.0]
    retries.started()
    assert not retries.check_stable()
    clock.advance(10.0)
    assert retries.check_stable() and retries.in_a_row == 0
    assert retries.until_stable() is None  # no failures: nothing to end


def test_lost_streams_are_counted_and_make_the_resource_not_ready_until_it_recovers() -> None:
    metrics = Metrics()
    problems: list[str | None] = []
    losses = StreamLosses(LOST_STREAMS, metrics.streams_lost.labels("t.io/r"), problems.append)
    losses.registered(restarted=False)
    assert losses.lost() == 0.0  # the first: registered again at once
    losses.registered(restarted=False)
    assert losses.lost() == LOST_STREAMS.first
    assert problems == [LOSSES_REASON] and losses.in_a_row == NOT_READY_AFTER
    losses.registered(restarted=True)  # a restarted kubelet: those were its doing
    assert problems == [LOSSES_REASON, None] and losses.in_a_row == 0
    assert losses.lost() == 0.0
    count = metrics.registry.get_sample_value(
        "kdp_list_and_watch_streams_lost_total", {"resource": "t.io/r"}
    )
    assert count == 3


def test_a_loss_while_another_instance_comes_or_goes_is_no_run_of_losses() -> None:
    """hostile13 M18: in a rolling update the kubelet ends a stream for the other instance's
    (its registration, or its plugin watcher's deregistration by name and registration anew a
    reconciler pass later): registered again at once, and /readyz does not say the kubelet
    keeps ending the stream (it said so for a minute after each node's rollout)."""
    metrics = Metrics()
    problems: list[str | None] = []
    losses = StreamLosses(LOST_STREAMS, metrics.streams_lost.labels("t.io/r"), problems.append)
    for _ in range(3):
        losses.registered(restarted=False)
        assert losses.lost(switching=True) == 0.0
    assert problems == [] and losses.in_a_row == 0
    losses.registered(restarted=False)
    assert losses.lost() == 0.0 and losses.lost() == LOST_STREAMS.first
    assert problems == [LOSSES_REASON]
    assert losses.lost(switching=True) == 0.0  # the run of refusals ends with it
    assert problems == [LOSSES_REASON, None] and losses.in_a_row == 0
    count = metrics.registry.get_sample_value(
        "kdp_list_and_watch_streams_lost_total", {"resource": "t.io/r"}
    )
    assert count == 6
