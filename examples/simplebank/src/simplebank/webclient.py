"""webclient: the browser client of SimpleBank, served by the gateway.

Three static files in ``simplebank/web/`` (package data): ``index.html``, ``app.css``
and ``app.js``, plain HTML, CSS and JavaScript with no build step and no framework. The
page logs a customer in or signs one up, shows balances, portfolio, orders and
notifications, takes deposits and orders, and follows an order until ``FILLED`` or
``FAILED`` with the polling pattern of the design (the order's, then the portfolio's
``version``). It uses only the gateway's public REST API with the bearer token, which it
keeps in the tab's ``sessionStorage``.

The gateway answers ``GET /`` with the page when the client prefers HTML (a browser)
and with the JSON list of routes otherwise; the page's files are at ``/web/{name}``.
A strict Content-Security-Policy allows only the page's own files and the same origin.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from chassis import Service

__all__ = ["WebClient", "add_web_client"]

_TYPES = {
    "index.html": "text/html",
    "app.css": "text/css",
    "app.js": "text/javascript",
    "icon.svg": "image/svg+xml",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class WebClient:
    """The web client's files, read once from the package, and the routes serving them."""

    def __init__(self) -> None:
        folder = resources.files(__package__) / "web"
        self.files = {name: (folder / name).read_bytes() for name in _TYPES}

    def wanted(self, request: web.Request) -> bool:
        """True when the client asks for HTML (a browser), not JSON (an API client)."""
        return "text/html" in request.headers.get("Accept", "")

    def response(self, name: str = "index.html") -> web.Response:
        """One file of the client, with its content type and security headers."""
        if name not in self.files:
            raise web.HTTPNotFound(text="no such file")
        return web.Response(
            body=self.files[name], content_type=_TYPES[name], charset="utf-8", headers=_HEADERS
        )

    def setup(self, app: web.Application) -> None:
        """Add ``GET /web/{name}``: the client's files (the page itself is ``GET /``)."""

        async def asset(request: web.Request) -> web.Response:
            return self.response(request.match_info["name"])

        app.router.add_get("/web/{name}", asset)


def add_web_client(service: Service) -> WebClient:
    """Serve the web client's files from ``service`` (its ``GET /`` answers with the page)."""
    client = WebClient()
    service.install(client)
    return client
