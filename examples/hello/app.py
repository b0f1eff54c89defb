"""The smallest chassis service: ``chassis run examples/hello/app.py:service``."""

from aiohttp import web

from chassis import Service

service = Service("hello", version="1.0.0")


@service.get("/hello")
async def hello(request: web.Request) -> web.Response:
    """Greet whoever asks: ``GET /hello?name=Ada``."""
    name = request.query.get("name", "world")
    return web.json_response({"message": f"hello, {name}"})
