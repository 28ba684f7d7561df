"""Structured logs: one event per line, key=value or JSON, the resource on every line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from kdp_host.logs import get_logger, setup_logging


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
