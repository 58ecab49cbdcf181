"""Small HTML helpers of vivat's self-contained reports: PNG data URIs and captioned figures."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

__all__ = ["data_uri", "escape", "figure", "png_bytes"]

escape = html.escape


def png_bytes(arr: np.ndarray) -> bytes:
    """An (h, w, 3) or (h, w) uint8 array as PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI, so a page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(uri: str, alt: str, caption: str) -> str:
    """An image with plain-text ``alt`` and an HTML ``caption``."""
    return f'<figure><img src="{uri}" alt="{html.escape(alt, quote=True)}"><figcaption>{caption}</figcaption></figure>'
