"""Every section reference in the code and the tests cites docs/kubelet-contract.md and a
section it has (the kubelet contract lives in the repository, nowhere else)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONTRACT = REPO / "docs" / "kubelet-contract.md"
SIGN = "\u00a7"  # the section sign, spelled out so this file does not cite anything itself
NUMBERED = re.compile(SIGN + r"(\d+)")
REFERENCE = re.compile(rf"docs/kubelet-contract\.md ({SIGN}\d+(?:(?:-|, ){SIGN}\d+)*)")
HEADING = re.compile(rf"^## {SIGN}(\d+) ", flags=re.M)


def sources() -> list[Path]:
    files = [*(REPO / "kdp_host").rglob("*.py"), *(REPO / "tests").rglob("*.py")]
    return sorted(path for path in files if path != Path(__file__).resolve())


def test_contract_sections_are_numbered_in_order() -> None:
    sections = [int(n) for n in HEADING.findall(CONTRACT.read_text(encoding="utf-8"))]
    assert sections == list(range(len(sections)))
    assert len(sections) >= 12


def test_every_section_reference_cites_the_contract_and_an_existing_section() -> None:
    sections = {int(n) for n in HEADING.findall(CONTRACT.read_text(encoding="utf-8"))}
    cited: set[int] = set()
    problems: list[str] = []
    for path in sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(REPO)}:{number}"
            if "kubelet-contract" in line and "docs/kubelet-contract.md" not in line:
                problems.append(f"{where}: cites a contract outside the repository")
            signs = len(NUMBERED.findall(line))
            covered = 0
            for match in REFERENCE.finditer(line):
                numbers = [int(n) for n in NUMBERED.findall(match.group(1))]
                covered += len(numbers)
                cited.update(numbers)
                problems += [f"{where}: no section {n} in the contract" for n in numbers
                             if n not in sections]  # fmt: skip
            if covered != signs:
                problems.append(f"{where}: a section number without docs/kubelet-contract.md")
    assert problems == []
    assert len(cited) >= 10, "too few references found: the pattern is broken"
