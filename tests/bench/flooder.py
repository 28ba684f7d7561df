"""A child process that floods kdp-host at a fixed rate: file events in a directory, or HTTP
scrapes.

    python -m tests.bench.flooder churn --dir D --rate R
    python -m tests.bench.flooder scrape --url U [--url U ...] --rate R

Kept out of the benchmark process (as the pinger is) so that its work shares no GIL with the
Allocate client being timed, and paced by the clock so that the flood is the same in every
run whatever kdp-host and the machine do: a flood run "as fast as it can" measured the
generator (a host taking less CPU per event left it more, and the flood grew fivefold).

`churn`: in D, create a file, then remove the oldest one, and so on (as many files stay as
were there). `scrape`: GET the URLs in turn, reading each answer whole. Events are made in
ticks of TICK seconds, as many as the rate owes; a backlog beyond one second of events is
dropped (the rate then falls short, and the count says so). Prints `ready`; on the stdin
line `count` prints `[events, monotonic]`; stops when stdin closes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

TICK = 0.01


def churner(directory: Path) -> Callable[[int], None]:
    """Even events create a file, odd ones remove the oldest (the files present at start
    first), so as many stay."""
    present = collections.deque(sorted(p.name for p in directory.iterdir()))

    def event(i: int) -> None:
        if i % 2 == 0:
            name = f"c{i // 2}"
            with contextlib.suppress(OSError):
                os.close(os.open(directory / name, os.O_CREAT | os.O_WRONLY, 0o644))
            present.append(name)
        else:
            with contextlib.suppress(OSError):
                os.unlink(directory / present.popleft())

    return event


def scraper(urls: list[str]) -> Callable[[int], None]:
    def event(i: int) -> None:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(urls[i % len(urls)], timeout=60) as r,
        ):
            while r.read(1 << 20):
                pass

    return event


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("churn", "scrape"))
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--dir")
    parser.add_argument("--url", action="append", default=[])
    args = parser.parse_args()
    event = churner(Path(args.dir)) if args.kind == "churn" else scraper(args.url)
    lock = threading.Lock()
    done = [0]
    stop = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "count":
                with lock:
                    count = done[0]
                print(json.dumps([count, time.monotonic()]), flush=True)
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    print("ready", flush=True)
    clock = time.monotonic
    started = clock()
    owed_from = 0  # events owed since `started`, less any backlog dropped
    made = 0
    while not stop.is_set():
        owed = int((clock() - started) * args.rate) - owed_from
        if owed - made > args.rate:  # more than a second behind: drop the backlog
            owed_from += owed - made
            owed = made
        while made < owed and not stop.is_set():
            event(made)
            made += 1
            with lock:
                done[0] = made
        next_tick = started + (owed_from + made + 1) / args.rate
        time.sleep(max(TICK, next_tick - clock()))


if __name__ == "__main__":
    main()
