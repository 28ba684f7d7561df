"""The sdist (issue 20 item 8): it holds every file of the repository, so its tests run from
it. Built here as `make dist` builds it (python -m build, the locked setuptools)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist",
         "--outdir", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (archive,) = out.glob("kdp_host-*.tar.gz")
    return archive


def members(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile() and "/" in m.name}


def test_the_sdist_holds_every_tracked_file(sdist: Path) -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked sdist): nothing to compare with")
    tracked = subprocess.run(
        [git, "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True, timeout=60
    ).stdout.split()
    missing = sorted(set(tracked) - members(sdist))
    assert not missing, f"not in the sdist (MANIFEST.in): {missing}"


@pytest.mark.timeout(600)  # collects the whole suite twice: minutes on a loaded 2-core machine
def test_tests_run_from_the_unpacked_sdist(sdist: Path, tmp_path: Path) -> None:
    """Its test suite collects as the checkout's does, and the tests that read the repository's
    files (config docs, workflows, Makefile, chart metadata) pass there."""
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (unpacked,) = tmp_path.glob("kdp_host-*")

    def pytest_in(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=where, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip

    here = pytest_in(ROOT, "--collect-only", "tests")
    there = pytest_in(unpacked, "--collect-only", "tests")
    assert there.returncode == 0, there.stdout[-2000:] + there.stderr[-2000:]

    def collected(run: subprocess.CompletedProcess[str]) -> str:
        return run.stdout.splitlines()[-1].split(" in ")[0]  # "N tests collected"

    assert collected(there) == collected(here)
    files = ["tests/test_config_docs.py", "tests/test_workflows.py", "tests/test_version.py"]
    run = pytest_in(unpacked, *files)
    assert run.returncode == 0, run.stdout[-3000:]
