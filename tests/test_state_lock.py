"""A running host's hold on its stateDir (kdp_host/state_lock.py): what `kdp-host unbook`
sees, shared by hosts that overlap, waited for by a host that starts during an unbook."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from pathlib import Path

import pytest

from kdp_host.logs import get_logger
from kdp_host.state_lock import LOCK_FILE, StateDirBusy, exclusive, hold_shared, release

from .conftest import glob_config, wait_until

LOG = get_logger()


def config_in(short_dir: Path, state: Path) -> str:
    dev = short_dir / "dev"
    dev.mkdir(exist_ok=True)
    (dev / "fpga0").touch()
    text = glob_config(short_dir / "dp", ("vendor.example/fpga", f"{dev}/fpga*"))
    return text.replace(f"stateDir: {short_dir}/state", f"stateDir: {state}")


@pytest.fixture(autouse=True)
def info_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


def taken_again(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        r.__dict__["kdp_fields"]
        for r in caplog.records
        if r.getMessage() == "state_lock_taken_again"
    ]


def previous_unbook_refused(state: Path) -> bool:
    """Whether an unbook of the previous version (an exclusive flock of the lock file only)
    is refused."""
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def started(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage() == "host_started" for r in caplog.records)


async def test_hosts_on_one_state_dir_share_it_and_unbook_waits_for_none(
    short_dir: Path, start_host, caplog: pytest.LogCaptureFixture
) -> None:
    """Two hosts (a rolling update with maxSurge) both run; while either runs the directory
    cannot be held alone; once both stopped it can."""
    state = short_dir / "state"
    first = await start_host(config_in(short_dir, state))
    second = await start_host(config_in(short_dir, state))
    await wait_until(lambda: started(caplog) == 2, what="both hosts started")
    for running in (first, second):
        with pytest.raises(StateDirBusy, match=LOCK_FILE), exclusive(str(state), LOG):
            pass
        await running.shutdown()
    with exclusive(str(state), LOG):
        pass


async def test_unbook_is_refused_after_a_cleaner_removed_the_lock_file(
    short_dir: Path, start_host, caplog: pytest.LogCaptureFixture
) -> None:
    """hostile3 G5: `rm <stateDir>/kdp-host.lock` (a "stale lock") leaves the host's flock on
    an inode the path no longer names; the host still holds the directory itself, and makes
    and locks the file again, so an unbook of the previous version (which locks the file
    only) is refused too."""
    state = short_dir / "state"
    running = await start_host(config_in(short_dir, state))
    await wait_until(lambda: started(caplog) == 1, what="the host started")
    (state / LOCK_FILE).unlink()
    with pytest.raises(StateDirBusy, match="directory"), exclusive(str(state), LOG):
        pass
    await wait_until(lambda: taken_again(caplog), what="the lock file taken again")
    assert taken_again(caplog)[0]["stale"] == "lock file"
    assert previous_unbook_refused(state)
    await running.shutdown()
    with exclusive(str(state), LOG):
        pass


def test_hosts_and_commands_of_the_previous_version_still_see_each_other(
    tmp_path: Path,
) -> None:
    """A rolling upgrade: the previous version locks only the lock file (shared by a host,
    exclusively by unbook); each side still refuses while the other holds."""
    old = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(old, fcntl.LOCK_SH)  # a host of the previous version
        with pytest.raises(StateDirBusy), exclusive(str(tmp_path), LOG):
            pass
        fcntl.flock(old, fcntl.LOCK_UN)
        held = hold_shared(str(tmp_path), wait=False, log=LOG)  # a host of this version
        assert held is not None
        assert previous_unbook_refused(tmp_path)
        release(held)
        with exclusive(str(tmp_path), LOG):
            pass
    finally:
        os.close(old)


async def test_a_host_that_starts_during_an_unbook_waits_for_it(
    short_dir: Path, start_host, caplog: pytest.LogCaptureFixture
) -> None:
    state = short_dir / "state"
    state.mkdir()
    unbooking = exclusive(str(state), LOG)
    unbooking.__enter__()
    try:
        await start_host(config_in(short_dir, state))
        await wait_until(
            lambda: any(r.getMessage() == "state_dir_busy" for r in caplog.records),
            what="the host says what it waits for",
        )
        await asyncio.sleep(0)
        assert started(caplog) == 0, "the host read its state while unbook rewrote it"
    finally:
        unbooking.__exit__(None, None, None)
    await wait_until(lambda: started(caplog) == 1, what="the host runs once unbook is done")


async def test_a_state_dir_that_cannot_be_locked_is_logged_and_the_host_runs(
    short_dir: Path, start_host, caplog: pytest.LogCaptureFixture
) -> None:
    state = short_dir / "state"
    state.write_text("a file where the directory should be")
    await start_host(config_in(short_dir, state))
    await wait_until(lambda: started(caplog) == 1, what="the host runs")
    [line] = [r for r in caplog.records if r.getMessage() == "state_lock_failed"]
    assert "kdp-host unbook" in str(line.__dict__)


async def test_unbook_refuses_a_state_dir_made_again_under_a_running_host(
    short_dir: Path, start_host, caplog: pytest.LogCaptureFixture
) -> None:
    """hostile3 G5 remainder: the state directory moved away and made again (restored from
    a backup) while the host runs: nothing held the new one, so `kdp-host unbook` said
    "dropped" and the host wrote the bookings back. The host takes the new one (the
    directory, its lock file, its own `hosts/<instance>`), and unbook is refused."""
    from kdp_host.state_lock import running as host_runs
    from kdp_host.unbook import drop_bookings

    state = short_dir / "state"
    host = await start_host(config_in(short_dir, state))
    await wait_until(lambda: started(caplog) == 1, what="the host started")
    state.rename(short_dir / "state.old")
    state.mkdir()
    await wait_until(lambda: taken_again(caplog), what="the new directory taken")
    assert "directory" in str(taken_again(caplog)[0]["stale"])
    with pytest.raises(StateDirBusy):
        await drop_bookings(str(state), "vendor.example/fpga", [])
    assert host_runs(str(state), host.host.instance_id)
    await host.shutdown()
    assert await drop_bookings(str(state), "vendor.example/fpga", []) == []
