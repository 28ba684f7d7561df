"""Which hot-plug event source to use: kernel uevents (netlink) or devtmpfs nodes (inotify).

    sudo KDP_BENCH_REAL_UEVENTS=1 python -m tests.bench.uevent_sources [--events N]

Both events are queued by the kernel inside the same call that adds or removes the device
(device_add creates the devtmpfs node, then sends the uevent), so they arrive together; the
figures show how long that call takes and when each source wakes a waiting reader.

Makes the kernel add and remove a real device (a loop block device, through
/dev/loop-control) and times, from the ioctl, the uevent on a NETLINK_KOBJECT_UEVENT socket
and the inotify event for the node devtmpfs creates in /dev. Needs root, a real /dev
(devtmpfs) and the host's network namespace for netlink; it changes the machine (a loop
device appears and goes), so it runs only when asked, never in `make bench` or the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import os
import select
import socket
import statistics
import struct
import sys
import time

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1
LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
IN_CREATE = 0x100
IN_DELETE = 0x200
FIRST_INDEX = 240


def _inotify(directory: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, directory.encode(), IN_CREATE | IN_DELETE) < 0:
        raise OSError(ctypes.get_errno(), "inotify")
    return int(fd)


def _inotify_names(fd: int) -> list[tuple[int, str]]:
    data = os.read(fd, 65536)
    events = []
    offset = 0
    while offset < len(data):
        _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
        name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
        events.append((mask, name))
        offset += 16 + length
    return events


def measure(events: int) -> dict[str, list[float]]:
    uevents = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    uevents.bind((0, KERNEL_GROUP))
    uevents.setblocking(False)
    notify = _inotify("/dev")
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    index = next(i for i in range(FIRST_INDEX, 1 << 16) if not os.path.exists(f"/dev/loop{i}"))
    name = f"loop{index}"
    results: dict[str, list[float]] = {
        "kernel add call": [],
        "netlink add": [],
        "inotify add": [],
        "kernel remove call": [],
        "netlink remove": [],
        "inotify remove": [],
    }
    try:
        for _ in range(events):
            for action, request, mask in (
                ("add", LOOP_CTL_ADD, IN_CREATE),
                ("remove", LOOP_CTL_REMOVE, IN_DELETE),
            ):
                pending = {"netlink", "inotify"}
                started = time.monotonic()
                fcntl.ioctl(control, request, index)
                results[f"kernel {action} call"].append((time.monotonic() - started) * 1000)
                deadline = started + 5
                while pending and time.monotonic() < deadline:
                    ready, _, _ = select.select([uevents, notify], [], [], 0.5)
                    at = time.monotonic()
                    if uevents in ready:
                        while True:
                            try:
                                message = uevents.recv(65536)
                            except BlockingIOError:
                                break
                            if message.startswith(f"{action}@".encode()) and message.split(
                                b"\0", 1
                            )[0].endswith(f"/{name}".encode()):
                                if "netlink" in pending:
                                    results[f"netlink {action}"].append((at - started) * 1000)
                                pending.discard("netlink")
                    if notify in ready:
                        for event_mask, event_name in _inotify_names(notify):
                            if event_name == name and event_mask & mask and "inotify" in pending:
                                results[f"inotify {action}"].append((at - started) * 1000)
                                pending.discard("inotify")
                if pending:
                    print(f"no {', '.join(sorted(pending))} event for {action}", file=sys.stderr)
                time.sleep(0.02)
    finally:
        if os.path.exists(f"/dev/{name}"):
            with contextlib.suppress(OSError):
                fcntl.ioctl(control, LOOP_CTL_REMOVE, index)
        os.close(control)
        os.close(notify)
        uevents.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50)
    args = parser.parse_args()
    if os.environ.get("KDP_BENCH_REAL_UEVENTS") != "1":
        print("set KDP_BENCH_REAL_UEVENTS=1: this adds and removes a real loop device")
        return 2
    for source, values in measure(args.events).items():
        if values:
            print(
                f"{source:18} n={len(values):3} median {statistics.median(values):.3f} ms"
                f"  max {max(values):.3f} ms"
            )
        else:
            print(f"{source:18} no events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
