"""Official protobuf + grpcio classes for the device plugin API, generated at run time.

The benchmarks and the wire test talk to kdp-host through an independent stack: grpcio with
classes that `grpc_tools.protoc` generates from `protos/api.proto` into a temporary
directory. Nothing here uses the product's own (betterproto2) code.
"""

from __future__ import annotations

import atexit
import importlib
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "protos" / "api.proto"

_lock = threading.Lock()
_cached: Api | None = None


@dataclass(frozen=True)
class Api:
    pb2: ModuleType
    """Messages: `pb2.ListAndWatchResponse`, `pb2.AllocateRequest`, ..."""
    grpc: ModuleType
    """Stubs and servicers: `grpc.DevicePluginStub`, `grpc.RegistrationServicer`, ..."""


MODULE = "kdp_official_api"
"""The module name tests/interop_kubelet.py uses too: protobuf's descriptor pool is global, so
the messages of the .proto may be registered once per process, and whichever helper
generates them first leaves the modules in sys.modules for the other."""


def _from_interop_helper(out: Path) -> Api | None:
    try:
        from tests.interop_kubelet import load_official_api
    except ImportError:
        try:
            from interop_kubelet import load_official_api  # type: ignore[no-redef]
        except ImportError:
            return None
    api = load_official_api(out)
    return Api(api.pb2, api.grpc)


def _generate() -> Api:
    cached_pb2 = sys.modules.get(f"{MODULE}_pb2")
    cached_grpc = sys.modules.get(f"{MODULE}_pb2_grpc")
    if cached_pb2 is not None and cached_grpc is not None:
        return Api(cached_pb2, cached_grpc)
    out = Path(tempfile.mkdtemp(prefix="kdp-bench-proto-"))
    atexit.register(shutil.rmtree, out, True)
    api = _from_interop_helper(out)
    if api is not None:
        return api
    from grpc_tools import protoc

    shutil.copyfile(PROTO, out / f"{MODULE}.proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{out}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(out / f"{MODULE}.proto"),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit {status})")
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module(f"{MODULE}_pb2")
        grpc_mod = importlib.import_module(f"{MODULE}_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return Api(pb2, grpc_mod)


def load_api() -> Api:
    """The generated modules (generated once per process)."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = _generate()
        return _cached
