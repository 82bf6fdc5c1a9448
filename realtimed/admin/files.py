"""
The admin page's files as HTTP answers: which files there are, and the
headers each is served with.

The page is a fixed set of files shipped in the package under ``static/``.
They are read once, into a table keyed by their path relative to that
folder; a request names a key or gets a 404.  Nothing from a request is ever
joined to a filesystem path, so no spelling of ``..`` reaches outside the
folder, and folders are never listed.

Headers:

- ``Content-Type`` from the file's extension (UTF-8 for text);
- ``ETag``: a digest of the content, so a browser revalidates cheaply;
- ``Cache-Control``: the vendored libraries live in folders named by their
  version (``vendor/uplot-1.6.32/``), so they may be cached for good;
  everything else changes with realtimed and is revalidated on each use;
- `SECURITY_HEADERS` on every answer: a strict Content-Security-Policy (no
  inline script or style, scripts from this origin only, no framing, no
  form submissions: the API key is never sent anywhere but in an
  ``Authorization`` header or the Socket.IO auth payload), ``nosniff``, and
  no ``Referer``.

Pure code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Final

from attrs import frozen

#: The page's entry point, served at the page's root.
INDEX: Final = "index.html"

#: Where the vendored libraries live, each in a folder named by its version.
VENDOR: Final = "vendor/"

CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

#: Sent with every answer under ``/admin/``, 404s included.
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

CONTENT_TYPES: Final[Mapping[str, str]] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}

#: For files whose content changes with realtimed: use, but ask first.
REVALIDATE: Final = "no-cache"
#: For the vendored libraries, whose folder names their version.
FOREVER: Final = "public, max-age=31536000, immutable"


@frozen
class StaticFile:
    """
    One file of the page, ready to serve.
    """

    body: bytes
    content_type: str
    etag: str
    cache_control: str


def content_type(path: str) -> str | None:
    """
    The ``Content-Type`` of the file at C{path}, or C{None} for a kind of
    file the page does not serve.
    """
    name = path.rsplit("/", 1)[-1]
    if name.startswith("."):
        return None
    dot = name.rfind(".")
    extension = name[dot:].lower() if dot > 0 else ""
    return CONTENT_TYPES.get(extension)


def static_file(path: str, body: bytes) -> StaticFile | None:
    """
    C{body}, the content of the file at C{path}, with its headers; C{None}
    when it is of a kind the page does not serve.
    """
    kind = content_type(path)
    if kind is None:
        return None
    digest = hashlib.sha256(body).hexdigest()[:32]
    return StaticFile(
        body=body,
        content_type=kind,
        etag=f'"{digest}"',
        cache_control=FOREVER if path.startswith(VENDOR) else REVALIDATE,
    )


def page_files(root: Traversable | None = None) -> dict[str, StaticFile]:
    """
    Every file under C{root} (by default the package's ``static/``), keyed
    by its path relative to it, with ``/`` between folders.  Hidden files
    and files of unknown kinds are left out.
    """
    if root is None:
        root = files(__package__ or "realtimed.admin") / "static"
    table = {}
    for path, entry in _walk(root, ""):
        served = static_file(path, entry.read_bytes())
        if served is not None:
            table[path] = served
    return table


def _walk(folder: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        else:
            yield f"{prefix}{entry.name}", entry


def lookup(table: Mapping[str, StaticFile], segments: Sequence[bytes]) -> StaticFile | None:
    """
    The file a request names by the C{segments} of its path below the page
    (``[b""]`` for the page's root), or C{None}.
    """
    if segments == [b""]:
        return table.get(INDEX)
    try:
        path = "/".join(segment.decode("utf-8") for segment in segments)
    except UnicodeDecodeError:
        return None
    return table.get(path)


def etag_matches(etag: str, if_none_match: str | None) -> bool:
    """
    Whether an ``If-None-Match`` header value names C{etag} (weakly, as
    RFC 9110 asks for this header), or is ``*``.
    """
    if if_none_match is None:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
