"""What a resource's answers need besides its devices (`answer_needs`, `answer_checks`; issue
17, hostile22 F2 F3): "Healthy while it refuses" no more. An `allocate.mounts` source that is
missing (from the start, or removed while serving) and an `allocate.command` that cannot be
started made every Allocate of the resource fail while its devices stayed Healthy in the
kubelet and /readyz said ok, with nothing logged before the first refusal. Now the devices
are advertised Unhealthy meanwhile, /readyz names the need, `kdp_answer_need_unmet` is 1, one
line says so, and all of it is back once fixed; `kdp-host check` warns the same."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from kdp_host.answer_checks import NeedsWatch, command_problem
from kdp_host.answer_needs import AnswerNeeds
from kdp_host.cli import main
from kdp_host.config import NeverHanded, load_config
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger

from .conftest import script, wait_until
from .inotify_setup import running_watcher

R = "h22.example/fpga"


def _config(socket_dir: Path, dev: Path, allocate: str, kubelet: str = "") -> str:
    return (
        f"kubelet: {{socketDir: {socket_dir}{kubelet}}}\nresources:\n  - name: {R}\n"
        f"    glob: {{paths: ['{dev}/fpga*']}}\n    allocate: {allocate}\n"
    )


def _devices(short_dir: Path) -> Path:
    dev = short_dir / "dev"
    dev.mkdir()
    for name in ("fpga0", "fpga1"):
        (dev / name).touch()
    return dev


def _seen(kubelet: Any, key: str) -> int | None:
    """What the kubelet sees of the resource (None: not registered)."""
    return (kubelet.resource(R) or {}).get(key)


def _lines(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [r.__dict__["kdp_fields"] for r in caplog.records if r.msg == event]


async def test_hostile22_f2_a_missing_mount_source_is_unhealthy_in_the_real_kubelet(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Missing from the start: the kubelet sees both devices Unhealthy from the first list
    on (never Healthy first), /readyz names the mount (no path), the gauge is 1 and one line
    names the path. Made: Healthy, ready, handed out. Removed while serving (a pod holds a
    device): Unhealthy again within the watcher's delay, no pod is sent to be refused, the
    held device is not called missing; back once the source is."""
    caplog.set_level(logging.INFO)
    kubelet = real_kubelet_factory(pod_resources_dir=short_dir / "pr")
    dev, fw = _devices(short_dir), short_dir / "fw"
    mounts = f"{{mounts: [{{hostPath: {fw}, containerPath: /fw}}]}}"
    pod_resources = f", podResourcesSocket: {short_dir}/pr/kubelet.sock, podResourcesInterval: 1s"
    running = await start_host(_config(kubelet.socket_dir, dev, mounts, pod_resources), fast=True)
    await kubelet.await_for(lambda k: _seen(k, "capacity") == 2, what="registered")
    assert _seen(kubelet, "healthy") == 0
    reason = running.host.not_ready()[R]
    assert "allocate.mounts[0]" in reason and str(short_dir) not in reason, reason
    assert running.sample("kdp_answer_need_unmet", resource=R, need="mounts") == 1
    [line] = _lines(caplog, "answer_need_unmet")
    assert line["need"] == "mounts" and str(fw) in line["reason"], line
    refused = await kubelet.acall(kubelet.allocate, "p0", {R: 1})
    assert refused["error"] != "" and not refused["device_ids"], refused

    fw.mkdir()
    await kubelet.await_for(lambda k: _seen(k, "healthy") == 2, what="healthy once made")
    await wait_until(lambda: R not in running.host.not_ready(), what="ready")
    assert running.sample("kdp_answer_need_unmet", resource=R, need="mounts") == 0
    assert len(_lines(caplog, "answer_need_met")) == 1
    held = await kubelet.acall(kubelet.allocate, "p1", {R: 1})
    assert held["error"] == "" and [m["HostPath"] for m in held["mounts"]] == [str(fw)], held
    await wait_until(lambda: running.sample("kdp_devices_in_use", resource=R) == 1, what="held")

    shutil.rmtree(fw)  # (an NFS mount dropped, a firmware directory removed)
    polls = running.sample("kdp_pod_resources_polls_total", result="ok")
    await kubelet.await_for(lambda k: _seen(k, "healthy") == 0, what="unhealthy once gone")
    assert "allocate.mounts[0]" in running.host.not_ready()[R]
    assert len(_lines(caplog, "answer_need_unmet")) == 2
    await wait_until(lambda: running.sample("kdp_pod_resources_polls_total", result="ok") > polls)
    assert running.sample("kdp_devices_held_missing", resource=R) == 0  # (withheld, not gone)
    refused = await kubelet.acall(kubelet.allocate, "p2", {R: 1})
    assert refused["error"] != "" and not refused["device_ids"], refused

    fw.mkdir()
    await kubelet.await_for(lambda k: _seen(k, "healthy") == 2, what="healthy again")
    assert R not in running.host.not_ready()


