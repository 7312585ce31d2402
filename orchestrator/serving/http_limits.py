"""Limits on what one HTTP client can hold of the model server: a cap on the request head,
deadlines for the head and for the body, a cap on connections, an idle keep-alive limit.

uvicorn on httptools has none of the first three: httptools buffers a header however long
(a 50 MiB one took 11 s of quadratic CPU) and nothing times out a client that sends its
head or body a byte at a time, so a few slow clients hold every connection. h11 caps the
head (``h11_max_incomplete_event_size``) but is the slower parser. The limits are therefore
kept around httptools, in a subclass of uvicorn's protocol (``protocol``):

- the head (request line and headers) is counted as it arrives, and a request whose head
  passes ``max_header_bytes`` is answered 431 and closed before httptools sees the rest;
- a timer armed when a request's first byte arrives (or the connection opens) answers 408
  and closes the connection when the head is not complete after ``header_timeout_s``, or
  the body after ``body_timeout_s`` more;
- uvicorn's own ``limit_concurrency`` (503 beyond ``max_connections``) and
  ``timeout_keep_alive`` (an idle connection closed after ``keepalive_s``) do the rest.

On the hot path this costs a counter per read, and one timer armed and cancelled per
request (a small request arrives in one read; the body deadline is checked only when the
timer fires).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class Limits:
    """What one HTTP client may hold of the server: head size, head and body deadlines,
    connections at once, idle keep-alive."""

    max_header_bytes: int = 64 * 1024
    """The request line and headers together (nginx allows 4 x 8 KiB by default)."""
    header_timeout_s: float = 10.0
    """From a request's first byte (or the connection's opening) to the end of its head."""
    body_timeout_s: float = 30.0
    """From the end of the head to the end of the body."""
    max_connections: int = 1024
    """Connections (or requests in flight) at once; beyond it, 503."""
    keepalive_s: float = 5.0
    """An idle keep-alive connection is closed after this long."""

    def uvicorn(self) -> dict[str, Any]:
        """The keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` for these limits."""
        return {
            "http": protocol(self),
            "limit_concurrency": self.max_connections,
            "timeout_keep_alive": self.keepalive_s,
        }


def protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``limits`` on each connection."""

    class LimitedHttpTools(HttpToolsProtocol):
        _limits = limits
        _in_head = True  # the next bytes belong to a request's head
        _head_seen = 0  # bytes read since that head began
        _body_from = 0.0  # loop time at the end of the head
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(self._limits.header_timeout_s)  # a connection that never sends a byte

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                if self._deadline is None:  # a new request on a kept-alive connection
                    self._arm(self._limits.header_timeout_s)
                self._head_seen += len(data)
                over = self._head_seen - self._limits.max_header_bytes
                if over > 0:
                    # feed what fits: the head may end inside it, the rest being body
                    fits, data = data[: len(data) - over], data[len(data) - over :]
                    if fits:
                        super().data_received(fits)
                    if self.transport.is_closing():
                        return
                    if self._in_head:
                        self._refuse(
                            431, f"request head over {self._limits.max_header_bytes} bytes"
                        )
                        return
            super().data_received(data)

        def on_message_begin(self) -> None:
            # a request pipelined behind the last one in the same read: its head deadline
            # starts now, not at the next read (its bytes in that read go uncounted, so the
            # cap can be passed by at most one read's worth)
            if self._deadline is None:
                self._arm(self._limits.header_timeout_s)
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._body_from = self.loop.time()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            self._in_head, self._head_seen = True, 0
            super().on_message_complete()

        def _arm(self, seconds: float) -> None:
            self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self._in_head:
                self._refuse(
                    408, f"request head not complete in {self._limits.header_timeout_s:g} s"
                )
                return
            left = self._body_from + self._limits.body_timeout_s - self.loop.time()
            if left > 0:  # the head ended in time: the body has its own deadline
                self._arm(left)
                return
            self._refuse(408, f"request body not complete in {self._limits.body_timeout_s:g} s")

        def _refuse(self, status: int, message: str) -> None:
            """Answer ``status`` where that cannot garble a response, and close the
            connection; an application waiting for the body sees a disconnect."""
            self._disarm()
            cycle = self.cycle  # in the head: the previous request's, or None
            if self._in_head:
                answer = cycle is None or cycle.response_complete
            else:
                answer = not cycle.response_started
            if answer:
                body = message.encode()
                reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
                self.transport.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                    % (status, reason[status], len(body), body)
                )
            if not self._in_head and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()  # wake a receive() waiting for the body
            self.transport.close()

    return LimitedHttpTools
