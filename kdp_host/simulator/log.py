"""The simulator's log lines: the message is the event name, the fields travel in
``record.kdp_fields`` (kdp-host's log formatters render them as ``key=value`` or JSON)."""

from __future__ import annotations

import logging
from typing import Final

LOGGER: Final = logging.getLogger("kdp_host.simulator")


def log_event(level: int, event: str, **fields: object) -> None:
    if LOGGER.isEnabledFor(level):
        LOGGER.log(level, event, extra={"kdp_fields": fields}, stacklevel=2)
