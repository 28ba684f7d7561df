"""The paths kdp-host writes are refused where it must not write (hostile5 H2,
kdp_host/config/outputs.py): the kubelet's socket directory and sockets, the state directory,
the config file, another resource's output, a directory where a file goes; through symlinks
too, at start-up (`load_config`, `kdp-host check`) and at a live reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdp_host.cli import main
from kdp_host.config import ConfigError, load_config, load_config_text
from kdp_host.config.outputs import spec_file_name
from kdp_host.simulator import KubeletSimulator

from .conftest import wait_until

FPGA = "vendor.example/fpga"
GPU = "vendor.example/gpu"


def _head(short_dir: Path, state: Path | None = None) -> str:
    return (
        f"kubelet: {{socketDir: {short_dir}/dp, podResourcesSocket: {short_dir}/pr/kubelet.sock}}\n"
        f"stateDir: {state or short_dir / 'state'}\n"
    )


def _resource(name: str, spec_dir: Path | str | None = None) -> str:
    text = f"  - name: {name}\n    glob: {{paths: [/dev/{name.rpartition('/')[2]}*]}}\n"
    if spec_dir is not None:
        text += f"    allocate: {{cdi: {{kind: {name}, specDir: {spec_dir}}}}}\n"
    return text


def _features(path: Path | str) -> str:
    return f"nodeFeatures: {{file: {path}}}\n"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config_text(text)
    return raised.value.problems


def _problem(text: str) -> str:
    (problem,) = _problems(text)
    return problem


@pytest.fixture
def dirs(short_dir: Path) -> Path:
    for name in ("dp", "pr", "state", "cdi", "nfd"):
        (short_dir / name).mkdir()
    (short_dir / "dp" / "kubelet.sock").touch()
    return short_dir


def test_a_good_layout_passes(dirs: Path) -> None:
    config = load_config_text(
        _head(dirs)
        + _features(dirs / "nfd" / "kdp-host")
        + "resources:\n"
        + _resource(FPGA, dirs / "cdi")
        + _resource(GPU, dirs / "cdi")
    )
    assert len(config.resources) == 2


def test_the_feature_file_may_not_be_the_kubelets_socket(dirs: Path) -> None:
    problem = _problem(
        _head(dirs) + _features(dirs / "dp" / "kubelet.sock") + "resources:\n" + _resource(FPGA)
    )
    assert problem.startswith("line 3: nodeFeatures.file: the nodeFeatures file, ")
    assert "lies in kubelet.socketDir" in problem


def test_the_feature_file_may_not_be_a_plugin_socket_of_the_socket_dir(dirs: Path) -> None:
    plugin = dirs / "dp" / "kdp-vendor.example_fpga-abcd-1234.sock"
    problem = _problem(_head(dirs) + _features(plugin) + "resources:\n" + _resource(FPGA))
    assert "nodeFeatures.file" in problem and "lies in kubelet.socketDir" in problem


def test_a_symlink_to_the_socket_dir_is_seen_through(dirs: Path) -> None:
    link = dirs / "nfd" / "link"
    link.symlink_to(dirs / "dp")
    problem = _problem(
        _head(dirs) + _features(link / "features") + "resources:\n" + _resource(FPGA)
    )
    assert f"(resolved: {dirs}/dp/features)" in problem
    assert "lies in kubelet.socketDir" in problem
    problem = _problem(_head(dirs) + "resources:\n" + _resource(FPGA, link))
    assert problem.startswith("line 6: resources[0].allocate.cdi.specDir: the CDI spec file ")


def test_nothing_else_may_be_written_in_the_plugins_registry_dir(dirs: Path) -> None:
    text = (
        f"kubelet: {{socketDir: {dirs}/dp, registration: pluginsRegistry, "
        f"pluginsRegistryDir: {dirs}/reg}}\nstateDir: {dirs}/state\n"
    )
    problem = _problem(text + "resources:\n" + _resource(FPGA, dirs / "reg"))
    assert "lies in kubelet.pluginsRegistryDir" in problem


def test_the_feature_file_may_not_be_the_pod_resources_socket(dirs: Path) -> None:
    problem = _problem(
        _head(dirs) + _features(dirs / "pr" / "kubelet.sock") + "resources:\n" + _resource(FPGA)
    )
    assert "lies in kubelet.podResourcesSocket" in problem


def test_the_state_dir_may_not_lie_in_the_socket_dir(dirs: Path) -> None:
    problem = _problem(_head(dirs, dirs / "dp" / "state") + "resources:\n" + _resource(FPGA))
    assert problem.startswith("line 2: stateDir: stateDir, ")
    assert "lies in kubelet.socketDir" in problem


@pytest.mark.parametrize("name", ["ownership.json", "release-state.json", "elsewhere"])
def test_the_feature_file_may_not_lie_in_the_state_dir(dirs: Path, name: str) -> None:
    problem = _problem(
        _head(dirs) + _features(dirs / "state" / name) + "resources:\n" + _resource(FPGA)
    )
    assert "nodeFeatures.file" in problem and "lies inside stateDir" in problem


def test_a_spec_dir_may_not_be_the_state_dir(dirs: Path) -> None:
    problem = _problem(_head(dirs) + "resources:\n" + _resource(FPGA, dirs / "state"))
    assert "resources[0].allocate.cdi.specDir" in problem
    assert "lies inside stateDir" in problem


def test_the_state_dir_may_not_be_inside_an_output(dirs: Path) -> None:
    features = dirs / "nfd" / "kdp-host"
    problem = _problem(
        _head(dirs, features / "state") + _features(features) + "resources:\n" + _resource(FPGA)
    )
    assert "stateDir" in problem and "lies inside the nodeFeatures file" in problem


def test_the_feature_file_may_not_be_a_resources_spec_file(dirs: Path) -> None:
    spec = dirs / "cdi" / spec_file_name(GPU)
    problems = _problems(
        _head(dirs)
        + _features(spec)
        + "resources:\n"
        + _resource(FPGA)
        + _resource(GPU, spec.parent)
    )
    (problem,) = problems  # one per pair: its owner file is the spec's owner file too
    assert f"is the CDI spec file of {GPU}" in problem


def test_a_spec_dir_may_not_lie_inside_another_resources_spec_file(dirs: Path) -> None:
    spec = dirs / "cdi" / spec_file_name(FPGA)
    problem = _problem(
        _head(dirs) + "resources:\n" + _resource(FPGA, dirs / "cdi") + _resource(GPU, spec)
    )
    assert problem.startswith("line 9: resources[1].allocate.cdi.specDir: ")
    assert f"lies inside the CDI spec file of {FPGA}" in problem


def test_entries_of_one_resource_share_its_spec_file(dirs: Path) -> None:
    entry = _resource(FPGA, dirs / "cdi") + "    nodeSelector: {names: [a*]}\n"
    other = _resource(FPGA, dirs / "cdi") + "    nodeSelector: {names: [b*]}\n"
    assert len(load_config_text(_head(dirs) + "resources:\n" + entry + other).resources) == 2


def test_a_directory_where_the_feature_file_goes_is_refused(dirs: Path) -> None:
    problem = _problem(_head(dirs) + _features(dirs / "nfd") + "resources:\n" + _resource(FPGA))
    assert problem.endswith("is a directory: kdp-host writes a file there")


def test_the_config_file_is_never_written(dirs: Path) -> None:
    config = dirs / "nfd" / "config.yaml"
    config.write_text(_head(dirs) + _features(config) + "resources:\n" + _resource(FPGA))
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    (problem,) = raised.value.problems
    assert problem.startswith("line 3: nodeFeatures.file: ")
    assert problem.endswith("is the config file: kdp-host would overwrite it")
    load_config_text(config.read_text())  # text alone: no file to clash with


def test_the_config_file_may_not_be_kept_in_the_state_dir(dirs: Path) -> None:
    config = dirs / "state" / "config.yaml"
    config.write_text(_head(dirs) + "resources:\n" + _resource(FPGA))
    with pytest.raises(ConfigError, match=r"stateDir: stateDir, .* holds the config file"):
        load_config(config)


def test_kdp_host_check_fails_on_such_a_path(
    dirs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = dirs / "config.yaml"
    config.write_text(
        _head(dirs) + _features(dirs / "dp" / "kubelet.sock") + "resources:\n" + _resource(FPGA)
    )
    assert main(["check", "--config", str(config)]) != 0
    assert "nodeFeatures.file" in capsys.readouterr().err


async def test_a_reload_into_the_socket_dir_is_refused_and_the_running_config_stays(
    dirs: Path, devices: Path, start_host: Any
) -> None:
    """A live reload whose spec dir is a symlink to the kubelet's socket dir is invalid: the
    spec file stays where it is, and the config in force is the one before."""
    socket_dir = dirs / "dp"
    (socket_dir / "kubelet.sock").unlink()
    async with KubeletSimulator(socket_dir, dial_timeout=5.0) as sim:
        config = dirs / "kdp.yaml"
        pattern = f"{devices}/fpga*"

        def write(spec_dir: Path) -> None:
            config.write_text(
                f"kubelet: {{socketDir: {socket_dir}}}\nstateDir: {dirs}/state\nresources:\n"
                f"  - name: {FPGA}\n    glob: {{paths: ['{pattern}']}}\n"
                f"    allocate: {{cdi: {{kind: {FPGA}, specDir: {spec_dir}}}}}\n"
            )

        write(dirs / "cdi")
        running = await start_host(config.read_text(), config_path=config)
        await sim.wait_for(lambda: sim.allocatable(FPGA) == 2)
        spec = dirs / "cdi" / spec_file_name(FPGA)
        await wait_until(spec.exists, what="the spec file written")
        link = dirs / "nfd" / "cdi"
        link.symlink_to(socket_dir)
        write(link)
        assert await running.host.reload_from(config) == "invalid"
        assert running.host.config.resources[0].allocate.cdi is not None
        assert running.host.config.resources[0].allocate.cdi.spec_dir == str(dirs / "cdi")
        assert spec.exists()
        assert not (socket_dir / spec_file_name(FPGA)).exists()
