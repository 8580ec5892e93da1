"""The daemon's HTTP server: uvicorn (httptools) on its own thread, serving a small ASGI adapter over `respond`.

What the server guarantees, whatever the clients do:
- keep-alive (HTTP/1.1), closed after `keep_alive_seconds` idle, so a scraper reuses its connection and an idle
  client holds no thread (connections are served by one event loop; none holds a thread);
- a real listen backlog (`backlog`), so a burst of new connections waits in the kernel instead of being dropped;
- a header deadline: a request whose headers are not complete `header_timeout_seconds` after its first byte (or
  after the connection opened) is dropped, and so is one whose headers grow past `MAX_HEADER_BYTES` (slowloris);
- bounded work: at most `max_connections` connections and requests at once (more get 503 at once), and the routes
  that do real work run on `workers` threads, so the event loop answers the probes while /metrics is encoded.

`respond(method, target, headers)` is the application: a plain function from the request to a `Response`. The
probes (`inline_paths`) run on the event loop itself: they only read a few fields.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from auditor.errors import AuditorError
from auditor.logs import get_logger

MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[str, str, Mapping[str, str]], Response]
# A POST route: (target, headers, body, client host) -> Response. Bodies are read up to MAX_BODY_BYTES.
PostHandler = Callable[[str, Mapping[str, str], bytes, str], Response]
MAX_BODY_BYTES = 10 * 1024 * 1024  # a Pub/Sub push: at most a 10 MB message, base64 in a JSON envelope


@dataclass(frozen=True)
class Limits:
    """See the module's docstring; `auditor.settings.Http` carries the configured values."""

    backlog: int = 1024
    max_connections: int = 1000
    workers: int = 4
    keep_alive_seconds: float = 15.0
    header_timeout_seconds: float = 10.0
    shutdown_seconds: float = 5.0


class _Protocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a deadline and a size limit on each request's headers."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()  # a connection that never sends a byte is dropped too

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is not None:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._disarm()
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
                                     b"connection: close\r\n\r\n")
                self.transport.close()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # the next request on a kept-alive connection: its headers get the same deadline

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


CLIENT_HEADER = ":client"


class _App:
    """The ASGI adapter: request line and headers in, one `Response` out (HEAD gets the headers only)."""

    def __init__(self, handler: Handler, inline_paths: frozenset[str], pool: ThreadPoolExecutor,
                 post: Mapping[str, PostHandler] | None = None) -> None:
        self.handler = handler
        self.inline_paths = inline_paths
        self.pool = pool
        self.post = dict(post or {})
        self.log = get_logger("auditor.http")

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":  # no lifespan, no websockets
            return
        method: str = scope["method"]
        target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # The peer's address, under a name no HTTP header can have (the handler decides who may read what).
        headers[CLIENT_HEADER] = str(scope["client"][0]) if scope.get("client") else ""
        try:
            post = self.post.get(scope["path"].rstrip("/")) if method == "POST" else None
            if post is not None:
                body = await _read_body(receive)
                client = (scope.get("client") or ("", 0))[0]
                if body is None:
                    resp = Response(413, "text/plain", b"request body too large\n")
                else:
                    loop = asyncio.get_running_loop()
                    resp = await loop.run_in_executor(self.pool, post, target, headers, body, client)
            elif method not in ("GET", "HEAD"):
                resp = Response(405, "text/plain", b"method not allowed\n", {"Allow": "GET, HEAD"})
            elif scope["path"].rstrip("/") in self.inline_paths:
                resp = self.handler(method, target, headers)
            else:
                loop = asyncio.get_running_loop()
                resp = await loop.run_in_executor(self.pool, self.handler, method, target, headers)
        except Exception as exc:  # a bug answers 500 and is logged, never kills the server
            self.log.exception("request_error", path=scope["path"], error=f"{type(exc).__name__}: {exc}")
            resp = Response(500, "text/plain", b"internal error\n")
        out = [(b"content-type", resp.content_type.encode()), (b"content-length", str(len(resp.body)).encode())]
        out += [(k.lower().encode(), v.encode()) for k, v in resp.headers.items()]
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else resp.body})


async def _read_body(receive: Callable[..., Any]) -> bytes | None:
    """The request body, or None past MAX_BODY_BYTES."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message.get("type") != "http.request":
            return b"".join(parts)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


class HttpServer:
    """Listens at once (a port in use fails here, in the caller's thread); serves from a thread until `shutdown`."""

    def __init__(self, host: str, port: int, handler: Handler, limits: Limits = Limits(),
                 inline_paths: frozenset[str] = frozenset(), post: Mapping[str, PostHandler] | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(limits.backlog)
        except OSError as exc:
            sock.close()
            raise AuditorError(f"{exc.strerror or exc}") from None
        sock.setblocking(False)
        self.socket = sock
        self.server_address: tuple[str, int] = sock.getsockname()[:2]
        self.pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="http")
        protocol = type("Protocol", (_Protocol,), {"header_timeout": limits.header_timeout_seconds})
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.WARNING)  # our own log lines say what matters
        config = uvicorn.Config(
            _App(handler, inline_paths, self.pool, post),
            http=protocol,  # uvicorn accepts a protocol class as well as a name
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=True,
            backlog=limits.backlog,
            limit_concurrency=limits.max_connections,
            timeout_keep_alive=max(1, round(limits.keep_alive_seconds)),
            timeout_graceful_shutdown=max(1, round(limits.shutdown_seconds)),
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]}, name="http",
                                        daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop accepting, let the requests in flight finish (a few seconds at most), and return."""
        if self._closed:
            return
        self._closed = True
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.socket.close()

    def server_close(self) -> None:
        """For callers written against socketserver: `shutdown` already closed everything."""
        self.shutdown()
