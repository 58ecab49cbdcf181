"""Pictures and text of ``vivat demo``: the border / corner crops where two models differ most, and
the comparison table of ``summary.md``.

:func:`edge_crops` only cuts and ranks what it is given (absolute errors of two reconstructions of
the same photo, in the crops where padding acts); it computes no score of :mod:`vivat.artifacts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from ..data import save_png_array

__all__ = ["EdgeCrop", "comparison_table", "edge_crops", "verdict", "write_crop_figure"]


@dataclass
class EdgeCrop:
    """One square crop of a photo at a corner or a border, with both reconstructions."""

    image: str
    where: str  # "top-left corner", "bottom border", ...
    top: int
    left: int
    original: Tensor  # (3, s, s) in [0, 1]
    model: Tensor
    baseline: Tensor
    model_error: float  # mean |x_hat - x| in the crop
    baseline_error: float


def _places(h: int, w: int, side: int) -> list[tuple[str, int, int]]:
    mid_y, mid_x = (h - side) // 2, (w - side) // 2
    return [
        ("top-left corner", 0, 0),
        ("top-right corner", 0, w - side),
        ("bottom-left corner", h - side, 0),
        ("bottom-right corner", h - side, w - side),
        ("top border", 0, mid_x),
        ("bottom border", h - side, mid_x),
        ("left border", mid_y, 0),
        ("right border", mid_y, w - side),
    ]


def edge_crops(name: str, x: Tensor, model: Tensor, baseline: Tensor, side: int = 48) -> list[EdgeCrop]:
    """The four corners and four border midpoints of one photo, ``side`` px square, both models.

    ``x``, ``model``, ``baseline``: (3, H, W) in [0, 1], the same region of the photo.
    """
    if x.dim() != 3 or model.shape != x.shape or baseline.shape != x.shape:
        raise ValueError(
            f"x, model and baseline must be (3, H, W) of one shape, got {tuple(x.shape)}, {tuple(model.shape)}, "
            f"{tuple(baseline.shape)}"
        )
    h, w = x.shape[-2:]
    side = min(side, h, w)
    out = []
    for where, top, left in _places(h, w, side):
        sl = (slice(None), slice(top, top + side), slice(left, left + side))
        xo, ym, yb = x[sl], model[sl], baseline[sl]
        out.append(
            EdgeCrop(name, where, top, left, xo, ym, yb, float((ym - xo).abs().mean()), float((yb - xo).abs().mean()))
        )
    return out


def _label(img: Image.Image, text: str) -> Image.Image:
    """``img`` with a white strip of text above it."""
    strip = Image.new("RGB", (img.width, 14), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black")
    out = Image.new("RGB", (img.width, img.height + 14), "white")
    out.paste(strip, (0, 0))
    out.paste(img, (0, 14))
    return out


def _to_pil(t: Tensor, scale: int) -> Image.Image:
    arr = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)


def write_crop_figure(
    crops: Sequence[EdgeCrop], path: str | Path, labels: tuple[str, str] = ("model", "baseline"), scale: int = 3
) -> Path:
    """One row per crop: original | model | baseline | |error| model | |error| baseline, enlarged
    ``scale`` times with nearest neighbours (an 8-px pattern stays visible); errors x4, in grey."""
    if not crops:
        raise ValueError("no crops to draw")
    rows = []
    for c in crops:
        em = (c.model - c.original).abs().mean(0, keepdim=True).mul(4).expand(3, -1, -1)
        eb = (c.baseline - c.original).abs().mean(0, keepdim=True).mul(4).expand(3, -1, -1)
        tiles = [
            _label(_to_pil(c.original, scale), "original"),
            _label(_to_pil(c.model, scale), f"{labels[0]} {c.model_error:.3f}"),
            _label(_to_pil(c.baseline, scale), f"{labels[1]} {c.baseline_error:.3f}"),
            _label(_to_pil(em, scale), f"|err| {labels[0]} x4"),
            _label(_to_pil(eb, scale), f"|err| {labels[1]} x4"),
        ]
        gap = 4
        row = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), tiles[0].height + 16), "white")
        ImageDraw.Draw(row).text((2, 1), f"{c.image}: {c.where} (y {c.top}, x {c.left})", fill="black")
        x = 0
        for t in tiles:
            row.paste(t, (x, 16))
            x += t.width + gap
        rows.append(row)
    width = max(r.width for r in rows)
    fig = Image.new("RGB", (width, sum(r.height for r in rows) + 6 * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        fig.paste(r, (0, y))
        y += r.height + 6
    return save_png_array(np.asarray(fig), Path(path))


def verdict(model: float | None, baseline: float | None, noise: float | None) -> str:
    """Plain words for ``model - baseline`` of a lower-is-better score against the run-to-run noise."""
    if model is None or baseline is None:
        return "n/a"
    if noise is None:
        return "no noise estimate"
    diff = model - baseline
    if abs(diff) <= noise:
        return "within run-to-run noise"
    return "lower (better) beyond the noise" if diff < 0 else "higher (worse) beyond the noise"


def comparison_table(
    rows: Sequence[tuple[str, str, bool]],
    model: Mapping[str, float | None],
    baseline: Mapping[str, float | None],
    noise: Mapping[str, float],
    labels: tuple[str, str] = ("model", "baseline"),
) -> list[str]:
    """Markdown lines: one row per ``(key, label, higher_is_better)`` with both values, the
    difference, the run-to-run noise and the verdict."""
    lines = [
        f"| score | {labels[0]} | {labels[1]} | difference | run-to-run noise | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, higher_better in rows:
        a, b, n = model.get(key), baseline.get(key), noise.get(key)
        if a is None or b is None:
            lines.append(f"| {label} | n/a | n/a | | | n/a |")
            continue
        sign = -1.0 if higher_better else 1.0  # verdict() reads lower as better
        words = verdict(sign * a, sign * b, n)
        if higher_better:
            words = words.replace("lower (better)", "higher (better)").replace("higher (worse)", "lower (worse)")
        noise_txt = "n/a" if n is None else f"{n:.3g}"
        lines.append(f"| {label} | {a:.4g} | {b:.4g} | {a - b:+.3g} | {noise_txt} | {words} |")
    return lines
