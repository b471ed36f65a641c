"""Checks before an endpoint runs: body size (every request) and query parameter names.

* ``RequestGate``: a body larger than ``max_upload_mb`` is refused with 413 from its
  ``Content-Length``, before it is read (the HTTP server never delivers more than that length);
  a chunked body, whose size is unknown up front, is refused with 411.
* ``only_declared_query``: on SegLoop's endpoints, a query parameter the endpoint does not
  declare is refused with 400 naming it and the accepted ones (FastAPI would ignore it silently,
  so a misspelt ``tag`` would save a label under the default tag). Parameters in the body
  (``params`` JSON) are checked by the endpoints (:mod:`segloop.server.request_params`).
"""

import json
from typing import Dict, FrozenSet

from fastapi import Request

from segloop.errors import bad_request


def _declared_query(dependant) -> FrozenSet[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _declared_query(sub)
    return frozenset(names)


_DECLARED: Dict[int, FrozenSet[str]] = {}


def only_declared_query(request: Request) -> None:
    """Router dependency: 400 for a query parameter the matched endpoint does not declare."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    declared = _DECLARED.get(id(route))
    if declared is None:  # routes live as long as the server: worked out once per route
        declared = _DECLARED[id(route)] = _declared_query(route.dependant) - {"token"}  # upstream's auth-off placeholder
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        accepted = ", ".join(sorted(declared)) or "none"
        raise bad_request(f"unknown query parameter(s) {unknown} for {request.method} {request.url.path}; accepted: {accepted}")


class RequestGate:
    """Outermost ASGI middleware: refuses over-size bodies before anything reads them."""

    def __init__(self, inner, max_body_bytes: int):
        self.inner = inner
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        limit_mb = self.max_body_bytes / 2**20
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _refuse(send, 413, f"request body of {length.decode('latin-1')} bytes is over this server's limit of {limit_mb:.0f} MiB (--conf max_upload_mb)")
        if length is None and b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            return await _refuse(send, 411, "send the body with a Content-Length (chunked uploads are not accepted)")
        await self.inner(scope, receive, send)


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
