"""A fake Kubernetes API server on 127.0.0.1: one node object, its GET and a watch; pods
(GET, DELETE) and Events (POST).

What kdp_host.kubeapi and kdp_host.pod_api call, and nothing more: `GET /api/v1/nodes/NAME`
and `GET /api/v1/nodes?fieldSelector=metadata.name=NAME&watch=1...` answered as the real
server does (a PartialObjectMetadata object; a chunked stream of JSON watch events), `GET` and
`DELETE /api/v1/namespaces/NS/pods/NAME` (a DELETE's `preconditions.uid` checked: 409 when it
is another pod), `POST /api/v1/namespaces/NS/events` (201, kept in `events`), with a bearer
token checked, over TLS when given a certificate (`self_signed`, made with the openssl
command). Every call is kept in `calls` (method, target, headers, JSON body). Tests change
the labels (`set_labels`, pushed to open watches as MODIFIED events), expire watches (an
ERROR 410 event), make every call fail (`fail_with`) or the calls of one method and path
prefix (`refuse`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

TOKEN = "fake-token"


def self_signed(directory: Path) -> tuple[Path, Path] | None:
    """(certificate, key) for 127.0.0.1, or None without the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "apiserver.crt", directory / "apiserver.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Call:
    method: str
    target: str
    headers: dict[str, str]
    body: Any


def pod_object(namespace: str, name: str, uid: str, node: str, **labels: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"namespace": namespace, "name": name, "uid": uid, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "worker", "image": "x"}]},
        "status": {"phase": "Running"},
    }


@dataclass
class FakeApiServer:
    node: str
    labels: dict[str, str] = field(default_factory=dict)
    certificate: tuple[Path, Path] | None = None
    token: str = TOKEN
    fail_with: int | None = None
    """Answer every call with this status (a Status object saying why)."""
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """(namespace, name) -> the pod object (`add_pod`)."""
    events: list[dict[str, Any]] = field(default_factory=list)
    refuse: dict[tuple[str, str], int] = field(default_factory=dict)
    """(method, path prefix) -> the status every such call is answered with."""
    called: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at each call (tests clear it)."""
    version: int = 1
    _watches: list[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    watch_opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> str:
        context = None
        if self.certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*map(str, self.certificate))
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if context else 'http'}://127.0.0.1:{port}"

    async def close(self) -> None:
        for queue in self._watches:
            queue.put_nowait(None)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def _object(self) -> dict[str, Any]:
        return {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {
                "name": self.node,
                "labels": dict(self.labels),
                "resourceVersion": str(self.version),
            },
        }

    def set_labels(self, labels: dict[str, str]) -> None:
        self.labels = dict(labels)
        self.version += 1
        for queue in self._watches:
            queue.put_nowait({"type": "MODIFIED", "object": self._object()})

    def expire_watches(self) -> None:
        gone = {"kind": "Status", "status": "Failure", "reason": "Expired", "code": 410,
                "message": "too old resource version"}  # fmt: skip
        for queue in self._watches:  # the server ends a watch after its ERROR event
            queue.put_nowait({"type": "ERROR", "object": gone})
            queue.put_nowait(None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readline()).decode()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            method, target = request.split(" ")[:2]
            length = int(headers.get("content-length", "0"))
            body = json.loads(await reader.readexactly(length)) if length else None
            self.requests.append((target, headers))
            self.calls.append(Call(method, target, headers, body))
            self.called.set()
            if method == "GET" and not target.startswith("/api/v1/namespaces/"):
                await self._answer(target, headers, writer)
            else:
                self._pod_call(method, target, headers, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, target: str, headers: dict[str, str], writer: Any) -> None:
        url = urlsplit(target)
        query = parse_qs(url.query)
        if self.fail_with is not None:
            return self._status(writer, self.fail_with, "refused by the test")
        if headers.get("authorization") != f"Bearer {self.token}":
            return self._status(writer, 401, "Unauthorized")
        if url.path == f"/api/v1/nodes/{self.node}":
            body = json.dumps(self._object()).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            return None
        if url.path == "/api/v1/nodes" and query.get("watch") == ["1"]:
            selector = unquote(query.get("fieldSelector", [""])[0])
            if selector != f"metadata.name={self.node}":
                return self._status(writer, 400, f"unexpected selector {selector}")
            return await self._watch(writer)
        return self._status(writer, 404, f"{url.path} not found")

    def add_pod(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        self.pods[metadata["namespace"], metadata["name"]] = pod

    def _pod_call(
        self, method: str, target: str, headers: dict[str, str], body: Any, writer: Any
    ) -> None:
        path = urlsplit(target).path
        refused = [
            code for (m, p), code in self.refuse.items() if m == method and path.startswith(p)
        ]
        if self.fail_with is not None or refused:
            return self._status(writer, self.fail_with or refused[0], "refused by the test")
        if headers.get("authorization") != f"Bearer {self.token}":
            return self._status(writer, 401, "Unauthorized")
        parts = path.split("/")  # ['', 'api', 'v1', 'namespaces', NS, KIND, NAME?]
        if len(parts) == 6 and parts[5] == "events" and method == "POST":
            if body.get("involvedObject", {}).get("namespace") != parts[4]:
                return self._status(writer, 422, "involvedObject.namespace does not match")
            self.events.append(body)
            return self._json(writer, 201, {**body, "metadata": {**body["metadata"], "name": "e"}})
        if len(parts) == 7 and parts[5] == "pods":
            pod = self.pods.get((unquote(parts[4]), unquote(parts[6])))
            if pod is None:
                return self._status(writer, 404, "pod not found")
            if method == "GET":
                return self._json(writer, 200, pod)
            if method == "DELETE":
                uid = (body or {}).get("preconditions", {}).get("uid")
                if uid is not None and uid != pod["metadata"]["uid"]:
                    return self._status(writer, 409, "Precondition failed: UID")
                del self.pods[unquote(parts[4]), unquote(parts[6])]
                return self._json(writer, 200, pod)
        return self._status(writer, 404, f"{method} {path} not found")

    def _json(self, writer: Any, code: int, document: Any) -> None:
        body = json.dumps(document).encode()
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (code, len(body), body))  # fmt: skip

    def _status(self, writer: Any, code: int, message: str) -> None:
        body = json.dumps({"kind": "Status", "code": code, "message": message}).encode()
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (code, len(body), body))

    async def _watch(self, writer: Any) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._watches.append(queue)
        self.watch_opened.set()
        try:
            while (event := await queue.get()) is not None:
                line = json.dumps(event).encode() + b"\n"
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        finally:
            self._watches.remove(queue)
