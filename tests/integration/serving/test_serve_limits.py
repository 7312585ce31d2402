"""What one HTTP client can hold of the model server, over real sockets on loopback against
uvicorn with the server's limits (``orchestrator/http_limits.py``): a huge head is refused
at once, a client that trickles its head or body is cut off at its deadline while others
are answered, connections beyond the cap get 503, idle keep-alive connections are closed."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import torch
import uvicorn

from conftest import free_port
from orchestrator import config
from orchestrator.core import model
from orchestrator.serving import serve
from orchestrator.serving.http_limits import Limits

pytestmark = pytest.mark.slow

LIMITS = Limits(
    max_header_bytes=64 * 1024,
    header_timeout_s=1.0,
    body_timeout_s=1.0,
    max_connections=16,
    keepalive_s=1.0,
)
ROW = b'{"features": [[0.1, 0.2, 0.3, 0.4]]}'


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    yield from _serve(LIMITS)


@pytest.fixture(scope="module")
def patient_port() -> Iterator[int]:
    """A server whose head deadline and keep-alive are far apart (each test says which)."""
    yield from _serve(
        Limits(
            max_header_bytes=64 * 1024,
            header_timeout_s=1.0,
            body_timeout_s=1.0,
            max_connections=16,
            keepalive_s=30.0,
        )
    )


@pytest.fixture(scope="module")
def capped_port() -> Iterator[int]:
    """Connections held idle stay held (a loaded machine may take over a second to open the
    next one): only the connection cap is near."""
    yield from _serve(
        Limits(
            max_header_bytes=64 * 1024,
            header_timeout_s=30.0,
            body_timeout_s=30.0,
            max_connections=16,
            keepalive_s=30.0,
        )
    )


def _serve(limits: Limits) -> Iterator[int]:
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    net = model.WithProbabilities(
        model.build(config.ModelConfig(hidden=[8]), x.mean(0), x.std(0), 3)
    ).eval()
    app = serve.create_app(serve.Served(net, ["a", "b", "c"], 4, "models:/limits/1", "1"))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **limits.uvicorn())
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _predict(port: int) -> int:
    return requests.post(
        f"http://127.0.0.1:{port}/predict",
        data=ROW,
        timeout=5,
        headers={"content-type": "application/json"},
    ).status_code


def test_a_4_mib_header_is_refused_in_under_a_second(port: int) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-big: " + b"a" * (4 << 20) + b"\r\ncontent-length: %d\r\n\r\n" % len(ROW) + ROW
    )
    sock = _connect(port)
    start = time.perf_counter()
    try:
        sock.sendall(head)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before it was all sent
    try:
        answer = _answer(sock)
    except ConnectionResetError:
        answer = b""
    took = time.perf_counter() - start
    assert took < 1.0, took
    assert answer.startswith(b"HTTP/1.1 431 ") or answer == b"", answer[:200]
    assert _predict(port) == 200


def test_a_head_just_under_the_cap_is_answered(port: int) -> None:
    r = requests.post(
        f"http://127.0.0.1:{port}/predict",
        data=ROW,
        timeout=5,
        headers={"content-type": "application/json", "x-pad": "a" * (60 * 1024)},
    )
    assert r.status_code == 200


def _trickle(port: int, first: bytes, drip: bytes) -> tuple[float, bytes]:
    """Send ``first``, then ``drip`` a byte every 0.1 s until the server closes: (seconds
    from the first byte to the close, what it answered)."""
    sock = _connect(port)
    start = time.perf_counter()
    sock.sendall(first)
    sock.settimeout(0.1)
    answer = b""
    for i in range(200):  # at most 20 s
        try:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        except TimeoutError:
            pass
        except ConnectionResetError:
            break
        try:
            sock.send(drip[i % len(drip) : i % len(drip) + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.close()
    return time.perf_counter() - start, answer


@pytest.mark.parametrize("where", ["head", "body"])
def test_a_trickling_client_is_cut_off_while_others_are_answered(port: int, where: str) -> None:
    if where == "head":
        first, drip = b"POST /predict HTTP/1.1\r\n", b"x-slow: 1\r\n"
    else:
        first = (
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100000\r\n\r\n"
        )
        drip = b"[[0,0,0,0]],"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(_trickle, port, first, drip) for _ in range(3)]
        answered = 0
        while not all(f.done() for f in slow):
            assert _predict(port) == 200
            answered += 1
            time.sleep(0.05)
    assert answered >= 3  # others were answered meanwhile (a loaded 2-core machine is slow)
    for f in slow:
        took, answer = f.result()
        assert took < 3 * LIMITS.header_timeout_s, took
        assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    sock = _connect(port)
    start = time.perf_counter()
    assert _answer(sock).startswith(b"HTTP/1.1 408 ")
    assert time.perf_counter() - start < 3 * LIMITS.header_timeout_s


def test_an_idle_kept_alive_connection_is_closed(port: int) -> None:
    sock = _connect(port)
    sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    start = time.perf_counter()
    answer = _answer(sock)  # the answer, then the close once idle
    assert answer.startswith(b"HTTP/1.1 200 ") and b'{"status":"ok"}' in answer
    assert time.perf_counter() - start < 3 * LIMITS.keepalive_s


def test_a_head_pipelined_behind_a_request_has_the_head_deadline(patient_port: int) -> None:
    # the rest of a head that came in the same read as a whole request: not left to the
    # (30 s) keep-alive timer
    sock = _connect(patient_port)
    start = time.perf_counter()
    sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\nGET /health HTTP/1.1\r\nx-slow: 1")
    answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in answer, answer
    assert time.perf_counter() - start < 3 * 1.0


def test_connections_beyond_the_cap_get_503(capped_port: int) -> None:
    port = capped_port
    held = [_connect(port) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.2)
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.time() + 5
    while requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code != 200:
        assert time.time() < deadline
        time.sleep(0.1)
