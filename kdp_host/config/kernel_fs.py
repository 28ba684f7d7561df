"""The kernel's own file systems no container is handed (`handed.NeverHanded`, hostile18 F6):
by the mount table's type, wherever they are mounted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

KERNEL_WHY: Final = " writable (the kernel acts on what is written there)"
"""Why a mount of a kernel file system of `KERNEL_FILE_SYSTEMS` may be handed read-only only."""
KERNEL_FILE_SYSTEMS: Final[Mapping[str, tuple[str, bool]]] = {
    "proc": ("the host's processes and kernel settings", False),
    "debugfs": ("the kernel's debugging interface", False),
    "tracefs": ("the kernel's tracing of every process", False),
    "sysfs": ("the kernel's devices, drivers and settings", True),
    "cgroup": ("the host's control groups", True),
    "cgroup2": ("the host's control groups", True),
    "securityfs": ("the security modules' policies", True),
    "selinuxfs": ("SELinux's policy and mode", True),
    "configfs": ("kernel objects made by writing", True),
    "bpf": ("pinned BPF programs and maps", True),
    "efivarfs": ("the firmware's variables", True),
    "binfmt_misc": ("the interpreters the kernel runs programs with", True),
}
"""The kernel's own file systems, by the mount table's type (`MountMap.of_types`), with what
each holds and whether it is refused handed writable only: no device node or mount source
may be, lie in or hold a mount of one, wherever it is mounted (a second procfs at
`/host/proc`, the host's `/sys` at `/host/sys`: hostile18 F6). procfs, debugfs and tracefs
whatever the mode (reading them reads other processes and the kernel's state); the others
where handed writable (a read-only sysfs or cgroup tree is what every container is given)."""
