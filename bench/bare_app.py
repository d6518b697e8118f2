"""The reference for bench/tracking.py: a bare ASGI app answering the same GIF, recording nothing."""

from __future__ import annotations

from typing import Any

from mailtrack.tracking.hits import NO_CACHE, PIXEL_GIF

_HEADERS = [(b"content-type", b"image/gif"), (b"content-length", str(len(PIXEL_GIF)).encode())] + [
    (key.lower().encode(), value.encode()) for key, value in NO_CACHE.items()
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every HTTP request with the pixel."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": PIXEL_GIF})
