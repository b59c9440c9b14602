"""What keeps the service up under hostile or simply too many clients.

* :class:`LimitsMiddleware` (pure ASGI, so it sees a request before anything reads its body)
  refuses a body whose ``Content-Length`` is over ``max_request_bytes`` at once with 413, stops a
  chunked body as soon as it passes the limit (413 too), and admits at most ``max_concurrent``
  scoring requests at a time, with up to ``max_queue`` more waiting (their bodies stay unread in
  the socket, a few KB each); beyond that, or after ``queue_timeout`` seconds of waiting, the
  answer is 503 with ``Retry-After``. ``/health`` and every other path skip the queue.
* :class:`HeaderTimeoutProtocol` closes a connection that has not sent a complete request head
  within ``header_timeout`` seconds (uvicorn only times out idle keep-alive connections), so slow
  clients cannot hold connections open; :func:`uvicorn_config` sets it with the keep-alive
  timeout, the header size limit and the connection limit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_file_bytes", "max_files", "max_concurrent", "max_connections",
                     "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_queue < 0 or self.queue_timeout <= 0 or self.header_timeout <= 0 or self.keep_alive_timeout < 1:
            raise ValueError("max_queue must be >= 0, the timeouts positive")


async def _respond(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = ('{"detail":"' + detail.replace("\\", "\\\\").replace('"', '\\"') + '"}').encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    """Body size limit for every request, admission queue for the scoring paths (see the module)."""

    def __init__(self, app: Callable, limits: ServiceLimits, queued_paths: tuple[str, ...] = ("/v1/scan",)) -> None:
        self.app = app
        self.limits = limits
        self.queued_paths = queued_paths
        self.slots = asyncio.Semaphore(limits.max_concurrent)
        self.waiting = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_request_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _respond(send, 400, "invalid Content-Length")
                return
            if int(declared) > limit:
                await _respond(send, 413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
                return
        if scope["path"] not in self.queued_paths:
            await self._bounded(scope, receive, send)
            return
        if self.waiting >= self.limits.max_queue and self.slots.locked():
            await self._busy(send)
            return
        self.waiting += 1
        try:
            await asyncio.wait_for(self.slots.acquire(), self.limits.queue_timeout)
        except asyncio.TimeoutError:
            await self._busy(send)
            return
        finally:
            self.waiting -= 1
        try:
            await self._bounded(scope, receive, send)
        finally:
            self.slots.release()

    async def _busy(self, send: Send) -> None:
        await _respond(send, 503, "busy: too many scans in progress, retry later",
                       [(b"retry-after", str(self.limits.retry_after).encode())])

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; a body that passes the limit is cut off and the answer replaced by 413."""
        limit = self.limits.max_request_bytes
        state = {"received": 0, "over": False, "started": False}

        async def counted_receive() -> Message:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"]:
            await _respond(send, 413, f"request body is over the limit of {limit} bytes")


def header_timeout_protocol(timeout: float) -> type:
    """uvicorn's h11 protocol, closing connections whose request head is not complete in ``timeout`` s."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self.head_timer = self.loop.call_later(timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_timed_out(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

    return HeaderTimeoutProtocol


def uvicorn_config(app: Any, host: str, port: int, limits: ServiceLimits, **kwargs: Any):
    """A uvicorn ``Config`` with the connection-level limits of ``limits``."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=header_timeout_protocol(limits.header_timeout),
                          timeout_keep_alive=limits.keep_alive_timeout, limit_concurrency=limits.max_connections,
                          h11_max_incomplete_event_size=limits.max_header_bytes, **kwargs)
