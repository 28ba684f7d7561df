"""Everything generated from the config declarations is fresh, and the example shows every key.

The declarations in kdp_host/config/model.py are the one source; `make schema` writes
config/schema.json, the chart's values.schema.json and the README tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from kdp_host.config.docs import (
    config_schema,
    data_key_paths,
    declared_key_paths,
    embedded_config_schema,
    with_readme_tables,
)

ROOT = Path(__file__).resolve().parents[1]
STALE = "is out of date: run `make schema`"


def test_config_schema_is_fresh() -> None:
    committed = json.loads((ROOT / "config" / "schema.json").read_text())
    assert committed == config_schema(), f"config/schema.json {STALE}"
    jsonschema.Draft202012Validator.check_schema(committed)


def test_chart_values_schema_embeds_the_config_schema() -> None:
    values = json.loads((ROOT / "charts" / "kdp-host" / "values.schema.json").read_text())
    assert values["properties"]["config"] == embedded_config_schema(), (
        f"charts/kdp-host/values.schema.json {STALE}"
    )


def test_readme_tables_are_fresh() -> None:
    text = (ROOT / "README.md").read_text()
    assert with_readme_tables(text) == text, f"the README's config tables {STALE}"


def test_example_shows_every_key() -> None:
    example = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    shown = set(data_key_paths(example))
    missing = [path for path in declared_key_paths() if path not in shown]
    assert not missing, f"config/example.yaml does not show {missing}"
    unknown = shown - set(declared_key_paths())
    assert not unknown, f"config/example.yaml uses undeclared keys {sorted(unknown)}"


def test_declared_keys_are_the_documented_ones() -> None:
    """A spot check of the declaration walk itself (the other tests build on it)."""
    paths = declared_key_paths()
    for path in (
        "kubelet.socketDir",
        "metrics.listen",
        "resources[].name",
        "resources[].glob.numaNode",
        "resources[].shell.workingDir",
        "resources[].allocate.mounts[].readOnly",
        "resources[].allocate.cdi.specDir",
        "resources[].health.command",
    ):
        assert path in paths, path
    assert len(paths) == len(set(paths))
