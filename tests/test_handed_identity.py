"""Paths no container is handed, by what a path is, not how it is spelled (issue 17,
hostile7 F1 F2 F4 F5 F6 L2; `config/handed.py`): a hard link of a protected file, a bind
mount of a protected directory (or of `/`, or of a directory holding one), the directory of
any file kdp-host writes, the kubelet's `pods` directory; and a path kdp-host cannot resolve
(a `/proc/<pid>/root` magic link it may not read) is a config error, never a crash, and is
never handed out at run time."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kdp_host.cli import main
from kdp_host.config import ConfigError, handed, load_config, never_handed
from kdp_host.mount_table import parse_mounts
from kdp_host.simulator import KubeletSimulator
from kdp_host.simulator.records import SimulatorAllocationError

from .handed_setup import FPGA, PROBE, answering_hook, fpga_glob, head, left_out, made_dirs, probe


@pytest.fixture
def dirs(short_dir: Path) -> Path:
    return made_dirs(short_dir, "cdi", "opt", "nfd")


def _mounts(d: Path, *sources: str | Path, allocate: str = "") -> str:
    mounts = ", ".join(f"{{hostPath: {s}, containerPath: /m{i}}}" for i, s in enumerate(sources))
    return (
        f"  - name: {FPGA}\n    glob: {{paths: ['{d}/dev/fpga*']}}\n"
        f"    allocate: {{{allocate}mounts: [{mounts}]}}\n"
    )


def _problems(config: Path, text: str) -> list[str]:
    config.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    return raised.value.problems


# --------------------------------------------------------------------------- F1 hard links


def test_a_hard_link_of_the_config_file_or_a_state_file_is_a_config_error(dirs: Path) -> None:
    config = dirs / "kdp.yaml"
    config.write_text("placeholder\n")
    os.link(config, dirs / "opt" / "cfglink")
    (dirs / "state" / "kdp-host.lock").touch()
    os.link(dirs / "state" / "kdp-host.lock", dirs / "opt" / "locklink")
    problems = _problems(
        config, head(dirs) + _mounts(dirs, dirs / "opt" / "cfglink", dirs / "opt" / "locklink")
    )
    assert len(problems) == 2, problems
    assert "mounts[0].hostPath" in problems[0]
    assert "is the config file (a hard link of it)" in problems[0]
    assert "mounts[1].hostPath" in problems[1]
    assert "lies in stateDir (a hard link)" in problems[1]


def test_an_inode_number_freed_in_a_protected_directory_is_not_held_against_a_new_file(
    dirs: Path,
) -> None:
    """The admissions' stats are up to VIEW_AGE old; a file gone from a protected directory
    since (the kubelet rewrites its checkpoint at each Allocate) may have left its inode
    number to the next file made (ext4 reuses it at once): a device file made then was held
    `unsafe_mount` as "a hard link" of it, for good (nothing admits it again). Here the
    reused number is the gone file's own key, asked of through another path."""
    from kdp_host.identity import identity_of

    config = dirs / "kdp.yaml"
    config.write_text(head(dirs) + _mounts(dirs, "/dev/null"))
    rule = never_handed(load_config(config), str(config))
    gone = dirs / "dp" / "kubelet_internal_checkpoint"
    gone.touch()
    key = identity_of(gone.stat())
    elsewhere = str(dirs / "dev" / "fpga0")
    assert "lies in" in (rule.problem(elsewhere, key) or "")  # (the admissions' view)
    gone.unlink()
    assert rule.problem(elsewhere, key) is None, "a stale view held a new file"


def test_the_rule_knows_a_hard_link_by_identity(dirs: Path) -> None:
    config = dirs / "kdp.yaml"
    config.write_text(head(dirs) + _mounts(dirs, "/dev/null"))
    rule = never_handed(load_config(config), str(config))
    (dirs / "cdi" / ".owner").touch()
    os.link(dirs / "cdi" / ".owner", dirs / "opt" / "own")  # (cdi: no resource writes there)
    os.link(dirs / "state" / ".." / "kdp.yaml", dirs / "opt" / "c")
    assert rule.path_problem(str(dirs / "opt" / "own")) is None
    assert "is the config file" in (rule.path_problem(str(dirs / "opt" / "c")) or "")
    (dirs / "state" / "late").touch()  # made after the rule: stateDir is listed again
    os.link(dirs / "state" / "late", dirs / "opt" / "late")
    assert "lies in stateDir" in (rule.path_problem(str(dirs / "opt" / "late")) or "")
    (dirs / "opt" / "plain").touch()
    assert rule.path_problem(str(dirs / "opt" / "plain")) is None


