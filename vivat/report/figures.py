"""Figures of the diagnosis report: heat maps, residual spectra, decoder spike maps, thumbnails.

Everything here returns numpy arrays and needs only numpy, torch and PIL:
:func:`heatmap`, :func:`residual_map`, :func:`residual_spectrum` / :func:`spectrum_figure`,
:func:`droplet_map` / :func:`droplet_figure`, and :func:`make_pictures`, which makes all of them
for one image at display size (a :class:`Pictures`, small enough to keep for a handful of images
while a large folder streams by).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from ..artifacts import STRIDE, droplet_features, spike_map
from ..data import center_crop
from ..metrics import quantize

__all__ = [
    "DISPLAY_SIDE",
    "INFERNO",
    "MIN_DISPLAY_SIDE",
    "Pictures",
    "Spectrum",
    "droplet_figure",
    "droplet_map",
    "heatmap",
    "layer_spike_scores",
    "make_pictures",
    "nice_ceil",
    "residual_map",
    "residual_spectrum",
    "spectrum_figure",
]

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
INFERNO = (
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
    return INFERNO[np.round(t * 255).astype(np.intp)]


def residual_map(x: Tensor, x_hat: Tensor) -> np.ndarray:
    """Per-pixel RMS over RGB of ``x_hat − x`` for images (3, h, w) in [0, 1]: (h, w) float32."""
    if x.shape != x_hat.shape or x.dim() != 3:
        raise ValueError(f"x and x_hat must both be (3, h, w), got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    return (x_hat.float() - x.float()).square().mean(0).sqrt().cpu().numpy()


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
    :func:`vivat.artifacts.spike_map` (|a − channel median| / channel robust spread), resized to
    ``size`` (nearest when enlarging, block max when shrinking, so a spike stays visible).
    """
    if not features:
        raise ValueError("no decoder feature maps were recorded")
    if scores is None:
        scores = layer_spike_scores(features)
    layer = max(scores, key=scores.__getitem__)
    z = spike_map(features[layer])[0].amax(0)[None, None]
    if size is not None:
        if z.shape[-2] >= size[0] and z.shape[-1] >= size[1]:
            z = F.adaptive_max_pool2d(z, size)
        else:
            z = F.interpolate(z, size=size, mode="nearest")
    return z[0, 0].numpy(), layer, scores[layer]


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
    an :class:`vivat.evaluate.ImageResult`'s tensors (``x_hat`` is quantised here, as it is
    scored), and the decoder maps {name: (1, C, H, W)} of that image (may be empty), with their
    :func:`layer_spike_scores` if already known."""
    x, y = x.float().cpu(), quantize(x_hat.float().cpu())
    h, w = x.shape[-2:]
    size = _display_size(h, w)
    residual = torch.from_numpy(residual_map(x, y) * 255.0)
    if size != (h, w):
        residual = F.adaptive_avg_pool2d(residual[None, None], size)[0, 0]
    xc, yc = center_crop(x, multiple=STRIDE), center_crop(y, multiple=STRIDE)
    spectrum = residual_spectrum(xc, yc, max_side=DISPLAY_SIDE)
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


def nice_ceil(v: float) -> float:
    """The smallest of 1, 2, 5 × 10^k that is ≥ v (a round top for a colour scale)."""
    k = 10.0 ** math.floor(math.log10(v))
    return next(m * k for m in (1, 2, 5, 10) if v <= m * k * (1 + 1e-9))
