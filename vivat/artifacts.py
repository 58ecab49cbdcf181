"""Artifact scores for VAE reconstructions (colour shift, grid, blur, border/corner, droplet).

Every score compares originals ``x`` with reconstructions ``x_hat`` of shape (N, 3, H, W) in
[0, 1] (H, W multiples of 8), is computed per image in fp32 with plain torch ops (any device,
batched), is exactly 0 when ``x_hat == x`` and grows with its artifact. ``droplet_features`` reads
the decoder's norm inputs instead, recorded with :class:`FeatureRecorder`.

The definitions, and why they refine in places the first sketch of the scores, are in
docs/ARTIFACTS.md; docs/EVAL.md has the conventions they share with the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ARTIFACT_SCORES",
    "HIGHER_IS_BETTER",
    "METRICS",
    "REFERENCE_LEVELS",
    "REPORT_COLUMNS",
    "SCORE_NAMES",
    "FeatureRecorder",
    "blur",
    "border",
    "capture_decoder_features",
    "color_shift",
    "corner",
    "diagnose",
    "droplet",
    "droplet_features",
    "grid",
    "is_decoder_norm",
    "is_norm_module",
    "rgb_to_lab",
    "robust_center_spread",
    "spike_map",
]

# The numbers a report shows, in report order. Every artifact score is 0 for a clean
# reconstruction and grows with its artifact (lower is better), as does LPIPS; PSNR and SSIM
# are the only numbers where higher is better.
SCORE_NAMES = ("color_shift", "grid", "blur", "border", "corner", "droplet")  # from the images alone
ARTIFACT_SCORES = (*SCORE_NAMES, "droplet_features")  # plus the one read from decoder feature maps
METRICS = ("psnr", "ssim", "lpips")  # reconstruction metrics of vivat.metrics
REPORT_COLUMNS = (*METRICS, *ARTIFACT_SCORES)
HIGHER_IS_BETTER = frozenset({"psnr", "ssim"})  # every other name in REPORT_COLUMNS: lower is better

# Above these levels an artifact is present: the most each score drifts under the *other*
# artifacts (NEAR in docs/ARTIFACTS.md); droplet_features: normal activations score 3.5–5,
# a droplet tens. The diagnosis report shades values above them and ranks its worst images by them.
REFERENCE_LEVELS: dict[str, float] = {
    "color_shift": 0.5,
    "grid": 0.5,
    "blur": 0.05,
    "border": 0.25,
    "corner": 0.25,
    "droplet": 5.0,
    "droplet_features": 10.0,
}

STRIDE = 8  # the f8 decoder's upsampling period
BAND = 8  # width of the border band (pixels)
CORNER = 16  # side of each corner square (pixels)
MARGIN = 16  # the interior starts this far from every edge (clear of band and corners)
WINDOW = 16  # droplet window side; windows step by WINDOW // 2
DROPLET_SIGMA = 4.0  # Gaussian low-pass of the residual before the droplet windows (pixels)
GREY_LEVEL = 1.0 / 255.0  # one uint8 step
QUANT_VAR = GREY_LEVEL**2 / 12.0  # variance of uniform uint8 rounding noise
HF_CUTOFF = 0.25  # blur: radial frequency (cycles/pixel) above which energy counts as detail
LOW_BAND = 1.0 / 16.0  # blur: the gain of x_hat on x is fitted below this frequency
GRID_RADIUS = 3  # grid: half-width of the neighbourhood around each lattice frequency
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation

# ------------------------------------------------------------------------------------------------
# input handling


def _as_images(t: Any, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        try:
            t = torch.as_tensor(t)
        except Exception as e:  # noqa: BLE001 - re-raised with the argument's name
            raise ValueError(f"{name} must be a tensor of shape (N, 3, H, W), got {type(t).__name__}") from e
    if t.dim() != 4 or t.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3, H, W), got {tuple(t.shape)}")
    n, _, h, w = t.shape
    if n == 0:
        raise ValueError(f"{name} is an empty batch")
    if h % STRIDE or w % STRIDE:
        raise ValueError(f"{name}: height and width must be multiples of {STRIDE}, got {h}x{w} (crop or pad first)")
    if not (t.is_floating_point() or t.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool)):
        raise ValueError(f"{name} must be a real-valued tensor, got {t.dtype}")
    t = t.to(torch.float32)
    lo, hi = (float(v) for v in torch.aminmax(t))  # NaN and inf propagate to the extremes
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if lo < -0.5 or hi > 1.5:
        raise ValueError(
            f"{name} must hold images in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
            "(convert from [-1, 1] or [0, 255] first)"
        )
    return t


def _check_pair(x: Any, x_hat: Any) -> tuple[Tensor, Tensor]:
    x = _as_images(x, "x")
    x_hat = _as_images(x_hat, "x_hat")
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)}")
    if x.device != x_hat.device:
        raise ValueError(f"x and x_hat must be on the same device, got x on {x.device} and x_hat on {x_hat.device}")
    return x, x_hat


def _has_interior(h: int, w: int) -> bool:
    return h - 2 * MARGIN >= STRIDE and w - 2 * MARGIN >= STRIDE


def _interior(t: Tensor) -> Tensor:
    return t[..., MARGIN : t.shape[-2] - MARGIN, MARGIN : t.shape[-1] - MARGIN]


def robust_center_spread(v: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Median and MAD-based standard deviation of ``v`` along ``dim`` (kept as a size-1 dim)."""
    med = v.median(dim=dim, keepdim=True).values
    mad = (v - med).abs().median(dim=dim, keepdim=True).values
    return med, MAD_TO_SIGMA * mad