async def test_hostile22_f3_an_allocate_command_that_cannot_start_is_unhealthy_in_the_kubelet(
    real_kubelet_factory: Any, short_dir: Path, start_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing program: Unhealthy, /readyz names the command, one line with the error.
    Installed: Healthy (the watcher saw it), the Allocate runs it. Made not executable:
    Unhealthy again; a script whose `#!` interpreter is missing cannot start either."""
    caplog.set_level(logging.INFO)
    kubelet = real_kubelet_factory()
    dev, hooks = _devices(short_dir), short_dir / "hooks"
    hooks.mkdir()
    hook = hooks / "hook"
    running = await start_host(
        _config(kubelet.socket_dir, dev, f'{{command: ["{hook}", "{{ids}}"]}}')
    )
    await kubelet.await_for(lambda k: _seen(k, "capacity") == 2, what="registered")
    assert _seen(kubelet, "healthy") == 0
    assert "allocate.command cannot be started" in running.host.not_ready()[R]
    assert running.sample("kdp_answer_need_unmet", resource=R, need="command") == 1
    [line] = _lines(caplog, "answer_need_unmet")
    assert "No such file or directory" in line["reason"], line

    script(hooks, "hook", "echo '{}'\n")
    await kubelet.await_for(lambda k: _seen(k, "healthy") == 2, what="healthy once there")
    await wait_until(lambda: R not in running.host.not_ready(), what="ready")
    assert (await kubelet.acall(kubelet.allocate, "p1", {R: 1}))["error"] == ""

    hook.chmod(0o644)
    await kubelet.await_for(lambda k: _seen(k, "healthy") == 0, what="not executable")
    hook.write_text(f"#!{short_dir}/no-such-shell\necho '{{}}'\n")
    hook.chmod(0o755)
    await wait_until(lambda: "interpreter" in _lines(caplog, "answer_need_unmet")[-1]["reason"])
    assert _seen(kubelet, "healthy") == 0


async def test_a_spawn_failure_looks_again_at_once(short_dir: Path) -> None:
    """Without a watcher report (a PATH lookup no watch covers, a lost event), a spawn that
    fails has the command looked at again at once; while unmet it is looked at every
    `recheck`, so it comes back however it was fixed."""
    path = script(short_dir, "hook", "exit 0\n")
    resource = load_config(_file(short_dir, f'{{command: ["{path}"]}}')).resources[0]
    table = DeviceTable()
    table.publish([Device("fpga0")])
    needs = AnswerNeeds(table, get_logger())
    watch = NeedsWatch(resource, needs, NeverHanded, DaemonThreads(), recheck=3600.0)
    task = asyncio.create_task(watch.run())
    try:
        await wait_until(lambda: watch.checked.is_set(), what="first look")
        assert needs.unmet("command") is None and table.snapshot.healthy_count == 1
        os.unlink(path)
        watch.spawn_failed()
        await wait_until(lambda: needs.unmet("command") is not None, what="looked again")
        assert table.snapshot.healthy_count == 0
        assert table.own_healthy(table.snapshot, ["fpga0", "fpga1"]) == {
            "fpga0"
        }  # (not missing for a pod)
        watch.recheck = 0.05
        watch.spawn_failed()
        script(short_dir, "hook", "exit 0\n")
        await wait_until(lambda: needs.unmet("command") is None, what="back by the recheck")
        assert table.snapshot.healthy_count == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_source_moved_away_by_a_directory_above_it_is_heard(short_dir: Path) -> None:
    """hostile23 F2: `mv opt opt.old` moves `opt/vendor/fw` away with no event in its own
    directory (inotify follows that directory's inode): the need stayed met, the devices
    Healthy, while every Allocate was refused. Every directory on the way is followed."""
    source = short_dir / "opt" / "vendor" / "fw"
    source.mkdir(parents=True)
    await _watched(
        short_dir,
        f"{{mounts: [{{hostPath: {source}, containerPath: /fw}}]}}",
        lambda: os.rename(short_dir / "opt", short_dir / "opt.old"),
        lambda: os.rename(short_dir / "opt.old", short_dir / "opt"),
        "mounts",
    )


async def _watched(short_dir: Path, allocate: str, change: Any, undo: Any, need: str) -> None:
    """A watch with a watcher and no recheck: `change` makes `need` unmet and `undo` met
    again, each heard (nothing else would look)."""
    resource = load_config(_file(short_dir, allocate)).resources[0]
    table = DeviceTable()
    table.publish([Device("fpga0")])
    needs = AnswerNeeds(table, get_logger())
    async with running_watcher() as watcher:
        watch = NeedsWatch(resource, needs, NeverHanded, DaemonThreads(), watcher, recheck=3600.0)
        task = asyncio.create_task(watch.run())
        try:
            await wait_until(lambda: watch.checked.is_set(), what="first look")
            assert needs.unmet(need) is None
            change()
            await wait_until(lambda: needs.unmet(need) is not None, what="heard the change")
            assert table.snapshot.healthy_count == 0
            undo()
            await wait_until(lambda: needs.unmet(need) is None, what="heard it back")
            assert table.snapshot.healthy_count == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("how", ["rm", "mv"])
async def test_a_linked_source_whose_target_goes_is_heard(short_dir: Path, how: str) -> None:
    """hostile24 F3: a source that is a link to a versioned vendor tree (`fw -> data/v1/fw`):
    `rm -r data/v1/fw` or `mv data data.old` touched nothing on the way to `fw` as named, so
    the need stayed met while every Allocate was refused. The way to the real path is
    followed too, as the last look resolved it."""
    target = short_dir / "data" / "v1" / "fw"
    target.mkdir(parents=True)
    (target / "blob").write_text("x")
    (short_dir / "fw").symlink_to(target)
    data, moved = short_dir / "data", short_dir / "data.old"

    def change() -> None:
        if how == "rm":
            shutil.rmtree(target)
        else:
            os.rename(data, moved)

    def undo() -> None:
        if how == "rm":
            target.mkdir()
        else:
            os.rename(moved, data)

    mounts = f"{{mounts: [{{hostPath: {short_dir}/fw, containerPath: /fw}}]}}"
    await _watched(short_dir, mounts, change, undo, "mounts")


async def test_a_commands_interpreter_removed_is_heard(short_dir: Path) -> None:
    """hostile24 F4: the `#!` interpreter of an `allocate.command` removed (a package
    upgrade, a venv deleted): looked at only at start and at changes on the program's own
    way, so the need stayed met while every Allocate failed. Each interpreter's way is
    followed too."""
    interpreter = short_dir / "interp" / "sh"
    interpreter.parent.mkdir()
    interpreter.symlink_to("/bin/sh")
    hook = script(short_dir, "hook", "exit 0\n")
    Path(hook).write_text(f"#!{interpreter}\nexit 0\n")
    await _watched(
        short_dir,
        f'{{command: ["{hook}"]}}',
        interpreter.unlink,
        lambda: interpreter.symlink_to("/bin/sh"),
        "command",
    )


class _Hung:
    """An offload whose calls never end (a file system that does not answer)."""

    calls = 0

    async def run(self, function: Any) -> Any:
        self.calls += 1
        await asyncio.Event().wait()


async def test_a_look_that_does_not_end_counts_as_sources_not_there(short_dir: Path) -> None:
    """A mount source on a file system that does not answer: unmet after `look_timeout`,
    the look waited on again, never a second one started while it hangs."""
    mounts = f"{{mounts: [{{hostPath: {short_dir}/fw, containerPath: /fw}}]}}"
    resource = load_config(_file(short_dir, mounts)).resources[0]
    table = DeviceTable()
    table.publish([Device("fpga0")])
    needs, offload = AnswerNeeds(table, get_logger()), _Hung()
    watch = NeedsWatch(resource, needs, NeverHanded, offload, recheck=0.01, look_timeout=0.01)
    task = asyncio.create_task(watch.run())
    try:
        await wait_until(lambda: watch.looks >= 3, what="looks waited on")
        assert needs.unmet("mounts") == "allocate.mounts sources not answering"
        assert table.snapshot.healthy_count == 0 and offload.calls == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _file(short_dir: Path, allocate: str) -> Path:
    config = short_dir / "kdp.yaml"
    (short_dir / "dev").mkdir(exist_ok=True)
    config.write_text(_config(short_dir / "dp", short_dir / "dev", allocate))
    return config


def test_the_command_rule_is_the_runners(short_dir: Path) -> None:
    """Found on PATH, absolute, not executable, a missing `#!` interpreter; a template is
    rendered per call (not judged)."""
    assert command_problem(["sh", "-c", "true"], None) is None
    assert "not found on PATH" in (command_problem(["kdp-no-such-program-anywhere"], None) or "")
    assert command_problem(["{resource}"], None) is None
    path = script(short_dir, "s", "true\n")
    assert command_problem([path], None) is None
    os.chmod(path, 0o644)
    assert "Permission denied" in (command_problem([path], None) or "")
    Path(path).write_text("#!/no/such/interpreter\n")
    os.chmod(path, 0o755)
    assert "its #! interpreter" in (command_problem([path], None) or "")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (
            "#!/bin/sh\r\nexit 0\r\n",
            "'/bin/sh\\r': No such file or directory (the script's lines end in CRLF)",
        ),
        ("#!/usr/bin/env sh -e\nexit 0\n", "'sh -e': not found on PATH"),
        ("#!/usr/bin/env A=1 sh\nexit 0\n", None),  # (env runs no program: not judged)
    ],
)
def test_a_shebang_line_is_read_as_the_kernel_reads_it(
    short_dir: Path, line: str, why: str | None
) -> None:
    """hostile25 F5: the `#!` line was split on any whitespace, `\r` included, so a CRLF
    script's `/bin/sh\r` (which the kernel looks for) passed as `/bin/sh`, and `env sh -e`
    (one argument: env looks for a program named `sh -e`) as `sh`: every Allocate failed while
    the need said met. The interpreter ends at a space or a tab; the rest is one argument."""
    path = script(short_dir, "hook", "exit 0\n")
    Path(path).write_bytes(line.encode())
    problem = command_problem([path], None)
    if why is None:
        assert problem is None
    else:
        assert problem is not None and "its #! interpreter" in problem and why in problem, problem


def test_kdp_host_check_warns_of_a_command_that_cannot_start(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` warns as a run judges (the config stays valid: the program may come later)."""
    config = _file(short_dir, f'{{command: ["{short_dir}/hooks/missing", "{{ids}}"]}}')
    assert main(["check", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {R}: allocate.command cannot be started" in err, err
    assert "advertised Unhealthy" in err


def test_a_reload_that_drops_a_need_drops_its_series(short_dir: Path) -> None:
    """A stopped runtime's `kdp_answer_need_unmet` series of a need the config in force
    lacks is dropped (an unmet `mounts` of the old config would alert for ever)."""
    from kdp_host.features import forget_unconfigured
    from kdp_host.metrics import Metrics

    metrics = Metrics(process_collectors=False)
    metrics.answer_need_unmet.labels(R, "mounts").set(1)
    metrics.answer_need_unmet.labels(R, "command").set(0)
    resource = load_config(_file(short_dir, '{command: ["sh", "-c", "true"]}')).resources[0]
    forget_unconfigured(metrics, resource)
    assert metrics.answer_need_unmet.label_values_of(R) == [(R, "command")]
