"""The service against hostile clients, on a real uvicorn server bound to 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import random_photo
from imagefiles import thin_png
from toy_detector import saved_toy

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from diffsleuth.detectors import load_detector  # noqa: E402
from diffsleuth.server.app import create_app  # noqa: E402
from diffsleuth.server.limits import ServiceLimits, uvicorn_config  # noqa: E402


def _png(seed: int, size=(24, 20)) -> bytes:
    buffer = io.BytesIO()
    random_photo(seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def serving(app, limits: ServiceLimits, receive_buffer: int | None = None):
    """Run ``app`` with uvicorn in a thread; yield its base URL and port.

    ``receive_buffer``: the size of each connection's kernel receive buffer, to stand for a real
    network, where a large body cannot all sit in the buffers of the loopback interface.
    """
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, limits, log_level="warning"))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if receive_buffer is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    listener.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return load_detector(saved_toy(tmp_path_factory.mktemp("toy") / "toy"))


def _raw(port: int, head: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_declared_huge_body_is_refused_before_reading(toy):
    limits = ServiceLimits(max_request_bytes=1024 * 1024)
    with serving(create_app(toy, limits=limits), limits) as (_, port):
        started = time.monotonic()
        answer = _raw(port, b"POST /v1/scan HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                            b"Content-Length: 2147483648\r\n\r\n")
        assert time.monotonic() - started < 1.0
        assert answer.startswith(b"HTTP/1.1 413")


def test_declared_huge_body_waiting_for_100_continue_is_closed_after_the_answer(toy):
    limits = ServiceLimits(max_request_bytes=1024 * 1024)
    with serving(create_app(toy, limits=limits), limits) as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /v1/scan HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Expect: 100-continue\r\nContent-Length: 2147483648\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):  # no lingering: the client was never asked for its body
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413") and b"over the limit" in answer


def test_an_answer_given_mid_body_is_read_by_http_client(toy):
    """A file over the limit is refused mid-body; http.client, which sends all before reading, gets the 413."""
    limits = ServiceLimits(max_file_bytes=100_000)
    body = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n\r\n"
            + b"\0" * (8 * 1024 * 1024) + b"\r\n--b--\r\n")
    with serving(create_app(toy, limits=limits), limits, receive_buffer=64 * 1024) as (_, port):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/v1/scan", body=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
        answer = connection.getresponse()
        assert answer.status == 413 and b"larger than 100000 bytes" in answer.read()
        assert answer.getheader("connection") == "close"
        connection.close()


def test_chunked_body_is_cut_at_the_limit(toy):
    limits = ServiceLimits(max_request_bytes=64 * 1024)

    def body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(64):  # 4 MiB, never finished
            yield b"\0" * 65536

    with serving(create_app(toy, limits=limits), limits) as (url, _):
        response = httpx.post(f"{url}/v1/scan", content=body(),
                              headers={"content-type": "multipart/form-data; boundary=b"}, timeout=30)
        assert response.status_code == 413 and "over the limit" in response.json()["detail"]


def test_incomplete_request_head_is_closed_after_the_header_timeout(toy):
    limits = ServiceLimits(header_timeout=0.5)
    with serving(create_app(toy, limits=limits), limits) as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
            started = time.monotonic()
            assert sock.recv(1024) == b""  # closed by the server, not by our 10 s timeout
            assert time.monotonic() - started < 8


def test_health_answers_fast_under_forty_concurrent_uploads(toy):
    model = toy
    predict = model.predict

    def slow_predict(images, batch_size=32):
        time.sleep(0.05)  # a detector slower than the toy, so scans overlap
        return predict(images, batch_size=batch_size)

    model.predict = slow_predict
    limits = ServiceLimits(max_concurrent=2, max_queue=40, max_client_scans=40)
    files = [("files", (f"{i}.png", _png(i), "image/png")) for i in range(4)]

    async def clients(url: str) -> tuple[list[float], list[int]]:
        """40 uploads at once and a /health poller, all on one event loop (one client thread)."""
        health_times: list[float] = []
        done, polling = asyncio.Event(), asyncio.Event()

        async def poll_health() -> None:
            async with httpx.AsyncClient(timeout=10) as client:
                await client.get(f"{url}/health")  # connect before the burst: measure answers, not set-up
                polling.set()
                while not done.is_set():
                    started = time.monotonic()
                    assert (await client.get(f"{url}/health")).status_code == 200
                    health_times.append(time.monotonic() - started)
                    await asyncio.sleep(0.02)

        async def upload(client: httpx.AsyncClient) -> int:
            response = await client.post(f"{url}/v1/scan", files=files)
            if response.status_code == 200:
                assert [r["path"] for r in response.json()] == [f"{i}.png" for i in range(4)]
            else:
                assert response.headers.get("retry-after")
            return response.status_code

        poller = asyncio.create_task(poll_health())
        await polling.wait()
        limits_ = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(timeout=120, limits=limits_) as client:
            statuses = await asyncio.gather(*(upload(client) for _ in range(40)))
        done.set()
        await poller
        return health_times, list(statuses)

    try:
        with serving(create_app(model, limits=limits), limits) as (url, _):
            health_times, statuses = asyncio.run(clients(url))
    finally:
        model.predict = predict
    assert len(statuses) == 40 and set(statuses) <= {200, 503} and statuses.count(200) >= 2
    assert len(health_times) >= 5 and max(health_times) < 1.0


def test_full_queue_answers_503_with_retry_after(toy):
    model = toy
    predict, entered, release = model.predict, threading.Event(), threading.Event()

    def blocked_predict(images, batch_size=32):
        entered.set()
        release.wait(30)
        return predict(images, batch_size=batch_size)

    model.predict = blocked_predict
    limits = ServiceLimits(max_concurrent=1, max_uploads=1, max_queue=0, retry_after=7)
    files = [("files", ("a.png", _png(1), "image/png"))]
    try:
        with serving(create_app(model, limits=limits), limits) as (url, _):
            with ThreadPoolExecutor(max_workers=1) as pool:
                first = pool.submit(httpx.post, f"{url}/v1/scan", files=files, timeout=60)
                assert entered.wait(30)
                second = httpx.post(f"{url}/v1/scan", files=files, timeout=60)
                release.set()
                assert first.result().status_code == 200
            assert second.status_code == 503 and second.headers["retry-after"] == "7"
    finally:
        release.set()
        model.predict = predict


def test_thin_upload_is_an_error_row_and_an_oversized_file_is_413(toy):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(toy))
    files = [("files", ("thin.png", thin_png(2, 30_000_000), "image/png")),
             ("files", ("ok.png", _png(1), "image/png"))]
    response = client.post("/v1/scan", files=files)
    assert response.status_code == 200
    thin, ok = response.json()
    assert thin["score"] is None and "aspect ratio over 50:1" in thin["error"] and "2 x 30000000" in thin["error"]
    assert ok["error"] is None and 0 <= ok["score"] <= 1
    small = TestClient(create_app(toy, limits=ServiceLimits(max_file_bytes=150_000)))
    assert small.post("/v1/scan", files=files).status_code == 413


def _from(address: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A connection to the server from another loopback address: another client, as the server sees it."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _drip(sock: socket.socket, rounds: int = 100) -> bytes:
    """Send a 1000-byte upload one byte at a time until the server answers; return the answer's head."""
    body = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
    body += b"\0" * (1000 - len(body))
    sock.sendall(b"POST /v1/scan HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 1000\r\n\r\n")
    for byte in body[:rounds]:
        if select.select([sock], [], [], 0.2)[0]:
            break
        sock.sendall(bytes([byte]))
    return sock.recv(4096)


