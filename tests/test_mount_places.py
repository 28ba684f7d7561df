"""`MountMap.places` finds the places of a directory's entries once per directory (issue 19:
every node and mount of every device admitted asks): the answer is the one the mount table
alone gives, for any table and any path, asked in any order."""

from __future__ import annotations

import posixpath

from hypothesis import given
from hypothesis import strategies as st

from kdp_host.mount_table import MountMap
from kdp_host.rules import parent

NAMES = st.sampled_from(["a", "b", "c", "dev", "x", "."])
PATHS = st.lists(NAMES, min_size=0, max_size=4).map(lambda parts: "/" + "/".join(parts))
MOUNTS = st.lists(
    st.tuples(PATHS, st.sampled_from(["8:1", "8:2", "0:5"]), PATHS), min_size=1, max_size=6
)


@given(MOUNTS, st.lists(PATHS, min_size=1, max_size=30))
def test_the_places_of_an_entry_are_those_the_mount_table_gives(
    mounts: list[tuple[str, str, str]], paths: list[str]
) -> None:
    table = MountMap([(point, (dev, root)) for point, dev, root in mounts])
    fresh = MountMap([(point, (dev, root)) for point, dev, root in mounts])
    for path in paths + [p + "/dev" for p in paths if p != "/"]:
        assert table.places(path) == fresh._places_of(path), path
        dirs, name = table.entry_dirs(path), path.rpartition("/")[2]
        if dirs is not None:  # (what `NeverHanded.problem` relies on)
            expected = tuple(f"/{name}" if d == "/" else f"{d}/{name}" for d in dirs)
            assert table.places(path) == expected


def test_a_bind_mount_of_a_directory_shows_its_entries_twice() -> None:
    table = MountMap([("/", ("8:1", "/")), ("/data", ("8:1", "/srv")), ("/srv/in", ("8:2", "/"))])
    assert table.places("/srv/a/x") == ("/srv/a/x", "/data/a/x")
    assert table.places("/data/a/y") == ("/data/a/y", "/srv/a/y")
    # a mount below: its entries' places are found from the table (the root of one lies
    # below `/`, which a bind mount shows again)
    assert table.places("/srv/in") == ("/srv/in",)
    assert table.places("/srv/x") == ("/srv/x", "/data/x")
    file_bind = MountMap([("/", ("8:1", "/")), ("/etc/f", ("8:1", "/srv/f"))])
    assert file_bind.places("/srv/f") == ("/srv/f", "/etc/f")
    assert file_bind.places("/srv/g") == ("/srv/g",)


@given(st.text(alphabet="/ab.", max_size=12))
def test_parent_is_dirname(path: str) -> None:
    assert parent(path) == posixpath.dirname(path)
