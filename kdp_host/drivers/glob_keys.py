"""How a glob-group member's pattern names its group key (`/dev/xdma{key}_user`): the glob
that lists its paths, and the key read back out of a matched path."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import GlobGroupMemberConfig
from ..config.model import GROUP_KEY
from .glob_paths import fixed_parent


def glob_regex(pattern: str) -> str:
    """A glob pattern as a regular expression; wildcards stay inside one path component."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = index
            if end < len(pattern) and pattern[end] in "!^":
                end += 1
            if end < len(pattern) and pattern[end] == "]":
                end += 1
            end = pattern.find("]", end)
            if end < 0:
                out.append(re.escape(char))
                continue
            body = pattern[index:end].replace("\\", "\\\\")
            index = end + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
        else:
            out.append(re.escape(char))
    return "".join(out)


@dataclass(frozen=True)
class GroupMember:
    """One member of `glob.group`: the pattern that lists its paths and how a path's key is
    read."""

    config: GlobGroupMemberConfig
    pattern: str
    """The glob that lists the member's paths (`{key}` written as `*`)."""
    key_regex: re.Pattern[str] | None
    """Takes the group key out of a matched path; None for a member of every group."""
    base: str
    """The deepest directory of the pattern without a wildcard: what it names is inside."""

    @classmethod
    def of(cls, config: GlobGroupMemberConfig) -> GroupMember:
        path = config.path
        pattern = path.replace(GROUP_KEY, "*")
        if GROUP_KEY not in path:
            return cls(config, pattern, None, fixed_parent(pattern))
        before, after = path.split(GROUP_KEY, 1)
        regex = re.compile(f"{glob_regex(before)}(?P<key>[^/]+?){glob_regex(after)}")
        return cls(config, pattern, regex, fixed_parent(pattern))

    def key_of(self, path: str) -> str | None:
        if self.key_regex is None:
            return ""
        match = self.key_regex.fullmatch(path)
        return match.group("key") if match else None
