"""The daemon's HTTP server as clients and attackers use it, over real sockets: keep-alive, many clients at once,
idle and slow connections, oversized headers, the connection limit, methods other than GET and HEAD."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditor.cycle import Auditor
from auditor.daemon import Daemon
from auditor.settings import load_settings
from auditor.state import Store
from tests.daemon.support import example_org, write_config


@pytest.fixture
def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A daemon after one cycle, its HTTP server listening (`http` limits from an indirect parameter of `served`)."""
    example_org(tmp_path)
    settings = load_settings(write_config(tmp_path / "config.yaml", http=getattr(request, "param", {})))
    store = Store(settings.state_path)
    auditor = Auditor(settings, store)
    auditor.run_cycle()
    daemon = Daemon(settings, auditor)
    daemon.scheduler.start(paused=True)
    try:
        daemon.start_http()
        yield daemon
    finally:
        daemon.scheduler.shutdown(wait=False)
        assert daemon.server is not None
        daemon.server.shutdown()
        store.close()


@pytest.fixture
def served(daemon: Daemon) -> tuple[str, int]:
    assert daemon.address is not None
    return daemon.address


def closed_by_server(sock: socket.socket, timeout: float = 60) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not within `timeout`)."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:  # closed with our unread bytes still queued: the kernel resets instead
        pass
    return out


def test_one_connection_serves_many_requests(served: tuple[str, int]) -> None:
    conn = http.client.HTTPConnection(*served, timeout=30)
    for i in range(60):
        path = ("/healthz", "/metrics", "/findings.json", "/report", "/readyz")[i % 5]
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() and not resp.will_close
    conn.request("HEAD", "/report")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) > 0 and resp.read() == b""
    conn.close()


def test_two_hundred_clients_at_once_get_answers(served: tuple[str, int]) -> None:
    failures: list[str] = []
    answered = []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(*served, timeout=60)
        try:
            for j in range(5):
                path = ("/healthz", "/metrics", "/findings.json?severity=high", "/report", "/readyz")[(i + j) % 5]
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                (answered if resp.status == 200 else failures).append(f"{path}: {resp.status}")
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and len(answered) == 1000


@pytest.mark.parametrize("daemon", [{"header_timeout_seconds": 1, "workers": 1}], indirect=True)
def test_slow_and_silent_connections_are_dropped_and_hold_no_worker(served: tuple[str, int]) -> None:
    silent = [socket.create_connection(served) for _ in range(50)]  # never send a byte
    slow = socket.create_connection(served)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and the rest of the headers never comes
    # Meanwhile everyone else is served: idle connections hold no thread.
    conn = http.client.HTTPConnection(*served, timeout=30)
    conn.request("GET", "/metrics")
    assert conn.getresponse().status == 200
    conn.close()
    assert closed_by_server(slow) == b""
    for s in silent:
        assert closed_by_server(s) == b""
        s.close()
    slow.close()


def test_oversized_headers_are_refused(served: tuple[str, int]) -> None:
    with socket.create_connection(served) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(100):
                s.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already answered and closed
        reply = closed_by_server(s)
    assert reply == b"" or reply.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400"))


@pytest.mark.parametrize("daemon", [{"max_connections": 16, "header_timeout_seconds": 120}], indirect=True)
def test_past_the_connection_limit_clients_get_503_at_once(served: tuple[str, int]) -> None:
    idle = [socket.create_connection(served) for _ in range(20)]
    try:
        conn = http.client.HTTPConnection(*served, timeout=30)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 503
        conn.close()
    finally:
        for s in idle:
            s.close()


def test_other_methods_are_refused(served: tuple[str, int]) -> None:
    conn = http.client.HTTPConnection(*served, timeout=30)
    conn.request("POST", "/report", body=b"x")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD"
    conn.close()


def test_metrics_show_a_new_cycle_at_once(daemon: Daemon) -> None:
    assert daemon.address is not None

    def cycles() -> str:
        conn = http.client.HTTPConnection(*daemon.address, timeout=30)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
        conn.close()
        return next(line for line in body.splitlines() if line.startswith('auditor_cycles_total{outcome="success"}'))

    assert cycles().endswith(" 1.0") and cycles().endswith(" 1.0")  # the second one from the cache
    daemon.auditor.run_cycle()
    assert cycles().endswith(" 2.0")  # a published cycle is never hidden behind the cache
