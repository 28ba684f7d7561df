#!/usr/bin/env python3
"""The version of kdp-host: read it, check its copies, bump it.

The one place it lives is `__version__` in kdp_host/__init__.py (pyproject.toml reads it as a
dynamic field, `kdp-host version` prints it). A few files cannot import it and hold a copy:
the chart's `version` and `appVersion` (Helm reads only Chart.yaml) and the Dockerfile's
VERSION default (the image label). This script is the only thing that writes them.

usage:
  scripts/version.py                 print the version
  scripts/version.py check [TAG]     exit 1 if a copy differs (or TAG, `vX.Y.Z`, does not match)
  scripts/version.py set X.Y.Z       rewrite the version and every copy, and turn the CHANGELOG's
                                     Unreleased section into the X.Y.Z section of today
"""

from __future__ import annotations

import datetime
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# X.Y.Z only: the same string must be a PEP 440 version (the package) and a SemVer 2 version
# (Helm refuses a chart whose version is not SemVer), with no normalisation between the two.
VERSION_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


@dataclass(frozen=True)
class Copy:
    """One place that holds the version: a file and a pattern whose group 2 is the version."""

    path: str
    pattern: str

    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.MULTILINE)


SOURCE = Copy("kdp_host/__init__.py", r'^(__version__ = ")([^"]*)(")$')
COPIES = (
    Copy("charts/kdp-host/Chart.yaml", r"^(version: )(\S*)()$"),
    Copy("charts/kdp-host/Chart.yaml", r'^(appVersion: ")([^"]*)(")$'),
    Copy("Dockerfile", r"^(ARG VERSION=)(\S*)()$"),
)
CHANGELOG = "CHANGELOG.md"
REPOSITORY = "https://github.com/kdp-host/kdp-host"


def read(copy: Copy, root: Path = ROOT) -> str:
    text = (root / copy.path).read_text()
    matches = copy.regex().findall(text)
    if len(matches) != 1:
        raise SystemExit(f"{copy.path}: expected one line matching {copy.pattern!r}")
    return str(matches[0][1])


def current(root: Path = ROOT) -> str:
    return read(SOURCE, root)


def mismatches(root: Path = ROOT) -> list[str]:
    """Every copy that does not hold the source's version, as `path: found`."""
    version = current(root)
    return [
        f"{copy.path}: {found} (expected {version})"
        for copy in COPIES
        if (found := read(copy, root)) != version
    ]


def changelog_has(version: str, root: Path = ROOT) -> bool:
    text = (root / CHANGELOG).read_text()
    return re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text, re.M) is not None


def set_version(new: str, root: Path = ROOT, today: datetime.date | None = None) -> None:
    if not VERSION_RE.match(new):
        raise SystemExit(f"{new!r} is not X.Y.Z (digits, no leading zeros)")
    for copy in (SOURCE, *COPIES):
        read(copy, root)  # exactly one match, or stop before writing anything
    for copy in (SOURCE, *COPIES):
        path = root / copy.path
        path.write_text(copy.regex().sub(rf"\g<1>{new}\g<3>", path.read_text()))
    _release_changelog(new, root, today or datetime.date.today())


def _release_changelog(new: str, root: Path, today: datetime.date) -> None:
    """`## [Unreleased]` becomes `## [X.Y.Z] - today` under a fresh, empty Unreleased."""
    path = root / CHANGELOG
    text = path.read_text()
    if changelog_has(new, root):
        return
    heading = "## [Unreleased]\n"
    if heading not in text:
        raise SystemExit(f"{CHANGELOG}: no '## [Unreleased]' section to release")
    text = text.replace(heading, f"{heading}\n## [{new}] - {today.isoformat()}\n", 1)
    unreleased = re.compile(r"^\[Unreleased\]: .*/compare/v(\S+)\.\.\.HEAD$", re.M)
    found = unreleased.search(text)
    if found:
        text = unreleased.sub(
            f"[Unreleased]: {REPOSITORY}/compare/v{new}...HEAD\n"
            f"[{new}]: {REPOSITORY}/compare/v{found.group(1)}...v{new}",
            text,
        )
    path.write_text(text)


def main(argv: list[str]) -> int:
    match argv:
        case []:
            print(current())
        case ["check", *tag]:
            problems = mismatches()
            version = current()
            if tag and tag[0] != f"v{version}":
                problems.append(f"tag {tag[0]} is not v{version}")
            if not changelog_has(version):
                problems.append(f"{CHANGELOG}: no '## [{version}] - YYYY-MM-DD' section")
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1 if problems else 0
        case ["set", new]:
            set_version(new)
            print(current())
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
