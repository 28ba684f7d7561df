"""Where the memory of a glob run's imports goes (issue 19, "1 resource: RSS").

    python -m tests.bench.memory_profile [--top 40]

A fresh interpreter imports the stack (`startup_profile.STACK`, not counted), then, traced
(tracemalloc), kdp-host's modules of a glob run (`startup_profile.RUN_MODULES`) and the
command's parser, the way `kdp-host run` loads them (the collector paused). It prints:

* the Python memory those imports keep, by kind: code objects (`marshal` of the .pyc files),
  the methods `@dataclass` generates (~8 kB a class, ~11 kB frozen, ~14 kB frozen with
  slots, against ~2.5 kB for a plain class, on 3.11), and the rest (classes, module-level
  objects, the parser);
* each module's own share (what its loader's `exec_module` kept, less the modules it
  imported meanwhile), the largest first;
* the largest single blocks: one is usually the table of interned names growing (to 65,536
  slots: ~0.96 MB at once), which whichever module crosses its threshold is charged with.

The RSS of each layer (the interpreter, asyncio, the stack, kdp-host's modules) is
`startup_profile floor`; a run's own VmRSS, the `peer` section's "1 resource: RSS" row.
Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from .startup_profile import RUN_MODULES, STACK

_MEASURE = r"""
import collections, gc, importlib, importlib.machinery, json, sys, tracemalloc
stack, run = sys.argv[1].split(","), sys.argv[2].split(",")
gc.disable()
for name in stack:
    importlib.import_module(name)
own = collections.Counter()
nested = []
loader = importlib.machinery.SourceFileLoader
exec_module = loader.exec_module

def counted(self, module):
    nested.append(0)
    before = tracemalloc.get_traced_memory()[0]
    try:
        return exec_module(self, module)
    finally:
        total = tracemalloc.get_traced_memory()[0] - before
        own[self.name] += total - nested.pop()
        if nested:
            nested[-1] += total

loader.exec_module = counted
tracemalloc.start(64)
for name in run:
    importlib.import_module(name)
from kdp_host.cli import build_parser
build_parser()
gc.collect()
snapshot = tracemalloc.take_snapshot()
loader.exec_module = exec_module
kinds = collections.Counter()
blocks = []
for trace in snapshot.traces:
    frames = list(trace.traceback)
    inner = frames[-1]
    if inner.filename == "<frozen importlib._bootstrap_external>":
        kind = "code objects (marshal of the .pyc files)"
    elif any(f.filename.endswith("dataclasses.py") for f in frames):
        kind = "@dataclass methods"
    else:
        kind = "classes, module-level objects, the rest"
    kinds[kind] += trace.size
    blocks.append((trace.size, kind, [f"{f.filename}:{f.lineno}" for f in frames[-3:]]))
blocks.sort(reverse=True)
print(json.dumps({"own": own, "kinds": kinds, "blocks": blocks[:5]}))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, ",".join(STACK), ",".join(RUN_MODULES)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = json.loads(out)
    own: dict[str, int] = found["own"]
    ours = {name: size for name, size in own.items() if name.startswith("kdp_host")}
    print(
        f"kept by the imports of a glob run past the stack: {sum(own.values()) / 1e6:.2f} MB "
        f"({len(own)} modules; kdp_host's {len(ours)}: {sum(ours.values()) / 1e6:.2f} MB)"
    )
    for kind, size in sorted(found["kinds"].items(), key=lambda item: -item[1]):
        print(f"  {size / 1e6:6.2f} MB  {kind}")
    print(f"each module's own share, the largest {args.top}:")
    for name, size in sorted(own.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {size / 1e3:7.1f} kB  {name}")
    print("the largest single blocks:")
    for size, kind, where in found["blocks"]:
        print(f"  {size / 1e3:7.1f} kB  {kind}  {' <- '.join(reversed(where))}")


if __name__ == "__main__":
    main()
