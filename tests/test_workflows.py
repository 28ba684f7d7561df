"""The GitHub workflows call what exists, and test the Python versions pyproject supports.

`make lint` checks their syntax (check-jsonschema, actionlint); this checks what no linter
knows: the make verbs and scripts they run are this repository's, and the supported Python
versions (pyproject's classifiers, the one place they are declared) are the ones CI and
`make test-all` test.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def supported_pythons() -> list[str]:
    classifiers = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["classifiers"]
    prefix = "Programming Language :: Python :: "
    return [c.removeprefix(prefix) for c in classifiers if re.fullmatch(r".*:: 3\.\d+", c)]


def make_targets() -> set[str]:
    proc = subprocess.run(
        ["make", "-pRrq", "-f", "Makefile", ":"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return {
        m.group(1)
        for m in re.finditer(r"^([a-zA-Z][\w.-]*):", proc.stdout, re.M)
        if not m.group(1).startswith(".")
    }


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for job in workflow["jobs"].values() for s in job.get("steps", [])]


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_there_are_ci_and_release_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_make_verbs_and_scripts_exist(path: Path) -> None:
    targets = make_targets()
    runs = " ".join(s["run"] for s in steps(load(path)) if "run" in s)
    for verb in re.findall(r"\bmake ([a-z][\w-]*)", runs):
        assert verb in targets, f"{path.name} runs `make {verb}`, which the Makefile lacks"
    for script in re.findall(r"\b(scripts/[\w./-]+)", runs):
        assert (ROOT / script).is_file(), f"{path.name} runs {script}, which does not exist"


def test_actions_are_pinned_to_a_commit() -> None:
    """Every action, the PyPI publisher included, by commit (with its version in a comment,
    which Dependabot keeps current)."""
    for path in WORKFLOWS:
        for step in steps(load(path)):
            uses = step.get("uses")
            if uses is not None:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", uses), f"{path.name}: {uses}"
        for line in path.read_text().splitlines():
            if "uses:" in line:
                assert re.search(r"@[0-9a-f]{40} # v\d", line), f"{path.name}: {line.strip()}"


def test_the_publish_job_runs_nothing_but_the_publish_action() -> None:
    """Issue 20 item 8: the job that holds PyPI's OIDC token (id-token: write) downloads the
    built files and publishes them; building and every command of ours run elsewhere."""
    release = load(ROOT / ".github" / "workflows" / "release.yml")
    trusted = {
        name: job
        for name, job in release["jobs"].items()
        if job.get("permissions", {}).get("id-token") == "write"
    }
    assert list(trusted) == ["pypi"]
    actions = [step.get("uses", "").split("@")[0] for step in trusted["pypi"]["steps"]]
    assert actions == ["actions/download-artifact", "pypa/gh-action-pypi-publish"]
    assert not any("run" in step for step in trusted["pypi"]["steps"])
    for name, job in release["jobs"].items():
        if name != "pypi":
            uses = [step.get("uses", "") for step in job.get("steps", [])]
            assert not any(u.startswith("pypa/gh-action-pypi-publish@") for u in uses), name


def test_ci_tests_every_supported_python() -> None:
    ci = load(ROOT / ".github" / "workflows" / "ci.yml")
    assert ci["jobs"]["test"]["strategy"]["matrix"]["python"] == supported_pythons()


def test_test_all_tries_every_supported_python() -> None:
    (line,) = re.findall(r"^PYTHONS \?= (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert line.split() == [f"python{v}" for v in supported_pythons()]


def test_requires_python_is_the_oldest_supported() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == f">={supported_pythons()[0]}"


@pytest.mark.parametrize(("ci", "derandomized"), [("true", True), ("", False)])
def test_hypothesis_is_derandomised_in_ci_only(ci: str, derandomized: bool) -> None:
    """CI (CI=true, as .ci/run and GitHub Actions set it) tries the same examples every run;
    a local run explores new ones."""
    import os
    import sys

    probe = "import tests.conftest; from hypothesis import settings; print(settings().derandomize)"
    env = {**os.environ, "CI": ci}
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(derandomized)
