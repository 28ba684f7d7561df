"""The image's lock file (requirements/image.txt, `make lock`) covers what the image installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "image.txt"


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes), from the lock's `name==version \\ --hash=...` entries."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
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
    builder = dockerfile.split("\nFROM ")[1]
    installs = [ln for ln in builder.splitlines() if ln.startswith("RUN pip wheel")]
    from_index = [ln for ln in installs if "--no-deps" in ln and "-r requirements/image.txt" in ln]
    assert from_index, "the builder does not install requirements/image.txt"
    for flag in ("--require-hashes", "--only-binary=:all:"):
        assert all(flag in ln for ln in from_index), flag
    # The project's own wheel is built from the locked backend, not an isolated, unpinned one.
    (own,) = [ln for ln in installs if ln not in from_index]
    assert "--no-build-isolation" in own and "--no-deps" in own
