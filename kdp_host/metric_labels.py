"""The label values of the kdp_ metrics, declared once: every `result` and `reason` a
counter knows (its series exist at zero from the first scrape), the hooks whose series come
and go with their config section, and the `metrics.histograms` modes.

Plain data with no imports of ours: config, drivers and the metric families all read it.
"""

from __future__ import annotations

from typing import Literal, get_args

ALLOCATION_RESULTS = ("ok", "invalid", "hook_failed", "unsaved", "checkpoint_unreadable")
"""Every `result` of an Allocate container request (`unsaved`: refused, its record could not
be written to `handed-out.json`; `checkpoint_unreadable`: refused, a read of the kubelet's
checkpoint it waited for could not use the file, `checkpoint_reads.CheckpointReads`)."""
REGISTRATION_RESULTS = ("ok", "refused", "unavailable", "error")
DriverErrorReason = Literal[
    "timeout", "exit", "parse", "output_too_large", "spawn", "io", "too_many_paths"
]
"""Every `reason` a driver may count a failed scan or probe under (`DriverError.reason`; a
scan `abandoned` past its timeout is never counted)."""
DRIVER_ERROR_REASONS: tuple[DriverErrorReason, ...] = get_args(DriverErrorReason)
DRIVER_SKIP_REASONS = (
    "bad_name",
    "dangling_link",
    "link_loop",
    "same_device",
    "id_collision",
    "read_timeout",
    "read_refused",
    "read_error",
    "rate_limited",
    "incomplete_group",
    "path_collision",
    "unsafe_mount",
    "not_a_node",
    "unresolvable",
    "node_owned",
)
"""Every `reason` a driver may count something it left out (without failing) under."""
ConfigReloadResult = Literal["ok", "invalid", "refused", "unchanged"]
CONFIG_RELOAD_RESULTS: tuple[ConfigReloadResult, ...] = get_args(ConfigReloadResult)
DEVICE_HEALTH = ("healthy", "unhealthy")
AnswerNeed = Literal["cdi", "mounts", "command", "lock"]
"""What a resource's answers need besides its devices (`answer_needs`): the CDI spec file
written, the `allocate.mounts` sources there, the host commands on the allocation path
startable, `<stateDir>/ownership.json.lock` taken in time, whoever keeps it (`fence_stuck`)."""
ANSWER_NEEDS: tuple[AnswerNeed, ...] = get_args(AnswerNeed)
EVERY_RESOURCE_NEEDS: tuple[AnswerNeed, ...] = ("lock",)
"""The needs every resource's answers have, whatever its config (every host has a state
directory another host may run on)."""
HookResult = Literal[
    "ok", "exit", "timeout", "spawn", "output_too_large", "parse", "invalid", "place_changed",
    "unknown", "deadline",
]  # fmt: skip
PRE_START_RESULTS: tuple[HookResult, ...] = (
    "ok", "exit", "timeout", "spawn", "output_too_large", "invalid", "place_changed", "deadline",
)  # fmt: skip
"""Every `result` of a preStart call (`invalid`: devices the plugin does not know;
`place_changed`: a host path handed out reaches another device now: refused, not run;
`deadline`: its timeout no longer fit in the kubelet's deadline: not run, `start_budget`)."""
ALLOCATE_HOOK_RESULTS: tuple[HookResult, ...] = (
    "ok", "exit", "timeout", "spawn", "output_too_large", "parse",
)  # fmt: skip
"""Every `result` of an `allocate.command` run (`parse`: output that does not validate)."""
HookName = Literal["preStart", "allocate.command", "release"]
"""The config sections whose series exist only while a resource has them (`forget_hooks`)."""

RELEASE_RESULTS: tuple[HookResult, ...] = (
    "ok", "exit", "timeout", "spawn", "output_too_large", "invalid", "place_changed", "unknown",
)  # fmt: skip
"""Every `result` of a `release.command` run (`invalid`: a device neither listed nor kept
as handed out: nothing to release, not run; `place_changed`: a host path handed out reaches
another device now: not run, retried; `unknown`: what the device was handed out as was lost
with `handed-out.json`: not run, owed until a container start on it after an Allocate)."""
PodResourcesResult = Literal["ok", "incomplete", "absent", "unsupported", "rate_limited", "error"]
POD_RESOURCES_RESULTS: tuple[PodResourcesResult, ...] = get_args(PodResourcesResult)
"""Every `result` of a PodResources poll (`incomplete`: answered soon after a kubelet
restart without pods shown before, which still hold; `absent`: no socket; `unsupported`: no v1 List;
`rate_limited`: refused by the kubelet's rate limit)."""

UnbookedResult = Literal["booked", "not_present"]
UNBOOKED_RESULTS: tuple[UnbookedResult, ...] = get_args(UnbookedResult)
"""Every `result` of a held ID PodResources showed without a booking (`booked`: booked then,
with its device's claims; `not_present`: no device of its resource has that ID now)."""

HeldMissingAction = Literal["event", "delete"]
HeldMissingResult = Literal[
    "sent", "deleted", "dropped", "refused", "unreachable", "pod_gone", "not_selected"
]
HELD_MISSING_RESULTS: tuple[HeldMissingResult, ...] = get_args(HeldMissingResult)
"""Every `result` of an action of `heldMissing` (`sent`: the Event was created; `deleted`: the
pod; `dropped`: an Event over the rate bound, not sent; `refused`: the API server answered
with an error (RBAC, validation); `unreachable`: no answer (no route, TLS, timeout, no
service account); `pod_gone`: the pod is no longer there, or is another one now, or on
another node; `not_selected`: its labels do not match `deletePods.selector`, kept)."""

HistogramMode = Literal["perResource", "host", "off"]
HISTOGRAM_MODES: tuple[HistogramMode, ...] = ("perResource", "host", "off")
"""`metrics.histograms`: one set of latency histograms per resource (15 series each), one set
for the whole host (no `resource` label: the count no longer grows with resources), or none."""
DEFAULT_HISTOGRAM_MODE: HistogramMode = "perResource"