def test_slow_bodies_are_cut_off_and_never_hold_up_scoring(toy):
    limits = ServiceLimits(max_concurrent=1, max_uploads=3, max_client_scans=2, body_timeout=6, retry_after=4)
    files = [("files", ("a.png", _png(1), "image/png"))]
    with serving(create_app(toy, limits=limits), limits) as (url, port):
        drippers = [_from("127.0.0.2", port) for _ in range(2)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            answers = [pool.submit(_drip, sock) for sock in drippers]
            time.sleep(1.0)  # both drips admitted and under way
            with _from("127.0.0.2", port) as third:  # a third upload from the dripping client
                refused = _drip(third)
                assert refused.startswith(b"HTTP/1.1 503") and b"retry-after: 4" in refused
            response = httpx.post(f"{url}/v1/scan", files=files, timeout=30)  # another client, meanwhile
            assert response.status_code == 200 and not all(a.done() for a in answers)
            for answer in answers:  # each drip is answered 408 once its body time is up, not left open
                assert answer.result().startswith(b"HTTP/1.1 408")
        for sock in drippers:
            sock.close()


def test_one_client_cannot_take_every_connection(toy):
    limits = ServiceLimits(max_connections=12, max_client_connections=4)
    with serving(create_app(toy, limits=limits), limits) as (url, port):
        idle = [_from("127.0.0.2", port) for _ in range(20)]
        try:
            still_open, deadline = list(idle), time.monotonic() + 20
            while len(still_open) > 4 and time.monotonic() < deadline:
                for sock in select.select(still_open, [], [], 0.2)[0]:
                    assert sock.recv(1) == b""
                    still_open.remove(sock)
            assert len(still_open) == 4  # beyond 4, its connections are closed at once
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # other clients are still served
        finally:
            for sock in idle:
                sock.close()


def test_overlong_multipart_boundary_is_a_clean_400(toy):
    from fastapi.testclient import TestClient

    boundary = "b" * 300
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n").encode()
    body += _png(1) + f"\r\n--{boundary}--\r\n".encode()
    response = TestClient(create_app(toy)).post(
        "/v1/scan", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "boundary" in detail.lower() and "\n" not in detail


def test_serve_on_a_busy_port_is_a_usage_error_naming_the_port():
    from typer.testing import CliRunner

    from diffsleuth.cli.main import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port), "--detector", "no-such-detector"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())  # the console may wrap a long line
    assert message.startswith("error: ") and f"127.0.0.1:{port}" in message and "in use" in message
    assert message.count("error:") == 1 and "Traceback" not in result.output
