"""``FaultyUpstream``: a real HTTP server on 127.0.0.1 that misbehaves on demand.

For tests of anything that calls another service (and for demos of what the
resilience pipeline does). It listens on a real loopback socket, answers every
path (or your routes), and injects, as its knobs say:

* latency (fixed plus seeded jitter);
* error statuses: a script of statuses consumed one per request, every N-th
  request, or a seeded random fraction; with ``Retry-After`` if asked;
* connection resets (a TCP RST, no answer), every N-th or a seeded fraction;
* slow bodies: headers at once, the body dribbled out over a while;
* a full outage: the listener closes and connections are refused until
  :meth:`FaultyUpstream.recover`.

It counts what reaches it (``hits``, ``hits_by_path``, ``in_flight``,
``max_in_flight``) and records each request's method, path, headers and body,
so a test can check what a client sent (its deadline header, request id,
``traceparent``)::

    async with FaultyUpstream(error_every=2, retry_after=1) as up:
        ...                                   # every second request answers 503
        assert up.hits == 4
        assert up.received[-1].headers["X-Request-ID"] == rid
        await up.outage()                     # connection refused from now on
        await up.recover()                    # same port, answering again

Everything random is drawn from one ``random.Random(seed)``: the same requests in
the same order meet the same faults.
"""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from chassis.discovery.base import Instance

