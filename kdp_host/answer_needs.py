"""What a resource's answers need besides its devices, there or not: the one mechanism
(issue 17, hostile22 F2 F3: "Healthy while it refuses").

An Allocate answer of a resource may need more than its devices: the CDI spec file that
resolves the names it returns (`cdi`), the sources of its `allocate.mounts` (`mounts`), the
programs of its `allocate.command` and `preStart` (`command`), and the state directory's
lock taken in time (`lock`: every resource's, learnt when an answer is refused for want of
it, or its booking's write waited for it: `fence_stuck`). Each is a property of the
resource, known before any Allocate (but `lock`): while one is not there every Allocate (or
container start) of the resource would be refused, so the kubelet must not be invited to
send pods.
So, for every need alike (`AnswerNeeds.set`):

- the resource's devices are advertised Unhealthy while it is unmet (the kubelet's
  allocatable drops: no pod is sent to be refused), and Healthy again once it is met; a need
  may hold only some devices instead (`hold`: a CDI name not in the file on disk yet);
- /readyz names the resource with a short reason (no host path: the endpoint is reachable
  from the pod network), `kdp_answer_need_unmet{resource,need}` is 1 meanwhile;
- one log line when it goes (`answer_need_unmet`, with the path and why) and one when it is
  back (`answer_need_met`); the CDI spec writer logs its own lines, with its file's detail.

A device withheld for its resource is not missing for the pod that holds it (its node is
there, and what the pod was handed stays mounted): the held-missing check reads each
device's own health (`DeviceTable.own_healthy`).

What is checked, and when, is each need's owner: the CDI spec writer (`cdi`), the watch of
the mount sources and commands (`answer_checks`), the Allocate fence (`fence_stuck`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .config import ResourceConfig
from .device_table import DeviceTable
from .devices import Device
from .logs import EventLogger
from .metric_labels import EVERY_RESOURCE_NEEDS, AnswerNeed
from .metric_series import Gauge

WITHHELD = "every device of the resource advertised Unhealthy until it is there"
"""What an unmet need of the whole resource does (its log line says so)."""


WATCHED: frozenset[AnswerNeed] = frozenset({"mounts", "command"})
"""The needs the watch of paths keeps (`answer_checks`)."""


def configured_needs(config: ResourceConfig) -> frozenset[AnswerNeed]:
    """The needs a resource's config gives its answers (their series exist only then),
    and those every resource has."""
    present: dict[AnswerNeed, object] = {
        "cdi": config.allocate.cdi,
        "mounts": config.allocate.mounts or None,
        "command": config.allocate.command or config.pre_start,
    }
    given = (need for need, section in present.items() if section is not None)
    return frozenset((*given, *EVERY_RESOURCE_NEEDS))


@dataclass
class AnswerNeeds:
    """The needs of one resource's answers: which are unmet, and what that holds back."""

    table: DeviceTable
    log: EventLogger
    report: Callable[[str, str | None], None] = field(default=lambda need, reason: None)
    """Told (need, short reason) while a need is unmet, (need, None) once met: /readyz
    (`ResourceStatus.set_problem`)."""
    gauge: Gauge | None = None
    """`kdp_answer_need_unmet` (None: not counted)."""
    resource: str = ""
    _unmet: dict[AnswerNeed, str] = field(default_factory=dict, init=False, repr=False)
    _said: dict[AnswerNeed, tuple[str | None, str | None]] = field(
        default_factory=dict, init=False, repr=False
    )
    """What the last line of each unmet need said: a new cause is a line of its own."""
    _whole: set[AnswerNeed] = field(default_factory=set, init=False, repr=False)
    """The unmet needs that hold every device of the resource."""
    _holds: dict[AnswerNeed, Callable[[Device], bool]] = field(
        default_factory=dict, init=False, repr=False
    )

    def declare(self, need: AnswerNeed) -> None:
        """The resource has `need`: its series at zero."""
        if self.gauge is not None:
            self.gauge.labels(self.resource, need).set(int(need in self._unmet))

    def unmet(self, need: AnswerNeed) -> str | None:
        return self._unmet.get(need)

    def set(
        self,
        need: AnswerNeed,
        reason: str | None,
        *,
        detail: str = "",
        whole: bool = True,
        logged: bool = False,
    ) -> None:
        """`need` unmet for `reason` (short, no path; `detail`: what the log line says), or
        met (None). `whole`: every device of the resource is held while unmet (else only
        those its `hold` predicate holds); `logged`: the caller has logged the change."""
        said = (reason, detail or reason)
        if said == self._said.get(need, (None, None)) and whole == (need in self._whole):
            return
        known = need in self._unmet
        if reason is None:
            self._unmet.pop(need, None)
            self._said.pop(need, None)
            self._whole.discard(need)
            if known and not logged:
                self.log.info("answer_need_met", need=need)
        else:
            self._unmet[need], self._said[need] = reason, said
            if whole:
                self._whole.add(need)
            else:
                self._whole.discard(need)
            if not logged:
                consequence = WITHHELD if whole else "its devices named held Unhealthy"
                self.log.warning(
                    "answer_need_unmet",
                    need=need,
                    reason=detail or reason,
                    consequence=consequence,
                )
        if self.gauge is not None:
            self.gauge.labels(self.resource, need).set(int(reason is not None))
        self.report(need, reason)  # (a report of the same reason changes nothing)
        self.table.set_withheld(bool(self._whole))

    def hold(self, need: AnswerNeed, predicate: Callable[[Device], bool] | None) -> None:
        """Hold Unhealthy each device `predicate` holds back (None: none) for `need` (the
        resource has it: `declare`)."""
        if predicate is None:
            self._holds.pop(need, None)
        else:
            self._holds[need] = predicate
            self.declare(need)
        self.refresh()

    def refresh(self) -> None:
        """What a `hold` predicate answers changed: the table asks each device again."""
        holds = tuple(self._holds.values())
        if not holds:
            self.table.hold_unhealthy(None)
        elif len(holds) == 1:
            self.table.hold_unhealthy(holds[0])
        else:
            self.table.hold_unhealthy(lambda device: any(held(device) for held in holds))
