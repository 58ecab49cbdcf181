"""Artifact diagnosis: ``vivat diagnose``, an HTML + JSON report of a model's reconstructions.

:func:`diagnose_model` reconstructs every image of a folder, scores it (PSNR, SSIM, LPIPS and the
artifact scores of :mod:`vivat.artifacts`, through :func:`vivat.evaluate.evaluate_folder`) and
keeps, for the worst images, what the report shows: original, reconstruction, residual heat
map, residual spectrum with the 8-px lattice marked, and the decoder feature map with the
largest activation spike. :func:`write_report` writes ``report.html`` (self-contained: images
are base64 data URIs, CSS is inline, no script, no network), ``report.json`` (every number) and
the figures as PNGs under ``figures/``; given a baseline result, the two models side by side.

    model = load_model("runs/tiny/model")
    result = diagnose_model(model, "photos/val", max_side=256, name="runs/tiny/model")
    write_report("diag/", result)

The figure makers (:func:`residual_map`, :func:`heatmap`, :func:`residual_spectrum`,
:func:`spectrum_figure`, :func:`droplet_map`, :func:`droplet_figure`) return numpy arrays and
need only numpy, torch and PIL.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from .artifacts import SCORE_NAMES, STRIDE, _robust_center_spread, droplet_features
from .evaluate import SIZING_MODES, evaluate_folder
from .metrics import quantize
from .model import AutoencoderKL

__all__ = [
    "DEFINITIONS",
    "REFERENCE_LEVELS",
    "SCORES",
    "Pictures",
    "Spectrum",
    "diagnose_model",
    "droplet_figure",
    "droplet_map",
    "heatmap",
    "layer_spike_scores",
    "make_pictures",
    "residual_map",
    "residual_spectrum",
    "spectrum_figure",
    "write_report",
]

SCORES = (*SCORE_NAMES, "droplet_features")  # the artifact scores, in report order
METRICS = ("psnr", "ssim", "lpips")
HIGHER_IS_BETTER = frozenset({"psnr", "ssim"})  # every other column: lower is better

# One line per number: unit, then meaning (docs/ARTIFACTS.md has the full definitions).
DEFINITIONS: dict[str, str] = {
    "psnr": "dB, higher is better: 10·log10(1/MSE) on [0, 1], per image, reconstruction quantised to uint8",
    "ssim": "higher is better (1 = identical): Gaussian window 11, σ 1.5, data range 1, on RGB",
    "lpips": "LPIPS(alex), lower is better: learned perceptual distance",
    "color_shift": "ΔE76 between the mean colours of original and reconstruction over the interior "
    "(≈1–2 is just noticeable)",
    "grid": "grey levels RMS of the residual's excess period-8 pattern: power at the lattice frequencies "
    "k/8 cycles/px above the surrounding spectrum",
    "blur": "fraction of fine detail (above 1/4 cycle/px) lost, after matching contrast; 1 = all of it",
    "border": "excess mean error in the 8-px border band over what the interior's error-vs-detail fit "
    "predicts (ratio − 1)",
    "corner": "the same as border, for the four 16×16 corner squares",
    "droplet": "robust z (spreads above the median) of the worst 16×16 window of the low-passed residual: "
    "a local blob of error",
    "droplet_features": "largest decoder activation spike: max |a − median| over the channel's robust "
    "spread, 99.9th percentile over channels, max over decoder norm inputs (normal: 3.5–5)",
}

# Above these levels an artifact is present: the most each score drifts under the *other*
# artifacts (NEAR in docs/ARTIFACTS.md); droplet_features: normal activations score 3.5–5,
# a droplet tens. Used to shade the table and to rank the worst images across scores.
REFERENCE_LEVELS: dict[str, float] = {
    "color_shift": 0.5,
    "grid": 0.5,
    "blur": 0.05,
    "border": 0.25,
    "corner": 0.25,
    "droplet": 5.0,
    "droplet_features": 10.0,
}

WORST_RULE = (
    "For each artifact score, the image with the highest value (images scoring 0 are clean and never "
    "picked); these picks are ranked by the value divided by the score's reference level, one image "
    "that tops several scores is shown once, and the first {n} are shown. If fewer than {n} images top a "
    "score, the runners-up (2nd highest of each score, then 3rd...) fill in, ranked the same way."
)

DISPLAY_SIDE = 320  # figures are downscaled to at most this many pixels per side
MIN_DISPLAY_SIDE = 256  # smaller figures are enlarged (nearest neighbour) by an integer factor
LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 / sRGB luminance weights
MARKER_RGB = (255, 60, 60)  # lattice circles on the spectrum
PEAK_RGB = (0, 220, 255)  # the circle around the largest spike of a droplet map

# inferno (matplotlib), 17 anchors from 0 to 1, interpolated to a 256-entry lookup table
_INFERNO_ANCHORS = np.array(
    [
        (0, 0, 4), (11, 7, 36), (33, 12, 74), (61, 9, 101), (87, 16, 110), (113, 25, 110),
        (138, 34, 106), (163, 44, 97), (188, 55, 84), (210, 70, 68), (228, 90, 49), (241, 115, 29),
        (249, 142, 9), (252, 172, 17), (249, 203, 53), (242, 234, 105), (252, 255, 164),
    ],
    dtype=np.float64,
)  # fmt: skip
_LUT = (
    np.stack(
        [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_INFERNO_ANCHORS)), c) for c in _INFERNO_ANCHORS.T],
        axis=1,
    )
    .round()
    .astype(np.uint8)
)


# ------------------------------------------------------------------------------------------------
# figure makers


def heatmap(values: np.ndarray, vmax: float) -> np.ndarray:
    """(h, w) values ≥ 0 as an (h, w, 3) uint8 image, perceptual colormap (inferno).

    0 is black, ``vmax`` and above are the palest yellow; brightness rises monotonically.
    """
    if not vmax > 0:
        raise ValueError(f"vmax must be positive, got {vmax}")
    t = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)) / vmax, 0.0, 1.0)
    return _LUT[np.round(t * 255).astype(np.intp)]


def residual_map(x: Tensor, x_hat: Tensor) -> np.ndarray:
    """Per-pixel RMS over RGB of ``x_hat − x`` for images (3, h, w) in [0, 1]: (h, w) float32."""
    if x.shape != x_hat.shape or x.dim() != 3:
        raise ValueError(f"x and x_hat must both be (3, h, w), got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    return (x_hat.float() - x.float()).square().mean(0).sqrt().cpu().numpy()


def _crop_to_stride(t: Tensor) -> Tensor:
    """Center crop of (..., h, w) to multiples of 8, as the artifact scores see it."""
    h, w = (s - s % STRIDE for s in t.shape[-2:])
    top, left = (t.shape[-2] - h) // 2, (t.shape[-1] - w) // 2
    return t[..., top : top + h, left : left + w]


class Spectrum(NamedTuple):
    """A residual spectrum from :func:`residual_spectrum`."""

    db: np.ndarray  # (h, w) float32 log power in dB, fftshifted
    markers: list[tuple[int, int]]  # (row, col) of the 63 lattice frequencies
    dc: tuple[int, int]  # (row, col) of the zero frequency

    def range(self) -> tuple[float, float]:
        """(median, max away from DC) in dB."""
        s = self.db.copy()
        s[self.dc] = -np.inf
        return float(np.median(self.db)), float(s.max())


def residual_spectrum(x: Tensor, x_hat: Tensor, max_side: int | None = None) -> Spectrum:
    """Log power spectrum of the luminance residual, fftshifted, and where the 8-px lattice lies.

    ``x``, ``x_hat``: (3, H, W) in [0, 1], H and W multiples of 8 (the grid score's input).
    ``db`` (H, W) is |FFT|² / (H·W) in dB with the residual in grey levels, so 0 dB is the level of
    white noise of 1 grey level RMS; DC is at (H//2, W//2). ``markers`` are the (row, col) of the
    63 lattice frequencies (a·H/8, b·W/8), a, b = 0..7 except DC: every frequency a period-8
    pattern can have. With ``max_side``, the spectrum is reduced by an integer factor f (max over
    f×f blocks, so peaks survive) to at most that size, and markers and DC are the blocks that
    hold those frequencies.
    """
    if x.shape != x_hat.shape or x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"x and x_hat must both be (3, H, W), got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    h, w = x.shape[-2:]
    if h % STRIDE or w % STRIDE:
        raise ValueError(f"height and width must be multiples of {STRIDE}, got {h}x{w}")
    weights = torch.tensor(LUMA, dtype=torch.float64).view(3, 1, 1)
    residual = ((x_hat.double() - x.double()) * weights).sum(0) * 255.0
    power = torch.fft.fftshift(torch.fft.fft2(residual).abs().square() / (h * w))
    db = 10.0 * torch.log10(power.clamp_min(1e-12))
    dc = (h // 2, w // 2)
    rows = [(a * h // STRIDE + h // 2) % h for a in range(STRIDE)]
    cols = [(b * w // STRIDE + w // 2) % w for b in range(STRIDE)]
    markers = [(r, c) for r in rows for c in cols if (r, c) != dc]
    f = 1 if max_side is None else max(1, math.ceil(max(h, w) / max_side))
    if f > 1:
        db = F.max_pool2d(db[None, None], f, ceil_mode=True)[0, 0]
        markers = [(r // f, c // f) for r, c in markers]
        dc = (dc[0] // f, dc[1] // f)
    return Spectrum(db.float().numpy(), markers, dc)


def spectrum_figure(spectrum: Spectrum, lo: float, hi: float, scale: int = 1) -> np.ndarray:
    """A :class:`Spectrum` as grey levels (``lo`` dB black, ``hi`` white), enlarged ``scale``
    times, with a red circle around every lattice frequency: (h, w, 3) uint8."""
    g = np.clip((np.asarray(spectrum.db, dtype=np.float64) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    grey = np.round(g * 255).astype(np.uint8)
    grey = np.repeat(np.repeat(grey, scale, axis=0), scale, axis=1)
    im = Image.fromarray(np.stack([grey] * 3, axis=-1))
    draw = ImageDraw.Draw(im)
    radius = max(2.5, 0.2 * min(im.size) / STRIDE)
    for r, c in spectrum.markers:
        cy, cx = (r + 0.5) * scale - 0.5, (c + 0.5) * scale - 0.5
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=MARKER_RGB, width=1)
    return np.asarray(im)


def droplet_figure(z: np.ndarray, vmax: float, scale: int = 1) -> np.ndarray:
    """A :func:`droplet_map` as a heat map (0 to ``vmax`` spreads), enlarged ``scale`` times,
    with a cyan circle around its largest value (a one-pixel spike is otherwise easy to miss)."""
    heat = heatmap(z, vmax)
    im = Image.fromarray(np.repeat(np.repeat(heat, scale, axis=0), scale, axis=1))
    r, c = np.unravel_index(np.argmax(z), z.shape)
    cy, cx = (r + 0.5) * scale - 0.5, (c + 0.5) * scale - 0.5
    radius = max(4.0, 0.05 * min(im.size))
    ImageDraw.Draw(im).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=PEAK_RGB, width=2)
    return np.asarray(im)


def _channel_z(f: Tensor) -> Tensor:
    """|a − channel median| / channel robust spread of one map (1, C, h, w), floored as
    :func:`vivat.artifacts.droplet_features` does; max over channels: (h, w)."""
    c, h, w = f.shape[1:]
    v = f[0].float().reshape(c, -1)
    med, spread = _robust_center_spread(v)
    dev = (v - med).abs()
    floor = (1e-3 * dev.square().mean().sqrt()).clamp_min(1e-12)
    return (dev / torch.maximum(spread, floor)).amax(0).reshape(h, w)


def layer_spike_scores(features: Mapping[str, Tensor]) -> dict[str, float]:
    """:func:`vivat.artifacts.droplet_features` of each decoder map {name: (1, C, h, w)} of one
    image; their maximum is the image's ``droplet_features`` score."""
    return {name: float(droplet_features(f)[0]) for name, f in features.items()}


def droplet_map(
    features: Mapping[str, Tensor],
    size: tuple[int, int] | None = None,
    scores: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, str, float]:
    """The decoder map with the highest spike ratio and where its spikes are.

    ``features``: {layer name: (1, C, h, w)}, e.g. :attr:`vivat.artifacts.FeatureRecorder.features`.
    Picks the layer with the largest score (``scores``, by default :func:`layer_spike_scores`)
    and returns ``(z, layer, score)``: z (h, w) = per pixel the max over channels of
    |a − channel median| / channel robust spread, resized to ``size`` (nearest when enlarging,
    block max when shrinking, so a spike stays visible).
    """
    if not features:
        raise ValueError("no decoder feature maps were recorded")
    if scores is None:
        scores = layer_spike_scores(features)
    layer = max(scores, key=scores.__getitem__)
    z = _channel_z(features[layer])[None, None]
    if size is not None:
        if z.shape[-2] >= size[0] and z.shape[-1] >= size[1]:
            z = F.adaptive_max_pool2d(z, size)
        else:
            z = F.interpolate(z, size=size, mode="nearest")
    return z[0, 0].numpy(), layer, scores[layer]


# ------------------------------------------------------------------------------------------------
# what the report keeps of an image


@dataclass
class Pictures:
    """The report's pictures of one image at display size (at most ``DISPLAY_SIDE`` per side)."""

    original: np.ndarray  # (h, w, 3) uint8
    reconstruction: np.ndarray  # (h, w, 3) uint8, the quantised reconstruction that was scored
    residual: np.ndarray  # (h, w) float32, RMS over RGB of x̂ − x in grey levels
    spectrum: Spectrum  # of the residual, reduced to at most DISPLAY_SIDE per side
    droplet: np.ndarray | None  # (h, w) float32 robust z of the spikiest decoder map
    droplet_layer: str | None
    droplet_score: float | None


def _display_size(h: int, w: int) -> tuple[int, int]:
    s = min(1.0, DISPLAY_SIDE / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def _thumbnail(t: Tensor, size: tuple[int, int]) -> np.ndarray:
    arr = (t.clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8).permute(1, 2, 0).numpy()
    if arr.shape[:2] == size:
        return arr
    return np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.Resampling.LANCZOS))


def make_pictures(
    x: Tensor, x_hat: Tensor, features: Mapping[str, Tensor], layer_scores: Mapping[str, float] | None = None
) -> Pictures:
    """What the report shows of one image: ``x``, ``x_hat`` (3, h, w) in [0, 1] as given to
    :func:`vivat.evaluate.evaluate_folder`'s ``keep`` (``x_hat`` is quantised here, as it is
    scored), and the decoder maps {name: (1, C, H, W)} of that image (may be empty), with their
    :func:`layer_spike_scores` if already known."""
    x, y = x.float().cpu(), quantize(x_hat.float().cpu())
    h, w = x.shape[-2:]
    size = _display_size(h, w)
    residual = torch.from_numpy(residual_map(x, y) * 255.0)
    if size != (h, w):
        residual = F.adaptive_avg_pool2d(residual[None, None], size)[0, 0]
    spectrum = residual_spectrum(_crop_to_stride(x), _crop_to_stride(y), max_side=DISPLAY_SIDE)
    z, layer, score = None, None, None
    if features:
        # The layer is the one the table's droplet_features score comes from. Its map covers the
        # input the decoder saw: the image, or with sizing "pad" the image padded at the
        # bottom/right to a multiple of 8; the part over the image is shown.
        layer_scores = layer_spike_scores(features) if layer_scores is None else layer_scores
        hp, wp = h + (-h) % STRIDE, w + (-w) % STRIDE
        cropped = {
            name: f[..., : math.ceil(h * f.shape[-2] / hp), : math.ceil(w * f.shape[-1] / wp)]
            for name, f in features.items()
        }
        z, layer, score = droplet_map(cropped, size, layer_scores)
    return Pictures(_thumbnail(x, size), _thumbnail(y, size), residual.numpy(), spectrum, z, layer, score)


class _Keeper:
    """``keep`` callback of evaluate_folder: the top ``k`` images of every score, and pictures of
    those (and of the ``include`` files) only, so a large folder is never held in memory."""

    def __init__(self, k: int, include: Sequence[str]) -> None:
        self.k = k
        self.include = set(include)
        self.top: dict[str, list[tuple[float, str]]] = {name: [] for name in SCORES}
        self.pictures: dict[str, Pictures] = {}

    def __call__(
        self, path: Path, x: Tensor, x_hat: Tensor, features: dict[str, Tensor], scores: dict[str, float]
    ) -> None:
        key = str(path)
        if self.k:
            # the row evaluate_folder is writing for this image: nothing is scored twice
            for name, value in scores.items():
                top = self.top[name]
                if value > 0 and (len(top) < self.k or value > top[-1][0]):
                    top.append((value, key))
                    top.sort(key=lambda t: -t[0])  # stable: on a tie the earlier image stays first
                    del top[self.k :]
        wanted = self.include | {key for top in self.top.values() for _, key in top}
        if key in wanted:
            self.pictures[key] = make_pictures(x, x_hat, features)
        for stale in set(self.pictures) - wanted:
            del self.pictures[stale]

    def worst(self, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` images by :data:`WORST_RULE`: ``[{"file", "why": [...]}]``."""
        picks = sorted(
            (rank, -value / REFERENCE_LEVELS[name], SCORES.index(name), key, name)
            for name, top in self.top.items()
            for rank, (value, key) in enumerate(top)
        )
        chosen: dict[str, list[str]] = {}
        for rank, _, _, key, name in picks:
            if key not in chosen and len(chosen) < n:
                chosen[key] = []
            if key in chosen and (rank == 0 or not chosen[key]):
                chosen[key].append(f"{_ordinal(rank)}highest {name}")
        return [{"file": key, "why": why} for key, why in chosen.items()]


def _ordinal(rank: int) -> str:
    if rank == 0:
        return ""
    n = rank + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix} "


@torch.no_grad()
def diagnose_model(
    model: AutoencoderKL,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    sizing: str = "crop",
    max_side: int | None = None,
    lpips: bool = True,
    worst: int = 4,
    include: Sequence[str | os.PathLike] = (),
    name: str | None = None,
) -> dict[str, Any]:
    """Score every image of a folder (recursive) or list with ``model`` and keep the worst ones' pictures.

    Returns :func:`vivat.evaluate.evaluate_folder`'s report with the artifact scores (per image
    and ``mean``), plus ``model`` (``name``), ``data``, ``max_side``, ``sizing_mode``, ``worst``
    (up to ``worst`` images chosen by :data:`WORST_RULE`, each ``{"file", "name", "why"}``) and
    ``pictures`` ({file: :class:`Pictures`} for the worst images and for ``include``, e.g. a
    baseline's pictures of the images another model did worst on). Every row gets ``name``, the
    file relative to the folder.
    """
    if sizing not in SIZING_MODES:
        raise ValueError(f"sizing must be one of {SIZING_MODES}, got {sizing!r}")
    if worst < 0:
        raise ValueError(f"worst must be >= 0, got {worst}")
    keeper = _Keeper(worst, [str(p) for p in include])
    result = evaluate_folder(model, images, sizing, lpips=lpips, max_side=max_side, artifacts=True, keep=keeper)
    root = Path(images) if isinstance(images, (str, os.PathLike)) else None
    names = {}
    for row in result["images"]:
        p = Path(row["file"])
        row["name"] = p.relative_to(root).as_posix() if root is not None else p.name
        names[row["file"]] = row["name"]
    chosen = keeper.worst(worst)
    for item in chosen:
        item["name"] = names[item["file"]]
    return {
        "model": name,
        "data": str(images) if root is not None else [str(p) for p in images],
        "max_side": max_side,
        "sizing_mode": sizing,
        **result,
        "worst": chosen,
        "pictures": keeper.pictures,
    }


# ------------------------------------------------------------------------------------------------
# the report


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _nice_ceil(v: float) -> float:
    """The smallest of 1, 2, 5 × 10^k that is ≥ v."""
    k = 10.0 ** math.floor(math.log10(v))
    return next(m * k for m in (1, 2, 5, 10) if v <= m * k * (1 + 1e-9))


def _fmt(name: str, v: float | None) -> str:
    if v is None:
        return "n/a"
    if v == 0 and name not in HIGHER_IS_BETTER:
        return "0"
    digits = {"psnr": 2, "ssim": 4, "lpips": 4, "blur": 3, "border": 3, "corner": 3}
    return f"{v:.{digits.get(name, 2)}f}"


def _better(name: str, a: float | None, b: float | None) -> int:
    """-1 if ``a`` is better, 1 if ``b`` is, 0 for a tie or a missing value."""
    if a is None or b is None or a == b:
        return 0
    return -1 if (a > b) == (name in HIGHER_IS_BETTER) else 1


def _cell(name: str, v: float | None, better: bool = False) -> str:
    classes = []
    if v is not None and name in REFERENCE_LEVELS and v > REFERENCE_LEVELS[name]:
        classes.append("above")
    if better:
        classes.append("better")
    cls = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{cls}>{_fmt(name, v)}</td>"


_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px;
       color: #1b1b1b; background: #fff; max-width: 1380px; }
h1 { font-size: 22px; margin: 0 0 6px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #444; margin: 2px 0; } code { font-size: 12.5px; background: #f3f3f3; padding: 0 3px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d6d6d6; padding: 3px 6px; }
td { text-align: right; white-space: nowrap; } td.file, td.def, th.file { text-align: left; }
td.file, td.def { white-space: normal; } td.file { min-width: 110px; max-width: 220px; overflow-wrap: anywhere; }
td.file small { color: #666; }
thead th { background: #f1f1f1; font-weight: 600; }
th.sub { font-weight: 500; font-size: 12px; color: #555; }
tr.mean td { font-weight: 700; background: #fafafa; border-top: 2px solid #999; }
td.above { background: #fde2dc; } td.better { font-weight: 700; color: #0b6b2e; }
table.scores td, table.scores th { font-size: 12.5px; }
table.defs td { vertical-align: top; } table.defs td.name { text-align: left; font-family: monospace; }
.legend span { display: inline-block; padding: 0 6px; margin-right: 8px; }
.block { margin: 10px 0 26px; }
.panels { display: grid; grid-template-columns: 80px repeat(5, minmax(0, 1fr)); gap: 8px; align-items: start; }
.rowlabel { font-weight: 700; writing-mode: vertical-rl; transform: rotate(180deg); text-align: center;
            align-self: center; color: #333; }
figure { margin: 0; } figure img { width: 100%; max-width: 256px; height: auto; display: block;
         border: 1px solid #ccc; image-rendering: pixelated; }
figcaption { font-size: 12px; color: #333; margin-top: 3px; }
figcaption img.bar { display: inline-block; width: 90px; height: 9px; vertical-align: middle; border: 1px solid #999;
                     image-rendering: auto; }
.why { color: #8a1c00; font-weight: 600; }
.note { color: #555; font-size: 13px; }
"""


def _colorbar() -> str:
    return _data_uri(_png(np.repeat(_LUT[None], 8, axis=0)))


def _figure(uri: str, alt: str, caption: str) -> str:
    """An image with plain-text ``alt`` and an HTML ``caption``."""
    return f'<figure><img src="{uri}" alt="{html.escape(alt, quote=True)}"><figcaption>{caption}</figcaption></figure>'


class _Figures:
    """Renders the figure blocks of the worst images, writing each PNG under ``figures/``."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "figures"
        self.paths: list[str] = []
        self.bar = _colorbar()
        # figures of an earlier report in the same folder would otherwise linger next to these
        for old in self.dir.glob("[0-9][0-9]-*.png"):
            old.unlink()

    def uri(self, arr: np.ndarray, stem: str) -> str:
        png = _png(arr)
        path = self.dir / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        self.paths.append(path.relative_to(self.dir.parent).as_posix())
        return _data_uri(png)

    def block(self, index: int, item: dict[str, Any], runs: list[tuple[str, dict[str, Any]]]) -> str:
        """Rows of panels for one image, one row per (label, result) in ``runs``."""
        pics = [(label, run["pictures"][item["file"]]) for label, run in runs]
        residual_max = max(float(np.percentile(p.residual, 99.5)) for _, p in pics)
        vmax = min(_nice_ceil(max(residual_max, 1.0)), 255.0)
        ranges = [p.spectrum.range() for _, p in pics]
        lo, hi = min(r[0] for r in ranges) - 10.0, max(r[1] for r in ranges)
        zs = [float(p.droplet.max()) for _, p in pics if p.droplet is not None]
        zmax = _nice_ceil(max([10.0, *zs]))
        h, w = pics[0][1].original.shape[:2]
        scale = max(1, MIN_DISPLAY_SIDE // max(h, w))
        stem = f"{index:02d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(item['name']).stem)[:60]}"

        def big(arr: np.ndarray) -> np.ndarray:
            return np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)

        bar = f'<img class="bar" src="{self.bar}" alt="colour scale">'
        rows = []
        for label, p in pics:
            tag = "" if len(runs) == 1 else f"-{label}"
            name = f"{label} {item['name']}"
            panels = [f'<div class="rowlabel">{html.escape(label)}</div>']
            if label == runs[0][0]:
                panels.append(
                    _figure(self.uri(big(p.original), f"{stem}-original"), f"original {item['name']}", "Original")
                )
            else:
                panels.append("<div></div>")
            panels.append(
                _figure(
                    self.uri(big(p.reconstruction), f"{stem}{tag}-reconstruction"),
                    f"reconstruction, {name}",
                    "Reconstruction (uint8)",
                )
            )
            panels.append(
                _figure(
                    self.uri(big(heatmap(p.residual, vmax)), f"{stem}{tag}-residual"),
                    f"residual heat map, {name}",
                    f"Residual |x̂ − x|, RMS over RGB: 0 {bar} {vmax:g} grey levels",
                )
            )
            panels.append(
                _figure(
                    self.uri(spectrum_figure(p.spectrum, lo, hi, scale), f"{stem}{tag}-spectrum"),
                    f"residual spectrum, {name}",
                    f"Residual spectrum (luminance, log power, black {lo:.0f} dB, white {hi:.0f} dB, "
                    "DC at centre). <span style='color:#d22'>○</span> lattice frequencies k/8 cycles/px",
                )
            )
            if p.droplet is None:
                panels.append("<figure><figcaption>no decoder feature maps recorded</figcaption></figure>")
            else:
                panels.append(
                    _figure(
                        self.uri(droplet_figure(p.droplet, zmax, scale), f"{stem}{tag}-droplet"),
                        f"droplet feature map, {name}",
                        f"Droplet features: <code>{html.escape(p.droplet_layer or '')}</code> "
                        f"(spikiest map, score {p.droplet_score:.1f}): max over channels of |a − median| / "
                        f"spread, 0 {bar} {zmax:g}; <span style='color:#08c'>○</span> largest "
                        f"({float(p.droplet.max()):.0f})",
                    )
                )
            rows.append("".join(panels))
        return f'<div class="panels">{"".join(rows)}</div>'


def _scores_table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """Per-image table (one row per image, a column per number; two sub-columns with a baseline)."""
    cols = (*METRICS, *SCORES)
    pair = len(runs) == 2
    span = ' rowspan="2"' if pair else ""
    head = f'<tr><th class="file"{span}>image (scored size)</th>'
    head += "".join(f'<th colspan="{len(runs)}">{c}</th>' for c in cols) + "</tr>"
    if pair:
        head += "<tr>" + "".join(f'<th class="sub">{html.escape(label)}</th>' for c in cols for label, _ in runs)
        head += "</tr>"
    body = []
    rows = [run["images"] for _, run in runs]
    for i, row in enumerate(rows[0]):
        size = "×".join(str(s) for s in row["scored_size"][::-1])
        cells = [f'<td class="file">{html.escape(row["name"])} <small>{size}</small></td>']
        for c in cols:
            values = [r[i][c] for r in rows]
            cmp = _better(c, *values) if pair else 0
            cells.extend(_cell(c, v, better=cmp == (k * 2 - 1)) for k, v in enumerate(values))
        body.append(f"<tr>{''.join(cells)}</tr>")
    cells = [f'<td class="file">mean of {len(rows[0])}</td>']
    for c in cols:
        values = [run["mean"][c] for _, run in runs]
        cmp = _better(c, *values) if pair else 0
        cells.extend(_cell(c, v, better=cmp == (k * 2 - 1)) for k, v in enumerate(values))
    body.append(f'<tr class="mean">{"".join(cells)}</tr>')
    return f'<table class="scores"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _definitions_table() -> str:
    rows = []
    for name in (*METRICS, *SCORES):
        ref = REFERENCE_LEVELS.get(name)
        rows.append(
            f'<tr><td class="name">{name}</td><td class="def">{html.escape(DEFINITIONS[name])}</td>'
            f"<td>{'' if ref is None else f'{ref:g}'}</td></tr>"
        )
    return (
        '<table class="defs"><thead><tr><th>number</th><th class="file">what it measures</th>'
        f"<th>reference level</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _json_run(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "dir": run["model"],
        "n": run["n"],
        "mean": run["mean"],
        "images": run["images"],
        "settings": run["settings"],
    }


def write_report(
    out_dir: str | os.PathLike, result: Mapping[str, Any], baseline_result: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``report.html``, ``report.json`` and ``figures/*.png`` to ``out_dir`` (created).

    ``result`` (and ``baseline_result``, run on the same images with ``include`` = the worst
    files of ``result``) come from :func:`diagnose_model`. Returns ``{"html", "json", "figures"}``.
    """
    out = Path(out_dir)
    runs: list[tuple[str, Mapping[str, Any]]] = [("model", result)]
    if baseline_result is not None:
        files = [r["file"] for r in result["images"]]
        if [r["file"] for r in baseline_result["images"]] != files:
            raise ValueError("the baseline was scored on other images than the model; run both on the same data")
        missing = [w["file"] for w in result["worst"] if w["file"] not in baseline_result["pictures"]]
        if missing:
            raise ValueError(f"the baseline result has no pictures of {missing}; pass include= the model's worst files")
        runs = [("baseline", baseline_result), ("model", result)]
    out.mkdir(parents=True, exist_ok=True)
    figures = _Figures(out)
    # the model under diagnosis first in the figures, its baseline below
    fig_runs = [runs[-1], *runs[:-1]]
    blocks = []
    for i, item in enumerate(result["worst"], 1):
        lines = []
        for label, run in fig_runs:
            row = next(r for r in run["images"] if r["file"] == item["file"])
            lines.append(f"{label}: " + ", ".join(f"{n} {_fmt(n, row[n])}" for n in SCORES))
        blocks.append(
            f'<div class="block"><h3>{i}. {html.escape(item["name"])} — '
            f'<span class="why">{html.escape(", ".join(item["why"]))}</span></h3>'
            f'<p class="meta">{"<br>".join(lines)}</p>{figures.block(i, item, fig_runs)}</div>'
        )

    def who(run: Mapping[str, Any]) -> str:
        return html.escape(str(run["model"] or "(unnamed model)"))

    lpips = result["settings"]["lpips"]
    lpips_note = (
        f'<p class="note">LPIPS n/a: {html.escape(lpips.removeprefix("unavailable: "))}</p>'
        if result["mean"]["lpips"] is None
        else ""
    )
    legend = (
        '<p class="legend note"><span class="above" style="background:#fde2dc">shaded</span>above the score\'s '
        "reference level (the artifact is present)"
        + (
            '<span style="color:#0b6b2e;font-weight:700">bold green</span>the better of baseline and model '
            "(lower is better for LPIPS and every artifact score, higher for PSNR and SSIM)"
            if baseline_result is not None
            else ""
        )
        + "</p>"
    )
    data = result["data"] if isinstance(result["data"], str) else f"{len(result['data'])} files"
    title = "Artifact diagnosis" + (" — baseline vs model" if baseline_result is not None else "")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vivat diagnose: {who(result)}</title>
<style>{_CSS}</style></head><body>
<h1>{title}</h1>
<p class="meta">model: <code>{who(result)}</code>{
        f" &nbsp; baseline: <code>{who(baseline_result)}</code>" if baseline_result is not None else ""
    }</p>
<p class="meta">data: <code>{html.escape(data)}</code>, {result["n"]} images, {html.escape(result["sizing"])};
latent: {html.escape(result["latent"])}; reconstructions quantised to uint8 before scoring.</p>
<p class="meta">All numbers are in <code>report.json</code>; the figures are also in <code>figures/</code>.</p>
<h2>Scores per image</h2>
{legend}
{_scores_table(runs)}
{lpips_note}
<h2>What the numbers mean</h2>
<p class="note">Every artifact score is 0 for a clean reconstruction (x̂ = x) and grows with its artifact.
Full definitions: docs/ARTIFACTS.md. Reference level: the most the score reaches from the other artifacts;
above it, the artifact is there.</p>
{_definitions_table()}
<h2>Worst images</h2>
<p class="note">{html.escape(WORST_RULE.format(n=len(result["worst"]) or "N"))}
{" The baseline is shown on the same images." if baseline_result is not None else ""}
Heat maps share one scale per image (stated under each); black is 0.</p>
{"".join(blocks) or '<p class="note">No image has a non-zero artifact score, or --worst is 0.</p>'}
</body></html>
"""
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    report = {
        "report": "vivat diagnose",
        "data": result["data"],
        "settings": {
            "sizing": result["sizing"],
            "sizing_mode": result["sizing_mode"],
            "max_side": result["max_side"],
            "latent": result["latent"],
            "worst_rule": WORST_RULE.format(n=len(result["worst"])),
        },
        "definitions": DEFINITIONS,
        "reference_levels": REFERENCE_LEVELS,
        "model": _json_run(result),
        "baseline": None if baseline_result is None else _json_run(baseline_result),
        "worst": result["worst"],
        "figures": figures.paths,
    }
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"html": html_path, "json": json_path, "figures": [out / p for p in figures.paths]}
