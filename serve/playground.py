"""The playground page at `/`: a form that submits a job, follows its progress and plays its samples.

Static files from serve/playground_static (no build step, no CDN), served with a Content-Security-Policy that
allows this origin's scripts, styles and API calls only, and `blob:` pictures and sounds: the page fetches a job's
files with the API key in the Authorization header and shows them from blob URLs, so the key never appears in a
URL. The page itself holds no data and is open; everything it does goes through the API with the key.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "playground_static"
ASSETS = {"index.html": "text/html; charset=utf-8", "playground.js": "text/javascript", "playground.css": "text/css"}
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class UnknownAsset(LookupError):
    """404: not one of the page's files."""


def asset(name: str) -> tuple[bytes, str]:
    """One of the page's files and its media type; nothing else (the name is looked up, never joined to a path)."""
    if name not in ASSETS:
        raise UnknownAsset(f"the playground has no file {name[:100]!r}")
    return (STATIC / name).read_bytes(), ASSETS[name]
