"""The config shared by the release tests (test_release_handed_reach.py,
test_release_swapped.py, test_release_place.py, test_handed_unsaved.py): resource R1 globs
`root/a/n*` and its release hook appends `{ids} {hostPaths}` to a log. The config can also
give R1 a preStart hook or CDI, and can add R2, which globs `root/b/m*`."""

from __future__ import annotations

from pathlib import Path

R1 = "vendor.example/one"
R2 = "vendor.example/two"


def release_config(
    socket_dir: Path,
    root: Path,
    log: Path,
    *,
    pre_start: bool = False,
    cdi: bool = False,
    second: bool = False,
) -> str:
    """A config whose R1 logs every release (and, with `pre_start`, every preStart) to `log`.
    PodResources is polled every second."""
    hook = f'[sh, -c, "echo {{ids}} {{hostPaths}} >> {log}"]'
    text = (
        f"kubelet: {{socketDir: {socket_dir}, podResourcesSocket: "
        f"{root}/pr/kubelet.sock, podResourcesInterval: 1s}}\n"
        f"stateDir: {root}/state\nresources:\n"
        f"  - name: {R1}\n"
        f'    glob: {{paths: ["{root}/a/n*"], gracePeriod: 0s}}\n'
        f"    release: {{command: {hook}}}\n"
    )
    if pre_start:
        text += f"    preStart: {{command: {hook}}}\n"
    if cdi:
        text += f"    allocate: {{cdi: {{kind: {R1}, specDir: {root / 'cdi'}}}}}\n"
    if second:
        text += f'  - name: {R2}\n    glob: {{paths: ["{root}/b/m*"], gracePeriod: 0s}}\n'
    return text
