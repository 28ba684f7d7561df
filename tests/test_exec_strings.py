"""hostile27 F1: one argument or environment string longer than the kernel passes through an
exec (`rules.MAX_ARG_STRLEN`, 128 KiB with its NUL; an env string counts `NAME=`): refused
in the config, a device with such an env or annotation value held back (`value_too_long`),
an Allocate answer with such an env refused. Before, a probe device with a 200,000-byte env
value was listed Healthy and every hook given it failed with E2BIG (so would the container)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdp_host.allocation import AllocationBuilder, AllocationError
from kdp_host.config import (
    AllocateConfig,
    ConfigError,
    ResourceConfig,
    ShellDriverConfig,
    load_config_text,
)
from kdp_host.device_table import DeviceTable
from kdp_host.devices import Device, DeviceNode
from kdp_host.drivers.reporting import VALUE_TOO_LONG
from kdp_host.rules import MAX_ARG_STRLEN, exec_string_problem

from .conftest import reporter, script
from .kubelet_harness import healthy

PROBED = "example.com/probed"


def test_the_kernel_s_bound_counts_the_nul_the_name_and_utf8_bytes() -> None:
    assert MAX_ARG_STRLEN == 131072
    assert exec_string_problem("x" * (MAX_ARG_STRLEN - 1)) is None
    why = exec_string_problem("x" * MAX_ARG_STRLEN)
    assert why is not None and why.startswith("is 131073 bytes with its NUL") and "E2BIG" in why
    assert exec_string_problem("x" * (MAX_ARG_STRLEN - 3), "X") is None  # (X=...\0)
    why = exec_string_problem("x" * (MAX_ARG_STRLEN - 2), "X")
    assert why is not None and "as X=..." in why
    assert exec_string_problem("é" * (MAX_ARG_STRLEN // 2)) is not None  # (2 bytes each)
    assert exec_string_problem("é" * (MAX_ARG_STRLEN // 2 - 1)) is None


def test_the_config_refuses_a_text_no_exec_could_pass() -> None:
    long = "x" * MAX_ARG_STRLEN
    base = "resources:\n  - name: example.com/a\n    shell: {command: [%s]}\n%s"
    with pytest.raises(ConfigError, match=r"command\[1\]: is 131073 bytes"):
        load_config_text(base % (f"sh, {long}", ""))
    with pytest.raises(ConfigError, match=r"env\.LONG: is 131078 bytes as LONG=\.\.\."):
        load_config_text(base % ("probe", f"    allocate: {{env: {{LONG: {long}}}}}\n"))
    load_config_text(base % ("probe", f"    allocate: {{env: {{OK: {long[:-7]}}}}}\n"))


def test_a_device_with_a_value_no_exec_could_pass_is_held_back() -> None:
    """Per device: its env value as a hook gets it (`KDP_DEVICE_ENV_<name>`), or an
    annotation value; the others are listed."""
    long = "x" * (MAX_ARG_STRLEN - 10)  # (fits as X=..., not as KDP_DEVICE_ENV_X=...)
    table = DeviceTable()
    devices = [
        Device(id="env", nodes=(DeviceNode("/dev/a", "/dev/a"),), env={"X": long}),
        Device(id="note", annotations={"a.io/n": "y" * MAX_ARG_STRLEN}),
        Device(id="ok", env={"X": long[:-10]}),
    ]
    notifier = reporter(table, resource=PROBED)
    notifier.update(devices)
    assert [d.id for d in table.snapshot.devices] == ["ok"]
    assert {s.reason for s in notifier._skipped} == {VALUE_TOO_LONG}
    assert sorted(s.subject for s in notifier._skipped) == ["env", "note"]


def test_an_answer_whose_env_no_exec_could_pass_is_refused() -> None:
    """Two devices' distinct values, joined as Allocate joins them, or a rendered template."""
    half = "x" * (MAX_ARG_STRLEN // 2)
    devices = [Device(id="d0", env={"V": half + "0"}), Device(id="d1", env={"V": half + "1"})]
    table = DeviceTable()
    table.publish(devices)
    resource = ResourceConfig(
        name=PROBED, driver=ShellDriverConfig(command=("probe",)), allocate=AllocateConfig()
    )
    builder = AllocationBuilder(resource)
    assert builder.container_response(table.snapshot, ["d0"]).envs["V"] == half + "0"
    with pytest.raises(AllocationError, match="cannot allocate: env V is 131078 bytes as V="):
        builder.container_response(table.snapshot, ["d0", "d1"])


async def test_a_probe_device_with_an_env_value_no_exec_could_pass_is_never_handed_out(
    real_kubelet_factory, short_dir: Path, start_host
) -> None:
    """The tester's shape: d0's env X of 200,000 bytes, d1's `ok`, an allocate.command. d0
    was listed Healthy and every Allocate given it failed (`Argument list too long`). Now d0
    is held back: every pod gets d1, and the hook runs for it."""
    for name in ("n0", "n1"):
        (short_dir / name).touch()
    listing = short_dir / "list.json"
    listing.write_text(
        json.dumps(
            [
                {"id": "d0", "paths": [f"{short_dir}/n0"], "env": {"X": "x" * 200_000}},
                {"id": "d1", "paths": [f"{short_dir}/n1"], "env": {"X": "ok"}},
            ]
        )
    )
    probe = script(short_dir, "probe.sh", f"cat {listing}\n")
    ran = short_dir / "ran"
    hook = script(short_dir, "hook.sh", f'echo "$KDP_DEVICE_ENV_X" >> {ran}; echo "{{}}"\n')
    kubelet = real_kubelet_factory()
    await start_host(
        f"kubelet: {{socketDir: {kubelet.socket_dir}}}\nstateDir: {short_dir}/state\n"
        f"resources:\n  - name: {PROBED}\n"
        f"    shell: {{command: [{probe}], format: json}}\n"
        f'    allocate: {{command: ["{hook}", "{{ids}}"]}}\n'
    )
    await kubelet.await_for(healthy(PROBED, 1), what="d1 listed")
    seen = await kubelet.acall(kubelet.resource, PROBED)
    assert sorted(seen["device_numa"]) == ["d1"]
    for number in range(2):
        answer = await kubelet.acall(kubelet.allocate, f"p{number}", {PROBED: 1})
        assert answer["error"] == "" and answer["device_ids"][PROBED] == ["d1"]
        await kubelet.acall(kubelet.release, f"p{number}")
    assert ran.read_text() == "ok\nok\n"
