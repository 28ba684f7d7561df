"""One way off the event loop: the host's offload (`files.Offload`), passed in.

Product code never starts its own threads or uses asyncio's executor: blocking work goes
through the offload the host made (daemon threads, so a call stuck in the kernel never
keeps the process from exiting). The kubelet simulator is the kubelet's model, not the
product, and is left out.
"""

from __future__ import annotations

import ast
import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kdp_host.atomic_files import read_or_none
from kdp_host.config import load_config_text
from kdp_host.files import DaemonThreads
from kdp_host.host import Host
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics

from .conftest import wait_until

T = TypeVar("T")
PACKAGE = Path(__file__).resolve().parent.parent / "kdp_host"
THREAD_OWNERS = {"files.py", "http.py", "http_server.py"}
"""files.py is the offload (and the attribute reader's workers); http.py and its server
(http_server.py) serve /metrics from threads of their own, outside the loop entirely."""


def _calls(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in (
            "to_thread",
            "run_in_executor",
            "Thread",
        ):
            names.append(node.attr)
        elif isinstance(node, ast.alias) and node.name.split(".")[0] == "aiofiles":
            names.append("aiofiles")
    return names


def test_product_code_leaves_the_loop_only_through_the_offload() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("simulator", "api") or str(relative) in THREAD_OWNERS:
            continue
        found = _calls(ast.parse(path.read_text(), str(path)))
        offenders += [f"{relative}: {name}" for name in found]
    assert offenders == []


class CountingOffload:
    def __init__(self) -> None:
        self.calls = 0
        self._threads = DaemonThreads()

    async def run(self, function: Callable[[], T]) -> T:
        self.calls += 1
        return await self._threads.run(function)


async def test_the_host_passes_its_offload_to_everything(
    socket_dir: Path, devices: Path, tmp_path: Path
) -> None:
    """Stale-socket cleanup, the glob scan and the CDI spec writes all go through the one
    offload the host was given."""
    config = load_config_text(
        f"""
kubelet: {{socketDir: {socket_dir}}}
resources:
  - name: t.io/fpga
    glob: {{paths: ["{devices}/fpga*"]}}
    allocate: {{cdi: {{kind: t.io/fpga, specDir: {tmp_path / "cdi"}}}}}
"""
    )
    offload = CountingOffload()
    host = Host(config=config, metrics=Metrics(), log=get_logger(), offload=offload)
    stop = asyncio.Event()
    task = asyncio.create_task(host.run(stop))
    try:
        await wait_until(lambda: (tmp_path / "cdi").is_dir() and any((tmp_path / "cdi").iterdir()))
        # stale sockets (1), one scan (1), render and write of the spec (2), its first read (1)
        assert offload.calls >= 5
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_a_fifo_in_place_of_the_spec_file_never_blocks_its_read(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.json"
    os.mkfifo(fifo)
    done = threading.Event()
    result: list[bytes | None] = []

    def read() -> None:
        result.append(read_or_none(str(fifo)))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(10), "the read of a FIFO blocked"
    assert result == [None]
    (tmp_path / "real.json").write_bytes(b"{}")
    assert read_or_none(str(tmp_path / "real.json")) == b"{}"
    assert read_or_none(str(tmp_path / "missing.json")) is None
