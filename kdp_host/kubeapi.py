"""kdp-host's one client of the Kubernetes API: its own node's labels, and `call` for the
opt-in pod calls of `heldMissing` (kdp_host.pod_api). Every call is made with the pod's service
account (token and CA from the projected volume, re-read at every connection, since bound
tokens rotate).

The node's labels, only when a resource entry selects nodes by label (kdp_host.node), with
two read-only calls:

- `GET /api/v1/nodes/NAME` for the labels and the resource version;
- `GET /api/v1/nodes?fieldSelector=metadata.name=NAME&watch=1&resourceVersion=V` for changes,
  until the server ends the watch (`timeoutSeconds`), then again from a fresh GET.

Both ask for the metadata only (`as=PartialObjectMetadata`: a node's status, with its image
list, can be hundreds of kilobytes). Any failure (no route, 401/403 from missing RBAC, a
node not found, a 410 Gone watch, a malformed answer) is logged with its reason, shown in
`problem`, and retried with backoff; the labels last read stay in force meanwhile.

Why not a client library: the official `kubernetes` client is synchronous and brings a
dozen packages (urllib3, requests, oauthlib, websocket-client...), `kubernetes_asyncio`
brings aiohttp; this is one object read over HTTP/1.1, which asyncio streams and the
standard `ssl` module do in a page, with every size and time bounded. Time limits use
`asyncio.timeout`, not `wait_for`, which on Python 3.11 can swallow a cancellation that
arrives as the awaited call completes (the host's shutdown would then wait for ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from . import __version__
from .backoff import Backoff
from .files import DaemonThreads, Offload
from .logs import EventLogger

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where Kubernetes mounts the pod's service account token and the cluster CA."""
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
MAX_HEAD_BYTES = 64 * 1024
MAX_OBJECT_BYTES = 4 * 1024 * 1024
"""Largest answer to a GET, and largest watch event, read."""
REQUEST_TIMEOUT = 30.0
"""Connecting, sending, and receiving an answer's head; reading a GET's body."""
WATCH_SECONDS = 300
"""The server ends a watch after this (`timeoutSeconds`); kdp-host then reads again."""
WATCH_IDLE_LIMIT = WATCH_SECONDS + 60.0
"""A watch that sends nothing for this long is dropped (the server should have ended it)."""


class ApiError(Exception):
    """A call that failed; the message is a short reason for logs and /readyz. `status`: the
    HTTP status the server answered with (None: no answer, or not a usable one)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ApiServer:
    """Where the API server is and how to prove who we are."""

    url: str
    """`https://host:port` (`http://` for tests only)."""
    token_file: str | None = None
    ca_file: str | None = None

    @classmethod
    def in_cluster(
        cls, env: Mapping[str, str], account_dir: str = SERVICE_ACCOUNT_DIR
    ) -> ApiServer:
        """The API server as a pod sees it (client-go's in-cluster config). Raises ApiError
        saying what is missing."""
        host = env.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise ApiError("not in a cluster (KUBERNETES_SERVICE_HOST is not set)")
        port = env.get("KUBERNETES_SERVICE_PORT") or "443"
        token = os.path.join(account_dir, "token")
        if not os.path.isfile(token):
            raise ApiError(f"no service account token in {account_dir} (token not mounted)")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", token, os.path.join(account_dir, "ca.crt"))

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the server against the cluster CA (blocking: run it through an offload)."""
        return ssl.create_default_context(cafile=self.ca_file)

    def token(self) -> str | None:
        """The current bearer token (blocking: run it through an offload)."""
        if self.token_file is None:
            return None
        return Path(self.token_file).read_text(encoding="ascii").strip()


@dataclass
class _Response:
    """An HTTP response's status and headers, its body still to read."""

    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


async def _request(
    api: ApiServer,
    target: str,
    offload: Offload,
    method: str = "GET",
    body: bytes | None = None,
    accept: str = METADATA_ONLY,
) -> _Response:
    """Send `method target` (with a JSON `body`) and read the answer's head; the caller
    reads the body and closes."""
    parts = urlsplit(api.url)
    secure = parts.scheme == "https"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ApiError(f"bad API server URL {api.url!r}")
    port = parts.port or (443 if secure else 80)
    try:
        context = await offload.run(api.ssl_context) if secure else None
        token = await offload.run(api.token)
    except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
        raise ApiError(f"cannot read the service account: {exc}") from None
    async with asyncio.timeout(REQUEST_TIMEOUT):
        reader, writer = await asyncio.open_connection(
            parts.hostname,
            port,
            ssl=context,
            server_hostname=parts.hostname if secure else None,
            limit=MAX_HEAD_BYTES,
        )
    try:
        head = [
            f"{method} {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            f"Accept: {accept}",
            f"User-Agent: kdp-host/{__version__}",
            "Connection: close",
        ]
        if token:
            head.append(f"Authorization: Bearer {token}")
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + (body or b""))
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status, headers = await _read_head(reader)
    except BaseException:
        writer.close()
        raise
    return _Response(status, headers, reader, writer)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readline()
    version, _, rest = line.decode("latin-1").partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ApiError("not an HTTP answer")
    headers: dict[str, str] = {}
    size = len(line)
    while True:
        line = await reader.readline()
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise ApiError("answer head too large")
        if line in (b"\r\n", b"\n", b""):
            return int(code), headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def _body_chunks(response: _Response) -> AsyncGenerator[bytes]:
    """The body's bytes as they arrive (chunked, sized, or up to the end)."""
    reader = response.reader
    if "chunked" in response.headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise ApiError("malformed chunked body") from None
            if size == 0:
                return
            if size > MAX_OBJECT_BYTES:
                raise ApiError("chunk too large")
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    length = response.headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > MAX_OBJECT_BYTES:
            raise ApiError("answer too large")
        yield await reader.readexactly(int(length))
        return
    while chunk := await reader.read(65536):
        yield chunk


