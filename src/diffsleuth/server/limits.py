"""What keeps the service up under hostile or simply too many clients.

* :class:`LimitsMiddleware` (pure ASGI, so it sees a request before anything reads its body)
  refuses a body whose ``Content-Length`` is over ``max_request_bytes`` at once with 413, stops a
  chunked body as soon as it passes the limit (413 too) and one that has not fully arrived
  ``body_timeout`` seconds after its first byte was asked for (408). It admits at most
  ``max_uploads`` scan requests at a time (their bodies are read into memory, then wait for one of
  the app's ``max_concurrent`` scoring threads, so a slow body never holds a scoring thread), with
  up to ``max_queue`` more waiting (their bodies stay unread in the socket) and at most
  ``max_client_scans`` admitted or waiting from one client address; beyond that, or after
  ``queue_timeout`` seconds of waiting, the answer is 503 with ``Retry-After``. ``/health`` and
  every other path skip the queue.
* Every answer sent before its request body has arrived (503, 413, 400, ...) is followed by a
  lingering close, as nginx does: the rest of the body is read and discarded (``max_request_bytes``
  more at most, within ``body_timeout``) before the connection closes. Closing at once
  would make the kernel reset the connection while the client is still sending, and most
  clients (http.client, requests, httpx, curl) then report a reset instead of the answer.
* :func:`limited_protocol` closes a connection that has not sent a complete request head within
  ``header_timeout`` seconds (uvicorn only times out idle keep-alive connections) and closes at
  once a new connection from an address that already has ``max_client_connections`` open, so
  one client cannot take the ``max_connections`` that uvicorn allows in all; :func:`uvicorn_config`
  sets it with the keep-alive timeout, the header size limit and the connection limit.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_DISCONNECT: Message = {"type": "http.disconnect"}
_CLOSE = (b"connection", b"close")


@dataclass(frozen=True)
class ServiceLimits:
    """Limits of ``diffsleuth serve``; every one is an option of that command."""

    max_request_bytes: int = 256 * 1024 * 1024
    max_file_bytes: int = 50 * 1024 * 1024
    max_files: int = 256
    max_concurrent: int = 2
    max_queue: int = 32
    queue_timeout: float = 60.0
    retry_after: int = 5
    header_timeout: float = 10.0
    keep_alive_timeout: int = 5
    max_connections: int = 256
    max_header_bytes: int = 16 * 1024
    max_uploads: int = 4
    max_client_scans: int = 2
    max_client_connections: int = 64
    body_timeout: float = 120.0

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_file_bytes", "max_files", "max_concurrent", "max_connections",
                     "max_header_bytes", "max_uploads", "max_client_scans", "max_client_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if (self.max_queue < 0 or self.queue_timeout <= 0 or self.header_timeout <= 0 or self.body_timeout <= 0
                or self.keep_alive_timeout < 1):
            raise ValueError("max_queue must be >= 0, the timeouts positive")


def _body_declared(headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"content-length", b"0").strip() not in (b"0", b"") or b"transfer-encoding" in headers


class _Exchange:
    """One request seen through the limits: its body, read within ``max_request_bytes`` and
    ``body_timeout``, and its answer, which is never followed by a close while the body is unread."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, limits: ServiceLimits) -> None:
        headers = dict(scope.get("headers") or [])
        self._receive, self._send, self.limits = receive, send, limits
        self.complete = not _body_declared(headers)
        self.expects_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        self.asked = False  # whether the body was ever asked for (a 100 Continue sent to clients waiting for it)
        self.received = 0
        self.deadline: float | None = None
        self.cut: tuple[int, str] | None = None  # (status, detail) once the body was cut off

    async def _next(self) -> Message | None:
        """The next message of the body, or None when ``body_timeout`` has passed since it was first asked for."""
        loop = asyncio.get_running_loop()
        if self.deadline is None:
            self.deadline = loop.time() + self.limits.body_timeout
        self.asked = True
        try:
            message = await asyncio.wait_for(self._receive(), max(0.0, self.deadline - loop.time()))
        except asyncio.TimeoutError:
            return None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        return message

    async def receive(self) -> Message:
        """The app's ``receive``: the body until a limit cuts it off, then a disconnect."""
        if self.cut is not None:
            return _DISCONNECT
        if self.complete:
            return await self._receive()  # waits for the disconnect, as the server's would
        message = await self._next()
        if message is None:
            self.cut = (408, f"request body not received within {self.limits.body_timeout:g} s")
        elif self.received > self.limits.max_request_bytes:
            self.cut = (413, f"request body is over the limit of {self.limits.max_request_bytes} bytes")
        return _DISCONNECT if self.cut is not None else message

    async def app_send(self, message: Message) -> None:
        """The app's ``send``: dropped once the body was cut off (the middleware answers instead)."""
        if self.cut is None:
            await self.send(message)

    async def send(self, message: Message) -> None:
        """Send; an answer given before the body arrived closes its connection, after a lingering close."""
        if self.complete:
            await self._send(message)
        elif message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if _CLOSE not in headers:
                headers.append(_CLOSE)  # never keep reading an unbounded body for a next request
            await self._send({**message, "headers": headers})
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            await self._send({**message, "more_body": True})  # the whole answer is out: clients can read it
            await self._linger()
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await self._send(message)

    async def _linger(self) -> None:
        """Read and discard the rest of the body: ``max_request_bytes`` more at most, within the body timeout."""
        if self.expects_continue and not self.asked:
            return  # the client waits for "100 Continue" before sending: it will send nothing
        budget = self.received + self.limits.max_request_bytes
        while not self.complete and self.received <= budget:
            message = await self._next()
            if message is None or message["type"] != "http.request":
                return


