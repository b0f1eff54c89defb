"""The baseline: a bare aiohttp application answering ``GET /hello``.

No middleware, no access log, no metrics, no tracing: what aiohttp alone costs.
Run by ``benchmarks/http_bench.py``; on its own::

    python benchmarks/apps/bare_app.py --port 8081
"""

from __future__ import annotations

import argparse

from aiohttp import web
from payload import PAYLOAD


async def hello(request: web.Request) -> web.Response:
    """The same small JSON document the chassis app returns."""
    return web.json_response(PAYLOAD)


def build_app() -> web.Application:
    """The bare application: one route."""
    app = web.Application()
    app.router.add_get("/hello", hello)
    return app


def main() -> None:
    """Serve on 127.0.0.1 until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
