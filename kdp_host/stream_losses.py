"""A resource whose ListAndWatch stream the kubelet keeps ending: how long to wait before
registering again, and what /readyz says meanwhile.

The kubelet ends a stream when it drops the plugin's endpoint: a client it replaced
(docs/kubelet-contract.md §9), a message it cannot take (over its receive limit,
docs/kubelet-contract.md §4), or anything else it refuses. Registering again at once is right
the first time; when the next stream ends soon again, doing it at once spins (a list the kubelet
could not take made a resource register ~90 times a second). So the losses follow
`backoff.Retries` (`LOST_STREAMS`): the first loss of a run registers again at once, every
further loss waits the next delay, and a stream that lasts `stable` seconds ends the run. A
kubelet restart ends streams too but is no loss of ours: a registration with a restarted kubelet
ends the run (`registered`), and the resource never waits for one
(`serving.ServingLoop._back_off`). Nor is a loss while another instance of the resource comes
or goes (a rolling update: `peer_sockets.PeerSockets.switching`): it is counted, registers
again at once and ends the run. From the `NOT_READY_AFTER`-th loss in a row until the run
ends, /readyz names the resource.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .backoff import Retries, Retry
from .metric_series import CounterSeries

LOST_STREAMS: Final = Retry(first=0.1, maximum=30.0, stable=60.0, at_once=True)
"""The back-off of registering again after lost streams (the module's rules)."""
NOT_READY_AFTER: Final = 2
"""Losses in a row from which the resource is not ready."""
LOSSES_REASON: Final = "the kubelet keeps ending the stream"
"""What /readyz says of a resource in a run of lost streams."""


class StreamLosses:
    """One resource's lost streams: counted, the delay before registering again, and the
    readiness problem while they keep coming (the module's rules)."""

    def __init__(
        self, retry: Retry, counter: CounterSeries, report: Callable[[str | None], None]
    ) -> None:
        self._retries = Retries(retry)
        self._counter = counter
        self._report = report

    @property
    def in_a_row(self) -> int:
        return self._retries.in_a_row

    def registered(self, restarted: bool) -> None:
        """The resource registered (with a kubelet that `restarted` since the last time: the
        losses in a row were its restart): its stream starts now."""
        if restarted:
            self._end_run(self._retries.in_a_row)
            self._retries.start_over()
        self._retries.started()

    def lost(self, switching: bool = False) -> float:
        """The kubelet ended the stream (`switching` between this instance and another):
        counted; returns the seconds to wait before registering again (0: at once)."""
        self._counter.inc()
        if switching:
            self._end_run(self._retries.in_a_row)
            self._retries.start_over()
            return 0.0
        self.check_stable()
        delay = self._retries.failed()
        if self.in_a_row == NOT_READY_AFTER:
            self._report(LOSSES_REASON)
        return delay

    def until_stable(self) -> float | None:
        """Seconds until the open stream ends the run of losses (None: no run, or no stream)."""
        return self._retries.until_stable()

    def check_stable(self) -> None:
        """End the run of losses if the open stream has lasted `stable` seconds."""
        in_a_row = self.in_a_row
        if self._retries.check_stable():
            self._end_run(in_a_row)

    def _end_run(self, in_a_row: int) -> None:
        if in_a_row >= NOT_READY_AFTER:
            self._report(None)
