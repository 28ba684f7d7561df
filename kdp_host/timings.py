"""The waits of the host's reading of the kubelet (`Timings`): how long an answer, a restart
or a failed release is given before the host acts on it.

Each is a rule of the product, written once here with its default; the host makes one
`Timings` (`Host.timings`, the defaults on every production path) and hands it to the parts
that read it: the PodResources poller (`holdings.Settle`, `unlisted.Unlisted`), the ownership
index and the release trackers. Tests pass shorter ones, in the same order, to wait less.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds the host waits on the kubelet before taking its news (defaults: the product's)."""

    allocation_settle: float = 1.0
    """After an Allocate, a PodResources answer (or a checkpoint written then) is not taken as
    news about that device for this long: the kubelet records the allocation only once our
    answer has reached it, so a List (or a checkpoint write) in between would show it free."""
    gone_after: float = 4.0
    """A holder must be missing from the kubelet's answers this long (in two answers at least,
    the first and the last of them this far apart) before it is let go: one answer without a
    pod (a kubelet between its restart and its pod manager being filled again) ends nothing."""
    restart_settle: float = 10.0
    """After a kubelet restart (its socket made anew, or PodResources unreachable and back),
    an answer that lacks a holder is no evidence at all for this long: the kubelet answers
    from a pod manager it is still filling."""
    heard_after: float = 5.0
    """After a device stops being advertised, the kubelet has heard of it (a ListAndWatch
    update, or the end of a stopped resource's stream) within this long: a PodResources answer
    asked for later shows every pod that can hold it."""
    nudge_first: float = 2.0
    """Before the kubelet is first asked to write its checkpoint again (`unlisted`)."""
    nudge_max: float = 300.0
    """Longest wait between two such asks while the IDs held so stay listed."""
    nudge_restart_max: float = 30.0
    """Longest wait between two asks while a kubelet restart's holders are carried: a pod that
    ended while the kubelet's API source was away is let go at most this long (and a few
    polls) after the kubelet freed it, however long the API server was away."""
    release_retry_first: float = 1.0
    """First wait before a failed release is tried again in the background (then doubling)."""
    release_retry_max: float = 300.0
    """Longest wait between two background attempts of a failed release."""

    def __post_init__(self) -> None:
        if min(self.allocation_settle, self.gone_after, self.restart_settle, self.heard_after) < 0:
            raise ValueError("Timings: a wait is not negative")
        if not 0 < self.nudge_first <= self.nudge_restart_max <= self.nudge_max:
            raise ValueError("Timings: 0 < nudge_first <= nudge_restart_max <= nudge_max")
        if not 0 < self.release_retry_first <= self.release_retry_max:
            raise ValueError("Timings: 0 < release_retry_first <= release_retry_max")