async def _respond(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            _CLOSE, *headers]})
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    """Body limits for every request, admission queue for the scoring paths (see the module)."""

    def __init__(self, app: Callable, limits: ServiceLimits, queued_paths: tuple[str, ...] = ("/v1/scan",)) -> None:
        self.app = app
        self.limits = limits
        self.queued_paths = queued_paths
        self.slots = asyncio.Semaphore(limits.max_uploads)
        self.waiting = 0
        self.per_client: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(scope, receive, send, self.limits)
        limit = self.limits.max_request_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _respond(exchange.send, 400, "invalid Content-Length")
                return
            if int(declared) > limit:
                await _respond(exchange.send, 413,
                               f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
                return
        if scope["path"] not in self.queued_paths:
            await self._bounded(scope, exchange)
            return
        client = (scope.get("client") or ("",))[0]
        if self.per_client.get(client, 0) >= self.limits.max_client_scans:
            await self._busy(exchange, f"busy: {self.limits.max_client_scans} scans from this client in progress")
            return
        if self.waiting >= self.limits.max_queue and self.slots.locked():
            await self._busy(exchange, "busy: too many scans in progress")
            return
        self.per_client[client] = self.per_client.get(client, 0) + 1
        try:
            await self._admitted(scope, exchange)
        finally:
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]

    async def _admitted(self, scope: Scope, exchange: _Exchange) -> None:
        self.waiting += 1
        try:
            await asyncio.wait_for(self.slots.acquire(), self.limits.queue_timeout)
        except asyncio.TimeoutError:
            await self._busy(exchange, "busy: too many scans in progress")
            return
        finally:
            self.waiting -= 1
        try:
            await self._bounded(scope, exchange)
        finally:
            self.slots.release()

    async def _busy(self, exchange: _Exchange, detail: str) -> None:
        await _respond(exchange.send, 503, f"{detail}, retry later",
                       [(b"retry-after", str(self.limits.retry_after).encode())])

    async def _bounded(self, scope: Scope, exchange: _Exchange) -> None:
        """Run the app; a body cut off by a limit replaces its answer with 413 or 408."""
        try:
            await self.app(scope, exchange.receive, exchange.app_send)
        except Exception:
            if exchange.cut is None:
                raise
        if exchange.cut is not None:
            await _respond(exchange.send, *exchange.cut)


def limited_protocol(limits: ServiceLimits) -> type:
    """uvicorn's h11 protocol with the connection limits of ``limits`` (see the module).

    One class per server: it holds that server's count of open connections per client address.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    open_from: dict[str, int] = {}

    class LimitedProtocol(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None
        address: str | None = None  # counted in ``open_from`` while set

        def _arm(self) -> None:
            self._disarm()
            self.head_timer = self.loop.call_later(limits.header_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_timed_out(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = self.client[0] if self.client else None
            if address is not None:
                if open_from.get(address, 0) >= limits.max_client_connections:
                    transport.close()  # before reading anything: one client may not take every connection
                    return
                open_from[address] = open_from.get(address, 0) + 1
                self.address = address
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.address is not None:
                open_from[self.address] -= 1
                if not open_from[self.address]:
                    del open_from[self.address]
                self.address = None
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

    return LimitedProtocol


def uvicorn_config(app: Any, host: str, port: int, limits: ServiceLimits, **kwargs: Any):
    """A uvicorn ``Config`` with the connection-level limits of ``limits``."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=limited_protocol(limits),
                          timeout_keep_alive=limits.keep_alive_timeout, limit_concurrency=limits.max_connections,
                          h11_max_incomplete_event_size=limits.max_header_bytes, **kwargs)
