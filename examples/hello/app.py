"""The smallest chassis service: ``chassis run examples/hello/app.py:service``.

``GET /hello?name=Ada`` greets; ``GET /slow?seconds=2`` answers after a delay, which
makes the graceful drain easy to watch: start a slow request, send SIGTERM, and see
it finish before the process exits.
"""

import asyncio

from aiohttp import web

from chassis import BadRequest, Service

service = Service("hello", version="1.0.0")


@service.get("/hello")
async def hello(request: web.Request) -> web.Response:
    """Greet whoever asks."""
    name = request.query.get("name", "world")
    return web.json_response({"message": f"hello, {name}"})


@service.get("/slow")
async def slow(request: web.Request) -> web.Response:
    """Answer after ``seconds`` (at most 30)."""
    try:
        seconds = float(request.query.get("seconds", "1"))
    except ValueError:
        raise BadRequest("seconds must be a number") from None
    if not 0 <= seconds <= 30:
        raise BadRequest("seconds must be between 0 and 30")
    await asyncio.sleep(seconds)
    return web.json_response({"slept_seconds": seconds})