# ------------------------------------------------------------------------------------------------
# colour


_RGB_TO_XYZ = (  # linear sRGB -> XYZ, D65 (IEC 61966-2-1)
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)


def rgb_to_lab(rgb: Tensor, dim: int = -3) -> Tensor:
    """sRGB in [0, 1] (channels along ``dim``) to CIELAB (D65), in fp32.

    The sRGB transfer curve is extended odd-symmetrically, so values slightly outside [0, 1]
    convert without NaNs.
    """
    rgb = rgb.to(torch.float32).movedim(dim, -1)
    a = rgb.abs()
    lin = torch.where(a <= 0.04045, a / 12.92, ((a + 0.055) / 1.055) ** 2.4) * rgb.sign()
    r, g, b = lin.unbind(-1)
    xyz = torch.stack([(r * m0 + g * m1 + b * m2) / wp for (m0, m1, m2), wp in zip(_RGB_TO_XYZ, _WHITE_D65)], -1)
    eps = (6.0 / 29.0) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1.0 / 3.0), xyz / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    lab = torch.stack(
        (116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])), dim=-1
    )
    return lab.movedim(-1, dim)


def _color_shift(x: Tensor, x_hat: Tensor) -> Tensor:
    if _has_interior(x.shape[-2], x.shape[-1]):
        x, x_hat = _interior(x), _interior(x_hat)
    mean_x = x.mean(dim=(-2, -1))
    mean_r = (x_hat - x).mean(dim=(-2, -1))
    lab = rgb_to_lab(torch.stack((mean_x, mean_x + mean_r)), dim=-1)
    delta_e = (lab[1] - lab[0]).pow(2).sum(-1).sqrt()
    # Equal colours can convert ~1e-5 apart (vector and scalar kernel paths round differently).
    return torch.where((mean_r == 0).all(-1), torch.zeros_like(delta_e), delta_e)


def color_shift(x: Tensor, x_hat: Tensor) -> Tensor:
    """ΔE76 between the mean colours of x and x_hat, per image (N,).

    Mean of the sRGB values over the interior (the border band and corners belong to the border
    and corner scores), converted to CIELAB (D65). Images too small to have an interior (under
    40 px) use all pixels.
    """
    return _color_shift(*_check_pair(x, x_hat))


# ------------------------------------------------------------------------------------------------
# spectra


