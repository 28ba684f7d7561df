"""Structured logs: one event per line, key=value or JSON, the resource on every line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from kdp_host.logs import LineRate, Mute, get_logger, muted_by, setup_logging

from .conftest import logging_kept


@pytest.fixture
def stream() -> io.StringIO:
    buffer = io.StringIO()
    yield buffer
    logging.getLogger("kdp_host").handlers.clear()
    logging.getLogger("kdp_host").propagate = True


def test_text_lines_carry_the_resource(stream: io.StringIO) -> None:
    setup_logging("text", "info", stream)
    log = get_logger().bind(resource="vendor.example/fpga")
    log.info("registered", endpoint="kdp-x.sock", reason="two words")
    log.debug("hidden")
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert " info event=registered resource=vendor.example/fpga endpoint=kdp-x.sock" in line
    assert 'reason="two words"' in line


def test_json_lines(stream: io.StringIO) -> None:
    setup_logging("json", "debug", stream)
    log = get_logger().bind(resource="vendor.example/fpga")
    log.debug("devices_changed", healthy=2, unhealthy=0)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("resource_crashed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "devices_changed" and first["healthy"] == 2
    assert first["resource"] == "vendor.example/fpga" and first["level"] == "debug"
    assert second["level"] == "error" and "ValueError: boom" in second["error"]


def test_a_line_rate_shows_one_line_per_interval_and_counts_the_others() -> None:
    rate = LineRate()
    assert rate.shown(100.0, 1.0) == 0  # the first line: nothing kept back
    assert [rate.shown(100.0 + n / 10, 1.0) for n in range(1, 10)] == [None] * 9
    assert rate.shown(101.0, 1.0) == 9
    assert rate.shown(102.5, 1.0) == 0


def test_a_muted_block_logs_nothing_once_its_owner_turns_the_mute_on(
    stream: io.StringIO,
) -> None:
    setup_logging("text", "info", stream)
    mute, log = Mute(), get_logger()
    with muted_by(mute):
        log.info("before")
        mute.on = True
        log.info("after")
    log.info("outside")
    events = [line.split("event=")[1].split()[0] for line in stream.getvalue().splitlines()]
    assert events == ["before", "outside"]


def test_a_cli_run_in_a_test_leaves_no_handler_behind(capsys: pytest.CaptureFixture[str]) -> None:
    """`kdp_host.cli.main` sets up the process's logging: a handler on sys.stderr (in a test,
    capsys's capture, closed when the test ends) and no propagation. Left in place, every
    later line of the worker failed ("--- Logging error ---": I/O operation on closed file),
    shown in CI for a line that came between tests. Each test runs `logging_kept`."""
    from kdp_host.cli import main

    logger = logging.getLogger("kdp_host")
    before = (logger.handlers[:], logger.propagate, logger.level)
    with logging_kept():
        assert main(["version"]) == 0
        assert logger.handlers != before[0] and not logger.propagate
    assert (logger.handlers, logger.propagate, logger.level) == before
