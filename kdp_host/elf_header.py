"""What an ELF binary's headers say about starting it: the machine it was built for and the
loader it names (hostile28 G1).

The kernel execs an ELF file only when its class, byte order and machine are ones it runs
(the host's own, or a compat one: i386 on x86_64, arm on aarch64), else "Exec format error",
unless a binfmt_misc entry (qemu-user) takes it; a dynamically linked binary then has the
kernel load the program its PT_INTERP header names (`/lib64/ld-linux-x86-64.so.2`): missing,
"No such file or directory" names the binary, not the loader (a musl build on a glibc host).
The host's own machine is read from the running interpreter's header (`/proc/self/exe`)."""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Final

MAGIC: Final = b"\x7fELF"
_PT_INTERP: Final = 3
_MAX_HEADERS: Final = 256
"""Program headers looked through for PT_INTERP (real binaries have about a dozen)."""
_COMPAT: Final = {62: frozenset({3}), 183: frozenset({40})}
"""Machines a host's kernel may also run: x86_64 runs i386; aarch64 may run arm (when the
CPU and kernel have AArch32): taken as runnable, the kernel decides."""
_MACHINES: Final = {
    3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm", 62: "x86_64",
    183: "aarch64", 243: "riscv", 258: "loongarch",
}  # fmt: skip


@dataclass(frozen=True)
class ElfHeader:
    """The fields of an ELF file's header the kernel's exec looks at."""

    wide: bool
    """ELFCLASS64 (else 32)."""
    little: bool
    """Little-endian (ELFDATA2LSB)."""
    machine: int
    """e_machine."""

    @property
    def machine_name(self) -> str:
        return _MACHINES.get(self.machine, f"machine {self.machine}")


def elf_header(head: bytes) -> ElfHeader | None:
    """The header of the ELF file `head` begins (None: not ELF, or cut short)."""
    if not head.startswith(MAGIC) or len(head) < 20 or head[4] not in (1, 2):
        return None
    little = head[5] == 1
    (machine,) = struct.unpack_from("<H" if little else ">H", head, 18)
    return ElfHeader(wide=head[4] == 2, little=little, machine=machine)


@functools.cache
def host_elf() -> ElfHeader | None:
    """The running interpreter's own header: the machine this host runs (None: unreadable)."""
    try:
        with open("/proc/self/exe", "rb") as file:
            return elf_header(file.read(64))
    except OSError:
        return None


def foreign_machine(header: ElfHeader, host: ElfHeader | None) -> str | None:
    """Why the host's kernel does not run a binary with `header` natively (None: it does, or
    the host's machine is not known)."""
    if host is None or header.machine == host.machine:
        return None if host is None or header.little == host.little else _built(header, host)
    if header.machine in _COMPAT.get(host.machine, ()):
        return None
    return _built(header, host)


def _built(header: ElfHeader, host: ElfHeader) -> str:
    order = "" if header.little == host.little else "little-" if header.little else "big-"
    order += "endian " if order else ""
    return (
        f"an ELF binary built for {order}{header.machine_name} (this host runs {host.machine_name})"
    )


def elf_interpreter(path: str) -> str | None:
    """The loader the kernel loads to start the host's own kind of dynamically linked ELF
    binary (its PT_INTERP), None for a static one, another machine's (binfmt_misc's runner
    finds its loader its own way), or a file that is not ELF or cannot be read. Blocking."""
    try:
        with open(path, "rb") as file:
            head = file.read(64)
            header = elf_header(head)
            if header is None or len(head) < 64 or foreign_machine(header, host_elf()):
                return None
            end = "<" if header.little else ">"
            if header.wide:
                (table,) = struct.unpack_from(end + "Q", head, 32)
                size, count = struct.unpack_from(end + "HH", head, 54)
            else:
                (table,) = struct.unpack_from(end + "I", head, 28)
                size, count = struct.unpack_from(end + "HH", head, 42)
            if size < (56 if header.wide else 32):
                return None
            file.seek(table)
            headers = file.read(size * min(count, _MAX_HEADERS))
            for at in range(0, len(headers) - size + 1, size):
                if struct.unpack_from(end + "I", headers, at)[0] != _PT_INTERP:
                    continue
                offset, length = struct.unpack_from(
                    end + ("QxxxxxxxxxxxxxxxxQ" if header.wide else "IxxxxxxxxI"),
                    headers,
                    at + (8 if header.wide else 4),
                )
                file.seek(offset)
                named = file.read(min(length, 4096)).split(b"\0", 1)[0]
                return named.decode(errors="replace") or None
    except (OSError, struct.error, OverflowError, ValueError):
        return None
    return None
