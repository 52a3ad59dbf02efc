"""Draws docs/examples/castle.png, the picture `make demo` starts a sample from (`--init-image`).

A grayscale castle on a hill against a night sky, 1024×256 (the canvas: 10.24 s of sound), drawn from rectangles,
triangles and a disc so that it is ours to ship. Deterministic: run it again and the PNG is the same bytes.

    .venv/bin/python docs/examples/make_castle.py            # rewrites docs/examples/castle.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 1024, 256


def castle() -> Image.Image:
    """The picture: a sky fading from dark (top) to pale (horizon), a moon, a dark hill and a castle on it."""
    rows = np.linspace(40, 200, HEIGHT, dtype=np.float64)[:, None]
    sky = np.broadcast_to(rows, (HEIGHT, WIDTH)).round().astype(np.uint8)
    picture = Image.fromarray(np.ascontiguousarray(sky))  # uint8 rows × columns: mode "L"
    draw = ImageDraw.Draw(picture)
    draw.ellipse((820, 28, 868, 76), fill=245)  # the moon
    draw.polygon([(0, 256), (0, 215), (260, 190), (520, 180), (780, 192), (1024, 212), (1024, 256)], fill=20)
    # Curtain wall with crenellations between two towers.
    draw.rectangle((400, 130, 640, 185), fill=70)
    for x in range(400, 640, 16):
        draw.rectangle((x, 122, x + 8, 130), fill=70)
    draw.rectangle((470, 155, 570, 185), fill=40)  # gate arch block
    draw.pieslice((470, 135, 570, 175), 180, 360, fill=40)
    for left, top, width in ((360, 80, 50), (630, 90, 50), (495, 60, 50)):  # towers with pointed roofs
        draw.rectangle((left, top, left + width, 185), fill=90)
        draw.polygon([(left - 6, top), (left + width // 2, top - 45), (left + width + 6, top)], fill=120)
        draw.rectangle((left + width // 2 - 4, top + 20, left + width // 2 + 4, top + 34), fill=230)  # a lit window
    return picture


def main() -> None:
    out = Path(__file__).with_name("castle.png")
    castle().save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
