"""The ownership index takes what the glob scan learnt each device's path reaches
(`ScanResult.reached`) instead of looking at the path again (Issue 19: the second lstat per
device was ~22 % of start-up at scale). What the scan hands on is exactly what
`ownership_claims.reach` answers, for plain files, links and paths under linked
directories."""

from __future__ import annotations

from pathlib import Path

from kdp_host.config import GlobDriverConfig
from kdp_host.device_table import DeviceTable
from kdp_host.drivers import DeviceReporter
from kdp_host.drivers.glob import GlobDriver
from kdp_host.drivers.scanner import DirWatch, Listed
from kdp_host.files import DaemonThreads
from kdp_host.logs import get_logger
from kdp_host.metrics import Metrics
from kdp_host.ownership import OwnedTable, OwnershipIndex
from kdp_host.ownership_claims import Reached, reach
from kdp_host.testing import driver_deps

from .conftest import wait_table

FPGA = "vendor.example/fpga"


def tree(root: Path) -> str:
    """Plain files, a link to a file, a linked directory; returns the glob pattern."""
    (root / "real").mkdir()
    for name in ("dev0", "dev1"):
        (root / "real" / name).touch()
    (root / "real" / "target").touch()
    (root / "real" / "dev2").symlink_to("target")
    (root / "linked").symlink_to(root / "real")
    return f"{root}/linked/dev*"


def test_what_the_scan_hands_on_is_what_reach_answers(tmp_path: Path) -> None:
    pattern = tree(tmp_path)
    driver = GlobDriver(GlobDriverConfig(paths=(pattern,)), driver_deps())
    result = driver.scanner.scan(Listed(), DirWatch(frozenset()), None)
    assert result.reached is not None
    hosts = {node.host_path for d in result.devices.values() for node in d.nodes}
    assert set(result.reached) == hosts and len(hosts) == 3
    for path, learnt in result.reached.items():
        assert learnt == reach(path), path
    again = driver.scanner.scan(Listed(result.devices), DirWatch(frozenset()), None)
    assert again.reached == {}  # devices kept as they were: the index knows their claims


async def test_the_index_does_not_look_again_at_paths_the_scan_learnt(tmp_path: Path) -> None:
    pattern = tree(tmp_path)
    looked: list[str] = []

    def counting(path: str) -> Reached | None:
        looked.append(path)
        return reach(path)

    metrics = Metrics()
    index = OwnershipIndex(metrics, counting, offload=DaemonThreads())
    table = DeviceTable()
    log = get_logger().bind(resource=FPGA)
    detach = index.attach(FPGA, table.publish, log)
    reporter = DeviceReporter(
        OwnedTable(index, FPGA, table), resource=FPGA, log=log, metrics=metrics, failure_threshold=3
    )
    driver = GlobDriver(GlobDriverConfig(paths=(pattern,)), driver_deps())
    try:
        await driver.step(reporter)
        await wait_table(table, lambda snapshot: len(snapshot.devices) == 3)
        (tmp_path / "real" / "dev3").touch()  # a hot-plug: the new device's path too
        await driver.step(reporter)
        snapshot = await wait_table(table, lambda snapshot: len(snapshot.devices) == 4)
        assert looked == []
        owners = await index.owners_of([str(tmp_path / "real" / "target")])
        [[owner]] = owners.values()
        dev2 = next(d.id for d in snapshot.devices if d.path and d.path.endswith("dev2"))
        assert owner.device == dev2  # claimed as reach says
    finally:
        detach()