__all__ = ["FaultyUpstream", "ReceivedRequest"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SLOW_BODY_CHUNKS = 10
_KNOBS = {
    "latency_seconds": 0.0,
    "latency_jitter_seconds": 0.0,
    "status": 200,
    "body": None,
    "error_status": 503,
    "error_every": 0,
    "error_rate": 0.0,
    "retry_after": None,
    "reset_every": 0,
    "reset_rate": 0.0,
    "slow_body_seconds": 0.0,
}


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the upstream received it."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    body: bytes
    at: float
    """When it arrived (:func:`time.monotonic`)."""


class FaultyUpstream:
    """An aiohttp server on a loopback port with knobs for latency, errors, resets and outages.

    Every knob is an attribute that can be changed at any time (or several at once
    with :meth:`configure`).

    Args:
        name: names the upstream in its default answers and in :meth:`instance`.
        host: the loopback address to listen on.
        port: the port; 0 picks a free one (kept across an outage).
        seed: seeds every random choice.
        routes: your own routes, answered (with the faults) before the catch-all.
        max_recorded: how many received requests are kept (oldest dropped first).
        latency_seconds: delay before answering.
        latency_jitter_seconds: up to this much more, drawn per request.
        status: the status of normal answers.
        body: the body of normal answers; by default JSON naming the path and hit.
        error_status: the status of injected errors.
        error_every: every N-th request answers ``error_status`` (0: never).
        error_rate: this fraction of requests answers ``error_status``.
        retry_after: ``Retry-After`` sent with injected errors (seconds or a date).
        reset_every: every N-th request gets its connection reset (0: never).
        reset_rate: this fraction of requests gets its connection reset.
        slow_body_seconds: normal answers send their body over this long.
    """

    def __init__(
        self,
        *,
        name: str = "upstream",
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        routes: Iterable[web.AbstractRouteDef] = (),
        max_recorded: int = 10_000,
        **knobs: Any,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._routes = list(routes)
        self._random = random.Random(seed)
        self.latency_seconds: float = 0.0
        self.latency_jitter_seconds: float = 0.0
        self.status: int = 200
        self.body: bytes | None = None
        self.error_status: int = 503
        self.error_every: int = 0
        self.error_rate: float = 0.0
        self.retry_after: float | str | None = None
        self.reset_every: int = 0
        self.reset_rate: float = 0.0
        self.slow_body_seconds: float = 0.0
        self.statuses: collections.deque[int] = collections.deque()
        """Statuses to answer, one per request, before any other fault applies."""
        self.configure(**knobs)
        self.hits = 0
        self.hits_by_path: collections.Counter[str] = collections.Counter()
        self.received: collections.deque[ReceivedRequest] = collections.deque(maxlen=max_recorded)
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None
        self._started = False

    def __repr__(self) -> str:
        state = "listening" if self.listening else "down"
        return f"<FaultyUpstream {self.name} {self.host}:{self.port} {state} hits={self.hits}>"

    # -- knobs ---------------------------------------------------------------------
    def configure(self, **knobs: Any) -> FaultyUpstream:
        """Set knobs by name (see the class arguments); returns the upstream.

        Raises:
            TypeError: an unknown knob.
        """
        for key, value in knobs.items():
            if key == "statuses":
                self.script(*value)
                continue
            if key not in _KNOBS:
                raise TypeError(f"FaultyUpstream has no knob {key!r}; knobs: {sorted(_KNOBS)}")
            setattr(self, key, value)
        return self

    def script(self, *statuses: int) -> FaultyUpstream:
        """Answer the next requests with these statuses, in order (then as the knobs say)."""
        self.statuses.extend(statuses)
        return self

    def clear_faults(self) -> FaultyUpstream:
        """Back to a well-behaved upstream: every knob to its default, the script emptied."""
        self.statuses.clear()
        return self.configure(**_KNOBS)

    def reset_counters(self) -> None:
        """Zero the hit counters and forget the received requests."""
        self.hits = 0
        self.hits_by_path.clear()
        self.received.clear()
        self.max_in_flight = self.in_flight

    # -- addresses ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:51234``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def instance(self, service: str | None = None, *, id: str | None = None) -> Instance:
        """This upstream as a discovery :class:`~chassis.discovery.Instance`."""
        service = service or self.name
        return Instance(
            service=service,
            id=id or f"{service}-{self.port}",
            address=self.host,
            port=self.port,
        )

    @property
    def listening(self) -> bool:
        """Whether the listener is open (started and not in an outage)."""
        return self._runner is not None

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> FaultyUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start listening (picks the port if it was 0)."""
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._faults])
        app.router.add_routes(self._routes)
        app.router.add_route("*", "/{tail:.*}", self._answer)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        server = site._server
        sockets: list[socket.socket] = list(getattr(server, "sockets", None) or [])
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._runner = runner
        self._started = True

    async def outage(self) -> None:
        """Stop listening and drop every connection: calls are refused until :meth:`recover`."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def recover(self) -> None:
        """Listen again on the same port after an :meth:`outage`."""
        if not self._started:
            raise RuntimeError("recover() after outage(); use start() to start")
        await self.start()

    async def aclose(self) -> None:
        """Stop listening; idempotent."""
        await self.outage()

    # -- the faults --------------------------------------------------------------------
    def _hit(self, every: int, rate: float, n: int) -> bool:
        if every > 0 and n % every == 0:
            return True
        return rate > 0 and self._random.random() < rate

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.hits += 1
        n = self.hits
        self.hits_by_path[request.path] += 1
        body = await request.read() if request.body_exists else b""
        self.received.append(
            ReceivedRequest(
                method=request.method,
                path=request.path,
                query_string=request.query_string,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                body=body,
                at=time.monotonic(),
            )
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            delay = self.latency_seconds
            if self.latency_jitter_seconds > 0:
                delay += self._random.uniform(0, self.latency_jitter_seconds)
            if delay > 0:
                await asyncio.sleep(delay)
            if self.statuses:
                return self._error(self.statuses.popleft())
            if self._hit(self.reset_every, self.reset_rate, n):
                self._reset(request)
            if self._hit(self.error_every, self.error_rate, n):
                return self._error(self.error_status)
            response = await handler(request)
            if self.slow_body_seconds > 0 and isinstance(response, web.Response):
                return await self._dribble(request, response)
            return response
        finally:
            self.in_flight -= 1

    def _error(self, status: int) -> web.Response:
        headers = {}
        if self.retry_after is not None and status >= 400:
            value = self.retry_after
            headers["Retry-After"] = str(int(value)) if isinstance(value, int | float) else value
        if status < 400:
            return web.json_response({"upstream": self.name}, status=status)
        return web.json_response(
            {"title": "injected fault", "status": status, "upstream": self.name},
            status=status,
            headers=headers,
            content_type="application/problem+json",
        )

    @staticmethod
    def _reset(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER with a zero timeout: close() sends RST, not FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise web.HTTPInternalServerError(reason="connection reset by FaultyUpstream")

    async def _answer(self, request: web.Request) -> web.Response:
        if self.body is not None:
            return web.Response(body=self.body, status=self.status)
        return web.json_response(
            {
                "upstream": self.name,
                "method": request.method,
                "path": request.path,
                "hit": self.hits,
            },
            status=self.status,
        )

    async def _dribble(self, request: web.Request, response: web.Response) -> web.StreamResponse:
        body = response.body if isinstance(response.body, bytes) else b""
        stream = web.StreamResponse(status=response.status, reason=response.reason)
        stream.headers.update(response.headers)
        stream.content_length = len(body)
        await stream.prepare(request)
        step = max(1, -(-len(body) // _SLOW_BODY_CHUNKS))
        pause = self.slow_body_seconds / _SLOW_BODY_CHUNKS
        for i in range(_SLOW_BODY_CHUNKS):
            await asyncio.sleep(pause)
            chunk = body[i * step : (i + 1) * step]
            if chunk:
                await stream.write(chunk)
        await stream.write_eof()
        return stream
