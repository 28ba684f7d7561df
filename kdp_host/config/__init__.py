"""The YAML config file, read into frozen dataclasses.

Every error names the field path and the line it stands on, and all errors of a file are
reported together, so an operator fixes a ConfigMap in one round. The keys are declared once,
in model.py; source.py reads and parses a file with bounded work; declare.py turns the
declarations into the loader and the JSON Schema (with kinds.py, how each kind of value
reads, and syntax.py, durations and templates); docs.py into the README tables.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from .declare import read_section
from .handed import UNSAFE_MOUNT, NeverHanded
from .kinds import Reader
from .model import (
    ALLOCATE_TEMPLATE_FIELDS,
    HOOK_TEMPLATE_FIELDS,
    MAX_REPLICAS,
    NODE_LABEL_SETTLE,
    AllocateConfig,
    CdiConfig,
    Config,
    DeletePodsConfig,
    DriverConfig,
    GlobDriverConfig,
    GlobGroupMemberConfig,
    HealthCheckConfig,
    HeldMissingConfig,
    KubeletConfig,
    MetricsConfig,
    MountConfig,
    NodeSelectConfig,
    PciMatchConfig,
    PreferredPolicy,
    PreStartConfig,
    ReleaseConfig,
    ResourceConfig,
    ShellDriverConfig,
    SysfsDriverConfig,
    SysfsMatchConfig,
    UsbMatchConfig,
)
from .outputs import written_path_problems
from .places import handed_path_problems, never_handed
from .source import ConfigSource, SourceError, parse_config_text, read_config_source
from .syntax import parse_duration, render_template, template_fields

__all__ = [
    "ALLOCATE_TEMPLATE_FIELDS",
    "HOOK_TEMPLATE_FIELDS",
    "MAX_REPLICAS",
    "NODE_LABEL_SETTLE",
    "UNSAFE_MOUNT",
    "AllocateConfig",
    "CdiConfig",
    "Config",
    "ConfigError",
    "DeletePodsConfig",
    "DriverConfig",
    "GlobDriverConfig",
    "GlobGroupMemberConfig",
    "HealthCheckConfig",
    "HeldMissingConfig",
    "KubeletConfig",
    "MetricsConfig",
    "MountConfig",
    "NeverHanded",
    "NodeSelectConfig",
    "PciMatchConfig",
    "PreStartConfig",
    "PreferredPolicy",
    "ReleaseConfig",
    "ResourceConfig",
    "ShellDriverConfig",
    "SysfsDriverConfig",
    "SysfsMatchConfig",
    "UsbMatchConfig",
    "load_config",
    "load_config_text",
    "never_handed",
    "parse_duration",
    "render_template",
    "template_fields",
]


class ConfigError(Exception):
    """A config that does not validate; `problems` holds one line per error."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} error(s)\n{lines}")


def load_config_text(text: str, source: str = "<config>") -> Config:
    """Parse and validate config text. Raises ConfigError listing every problem."""
    try:
        parsed = parse_config_text(text)
    except SourceError as exc:
        raise ConfigError(source, exc.problems) from None
    parsed.sha256 = hashlib.sha256(text.encode()).hexdigest()
    return _config_from_source(parsed, source, None)


def load_config(path: Path) -> Config:
    """Read, decode (strict UTF-8), parse and validate a config file: the one way start-up
    and live reload read it. Raises ConfigError listing every problem; the work is bounded
    (see `source`), so a hostile file costs little and never raises anything else."""
    try:
        parsed = read_config_source(path)
    except SourceError as exc:
        raise ConfigError(str(path), exc.problems) from None
    return _config_from_source(parsed, str(path), str(path))


def _config_from_source(parsed: ConfigSource, source: str, config_file: str | None) -> Config:
    """The config `parsed` declares, checked, then the paths it would write checked
    (`outputs.written_path_problems`: against the kubelet's, the state directory, each
    other and `config_file`, the file it came from) and those it hands to containers
    (`places.handed_path_problems`)."""
    reader = Reader(parsed.lines)
    reader.found.extend(parsed.problems)
    config = read_section(reader, Config, parsed.data, ())
    if not reader.problems and isinstance(config, Config):
        for path, message in written_path_problems(config, config_file):
            reader.problem(path, message)
        for path, message in handed_path_problems(config, config_file):
            reader.problem(path, message)
    if reader.problems or config is None:
        raise ConfigError(source, reader.problems)
    assert isinstance(config, Config)
    return dataclasses.replace(config, sha256=parsed.sha256)