def _periodic_rfft(u: Tensor) -> Tensor:
    """Half-plane 2-D FFT (``rfft2``) of the periodic component of ``u`` (Moisan, 2011).

    The FFT treats the image as a torus; the jumps at the wrap-around put a bright cross on the
    frequency axes that has nothing to do with the content. Subtracting the smooth component
    (the solution of a Poisson equation driven by those jumps) removes it; it costs one more FFT.
    """
    h, w = u.shape[-2:]
    v = torch.zeros_like(u)
    dr = u[..., -1, :] - u[..., 0, :]
    v[..., 0, :] += dr
    v[..., -1, :] -= dr
    dc = u[..., :, -1] - u[..., :, 0]
    v[..., :, 0] += dc
    v[..., :, -1] -= dc
    q = torch.arange(h, device=u.device, dtype=torch.float32).view(h, 1)
    r = torch.arange(w // 2 + 1, device=u.device, dtype=torch.float32).view(1, -1)
    denom = 2 * torch.cos(2 * math.pi * q / h) + 2 * torch.cos(2 * math.pi * r / w) - 4
    denom[0, 0] = 1.0
    s = torch.fft.rfft2(v) / denom
    s[..., 0, 0] = 0
    return torch.fft.rfft2(u) - s


def _half_plane_weights(h: int, w: int, device: torch.device) -> Tensor:
    """Multiplicity of each ``rfft2`` bin in the full spectrum (sums over it equal full sums)."""
    wt = torch.full((h, w // 2 + 1), 2.0, device=device)
    wt[:, 0] = 1.0
    if w % 2 == 0:
        wt[:, -1] = 1.0
    return wt


def _radial_frequency_half(h: int, w: int, device: torch.device) -> Tensor:
    fu = torch.fft.fftfreq(h, device=device).view(h, 1)
    fv = torch.fft.rfftfreq(w, device=device).view(1, -1)
    return (fu**2 + fv**2).sqrt()


# ------------------------------------------------------------------------------------------------
# grid


_GRID_CACHE: dict[tuple[int, int, str], tuple[Tensor, Tensor, Tensor]] = {}


def _lattice_neighbourhoods(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Flat indices of the lattice frequencies (≠ DC) and of each one's background neighbours.

    Lattice frequencies are (a·H/8, b·W/8), a, b = 0..7, without (0, 0): all the frequencies a
    pattern of period 8 can have. Off-axis points compare with the (2R+1)² square around them;
    points on a frequency axis compare with their neighbours along that axis only, because the
    axes carry the energy of every horizontal or vertical edge and are brighter than the
    frequencies beside them. Lattice bins and (for off-axis points) axis bins never count as
    background. Returns (points (L,), neighbours (L, K) padded with 0, valid mask (L, K)).
    """
    key = (h, w, str(device))
    if key in _GRID_CACHE:
        return _GRID_CACHE[key]
    sh, sw = h // STRIDE, w // STRIDE
    R = GRID_RADIUS
    points, neigh = [], []
    for a in range(STRIDE):
        for b in range(STRIDE):
            if a == 0 and b == 0:
                continue
            u0, v0 = a * sh, b * sw
            cand = []
            if a == 0 or b == 0:
                along_v = a == 0
                for d in range(-2 * R, 2 * R + 1):
                    u, v = (u0, (v0 + d) % w) if along_v else ((u0 + d) % h, v0)
                    cand.append((u, v))
            else:
                for du in range(-R, R + 1):
                    for dv in range(-R, R + 1):
                        u, v = (u0 + du) % h, (v0 + dv) % w
                        if u == 0 or v == 0:
                            continue
                        cand.append((u, v))
            keep = sorted({(u, v) for u, v in cand if not (u % sh == 0 and v % sw == 0)})
            if not keep:
                continue
            points.append(u0 * w + v0)
            neigh.append([u * w + v for u, v in keep])
    k = max((len(n) for n in neigh), default=1)
    idx = torch.zeros(len(neigh), k, dtype=torch.long)
    valid = torch.zeros(len(neigh), k, dtype=torch.bool)
    for i, n in enumerate(neigh):
        idx[i, : len(n)] = torch.tensor(n)
        valid[i, : len(n)] = True
    out = (torch.tensor(points, dtype=torch.long, device=device), idx.to(device), valid.to(device))
    _GRID_CACHE[key] = out
    return out


def _grid(x: Tensor, x_hat: Tensor) -> Tensor:
    n, c, h, w = x.shape
    power = torch.fft.fft2(x_hat - x).abs().pow(2).mean(dim=1).reshape(n, h * w)
    points, idx, valid = _lattice_neighbourhoods(h, w, x.device)
    if points.numel() == 0:
        return torch.zeros(n, device=x.device)
    peak = power[:, points]
    nb = power[:, idx.reshape(-1)].reshape(n, *idx.shape)
    nb = torch.where(valid, nb, torch.full_like(nb, float("nan")))
    background = nb.nanmedian(dim=-1).values / math.log(2.0)
    excess = (peak - background).sum(-1).clamp_min(0)
    return excess.sqrt() / (h * w) * 255.0


def grid(x: Tensor, x_hat: Tensor) -> Tensor:
    """RMS of the residual's excess 8-px periodic pattern, in grey levels (1/255), per image (N,).

    P = power spectrum of the residual (plain FFT), averaged over RGB. Every lattice frequency p
    (a·H/8, b·W/8), (a, b) ≠ (0, 0), is compared with its background B(p) = median of P over the
    neighbours / ln 2 (the mean of exponentially distributed power). Then

        grid = 255 · sqrt(max(0, Σ_p P(p) − B(p))) / (H·W),

    which by Parseval is the RMS amplitude of the period-8 pattern left after removing what the
    surrounding spectrum predicts at those frequencies. 0 for a zero residual; ~0 for noise.
    """
    return _grid(*_check_pair(x, x_hat))


# ------------------------------------------------------------------------------------------------
# blur


def _blur(x: Tensor, x_hat: Tensor) -> Tensor:
    if _has_interior(x.shape[-2], x.shape[-1]):
        x, x_hat = _interior(x), _interior(x_hat)
    n, c, h, w = x.shape
    rad = _radial_frequency_half(h, w, x.device)
    wt = _half_plane_weights(h, w, x.device)
    hf = wt * (rad > HF_CUTOFF)
    low = wt * ((rad > 0) & (rad <= LOW_BAND))
    spec = _periodic_rfft(torch.cat((x, x_hat)))
    s_x, s_hat = torch.view_as_real(spec[:n]), torch.view_as_real(spec[n:])
    p_x = s_x.square().sum(-1)
    p_hat = s_hat.square().sum(-1)
    cross = (s_hat * s_x).sum(-1)  # Re(X̂ · conj(X))
    e_x = (p_x * hf).sum(dim=(-2, -1))
    e_hat = (p_hat * hf).sum(dim=(-2, -1))
    tiny = torch.finfo(torch.float32).tiny
    gain = ((cross * low).sum(dim=(-2, -1)) / (p_x * low).sum(dim=(-2, -1)).clamp_min(tiny)).clamp(0.1, 10.0)
    ratio = e_hat / (gain.square() * e_x).clamp_min(tiny)
    # A channel of x with no detail above uint8 rounding noise has none to lose.
    flat = e_x <= h * w * QUANT_VAR * hf.sum()
    ratio = torch.where(flat, torch.ones_like(ratio), ratio)
    out = (1 - ratio.mean(dim=1)).clamp_min(0)
    return torch.where((x == x_hat).flatten(1).all(1), torch.zeros_like(out), out)


def blur(x: Tensor, x_hat: Tensor) -> Tensor:
    """Loss of fine detail, per image (N,): 1 − E_hf(x_hat) / (g² · E_hf(x)), clamped at 0.

    Computed on the interior (the border band and corners belong to their own scores), per RGB
    channel, from the spectrum of the periodic component. E_hf = energy above 1/4 cycle/pixel
    (radial). g = least-squares gain of x_hat on x over the low band (0 < f ≤ 1/16), so a change
    of contrast or a per-channel gain (a tint) is not read as lost detail. The ratios are
    averaged over channels; a channel of x without detail (flat) counts as ratio 1. Extra high
    frequencies (noise, a grid) push the ratio above 1 and the score to 0.
    """
    return _blur(*_check_pair(x, x_hat))


# ------------------------------------------------------------------------------------------------
# border / corner


def _band_mask(h: int, w: int, device: torch.device) -> Tensor:
    m = torch.ones(h, w, dtype=torch.bool, device=device)
    m[BAND : h - BAND, BAND : w - BAND] = False
    return m


def _corner_mask(h: int, w: int, device: torch.device) -> Tensor:
    m = torch.zeros(h, w, dtype=torch.bool, device=device)
    for rs in (slice(0, CORNER), slice(h - CORNER, h)):
        for cs in (slice(0, CORNER), slice(w - CORNER, w)):
            m[rs, cs] = True
    return m


def _detail(x: Tensor) -> Tensor:
    """Mean over RGB of |x − 3×3 box mean of x| (reflect padding): where fine detail is."""
    n, c, h, w = x.shape
    box = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate" if min(h, w) < 2 else "reflect"), 3, stride=1)
    return (x - box).abs().mean(dim=1)


def _edge_scores(x: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
    """(border, corner) per image; both 0 when there is no interior."""
    n, _, h, w = x.shape
    if not _has_interior(h, w):
        zero = torch.zeros(n, device=x.device)
        return zero, zero
    err = (x_hat - x).abs().mean(dim=1)
    detail = _detail(x)
    # Least-squares fit err ≈ α·detail + β over the interior's 8×8 blocks, with α, β ≥ 0.
    e = F.avg_pool2d(_interior(err)[:, None], STRIDE).flatten(1)
    d = F.avg_pool2d(_interior(detail)[:, None], STRIDE).flatten(1)
    em, dm = e.mean(1), d.mean(1)
    tiny = torch.finfo(torch.float32).tiny
    var = (d - dm[:, None]).pow(2).mean(1)
    cov = ((d - dm[:, None]) * (e - em[:, None])).mean(1)
    alpha = cov / var.clamp_min(tiny)
    beta = em - alpha * dm
    # Negative slope: the error does not follow detail, fit β alone. Negative intercept: it is
    # all detail, fit a line through the origin.
    origin = (e * d).sum(1) / d.pow(2).sum(1).clamp_min(tiny)
    neg_a, neg_b = alpha < 0, (alpha >= 0) & (beta < 0)
    alpha = torch.where(neg_a, torch.zeros_like(alpha), torch.where(neg_b, origin, alpha))
    beta = torch.where(neg_a, em, torch.where(neg_b, torch.zeros_like(beta), beta))
    out = []
    for region in (_band_mask(h, w, x.device), _corner_mask(h, w, x.device)):
        m = region.to(err.dtype)
        actual = (err * m).sum(dim=(-2, -1)) / m.sum()
        expected = alpha * (detail * m).sum(dim=(-2, -1)) / m.sum() + beta
        out.append(((actual - expected) / expected.clamp_min(GREY_LEVEL)).clamp_min(0))
    return out[0], out[1]


def border(x: Tensor, x_hat: Tensor) -> Tensor:
    """Excess error in the 8-px border band over what the interior predicts, per image (N,).

    err = mean over RGB of |x_hat − x|, detail = mean over RGB of |x − 3×3 box mean|. Fit
    err ≈ α·detail + β (α, β ≥ 0, least squares over the interior's 8×8 blocks; interior =
    pixels at least 16 px from every edge), so the fit absorbs errors that follow the content
    (blur, edges) and uniform ones (noise). Then

        border = max(0, (mean_band err − ê) / max(ê, 1/255)),  ê = α·mean_band detail + β.

    With a content-blind fit (α = 0) this is the plain band-over-interior ratio minus 1. 0 for
    images under 40 px.
    """
    return _edge_scores(*_check_pair(x, x_hat))[0]


def corner(x: Tensor, x_hat: Tensor) -> Tensor:
    """Like :func:`border`, for the four 16×16 corner squares together (N,)."""
    return _edge_scores(*_check_pair(x, x_hat))[1]


# ------------------------------------------------------------------------------------------------
# droplet


def _gaussian_lowpass(t: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of (N, C, H, W) with reflect padding, done in the Fourier domain."""
    h, w = t.shape[-2:]
    pad = min(int(math.ceil(3 * sigma)), h - 1, w - 1)
    tp = F.pad(t, (pad, pad, pad, pad), mode="reflect") if pad > 0 else t
    hp, wp = tp.shape[-2:]
    fu = torch.fft.fftfreq(hp, device=t.device).view(hp, 1)
    fv = torch.fft.rfftfreq(wp, device=t.device).view(1, -1)
    transfer = torch.exp(-2 * math.pi**2 * sigma**2 * (fu**2 + fv**2))
    out = torch.fft.irfft2(torch.fft.rfft2(tp) * transfer, s=(hp, wp))
    return out[..., pad : pad + h, pad : pad + w]


def _droplet(x: Tensor, x_hat: Tensor) -> Tensor:
    n, _, h, w = x.shape
    if h - 2 * MARGIN < WINDOW or w - 2 * MARGIN < WINDOW:
        return torch.zeros(n, device=x.device)
    low = _gaussian_lowpass(_interior(x_hat - x), DROPLET_SIGMA)
    energy = low.pow(2).sum(dim=1, keepdim=True)
    e = F.avg_pool2d(energy, WINDOW, stride=WINDOW // 2).clamp_min(0).sqrt().flatten(1)  # (N, windows)
    med, spread = robust_center_spread(e)
    return ((e.max(dim=1).values - med[:, 0]) / spread[:, 0].clamp_min(GREY_LEVEL)).clamp_min(0)


def droplet(x: Tensor, x_hat: Tensor) -> Tensor:
    """Spike ratio of the residual's local energy over the interior, per image (N,).

    The interior residual (16 px clear of every edge: the band and corners belong to their own
    scores) is low-passed (Gaussian, σ = 4 px), leaving its local mean colour error; each 16×16
    window (stride 8) scores the RMS of that error, e_w. The score is the robust z of the worst
    window:

        droplet = (max_w e_w − median_w e_w) / max(1.4826 · MAD_w(e_w), 1/255).

    Edges, noise and an 8-px grid average out under the low-pass (they would otherwise own the
    largest windows); a blob does not. 0 for a zero residual and for images under 48 px.
    """
    return _droplet(*_check_pair(x, x_hat))


# ------------------------------------------------------------------------------------------------
# droplet: decoder feature maps


def _feature_list(features: Tensor | Iterable[Tensor] | Mapping[str, Any]) -> list[Tensor]:
    if isinstance(features, Tensor):
        items = [features]
    elif isinstance(features, Mapping):
        items = []
        for v in features.values():
            items.extend(v if isinstance(v, (list, tuple)) else [v])
    else:
        items = list(features)
    out = []
    for i, f in enumerate(items):
        if not isinstance(f, Tensor) or f.dim() != 4:
            shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"features[{i}] must be a tensor of shape (N, C, H, W), got {shape}")
        f = f.detach().to(torch.float32)
        if f.numel() and not all(math.isfinite(float(v)) for v in torch.aminmax(f)):
            raise ValueError(f"features[{i}] contains NaN or infinite values")
        out.append(f)
    if not out:
        raise ValueError("features is empty")
    n = out[0].shape[0]
    if any(f.shape[0] != n for f in out):
        raise ValueError(f"features disagree on the batch size: {[tuple(f.shape) for f in out]}")
    return out


def spike_map(features: Tensor) -> Tensor:
    """Per-pixel spike ratio of one decoder feature map (N, C, H, W): a tensor of the same shape.

    For each image and channel, |a − median| over the channel's robust spread (1.4826 · MAD of the
    channel's values, floored at 1e-3 of the image's RMS deviation from the channel medians, so a
    constant channel does not divide by zero). Normal activations reach a few spreads; a droplet
    tens. :func:`droplet_features` is built on it, and the diagnosis report draws its maximum over
    channels.
    """
    if not isinstance(features, Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a tensor of shape (N, C, H, W), got {shape}")
    n, c, h, w = features.shape
    v = features.detach().to(torch.float32).reshape(n, c, -1)
    med, spread = robust_center_spread(v)
    dev = (v - med).abs()
    rms = dev.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
    floor = (1e-3 * rms).clamp_min(1e-12)
    return (dev / torch.maximum(spread, floor)).reshape(n, c, h, w)


def droplet_features(features: Tensor | Iterable[Tensor] | Mapping[str, Any], quantile: float = 0.999) -> Tensor:
    """Spike ratio of decoder feature maps, per image (N,).

    For every map (N, C, H, W) and channel: the largest :func:`spike_map` value (max |a − median|
    over the channel's robust spread); then the ``quantile`` (99.9th percentile) over channels;
    then the maximum over maps, because a droplet lives in a few layers and averaging would
    dilute it. Normal activations score a few spreads (about 3.5 for 32×32 Gaussian maps); a
    droplet scores tens.
    """
    maps = _feature_list(features)
    scores = []
    for f in maps:
        ratio = spike_map(f).flatten(2).max(dim=-1).values  # (N, C)
        scores.append(torch.quantile(ratio, quantile, dim=1))
    return torch.stack(scores).max(dim=0).values


# ------------------------------------------------------------------------------------------------
# decoder feature capture


def is_norm_module(module: nn.Module) -> bool:
    """A GroupNorm (subclasses included), or a module with a ``norm_layer`` (SCN / SpatialNorm)."""
    return isinstance(module, nn.GroupNorm) or hasattr(module, "norm_layer")


def is_decoder_norm(name: str, module: nn.Module) -> bool:
    """Default filter: a norm module (:func:`is_norm_module`) whose qualified name starts with ``decoder.``."""
    return name.startswith("decoder.") and is_norm_module(module)


class FeatureRecorder:
    """Context manager recording the input of every decoder norm during forward passes.

        with FeatureRecorder(vae) as rec:
            x_hat = vae(x)
        scores = diagnose(x, x_hat, features=rec.features)

    Forward pre-hooks go on every module for which ``module_filter(name, module)`` holds
    (default :func:`is_decoder_norm`: works for LDM-style ``decoder.up.{i}.block.{j}.norm1`` and
    for diffusers ``decoder.up_blocks...``; for a bare decoder pass
    ``module_filter=lambda name, m: is_norm_module(m)``), except modules nested in one already
    hooked (the GroupNorm inside a SpatialNorm sees the same tensor). The first tensor argument
    (positional, else keyword) is stored detached, moved to ``device`` if given; a module called
    several times keeps its last input. ``features`` maps qualified names to tensors in the order
    of their last call. Hooks are removed on exit, also when the body raises.
    """

    def __init__(
        self,
        model: nn.Module,
        module_filter: Callable[[str, nn.Module], bool] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.model = model
        self.module_filter = module_filter or is_decoder_norm
        self.device = device
        self.features: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def names(self) -> list[str]:
        """Qualified names of the modules that get a hook."""
        chosen: list[str] = []
        for name, module in self.model.named_modules():
            if not name or not self.module_filter(name, module):
                continue
            if any(name.startswith(p + ".") for p in chosen):
                continue
            chosen.append(name)
        return chosen

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            t = next((a for a in args if isinstance(a, Tensor)), None)
            if t is None:
                t = next((a for a in kwargs.values() if isinstance(a, Tensor)), None)
            if t is None:
                return
            t = t.detach()
            if self.device is not None:
                t = t.to(self.device)
            self.features.pop(name, None)
            self.features[name] = t

        return hook

    def __enter__(self) -> FeatureRecorder:
        names = self.names()
        if not names:
            raise ValueError(
                f"no module of {type(self.model).__name__} matches the filter (by default: GroupNorm or "
                "modules with a norm_layer, named decoder.*); for a bare decoder pass "
                "module_filter=lambda name, m: is_norm_module(m)"
            )
        modules = dict(self.model.named_modules())
        for name in names:
            self._handles.append(modules[name].register_forward_pre_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        """Forget the recorded tensors (e.g. between batches)."""
        self.features = {}


def capture_decoder_features(
    model: nn.Module, fn: Callable[[], Any], module_filter: Callable[[str, nn.Module], bool] | None = None
) -> tuple[Any, dict[str, Tensor]]:
    """Run ``fn()`` with decoder norm inputs of ``model`` recorded; return (fn's result, features)."""
    with FeatureRecorder(model, module_filter) as rec:
        out = fn()
    return out, rec.features


# ------------------------------------------------------------------------------------------------
# all together


@torch.no_grad()
def diagnose(
    x: Tensor,
    x_hat: Tensor,
    features: Tensor | Iterable[Tensor] | Mapping[str, Any] | None = None,
    per_image: bool = False,
) -> dict[str, float] | dict[str, list[float]]:
    """All artifact scores of a batch: ``{name: mean over images}``, or per-image lists.

    Names: color_shift, grid, blur, border, corner, droplet, plus droplet_features when decoder
    feature maps (a list, a dict such as :attr:`FeatureRecorder.features`, or one tensor) are given.
    """
    x, x_hat = _check_pair(x, x_hat)
    border_, corner_ = _edge_scores(x, x_hat)
    scores = {
        "color_shift": _color_shift(x, x_hat),
        "grid": _grid(x, x_hat),
        "blur": _blur(x, x_hat),
        "border": border_,
        "corner": corner_,
        "droplet": _droplet(x, x_hat),
    }
    if features is not None:
        feats = droplet_features(features)
        if feats.shape[0] != x.shape[0]:
            raise ValueError(f"features have batch size {feats.shape[0]}, images {x.shape[0]}")
        scores["droplet_features"] = feats
    if per_image:
        return {k: [float(v) for v in s.cpu()] for k, s in scores.items()}
    return {k: float(s.mean()) for k, s in scores.items()}
