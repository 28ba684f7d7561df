"""An answer whose device moved while it was made is refused (hostile16 F5, HIGH).

The answer is built from the device list in force when the Allocate came; an
`allocate.command` (or any slow step) may take a while, and an admission of a list that
moves the ID to another node can run meanwhile (a probe or a glob of links numbering slots
in enumeration order after a driver reload). The booking then held the new list's node, not
the one the answer handed out, and that node, advertised under another ID by the new list,
went to the next pod: two live pods on one node. Now the booking must still claim what the
answer handed out (`handed_as`), else the Allocate is refused (INVALID_ARGUMENT)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .kubelet_harness import healthy

R = "example.com/gpu"


async def test_hostile16_f5_links_swapped_while_the_answer_is_made(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any
) -> None:
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    by_path = short_dir / "dev" / "by-path"
    by_path.mkdir(parents=True)
    for name in ("card0", "card1"):
        (short_dir / "dev" / name).touch()
    (by_path / "pci-A-card").symlink_to("../card0")
    (by_path / "pci-B-card").symlink_to("../card1")
    flip = short_dir / "flip"
    command = short_dir / "acmd.sh"
    command.write_text(
        "#!/bin/sh\n"
        f"if [ -e {flip} ]; then rm -f {flip}\n"
        f"  ln -s ../card1 {by_path}/.a && mv -T {by_path}/.a {by_path}/pci-A-card\n"
        f"  ln -s ../card0 {by_path}/.b && mv -T {by_path}/.b {by_path}/pci-B-card\n"
        "  sleep 0.6\nfi\necho '{}'\n"
    )
    command.chmod(0o755)
    config = (
        f"kubelet: {{socketDir: {kubelet.socket_dir}, podResourcesSocket: "
        f"{kubelet.pod_resources_socket}, podResourcesInterval: 1s}}\n"
        f"stateDir: {short_dir / 'state'}\nresources:\n"
        f"  - name: {R}\n    glob:\n      group:\n"
        f'        - {{path: "{by_path}/pci-{{key}}-card",\n'
        '           containerPath: "/dev/dri/card-{key}"}\n'
        f'    allocate: {{command: ["{command}"], timeout: 5s}}\n'
    )
    await start_host(config)
    await kubelet.await_for(healthy(R, 2), what="A and B advertised")
    flip.touch()  # the first allocate.command swaps the links, then takes 0.6 s
    first = await kubelet.acall(kubelet.allocate, "q0", {R: 1})
    second = await kubelet.acall(kubelet.allocate, "q1", {R: 1})
    live = [a for a in (first, second) if a["error"] == ""]
    numbers = [os.stat(d["PathOnHost"]).st_ino for a in live for d in a["devices"]]
    assert len(numbers) == len(set(numbers)), f"one node in two live pods: {live}"
    assert first["error"] == "" or "other nodes than the answer" in first["error"]
