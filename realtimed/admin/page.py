"""
``/admin/``: the admin page's files (`realtimed.admin.files`) over HTTP.

``GET`` and ``HEAD`` only (others: 405).  ``/admin`` redirects to
``/admin/``, so that the page's relative links resolve under it.  An
``If-None-Match`` naming the file's ETag is answered 304.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.web.resource import Resource
from twisted.web.server import Request

from realtimed.admin.files import (
    SECURITY_HEADERS,
    StaticFile,
    etag_matches,
    lookup,
    page_files,
)


class AdminPage(Resource):
    """
    The admin page, mounted at ``/admin``.

    @param table: The files to serve, by path; by default the package's.
    """

    isLeaf = True

    def __init__(self, table: Mapping[str, StaticFile] | None = None) -> None:
        super().__init__()
        self._files = dict(page_files() if table is None else table)

    def render(self, request: Request) -> bytes:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name.encode("ascii"), value.encode("ascii"))
        method = bytes(request.method)
        if method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            return _text(request, b"Method not allowed\n")
        segments = list(request.postpath or [])
        if not segments:
            # /admin: the page lives at /admin/.
            request.setResponseCode(301)
            request.setHeader(b"Location", b"admin/")
            return _text(request, b"The admin page is at admin/\n")
        served = lookup(self._files, segments)
        if served is None:
            request.setResponseCode(404)
            return _text(request, b"Not found\n")
        request.setHeader(b"Content-Type", served.content_type.encode("ascii"))
        request.setHeader(b"Cache-Control", served.cache_control.encode("ascii"))
        request.setHeader(b"ETag", served.etag.encode("ascii"))
        if_none_match = request.getHeader(b"if-none-match")
        tags = None if if_none_match is None else if_none_match.decode("latin-1")
        if etag_matches(served.etag, tags):
            request.setResponseCode(304)
            return b""
        return served.body


def _text(request: Request, body: bytes) -> bytes:
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return body