def test_one_answers_paths_share_the_stats_taken_since_it_began(
    dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Allocate answer's paths are checked on the protected places' stats taken at or
    after the answer began (`problem(fresh=True, since=...)`): its first path takes them,
    the others share them (issue 19: 7 stats per path of every answer); stats taken before
    it began never serve it, so a protected file replaced just before is known by its new
    identity."""
    import time

    from kdp_host.config import handed as handed_module
    from kdp_host.identity import identity_of

    config = dirs / "kdp.yaml"
    config.write_text(head(dirs) + _mounts(dirs, "/dev/null"))
    rule = never_handed(load_config(config), str(config))
    plain = dirs / "opt" / "plain"
    plain.touch()
    stats: list[str] = []
    real_stat = handed_module._stat
    monkeypatch.setattr(handed_module, "_stat", lambda p: stats.append(p) or real_stat(p))
    since = time.monotonic()
    key = identity_of(plain.stat())
    assert rule.problem(str(plain), key, fresh=True, since=since) is None
    taken = len(stats)
    assert taken > 0
    assert rule.problem(str(plain), key, fresh=True, since=since) is None
    assert len(stats) == taken, "the second path of one answer stat'ed the places again"
    # The config file replaced (a new inode), and a path linked to the new one: an answer
    # that began after it does not take the stats taken before.
    config.unlink()
    config.write_text(head(dirs) + _mounts(dirs, "/dev/null"))
    os.link(config, dirs / "opt" / "cfg")
    linked = identity_of((dirs / "opt" / "cfg").stat())
    why = rule.problem(str(dirs / "opt" / "cfg"), linked, fresh=True, since=time.monotonic())
    assert "is the config file" in (why or "")
    assert len(stats) == 2 * taken
    assert "is the config file" in (
        rule.problem(str(dirs / "opt" / "cfg"), linked, fresh=True) or ""
    )
    assert len(stats) == 3 * taken, "fresh without `since` stat'ed nothing"


async def test_a_probe_device_with_a_hard_link_of_kubelet_sock_is_left_out(
    dirs: Path, start_host: Any
) -> None:
    """A hard link of the kubelet's registration socket (a connect to it reaches the kubelet)
    and of the config file, made after start, as a probe's mount and node: not advertised
    (`unsafe_mount`); the plain device is."""
    config = dirs / "kdp.yaml"
    listed = [
        {"id": "s0", "mounts": [{"hostPath": f"{dirs}/opt/k", "containerPath": "/k"}]},
        {"id": "s1", "paths": [f"{dirs}/opt/c:/c"]},
        {"id": "good", "paths": [f"{dirs}/dev/fpga0"]},
    ]
    (dirs / "p.json").write_text(json.dumps(listed))
    text = head(dirs) + probe(dirs)
    config.write_text(text)
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        os.link(dirs / "dp" / "kubelet.sock", dirs / "opt" / "k")
        os.link(config, dirs / "opt" / "c")
        running = await start_host(load_config(config), config_path=config)
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 1)
        await left_out(running, 2, "two devices left out")
        response = await sim.allocate(PROBE, 1)
        assert response is not None
        assert [d.host_path for d in response.devices] == [f"{dirs}/dev/fpga0"]


async def test_an_allocate_command_printing_a_hard_link_of_the_config_is_refused(
    dirs: Path, start_host: Any
) -> None:
    config = dirs / "kdp.yaml"
    link = dirs / "opt" / "cfglink"
    output = {"mounts": [{"hostPath": str(link), "containerPath": "/c", "readOnly": False}]}
    hook = answering_hook(dirs, output)
    config.write_text(head(dirs) + fpga_glob(dirs) + f"    allocate: {{command: [{hook}]}}\n")
    os.link(config, link)
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(load_config(config), config_path=config)
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 1)
        with pytest.raises(SimulatorAllocationError, match="is the config file"):
            await sim.allocate(FPGA, 1)
        assert running.sample("kdp_allocations_total", resource=FPGA, result="invalid") == 1


# --------------------------------------------------------------------------- F4, L2


def test_the_node_features_directory_is_never_handed(dirs: Path) -> None:
    """Derived from what kdp-host writes (`outputs.written_places`): the NFD directory is
    protected like the CDI spec directory."""
    text = head(dirs) + _mounts(dirs, dirs / "nfd") + f"nodeFeatures: {{file: {dirs}/nfd/kdp}}\n"
    (problem,) = _problems(dirs / "kdp.yaml", text)
    assert "allocate.mounts[0].hostPath" in problem
    assert "is the directory of the nodeFeatures file" in problem


@pytest.mark.parametrize("inside", ["pods/u", "pki", "plugins/csi.example", "plugins_registry"])
def test_the_kubelets_root_directory_is_never_handed(dirs: Path, inside: str) -> None:
    """socketDir `<root>/device-plugins` (the kubelet's layout): `<root>/pods` holds every
    pod's secrets, `<root>/pki` the node's client key, `<root>/plugins` CSI sockets
    (hostile11 K7: only `pods` was refused). A socketDir elsewhere names no kubelet root
    (nothing guessed)."""
    (dirs / "kubelet" / "device-plugins").mkdir(parents=True)
    (dirs / "kubelet" / inside).mkdir(parents=True)
    text = head(dirs, "kubelet/device-plugins") + _mounts(dirs, dirs / "kubelet" / inside)
    (problem,) = _problems(dirs / "kdp.yaml", text)
    assert f"the kubelet's {inside.split('/')[0]} directory" in problem
    load_config_ok = dirs / "ok.yaml"
    load_config_ok.write_text(head(dirs) + _mounts(dirs, dirs / "kubelet" / inside))
    load_config(load_config_ok)


def test_a_hard_link_of_a_file_below_a_kubelet_directory_is_never_handed(
    dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hostile12 L7: a hard link elsewhere of a file below the kubelet's `pki` (the node's
    client key) or `plugins` (a CSI driver's socket, one level down) was handed out: only
    files directly in a protected directory were compared by inode. A file made below later
    is found too (at once where the protected directory changed, else within VIEW_AGE);
    the walk is bounded (`TREE_LIMIT`)."""
    root = dirs / "kubelet"
    for sub in ("device-plugins", "pki/old", "plugins/csi.example/deep"):
        (root / sub).mkdir(parents=True)
    (root / "pki" / "old" / "client.pem").write_text("KEY\n")
    (root / "plugins" / "csi.example" / "deep" / "csi.sock").touch()
    opt = dirs / "opt"
    os.link(root / "pki" / "old" / "client.pem", opt / "key")
    os.link(root / "plugins" / "csi.example" / "deep" / "csi.sock", opt / "sock")
    config = dirs / "kdp.yaml"
    text = head(dirs, "kubelet/device-plugins") + _mounts(dirs, opt / "key", opt / "sock")
    problems = _problems(config, text)
    assert len(problems) == 2, problems
    pki = "lies in the kubelet's pki directory (the node's client key) (a hard link)"
    assert pki in problems[0]
    assert "lies in the kubelet's plugins directory" in problems[1]
    rule = never_handed(load_config_of(config, head(dirs, "kubelet/device-plugins")), None)
    for name in ("later", "later2"):
        (opt / name).touch()
        assert rule.path_problem(str(opt / name)) is None
    (root / "pki" / "new").mkdir()  # (pki changed: listed again at once)
    os.link(opt / "later", root / "pki" / "new" / "later.pem")
    assert "lies in the kubelet's pki directory" in (rule.path_problem(str(opt / "later")) or "")
    monkeypatch.setattr(handed, "VIEW_AGE", 0.0)  # (a directory below: stat'ed every second)
    os.link(opt / "later2", root / "pki" / "old" / "later2.pem")
    assert "lies in the kubelet's pki" in (rule.path_problem(str(opt / "later2")) or "")
    monkeypatch.setattr(handed, "TREE_LIMIT", 2)  # (plugins: csi.example, deep; not the sock)
    rule = never_handed(load_config_of(config, head(dirs, "kubelet/device-plugins")), None)
    assert rule.path_problem(str(opt / "sock")) is None


def load_config_of(config: Path, text: str) -> Any:
    """A config of `text` with one plain resource (the rule's places only)."""
    config.write_text(text + _mounts(config.parent, "/dev/null"))
    return load_config(config)


# --------------------------------------------------------------------------- F2 bind mounts


def test_a_bind_mount_shows_a_protected_directory_elsewhere(dirs: Path) -> None:
    """The mount table (`MountMap`): `/var/lib/kubelet` a bind mount of `/data/kubelet` makes
    `/data` hold socketDir; a bind mount of stateDir, or of `/`, is that directory; a bind
    mount of stateDir inside a directory makes the directory hold it."""
    config = dirs / "kdp.yaml"
    kubelet = dirs / "var-lib-kubelet"
    (kubelet / "device-plugins").mkdir(parents=True)
    config.write_text(head(dirs, "var-lib-kubelet/device-plugins") + _mounts(dirs, "/dev/null"))
    rule = never_handed(load_config(config), str(config))
    table = parse_mounts(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"2 1 8:1 {dirs}/data/kubelet {kubelet} rw - ext4 /dev/sda1 rw\n"
        f"3 1 8:1 {dirs}/state {dirs}/mnt/m1 rw - ext4 /dev/sda1 rw\n"
        f"4 1 8:1 / {dirs}/mnt/m5 rw - ext4 /dev/sda1 rw\n"
        f"5 1 8:1 {dirs}/state/sub {dirs}/mnt/m6/x rw - ext4 /dev/sda1 rw\n"
    )
    assert rule.problem(f"{dirs}/data") is None  # (without the mount table: nothing seen)
    assert rule.problem(f"{dirs}/data", mounts=table) == (
        "holds kubelet.socketDir, which no container may be handed"
    )
    assert "is stateDir" in (rule.problem(f"{dirs}/mnt/m1", mounts=table) or "")
    assert "lies in stateDir" in (rule.problem(f"{dirs}/mnt/m1/f", mounts=table) or "")
    assert rule.problem(f"{dirs}/mnt/m5", mounts=table) == "is / (the host's root)"
    assert "holds stateDir" in (rule.problem(f"{dirs}/mnt/m6", mounts=table) or "")
    assert rule.problem(f"{dirs}/data/other", mounts=table) is None
    assert rule.problem(f"{dirs}/mnt", mounts=table) is not None  # (holds m1, m5, m6)
    assert rule.problem(f"{dirs}/opt", mounts=table) is None


def test_paths_asked_in_any_order_meet_the_places_of_the_walk_over_all(
    dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The places a path is compared with are found once per directory (`_Shown.near_to`):
    whatever was asked before, and once the kept directories were dropped, every path gets
    the answer a comparison with every place gives."""
    config = dirs / "kdp.yaml"
    kubelet = dirs / "var-lib-kubelet"
    (kubelet / "device-plugins").mkdir(parents=True)
    config.write_text(head(dirs, "var-lib-kubelet/device-plugins") + _mounts(dirs, "/dev/null"))
    table = parse_mounts(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"2 1 8:1 {dirs}/data/kubelet {kubelet} rw - ext4 /dev/sda1 rw\n"
        f"3 1 8:1 {dirs}/state {dirs}/mnt/m1 rw - ext4 /dev/sda1 rw\n"
        f"5 1 8:1 {dirs}/state/sub {dirs}/mnt/m6/x rw - ext4 /dev/sda1 rw\n"
    )
    paths = [
        f"{dirs}/data",
        f"{dirs}/data/kubelet/device-plugins/kubelet.sock",
        f"{dirs}/data/other",
        f"{dirs}/mnt/m1/f",
        f"{dirs}/mnt/m6",
        f"{dirs}/mnt/m6/x/y",
        f"{dirs}/mnt",
        f"{dirs}/opt/dev0",
        f"{dirs}/state",
        f"{dirs}/stat",
        f"{dirs}",
        "/opt",
        "/",
    ]
    everywhere = never_handed(load_config(config), str(config))
    monkeypatch.setattr(handed._Shown, "near_to", lambda shown, directory: shown.places)
    expected = {path: everywhere.problem(path, mounts=table) for path in paths}
    monkeypatch.undo()
    assert expected[f"{dirs}/mnt/m6"] == "holds stateDir, which no container may be handed"
    assert expected[f"{dirs}/opt/dev0"] is None
    rule = never_handed(load_config(config), str(config))
    for order in (paths, paths[::-1]):
        assert {path: rule.problem(path, mounts=table) for path in order} == expected
    monkeypatch.setattr(handed, "NEAR_LIMIT", 2)
    for order in (paths, paths[::-1]):
        assert {path: rule.problem(path, mounts=table) for path in order} == expected


def _unshare() -> list[str]:
    tool = shutil.which("unshare")
    if tool is None:
        pytest.skip("no unshare(1): bind mounts need a mount namespace")
    probe = subprocess.run([tool, "-rm", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"unshare -rm refused here: {probe.stderr.decode().strip()}")
    return [tool, "-rm", "--propagation", "private", "sh", "-ec"]


def test_kdp_host_check_refuses_a_dataset_mount_holding_a_bind_mounted_kubelet_dir(
    dirs: Path,
) -> None:
    """hostile7 t6b, in a user and mount namespace of its own: the kubelet dir is a bind
    mount of `data/kubelet`; an `allocate.mounts` of `data` is a config error with its line
    (exit 2), and a probe device mounting a bind mount of stateDir is named."""
    unshare = _unshare()
    kubelet = dirs / "var-lib-kubelet"
    (kubelet).mkdir()
    (dirs / "data" / "kubelet" / "device-plugins").mkdir(parents=True)
    (dirs / "mnt" / "m1").mkdir(parents=True)
    config = dirs / "kdp.yaml"
    config.write_text(head(dirs, "var-lib-kubelet/device-plugins") + _mounts(dirs, dirs / "data"))
    script = (
        f"mount --bind {dirs}/data/kubelet {kubelet}\n"
        f"mount --bind {dirs}/state {dirs}/mnt/m1\n"
        f'exec "{sys.executable}" -m kdp_host check --config "$1"'
    )
    done = subprocess.run(
        [*unshare, script, "sh", str(config)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "line 6: resources[0].allocate.mounts[0].hostPath" in done.stderr
    assert "holds kubelet.socketDir" in done.stderr
    listed = [{"id": "s0", "mounts": [{"hostPath": f"{dirs}/mnt/m1", "containerPath": "/s"}]}]
    (dirs / "p.json").write_text(json.dumps(listed))
    config.write_text(head(dirs) + probe(dirs))
    done = subprocess.run(
        [*unshare, script, "sh", str(config)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "device s0 would not be advertised (unsafe_mount)" in done.stderr
    assert "is stateDir" in done.stderr


# --------------------------------------------------------------------------- F5, F6 EACCES


@pytest.fixture
def uncheckable(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A path through a magic link kdp-host may not read: `/proc/1/root/...` where readlink of
    it is EACCES for this process (not root, or root without PID 1's capabilities), else a
    link whose readlink and stat are made to fail so at the os seam."""
    try:
        os.readlink("/proc/1/root")
    except PermissionError:
        yield "/proc/1/root/srv"
        return
    except OSError:
        pass
    magic = dirs / "opt" / "magic"
    magic.symlink_to("/")
    real_readlink, real_stat = os.readlink, os.stat

    def denied(path: Any) -> bool:
        text = os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else ""
        return text == str(magic) or text.startswith(f"{magic}/")

    def readlink(path: Any, *args: Any, **kwargs: Any) -> Any:
        if denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_readlink(path, *args, **kwargs)

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if denied(path) and kwargs.get("follow_symlinks", True):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", readlink)
    monkeypatch.setattr(os, "stat", stat)
    yield f"{magic}/srv"


def test_a_config_path_that_cannot_be_resolved_is_a_config_error(
    dirs: Path, uncheckable: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """hostile7 F5: an `allocate.mounts` source, a glob path, stateDir and the nodeFeatures
    file through an unreadable magic link: one error each, with its line (exit 2), no
    traceback."""
    config = dirs / "kdp.yaml"
    config.write_text(
        f"kubelet: {{socketDir: {dirs}/dp, podResourcesSocket: {dirs}/pr/kubelet.sock}}\n"
        f"stateDir: {uncheckable}/state\n"
        f"nodeFeatures: {{file: {uncheckable}/nfd/kdp}}\n"
        "resources:\n"
        f"  - name: {FPGA}\n    glob: {{paths: ['{uncheckable}/dev/fpga0']}}\n"
        f"    allocate: {{mounts: [{{hostPath: {uncheckable}, containerPath: /s}}]}}\n"
        f"  - name: vendor.example/pat\n    glob: {{paths: ['{uncheckable}/d/x*']}}\n"
        f"  - name: vendor.example/grp\n"
        f"    glob: {{group: [{{path: '{uncheckable}/d/m{{key}}', mount: true}}]}}\n"
    )
    assert main(["check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for line, key in (
        (2, "stateDir"),
        (3, "nodeFeatures.file"),
        (6, "resources[0].glob.paths[0]"),
        (7, "resources[0].allocate.mounts[0].hostPath"),
        (9, "resources[1].glob.paths[0]"),
        (11, "resources[2].glob.group[0].path"),
    ):
        assert f"line {line}: {key}: " in err, (key, err)
    assert "cannot be checked" in err


async def test_a_reload_that_cannot_be_resolved_is_invalid_and_the_host_runs_on(
    dirs: Path, uncheckable: str, start_host: Any
) -> None:
    """hostile7 F5: a live reload adding such a mount is counted `invalid`, the last good
    config keeps running (it killed the host)."""
    config = dirs / "kdp.yaml"
    good = head(dirs) + fpga_glob(dirs)
    config.write_text(good)
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(load_config(config), config_path=config)
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 1)
        config.write_text(
            good + f"    allocate: {{mounts: [{{hostPath: {uncheckable}, containerPath: /s}}]}}\n"
        )
        assert await running.host.reload_from(config) == "invalid"
        assert not running.task.done()
        response = await sim.allocate(FPGA, 1)
        assert response is not None
        assert len(response.mounts) == 0


async def test_paths_that_cannot_be_resolved_are_never_handed_out(
    dirs: Path, uncheckable: str, start_host: Any
) -> None:
    """hostile7 F6 (fail closed): a probe device whose node is through the magic link is not
    advertised; an `allocate.command` printing a mount of it is refused."""
    (dirs / "opt" / "g").touch()
    listed = [
        {"id": "s1", "paths": [f"{uncheckable}/dev/null"]},
        {"id": "good", "paths": [f"{dirs}/opt/g"]},
    ]
    (dirs / "p.json").write_text(json.dumps(listed))
    magic_root = uncheckable.rsplit("/", 1)[0]
    output = {"mounts": [{"hostPath": magic_root, "containerPath": "/host", "readOnly": False}]}
    hook = answering_hook(dirs, output)
    async with KubeletSimulator(dirs / "dp", dial_timeout=5.0) as sim:
        running = await start_host(
            head(dirs) + probe(dirs) + fpga_glob(dirs) + f"    allocate: {{command: [{hook}]}}\n"
        )
        await sim.wait_for(lambda: sim.allocatable(PROBE) == 1 and sim.allocatable(FPGA) == 1)
        response = await sim.allocate(PROBE, 1)
        assert response is not None
        assert [d.host_path for d in response.devices] == [f"{dirs}/opt/g"]
        with pytest.raises(SimulatorAllocationError, match="cannot be checked"):
            await sim.allocate(FPGA, 1)
        assert running.sample("kdp_allocations_total", resource=FPGA, result="invalid") == 1
