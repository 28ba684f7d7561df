"""One version for the package, the chart and the image (scripts/version.py keeps the copies)."""

from __future__ import annotations

import datetime
import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version as installed_version
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from kdp_host import __version__

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def version_script() -> ModuleType:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module("version")
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def dockerfile_arg(name: str, root: Path = ROOT) -> str:
    (value,) = re.findall(rf"^ARG {name}=(\S*)$", (root / "Dockerfile").read_text(), re.M)
    return value


def test_pyproject_reads_the_version_from_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kdp_host.__version__"}


def test_every_copy_holds_the_package_version() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "kdp-host" / "Chart.yaml").read_text())
    assert chart["version"] == __version__
    assert chart["appVersion"] == __version__
    assert dockerfile_arg("VERSION") == __version__
    # The venv's metadata (make reinstalls when kdp_host/__init__.py changes).
    assert installed_version("kdp-host") == __version__


def test_the_command_prints_the_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kdp_host", "version"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert proc.stdout.split() == ["kdp-host", __version__]


def test_check_agrees_and_the_changelog_has_the_release(version_script: ModuleType) -> None:
    assert version_script.current() == __version__
    assert version_script.mismatches() == []
    assert version_script.changelog_has(__version__)
    assert "## [Unreleased]\n" in (ROOT / "CHANGELOG.md").read_text()


@pytest.fixture
def tree(tmp_path: Path, version_script: ModuleType) -> Path:
    """A copy of the files that hold the version."""
    paths = {c.path for c in (version_script.SOURCE, *version_script.COPIES)}
    for rel in (*paths, version_script.CHANGELOG):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    return tmp_path


def test_set_rewrites_every_copy_and_releases_the_changelog(
    tree: Path, version_script: ModuleType
) -> None:
    version_script.set_version("7.8.9", tree, datetime.date(2031, 2, 3))
    assert version_script.current(tree) == "7.8.9"
    assert version_script.mismatches(tree) == []
    chart = yaml.safe_load((tree / "charts" / "kdp-host" / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == ("7.8.9", "7.8.9")
    assert dockerfile_arg("VERSION", tree) == "7.8.9"
    changelog = (tree / "CHANGELOG.md").read_text()
    # The work listed under Unreleased now belongs to 7.8.9; a new Unreleased is empty.
    assert "## [Unreleased]\n\n## [7.8.9] - 2031-02-03\n" in changelog
    assert f"[Unreleased]: {version_script.REPOSITORY}/compare/v7.8.9...HEAD" in changelog
    assert f"[7.8.9]: {version_script.REPOSITORY}/compare/v{__version__}...v7.8.9" in changelog
    # Setting it again changes nothing.
    version_script.set_version("7.8.9", tree, datetime.date(2031, 2, 4))
    assert (tree / "CHANGELOG.md").read_text() == changelog


@pytest.mark.parametrize("bad", ["1.2", "v1.2.3", "1.2.3rc1", "1.02.3", "1.2.3-rc.1", ""])
def test_set_refuses_what_is_not_x_y_z(tree: Path, version_script: ModuleType, bad: str) -> None:
    before = (tree / "kdp_host" / "__init__.py").read_text()
    with pytest.raises(SystemExit, match=r"is not X\.Y\.Z"):
        version_script.set_version(bad, tree)
    assert (tree / "kdp_host" / "__init__.py").read_text() == before


def test_a_drifted_copy_is_named(tree: Path, version_script: ModuleType) -> None:
    dockerfile = tree / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(f"VERSION={__version__}", "VERSION=9.9.9"))
    assert version_script.mismatches(tree) == [f"Dockerfile: 9.9.9 (expected {__version__})"]


def test_check_compares_the_release_tag() -> None:
    def check(*tag: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "version.py"), "check", *tag],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert check(f"v{__version__}").returncode == 0
    wrong = check("v999.0.0")
    assert wrong.returncode == 1
    assert f"tag v999.0.0 is not v{__version__}" in wrong.stderr
