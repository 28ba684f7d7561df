"""`identity.real_path`: realpath's answer, found without realpath's work per component for a
path with no link on the way (issue 19: a claimed path's directory, per scan and per
resolution of the ownership index)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdp_host.identity import real_path


@pytest.fixture
def tree(tmp_path: Path) -> str:
    root = os.path.realpath(tmp_path)
    os.makedirs(f"{root}/a/b")
    Path(f"{root}/a/f").touch()
    os.symlink("a", f"{root}/l")
    os.symlink("/nonexistent/x", f"{root}/dangling")
    os.symlink("b", f"{root}/a/lb")
    os.symlink("loop", f"{root}/loop")
    return root


CASES = [
    "",
    "/a/b",
    "/a/b/c/d",
    "/a/f",
    "/a/f/x",
    "/l",
    "/l/b",
    "/l/b/missing",
    "/dangling",
    "/dangling/q",
    "/loop",
    "/loop/x",
    "/a/lb",
    "/a/lb/../f",
    "/a/./b",
    "//a",
    "/a/b/",
]


@pytest.mark.parametrize("case", CASES)
def test_real_path_is_realpath_s_answer(tree: str, case: str) -> None:
    path = tree + case
    assert real_path(path) == os.path.realpath(path)


def test_real_path_of_the_root_of_a_double_slash_and_of_a_relative_path() -> None:
    for path in ("/", "//tmp", "relative/x", "."):
        assert real_path(path) == os.path.realpath(path)


def test_a_path_with_no_link_on_the_way_costs_no_realpath(
    tree: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """realpath's work per component is what a plain path does not need: it is asked only
    where a link is on the way (or the path is not normalised)."""
    asked: list[str] = []
    realpath = os.path.realpath

    def counting(path: str) -> str:
        asked.append(path)
        return realpath(path)

    monkeypatch.setattr(os.path, "realpath", counting)
    assert real_path(f"{tree}/a/b") == f"{tree}/a/b"
    assert real_path(f"{tree}/a/b/missing/deeper") == f"{tree}/a/b/missing/deeper"
    assert asked == []
    assert real_path(f"{tree}/l/b") == f"{tree}/a/b"
    assert real_path(f"{tree}/a/./b") == f"{tree}/a/b"
    assert asked == [f"{tree}/l/b", f"{tree}/a/./b"]
