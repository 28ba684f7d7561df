"""Official protobuf + grpcio classes for the device plugin API, generated at run time.

The benchmarks and the wire test talk to kdp-host through an independent stack: grpcio with
classes that `grpc_tools.protoc` generates from `protos/api.proto` (through the interop
test's loader, tests/interop_kubelet.py). Nothing here uses the product's betterproto2 code.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

from tests.interop_kubelet import OfficialApi as Api
from tests.interop_kubelet import load_official_api

REPO = Path(__file__).resolve().parents[2]

_lock = threading.Lock()
_cached: list[Api] = []


def load_api() -> Api:
    """The generated modules (generated once per process, in a directory removed at exit)."""
    with _lock:
        if not _cached:
            out = Path(tempfile.mkdtemp(prefix="kdp-bench-proto-"))
            atexit.register(shutil.rmtree, out, True)
            _cached.append(load_official_api(out))
        return _cached[0]


__all__ = ["REPO", "Api", "load_api"]
