"""Admissions asked for again, a turn of the event loop at a time; a storm of them is told.

The gate (`ownership_gate`) admits the resources that wait in rounds: each one once per
round, where the round was asked for (a list, a released claim, a changed path). One queued
again after its admission in that round (by its own admission, or another's) waits for the
next round, which runs in a later turn of the loop: however long a chain of admissions
asking for each other again, every other coroutine (an Allocate, `/healthz`, SIGTERM) gets
its turns in between. Two admissions that changed nothing and queued each other again for
ever held the loop for good (hostile22 F9: no Allocate answered, `/healthz` 503, SIGTERM
unheard); now such a chain costs CPU, and is told once it runs `STORM_ROUNDS` rounds in a
row: logged (`admission_storm`, then `admission_storm_over` with the rounds it ran) and
counted (`kdp_admission_storms_total`), as a defect to report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from .metrics import Metrics
from .ownership_table import ResourceState

STORM_ROUNDS: Final = 100
"""Rounds in a row, each asked for by the one before, that make an admission storm (a list
that frees a node another resource waits for asks for a round or two)."""


@dataclass
class Rounds:
    """Rounds in a row of the gate, and the storm they make past `bound`."""

    metrics: Metrics | None
    bound: int = STORM_ROUNDS
    count: int = 0
    """Rounds in a row asked for by the round before."""
    storm: list[ResourceState] = field(default_factory=list)
    """The resources queued again when the rounds made a storm (told to their logs)."""

    def again(self, waiting: Iterable[ResourceState]) -> None:
        """A round left some of the resources it admitted queued again (`waiting`: those and
        the ones it admitted): one more round."""
        self.count += 1
        if self.count != self.bound:
            return
        self.storm = list(waiting)
        if self.metrics is not None:
            self.metrics.admission_storms.inc()
        names = [state.name for state in self.storm]
        for state in self.storm:
            if state.log is not None:
                state.log.warning(
                    "admission_storm",
                    rounds=self.count,
                    resources=names,
                    action="admitted again a turn of the event loop at a time; a defect: "
                    "please report it",
                )

    def over(self) -> None:
        """No round asked for another: the chain (a storm or not) is over."""
        for state in self.storm:
            if state.log is not None:
                state.log.info("admission_storm_over", rounds=self.count)
        self.count, self.storm = 0, []
