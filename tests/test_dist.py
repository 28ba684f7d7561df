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


@pytest.mark.timeout(600)  # collects the whole suite twice: a minute on a loaded 2-core machine
def test_tests_run_from_the_unpacked_sdist(sdist: Path, tmp_path: Path) -> None:
    """Its test suite collects as the checkout's does, and the tests that read the repository's
    files (config docs, workflows, Makefile, chart metadata) pass there."""
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (unpacked,) = tmp_path.glob("kdp_host-*")

    def pytest_in(where: Path, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=where, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def finished(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
        out, err = process.communicate(timeout=600)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    # The collections count the tests of each file (`-qq`) without rewriting their asserts
    # (none runs: most of a collection's time would go there). The three runs go at once:
    # each is mostly imports, and the suite around this test mostly waits.
    collect = ("-qq", "--assert=plain", "--collect-only", "tests")
    files = ["tests/test_config_docs.py", "tests/test_workflows.py", "tests/test_version.py"]
    started = [
        pytest_in(ROOT, *collect),
        pytest_in(unpacked, *collect),
        pytest_in(unpacked, *files),
    ]
    try:
        here, there, run = (finished(process) for process in started)
    finally:
        for process in started:
            process.kill()  # (a no-op for one that ended)
    assert there.returncode == 0, there.stdout[-2000:] + there.stderr[-2000:]
    assert here.returncode == 0 and "tests/test_dist.py: " in here.stdout, here.stdout[-2000:]
    assert there.stdout == here.stdout  # "tests/test_x.py: N" for every file
    assert run.returncode == 0, run.stdout[-3000:]
