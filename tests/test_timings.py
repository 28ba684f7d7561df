"""`Timings`: the host's waits on the kubelet, passed in (the product's defaults on every
production path), and the shorter ones the tests pass (`conftest.FAST`)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from kdp_host import cli
from kdp_host.config.model import MIN_POD_RESOURCES_INTERVAL
from kdp_host.timings import Timings

from .fast import FAST, FAST_POLL

WINDOWS = ("allocation_settle", "gone_after", "heard_after", "restart_settle")
"""The windows of PodResources answers: counted in answers, so scaled with the interval."""


def test_fast_keeps_the_windows_in_the_defaults_ratios_to_the_poll_interval() -> None:
    """A test started `fast` sees as many answers inside each window, in the same order, as
    one at the defaults polling at the config's floor."""
    defaults = Timings()
    scale = FAST_POLL / MIN_POD_RESOURCES_INTERVAL
    for name in WINDOWS:
        assert getattr(FAST, name) == pytest.approx(getattr(defaults, name) * scale), name
    assert sorted(WINDOWS, key=lambda n: getattr(FAST, n)) == sorted(
        WINDOWS, key=lambda n: getattr(defaults, n)
    )
    assert FAST.nudge_first <= FAST.nudge_restart_max <= FAST.nudge_max


def test_the_command_line_never_passes_timings() -> None:
    """`kdp-host run` makes its Host with the defaults: no production path sets them."""
    assert "timings" not in inspect.getsource(cli)


@pytest.mark.parametrize(
    "change",
    [
        {"gone_after": -1.0},
        {"nudge_first": 0.0},
        {"nudge_restart_max": 500.0},
        {"release_retry_first": 400.0},
    ],
)
def test_timings_out_of_order_are_refused(change: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Timings"):
        dataclasses.replace(Timings(), **change)
