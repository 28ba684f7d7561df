"""What the log says of held devices (`ownership_held`): a file churn of thousands of nodes a
second, each gone between the scan that listed it and its admission, logged a `device_held`
line per node (7,000-8,700 lines in 10 s of the churn bench); one line a second per
resource now, saying how many like lines it kept back."""

from __future__ import annotations

import logging

import pytest

from kdp_host import ownership_held
from kdp_host.config import UNSAFE_MOUNT
from kdp_host.identity import UNSEEN
from kdp_host.logs import get_logger
from kdp_host.ownership_held import note_held
from kdp_host.ownership_table import Holding, Owner, ResourceState


def _gone(path: str) -> Holding:
    return Holding(UNSAFE_MOUNT, Owner("", ""), path, detail=f"its real path {path} {UNSEEN}")


def test_lines_of_paths_where_nothing_is_are_one_a_second(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [100.0]
    monkeypatch.setattr(ownership_held.time, "monotonic", lambda: clock[0])
    state = ResourceState("vendor.example/churn", log=get_logger("kdp_host.test_held"))
    caplog.set_level(logging.INFO, logger="kdp_host.test_held")

    def held(*device_ids: str) -> None:
        holding = {d: _gone(f"/dev/{d}") for d in device_ids}
        note_held(state, holding, {}, (), {}, pod_resources=True, metrics=None)

    for n in range(50):  # (one node a change, as a churn makes them)
        held(f"n{n}")
    clock[0] += ownership_held.UNSEEN_LINE_EVERY
    held("m0")
    lines = [r for r in caplog.records if r.getMessage() == "device_held"]
    assert len(lines) == 2
    first, second = (r.__dict__["kdp_fields"] for r in lines)
    assert first["device"] == "n0" and "like_lines_not_shown" not in first
    assert second["device"] == "m0" and second["like_lines_not_shown"] == 49


def test_other_held_lines_are_all_shown(caplog: pytest.LogCaptureFixture) -> None:
    state = ResourceState("vendor.example/fpga", log=get_logger("kdp_host.test_held2"))
    caplog.set_level(logging.INFO, logger="kdp_host.test_held2")
    for n in range(5):
        holding = {f"n{n}": Holding(UNSAFE_MOUNT, Owner("", ""), "/x", detail="is / (root)")}
        note_held(state, holding, {}, (), {}, pod_resources=True, metrics=None)
    assert sum(r.getMessage() == "device_held" for r in caplog.records) == 5
