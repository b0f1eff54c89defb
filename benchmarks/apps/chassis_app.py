"""The measured service: a chassis :class:`~chassis.Service` answering ``GET /hello``.

Everything the chassis installs by default is on: the request pipeline (request id,
problem JSON, JSON access log), probes, and whichever of metrics and tracing the
installed chassis provides. ``benchmarks/http_bench.py`` configures it through
``CHASSIS_*`` environment variables and runs it with::

    python -m chassis run benchmarks/apps/chassis_app.py:service --host 127.0.0.1 --port N
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web

from chassis import Service

# ``chassis run`` puts this directory on sys.path before importing the file; be explicit anyway.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from payload import PAYLOAD

service = Service("bench", version="1.0.0")


@service.get("/hello")
async def hello(request: web.Request) -> web.Response:
    """The same small JSON document the bare app returns."""
    return web.json_response(PAYLOAD)
