#!/usr/bin/env python3
"""Copy config/schema.json into the chart's values.schema.json as `properties.config`.

The chart then refuses at `helm install` every config mistake the schema can express (an
unknown key, a wrong type, a bad duration) instead of leaving it to a crash-looping pod.
`make chart-schema` runs this; tests/test_chart.py fails when the two have drifted apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG_SCHEMA = ROOT / "config" / "schema.json"
VALUES_SCHEMA = ROOT / "charts" / "kdp-host" / "values.schema.json"
DEFS = "#/$defs/"
EMBEDDED_DEFS = "#/properties/config/$defs/"


def _rebase_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                EMBEDDED_DEFS + value[len(DEFS) :]
                if key == "$ref" and isinstance(value, str) and value.startswith(DEFS)
                else _rebase_refs(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rebase_refs(item) for item in node]
    return node


def embedded_config_schema() -> dict[str, Any]:
    """config/schema.json as it stands inside values.schema.json."""
    schema = json.loads(CONFIG_SCHEMA.read_text())
    for key in ("$schema", "$id", "title"):
        schema.pop(key, None)
    return dict(_rebase_refs(schema))


def main() -> int:
    values = json.loads(VALUES_SCHEMA.read_text())
    values["properties"]["config"] = embedded_config_schema()
    VALUES_SCHEMA.write_text(json.dumps(values, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