async def _read_body(response: _Response) -> bytes:
    body = b""
    async for chunk in _body_chunks(response):
        body += chunk
        if len(body) > MAX_OBJECT_BYTES:
            raise ApiError("answer too large")
    return body


async def _lines(response: _Response) -> AsyncIterator[bytes]:
    """A watch's events: one JSON document per line."""
    pending = b""
    async with contextlib.aclosing(_body_chunks(response)) as chunks:
        while True:
            try:
                async with asyncio.timeout(WATCH_IDLE_LIMIT):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > MAX_OBJECT_BYTES:
                raise ApiError("watch event too large")
            for line in lines:
                if line.strip():
                    yield line
    if pending.strip():
        yield pending


def failure(status: int, body: bytes, rbac: str = "get, list, watch nodes") -> ApiError:
    """The reason of a non-200 answer: the Status object's message when there is one; a 403
    names the `rbac` the call needs."""
    message = ""
    with contextlib.suppress(ValueError, AttributeError):
        message = str(json.loads(body).get("message", ""))
    hint = {401: " (token refused)", 403: f" (RBAC: {rbac})"}.get(status, "")
    return ApiError(f"HTTP {status}{hint}: {message[:200]}".rstrip(": "), status)


def _labels_of(item: Any) -> tuple[dict[str, str], str]:
    """(labels, resourceVersion) of a node object or its metadata."""
    metadata = item.get("metadata") if isinstance(item, dict) else None
    if not isinstance(metadata, dict):
        raise ApiError("answer without metadata")
    labels = metadata.get("labels") or {}
    version = metadata.get("resourceVersion") or ""
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ApiError("labels are not a map of strings")
    if not isinstance(version, str):
        raise ApiError("resourceVersion is not a string")
    return labels, version


async def call(
    api: ApiServer,
    method: str,
    target: str,
    offload: Offload,
    body: Any = None,
    accept: str = METADATA_ONLY,
) -> tuple[int, bytes]:
    """One call (`body` sent as JSON): its status and body (read whole, bounded). Raises
    ApiError, OSError, ssl.SSLError or TimeoutError when there is no answer."""
    data = None if body is None else json.dumps(body).encode()
    response = await _request(api, target, offload, method, data, accept)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return response.status, await _read_body(response)
    finally:
        response.close()


@dataclass
class NodeLabelWatch:
    """A node's labels, read and then followed (kdp_host.node.NodeLabelSource)."""

    api: ApiServer
    node: str
    log: EventLogger
    offload: Offload = field(default_factory=DaemonThreads)
    """Reads the token and the CA off the event loop (the host's, in `kdp-host run`)."""
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=60.0))
    watch_seconds: int = WATCH_SECONDS
    problem: str | None = "not read yet"
    """Why the labels are not current now, or None."""

    async def updates(self) -> AsyncIterator[Mapping[str, str]]:
        loop = asyncio.get_running_loop()
        last: dict[str, str] | None = None
        while True:
            try:
                labels, version = await self.get()
                if self.problem is not None:
                    self.log.info("node_labels_read", node=self.node, labels=len(labels))
                self.problem = None
                if labels != last:
                    last = labels
                    yield labels
                started = loop.time()
                async with contextlib.aclosing(self.watch(version)) as changes:
                    async for labels in changes:
                        self.backoff.reset()
                        if labels != last:
                            last = labels
                            yield labels
                if loop.time() - started < 1.0:  # a server that ends watches at once
                    await asyncio.sleep(self.backoff.next_delay())
            except (ApiError, OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
                self.problem = str(exc) or type(exc).__name__
                delay = self.backoff.next_delay()
                self.log.warning(
                    "node_labels_unavailable", node=self.node, reason=self.problem, retry_in=delay
                )
                await asyncio.sleep(delay)

    async def get(self) -> tuple[dict[str, str], str]:
        """The node's labels and resource version now."""
        path = f"/api/v1/nodes/{quote(self.node, safe='')}"
        status, body = await call(self.api, "GET", path, self.offload)
        if status != 200:
            raise failure(status, body)
        return _labels_of(json.loads(body))

    async def watch(self, version: str) -> AsyncGenerator[dict[str, str]]:
        """The labels at every change from `version` on, until the server ends the watch."""
        selector = quote(f"metadata.name={self.node}", safe="")
        target = (
            f"/api/v1/nodes?fieldSelector={selector}&watch=1&allowWatchBookmarks=true"
            f"&resourceVersion={quote(version, safe='')}&timeoutSeconds={self.watch_seconds}"
        )
        response = await _request(self.api, target, self.offload)
        try:
            if response.status != 200:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    body = await _read_body(response)
                raise failure(response.status, body)
            async for line in _lines(response):
                event = json.loads(line)
                kind = event.get("type") if isinstance(event, dict) else None
                item = event.get("object") if isinstance(event, dict) else None
                if kind in ("ADDED", "MODIFIED"):
                    yield _labels_of(item)[0]
                elif kind == "ERROR":
                    code = item.get("code") if isinstance(item, dict) else None
                    if code == 410:  # the version is too old: read afresh
                        return
                    status = code if isinstance(code, int) else 500
                    raise failure(status, json.dumps(item).encode())
                elif kind == "DELETED":
                    raise ApiError("the node object was deleted")
                elif kind != "BOOKMARK":
                    raise ApiError(f"unexpected watch event {str(kind)[:40]!r}")
        finally:
            response.close()
