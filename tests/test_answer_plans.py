"""An Allocate answer's plan (`protocol.answers`): made once per snapshot and request, the
same as made at every Allocate, never changed by an answer that hands out real paths."""

from __future__ import annotations

from typing import Any

import pytest

from kdp_host.allocation import AllocationBuilder, AllocationError
from kdp_host.config import MountConfig
from kdp_host.device_table import DeviceTable
from kdp_host.devices import DeviceMount
from kdp_host.protocol.answers import AnswerPlans, plan_answer

from .test_allocation import dev, resource


def counting(builder: AllocationBuilder, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    made: list[object] = []
    build = AllocationBuilder.container_response

    def counted(self: AllocationBuilder, *args: Any, **kwargs: Any) -> Any:
        made.append(args)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(AllocationBuilder, "container_response", counted)
    return made


def test_a_plan_is_made_once_per_snapshot_and_request(monkeypatch: pytest.MonkeyPatch) -> None:
    table = DeviceTable()
    table.publish([dev("fpga0"), dev("fpga1")])
    builder = AllocationBuilder(resource(env={"IDS": "{ids}"}))
    made = counting(builder, monkeypatch)
    plans = AnswerPlans(builder)
    first = plans.plan(table.snapshot, (("fpga0",),))
    assert plans.plan(table.snapshot, (("fpga0",),)) is first
    assert len(made) == 1
    plans.plan(table.snapshot, (("fpga1",), ("fpga0",)))
    assert len(made) == 3  # (another request: its own plan)
    table.publish([dev("fpga0"), dev("fpga2")])
    again = plans.plan(table.snapshot, (("fpga0",),))
    assert again is not first and len(made) == 4  # (a new version: made anew)
    with pytest.raises(AllocationError, match="unknown device"):
        plans.plan(table.snapshot, (("fpga1",),))  # (gone in the new version)


def test_a_plan_is_what_the_builder_makes_at_every_allocate() -> None:
    table = DeviceTable()
    table.publish([dev("fpga0", mounts=(DeviceMount("/opt/fw0", "/fw", True),)), dev("fpga1")])
    config = resource(mounts=(MountConfig("/usr/lib", "/usr/local/lib", read_only=True),))
    builder = AllocationBuilder(config)
    requests = (("fpga1", "fpga0"),)
    plan = AnswerPlans(builder).plan(table.snapshot, requests)
    responses = [builder.container_response(table.snapshot, ids) for ids in requests]
    assert [bytes(r) for r in plan.responses] == [bytes(r) for r in responses]
    assert plan == plan_answer(builder, table.snapshot, requests, responses)
    assert plan.nodes == {"/dev/fpga0", "/dev/fpga1"}
    assert plan.paths == {"/dev/fpga0", "/dev/fpga1", "/usr/lib", "/opt/fw0"}
    assert plan.read_only == {"/usr/lib", "/opt/fw0"}
    assert plan.handed.places == {"fpga1": ["/usr/lib"], "fpga0": ["/usr/lib"]}
    assert plan.spelled == {"fpga0": ("/dev/fpga0", "/opt/fw0"), "fpga1": ("/dev/fpga1",)}


def test_an_answer_with_real_paths_leaves_the_plan_as_it_was() -> None:
    table = DeviceTable()
    table.publish([dev("fpga0")])
    config = resource(mounts=(MountConfig("/usr/lib", "/usr/local/lib", read_only=True),))
    plan = AnswerPlans(AllocationBuilder(config)).plan(table.snapshot, (("fpga0",),))
    before = [bytes(r) for r in plan.responses]
    same = plan.answer({"/dev/fpga0": "/dev/fpga0", "/usr/lib": "/usr/lib"})
    assert all(a is b for a, b in zip(same, plan.responses, strict=True))
    real = plan.answer({"/dev/fpga0": "/dev/real0", "/usr/lib": "/lib/real"})
    assert [s.host_path for s in real[0].devices] == ["/dev/real0"]
    assert [m.host_path for m in real[0].mounts] == ["/lib/real"]
    assert [bytes(r) for r in plan.responses] == before
    assert plan.handed_as({"/dev/fpga0": ("c", 7)}) == {"fpga0": {("c", 7)}}
