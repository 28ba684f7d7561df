"""``kdp-host simulate-kubelet``: a simulated kubelet that prints what it sees."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .kubelet import KubeletSimulator
from .records import DIAL_TIMEOUT


async def run_simulator(
    socket_dir: Path,
    *,
    print_fn: Callable[[str], object] = print,
    dial_timeout: float = DIAL_TIMEOUT,
) -> None:
    """Run a simulated kubelet on ``socket_dir`` until cancelled, printing one line per
    change of what the kubelet sees per resource (and every Register outcome)."""
    simulator = KubeletSimulator(Path(socket_dir), dial_timeout=dial_timeout)
    await simulator.start()
    print_fn(f"kubelet simulator serving {simulator.socket_path}")
    last: dict[str, str] = {}
    attempts_seen = 0
    try:
        while True:
            seen = simulator.version
            for attempt in simulator.register_attempts[attempts_seen:]:
                outcome = "ok" if attempt.error is None else f"error={json.dumps(attempt.error)}"
                print_fn(
                    f"register resource={attempt.resource} endpoint={attempt.endpoint} {outcome}"
                )
            attempts_seen = len(simulator.register_attempts)
            current = simulator.describe()
            for name, line in current.items():
                if last.get(name) != line:
                    print_fn(line)
            last = current
            await simulator.wait_changed(seen)
    finally:
        await simulator.stop()
