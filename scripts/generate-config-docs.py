#!/usr/bin/env python3
"""`make schema`: write what the config declarations generate.

- config/schema.json (JSON Schema for editors),
- the `config` property of charts/kdp-host/values.schema.json (so `helm install` refuses
  config mistakes the schema can express),
- the reference tables of README.md between `<!-- config-table: NAME -->` markers.

The source is kdp_host/config/model.py; tests/test_config_docs.py fails when these are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kdp_host.config.docs import config_schema, embedded_config_schema, with_readme_tables

ROOT = Path(__file__).resolve().parents[1]
CONFIG_SCHEMA = ROOT / "config" / "schema.json"
VALUES_SCHEMA = ROOT / "charts" / "kdp-host" / "values.schema.json"
README = ROOT / "README.md"


def dump(data: object) -> str:
    return json.dumps(data, indent=2) + "\n"


def main() -> int:
    CONFIG_SCHEMA.write_text(dump(config_schema()))
    values = json.loads(VALUES_SCHEMA.read_text())
    values["properties"]["config"] = embedded_config_schema()
    VALUES_SCHEMA.write_text(dump(values))
    README.write_text(with_readme_tables(README.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
