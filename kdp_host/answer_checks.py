"""Whether the `allocate.mounts` sources and the host commands of a resource's answers are
there (`answer_needs`: the needs `mounts` and `command`, issue 17, hostile22 F2 F3), and the
watch that keeps asking (`NeedsWatch`).

The rules are the ones an answer is refused by, imported, not copied:

- a mount source must pass the rule every host path of an answer passes
  (`config.handed.NeverHanded.path_problem`: a source where nothing is in kdp-host's view is
  refused, `identity.UNSEEN`, as is one that is unsafe or cannot be checked);
- a command's program must be found, executable and in a format the kernel execs (ELF or
  `#!`: `exec_format`) as the runner finds it
  (`process.resolve_command`: on the PATH of its env for a bare name), and so must the
  interpreter its `#!` line names, or the loader a dynamically linked ELF binary names
  (`config.places.program_interpreter`; exec fails with "No such file or directory" when
  that is missing, naming the program). A name or a PATH that is a template is
  rendered per call: not judged here.

`kdp-host check` warns with the same functions. A run asks at the resource's start (its first
list waits for the answer, so the kubelet never sees the devices Healthy first) and whenever
the watcher reports a change at a mount source or a command's path (its entry, or that of a
directory on the way to it: `mv /opt /opt.old` moves the source away without an event in its
own directory; a directory gone or mounted over tells too), as named and as the last look
resolved it (a link's target, the program a bare name is found as, each `#!` interpreter:
`rm -r` of a linked vendor tree or of an interpreter touches nothing on the named way;
hostile24 F3 F4), when a command could not be spawned (`NeedsWatch.spawn_failed`; also
the exec wrapper's `exec` failing, as it does when the `#!` interpreter is gone:
`process_group.exec_failure`), and every `RECHECK` seconds while a need is unmet, so it
comes back however it was fixed. The look runs off the loop, bounded by `LOOK_TIMEOUT`
(a hung file system is a source not there); a look that hangs is waited on, not repeated.

Sources that are there may still reach another device's node (a link into the device tree,
a hard link of a node, a node moved in): after each look that finds them there, the
ownership index is asked by its own rule whether every answer would be refused for them
(`source_clash`), also when what is below them changes (the index's arrivals:
`NeedsWatch.follow`) and when an Allocate is refused for what it hands out
(`NeedsWatch.answer_refused`; hostile24 F1).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from .answer_needs import WATCHED, AnswerNeeds, configured_needs
from .config import NeverHanded, ResourceConfig, template_fields
from .config.places import ELF_LOADER, ENV_PROGRAM, program_interpreter, untemplated
from .devices import Device
from .exec_format import loader_problem, script_depth_problem
from .files import Offload
from .mount_table import MountMap, read_mounts
from .places_followed import entries_on_the_way
from .process import CommandError, resolve_command, search_dirs
from .source_clash import SourceClash
from .watch import Subscription, Watcher

RECHECK: Final = 5.0
"""Seconds between looks while a need is unmet (a fix no watch reports is seen by then)."""
LOOK_TIMEOUT: Final = 5.0
"""Seconds a look may take (a mount source on a file system that does not answer)."""
HostCommand = tuple[str, Sequence[str], Mapping[str, str] | None]
"""(which, argv, env) of a command on the allocation path."""


def mount_source_problems(
    resource: ResourceConfig, rule: NeverHanded, mounts: MountMap | None = None
) -> list[tuple[int, str, str]]:
    """(index, host path, why) of each `allocate.mounts` source an answer would be refused
    for now (the rule an answer is checked by). Does I/O."""
    found = []
    for index, mount in enumerate(resource.allocate.mounts):
        why = rule.path_problem(mount.host_path, mounts, writable=not mount.read_only)
        if why is not None:
            found.append((index, os.path.normpath(mount.host_path), why))
    return found


def host_commands(resource: ResourceConfig) -> list[HostCommand]:
    """The commands an answer or a container start of the resource runs, with the env that
    decides where a bare name is found (a hook's `env` entries with no template)."""
    found: list[HostCommand] = []
    if resource.allocate.command is not None:
        found.append(("allocate.command", resource.allocate.command, None))
    if (pre_start := resource.pre_start) is not None:
        found.append(("preStart.command", pre_start.command, untemplated(pre_start.env) or None))
    return found


def command_problem(
    argv: Sequence[str], env: Mapping[str, str] | None, reached: set[str] | None = None
) -> str | None:
    """Why the program `argv` names (or an interpreter its `#!` line names, or the loader
    an ELF binary names) cannot be started now, or None (the runner's rule,
    `process.resolve_command`); `reached` is given each program and interpreter path the
    start goes through, as named and as resolved (the watch follows them). Does I/O."""
    program, what, seen = argv[0], "", set[str]()
    scripts, exec_of = 0, ""  # (`#!` scripts in a row in one exec: the command's, or env's)
    while True:
        if template_fields(program) or (env is not None and template_fields(env.get("PATH", ""))):
            return None  # (rendered per call)
        if reached is not None and os.path.isabs(program):
            reached.add(program)
        try:
            path = resolve_command(program, env, None)
        except CommandError as exc:
            if not what:
                return str(exc)
            crlf = " (the script's lines end in CRLF)" if program.endswith("\r") else ""
            return f"its {what}: {exc}{crlf}"
        if reached is not None:
            reached.update((path, os.path.realpath(path)))
        if what == ELF_LOADER:  # (the kernel follows no loader's own)
            return None if (why := loader_problem(path)) is None else f"its {what}: {why}"
        if what == ENV_PROGRAM:  # (an exec of its own: `#!` levels count afresh)
            if path in seen:
                return None  # (env starting it again: it runs, and loops)
            seen.add(path)
            scripts, exec_of = 0, what
        interpreter = program_interpreter(path)
        if interpreter is None:
            return None
        program, settings, kind = interpreter
        if kind != ELF_LOADER:
            scripts += 1
            if (why := script_depth_problem(scripts)) is not None:
                return why if not exec_of else f"its {exec_of}: {why}"
        if "PATH" in settings:
            return None  # (`env PATH=...`: expanded at exec; not judged)
        env, what = {**(env or {}), **settings} or None, kind


def command_problems(
    resource: ResourceConfig, reached: set[str] | None = None
) -> list[tuple[str, str]]:
    """(which command, why) for each host command of the resource that cannot be started
    (`reached`: `command_problem`'s)."""
    return [
        (which, why)
        for which, argv, env in host_commands(resource)
        if (why := command_problem(argv, env, reached)) is not None
    ]


@dataclass(frozen=True)
class Look:
    """What one look found: the problems of the mount sources and of the commands, and the
    paths the answer goes through as resolved now (a source's real path, a command's
    program and `#!` interpreters, each as named and as resolved: `rm -r` of a link's
    target, or of an interpreter, changes no entry on the way to the path as configured)."""

    mounts: list[tuple[int, str, str]]
    commands: list[tuple[str, str]]
    resolved: frozenset[str]


@dataclass
class NeedsWatch:
    """Keeps a resource's `mounts` and `command` needs (`AnswerNeeds`) current until
    cancelled (the module docstring)."""

    resource: ResourceConfig
    needs: AnswerNeeds
    rule: Callable[[], NeverHanded]
    """The host's rule now (a reload makes another)."""
    offload: Offload
    watcher: Watcher | None = None
    recheck: float = RECHECK
    look_timeout: float = LOOK_TIMEOUT
    checked: asyncio.Event = field(default_factory=asyncio.Event)
    """Set after the first look (the first list waits for it: `FirstList`), one that asked
    the index (`clash`) once the table first published (its devices claimed)."""
    clash: Callable[[], Awaitable[SourceClash | None]] | None = None
    """Whether the sources clash with what the index holds for every answer
    (`source_clash`), asked after each look that finds them there."""
    follow: Callable[[Callable[[], None]], Callable[[], None]] | None = None
    """Subscribes a wake to what may change that answer (the index's arrivals below the
    sources: `OwnershipIndex.follow_sources`); returns what stops it."""
    published: asyncio.Event | None = None
    """The table's first publish (the clash is asked from then on)."""
    looks: int = field(default=0, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _holding: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        for need in configured_needs(self.resource) & WATCHED:
            self.needs.declare(need)

    def spawn_failed(self) -> None:
        """A command of the resource could not be spawned: look again now."""
        self._wake.set()

    def answer_refused(self) -> None:
        """An Allocate was refused for what it hands out (`PlaceOwned`, a path that does not
        resolve as it must): look again now."""
        self._wake.set()

    def _paths(self, resolved: frozenset[str]) -> Iterator[str]:
        """The paths whose directory's changes may change an answer: as named, and as the
        last look resolved them (`Look.resolved`)."""
        yield from resolved
        for mount in self.resource.allocate.mounts:
            yield os.path.normpath(mount.host_path)
        for _, argv, env in host_commands(self.resource):
            if template_fields(argv[0]):
                continue
            if "/" in argv[0]:
                yield os.path.abspath(argv[0])
            else:
                yield from (os.path.join(d, argv[0]) for d in search_dirs(env, None))

    def _subscribe(self, resolved: frozenset[str]) -> list[Subscription]:
        watcher, wake = self.watcher, self._wake
        if watcher is None:
            return []
        by_dir: dict[str, set[str]] = {}
        for path in self._paths(resolved):
            for directory, name in entries_on_the_way(path):
                by_dir.setdefault(directory, set()).add(name)
        return [
            watcher.subscribe(directory, lambda _: wake.set(), names)
            for directory, names in sorted(by_dir.items())
        ]

    async def run(self) -> None:
        resolved: frozenset[str] = frozenset()
        subscriptions = self._subscribe(resolved)
        look: asyncio.Future[Look] | None = None
        wake, published = self._wake.set, self.published
        stop = None if self.follow is None else self.follow(wake)
        first = None if published is None else asyncio.ensure_future(published.wait())
        if first is not None:
            first.add_done_callback(lambda _: wake())
        try:
            while True:
                self._wake.clear()
                if look is None:
                    look = asyncio.ensure_future(
                        self.offload.run(functools.partial(self._look, self.rule()))
                    )
                done, _ = await asyncio.wait({look}, timeout=self.look_timeout)
                doubtful = not done
                if doubtful:
                    self._hung()
                elif doubtful := (failed := look.exception()) is not None:
                    look = None  # (a defect: the needs stay as they were, looked at again)
                    self.needs.log.error("answer_needs_look_failed", error=repr(failed))
                else:
                    found = look.result()
                    look = None
                    asked = published is None or published.is_set()
                    clash = await self._clash() if asked and not found.mounts else None
                    self._took(found.mounts, found.commands, clash)
                    if found.resolved != resolved:  # (a change made meanwhile: one more look)
                        for subscription in subscriptions:
                            subscription.cancel()
                        resolved = found.resolved
                        subscriptions = self._subscribe(resolved)
                        self._wake.set()
                self.looks += 1
                if self.clash is None or published is None or published.is_set():
                    self.checked.set()
                unmet = self.needs.unmet("mounts") or self.needs.unmet("command")
                try:
                    timeout = self.recheck if unmet or doubtful else None
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            if look is not None:
                look.cancel()
            if first is not None:
                first.cancel()
            if stop is not None:
                stop()
            for subscription in subscriptions:
                subscription.cancel()

    async def _clash(self) -> SourceClash | None:
        """The index's answer (`clash`), or None without one; a defect is logged."""
        if self.clash is None:
            return None
        try:
            return await self.clash()
        except Exception as exc:  # (a defect: no clash assumed, looked at again later)
            self.needs.log.error("answer_needs_clash_failed", error=repr(exc))
            return None

    def _look(self, rule: NeverHanded) -> Look:
        mounts = read_mounts() if self.resource.allocate.mounts else None
        reached = {os.path.realpath(mount.host_path) for mount in self.resource.allocate.mounts}
        problems = mount_source_problems(self.resource, rule, mounts)
        return Look(problems, command_problems(self.resource, reached), frozenset(reached))

    def _took(
        self,
        mounts: list[tuple[int, str, str]],
        commands: list[tuple[str, str]],
        clash: SourceClash | None = None,
    ) -> None:
        if self.resource.allocate.mounts:
            if clash is not None:
                whole = clash.own is None
                self.needs.set(
                    "mounts",
                    "allocate.mounts source reaches another device's node",
                    detail=f"every answer mounting the allocate.mounts sources is refused"
                    f"{'' if whole else f' but that of device {clash.own}'}: {clash.why}",
                    whole=whole,
                )
                self._hold(None if whole else clash.holds)
            elif not mounts:
                self.needs.set("mounts", None)
                self._hold(None)
            else:
                self._hold(None)
                index, path, why = mounts[0]
                more = f" (and {len(mounts) - 1} more)" if len(mounts) > 1 else ""
                self.needs.set(
                    "mounts",
                    f"allocate.mounts[{index}] source not there or refused",
                    detail=f"allocate.mounts[{index}].hostPath {path} {why}{more}",
                )
        if host_commands(self.resource):
            if not commands:
                self.needs.set("command", None)
            else:
                which, why = commands[0]
                self.needs.set("command", f"{which} cannot be started", detail=f"{which}: {why}")

    def _hold(self, holds: Callable[[Device], bool] | None) -> None:
        """The devices the `mounts` need holds alone (None: none, or every one)."""
        if holds is not None or self._holding:
            self.needs.hold("mounts", holds)
        self._holding = holds is not None

    def _hung(self) -> None:
        """The look did not end within `look_timeout`: a mount source does not answer."""
        if self.resource.allocate.mounts:
            self.needs.set(
                "mounts",
                "allocate.mounts sources not answering",
                detail=f"a look at the allocate.mounts sources did not end within "
                f"{self.look_timeout:g} s (a file system that does not answer)",
            )
