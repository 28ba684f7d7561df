#!/usr/bin/env python3
"""Print pyproject.toml's build-system requirements, one a line (`make lock` locks them too).

The image's builder stage builds the kdp-host wheel with --no-build-isolation from the locked,
hash-checked build backend, so the lock must hold what [build-system] requires: read from there,
never copied.
"""

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    sys.stdout.write("".join(f"{r}\n" for r in requires))
