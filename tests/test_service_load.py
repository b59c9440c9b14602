"""The service under a burst of large uploads: every client reads an answer, /health stays fast.

Forty clients (requests, httpx and plain http.client) post several 3000x2000 JPEGs at once to a
real uvicorn server whose queue is small, so most of them are refused while they are still
sending. A refused client must read its
503 and Retry-After (a lingering close reads the rest of its body first), never a reset.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from toy_detector import saved_toy

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")
httpx = pytest.importorskip("httpx")


CLIENTS = 40
FILES_PER_REQUEST = 4


def _large_jpeg(seed: int, size: tuple[int, int] = (3000, 2000)) -> bytes:
    """A 3000x2000 photo-like JPEG (smooth noise, about 1 MB): large enough to outlast socket buffers."""
    small = (size[0] // 4, size[1] // 4)
    channels = [Image.effect_noise(small, 24 + seed + i).resize(size, Image.Resampling.BILINEAR) for i in range(3)]
    buffer = io.BytesIO()
    Image.merge("RGB", channels).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


_SERVER = """
import socket, sys
sys.path.insert(0, {tests!r})
import toy_detector, uvicorn
from diffsleuth.detectors import load_detector
from diffsleuth.server.app import create_app
from diffsleuth.server.limits import ServiceLimits, uvicorn_config
limits = ServiceLimits(**{limits!r})
app = create_app(load_detector({detector!r}), limits=limits)
server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, limits, log_level="warning"))
server.run(sockets=[socket.socket(fileno={fd})])
"""


@contextlib.contextmanager
def serving_process(detector: Path, limits: dict, receive_buffer: int):
    """Serve in a process of its own, as in use (the clients' threads do not share its interpreter lock);
    yield its port. Each connection gets a ``receive_buffer`` of kernel buffer, as over a real network,
    where a large body cannot all sit in the buffers of the loopback interface."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    code = _SERVER.format(tests=str(Path(__file__).parent), limits=limits, detector=str(detector), fd=listener.fileno())
    server = subprocess.Popen([sys.executable, "-c", code], pass_fds=[listener.fileno()])
    port = listener.getsockname()[1]
    try:
        with requests.Session() as session:  # connections wait in the backlog until the server is up
            assert session.get(f"http://127.0.0.1:{port}/health", timeout=120).status_code == 200
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)
        listener.close()


def _multipart(images: list[bytes]) -> tuple[bytes, str]:
    """The multipart body http.client sends (it has no encoder of its own) and its Content-Type."""
    parts = [b"--b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"%d.jpg\"\r\n"
             b"Content-Type: image/jpeg\r\n\r\n%s\r\n" % (i, data) for i, data in enumerate(images)]
    return b"".join(parts) + b"--b0undary--\r\n", "multipart/form-data; boundary=b0undary"


def test_forty_concurrent_large_uploads_each_get_200_or_503_with_retry_after(tmp_path):
    images = [_large_jpeg(seed) for seed in range(FILES_PER_REQUEST)]
    files = [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    # One scoring thread, two admitted requests and two waiting: the other 36 find the queue full.
    limits = dict(max_concurrent=1, max_uploads=2, max_queue=2, max_client_scans=CLIENTS, retry_after=3)
    detector = saved_toy(tmp_path / "toy")
    start, done = threading.Barrier(CLIENTS + 1), threading.Event()
    health_times: list[float] = []
    body, content_type = _multipart(images)

    def upload(client: int) -> tuple[int, str | None] | Exception:
        """One upload, by requests, httpx or plain http.client in turn (which does not forgive a reset)."""
        start.wait()
        try:
            if client % 3 == 0:
                response = requests.post(f"{url}/v1/scan", files=files, timeout=120)
                status, headers, rows = response.status_code, response.headers, response.content
            elif client % 3 == 1:
                response = httpx.post(f"{url}/v1/scan", files=files, timeout=120)
                status, headers, rows = response.status_code, response.headers, response.content
            else:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                connection.request("POST", "/v1/scan", body=body, headers={"Content-Type": content_type})
                answer = connection.getresponse()
                status, headers, rows = answer.status, answer.headers, answer.read()
                connection.close()
        except (OSError, requests.RequestException, httpx.HTTPError) as exc:  # a reset: what this test is about
            return exc
        if status == 200:
            assert [row["path"] for row in json.loads(rows)] == [f"{i}.jpg" for i in range(FILES_PER_REQUEST)]
        return status, headers.get("retry-after")

    def poll_health() -> None:
        with requests.Session() as session:
            start.wait()
            while not done.is_set():
                began = time.monotonic()
                assert session.get(f"{url}/health", timeout=10).status_code == 200
                health_times.append(time.monotonic() - began)
                time.sleep(0.05)

    with serving_process(detector, limits, receive_buffer=64 * 1024) as port:
        url = f"http://127.0.0.1:{port}"
        with ThreadPoolExecutor(max_workers=CLIENTS + 1) as pool:
            poller = pool.submit(poll_health)
            outcomes = list(pool.map(upload, range(CLIENTS)))
            done.set()
            poller.result()

    failures = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert not failures, f"{len(failures)} of {CLIENTS} clients got no answer: {failures[0]!r}"
    statuses = [status for status, _ in outcomes]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses
    assert all(retry == "3" for status, retry in outcomes if status == 503)
    assert len(health_times) >= 3 and max(health_times) < 1.0  # a behaviour bound: the loop never stalls
