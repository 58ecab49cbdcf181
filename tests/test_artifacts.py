"""Artifact scores: each fires on its own artifact, injected into real photos, and not on the others.

Photos: four skimage.data images (always available) and, when present, three of
../shared/data/photos/val; all centre-cropped to 256×256. Every artifact is injected at three
strengths; per image, its own score must rise strictly with the strength and start clearly above
clean (at least 2 × NEAR), while the other scores stay within NEAR of their clean value (0 for
x̂ = x). NEAR is the honest worst drift measured over all 13 photos (skimage + val) at these
strengths, rounded up; see docs/ARTIFACTS.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vivat import artifacts as A

VAL = Path(__file__).resolve().parents[1].parent / "shared/data/photos/val"
SIZE = 256

# Largest drift a score may show under an artifact that is not its own (clean value is 0).
NEAR = {"color_shift": 0.5, "grid": 0.5, "blur": 0.05, "border": 0.25, "corner": 0.25, "droplet": 5.0}
# Upper bounds for clean reconstructions: x̂ = x + N(0, 0.01²), clipped (and uint8 rounding).
CLEAN = {"color_shift": 0.2, "grid": 0.1, "blur": 0.01, "border": 0.15, "corner": 0.15, "droplet": 2.0}


# ------------------------------------------------------------------------------------------------
# photos


def _center_crop(a: np.ndarray, s: int = SIZE) -> torch.Tensor:
    h, w = a.shape[:2]
    t, l = (h - s) // 2, (w - s) // 2
    a = np.ascontiguousarray(a[t : t + s, l : l + s, :3])
    return torch.from_numpy(a).permute(2, 0, 1).float().div(255)


def _skimage_photos() -> torch.Tensor:
    import skimage.data

    return torch.stack([_center_crop(getattr(skimage.data, n)()) for n in ("astronaut", "chelsea", "coffee", "rocket")])


def _val_photos() -> torch.Tensor:
    from PIL import Image

    files = sorted(VAL.glob("*.png")) + sorted(VAL.glob("*.jpg"))
    if not files:
        pytest.skip(f"no photos in {VAL}")
    return torch.stack([_center_crop(np.asarray(Image.open(f).convert("RGB"))) for f in files[::3][:3]])


_PHOTOS: dict[str, torch.Tensor] = {}


@pytest.fixture(params=["skimage", "val"])
def photos(request) -> torch.Tensor:
    if request.param == "val" and not VAL.is_dir():
        pytest.skip(f"{VAL} not found")
    if request.param not in _PHOTOS:
        _PHOTOS[request.param] = _skimage_photos() if request.param == "skimage" else _val_photos()
    return _PHOTOS[request.param]


# ------------------------------------------------------------------------------------------------
# synthetic artifacts; each takes a batch (N, 3, H, W) in [0, 1] and returns one, clipped


def tint(x: torch.Tensor, s: float) -> torch.Tensor:
    """Global colour offset (a warm tint), s in [0, 1] units."""
    return (x + s * torch.tensor([1.0, 0.25, -0.75]).view(1, 3, 1, 1)).clamp(0, 1)


def lattice(x: torch.Tensor, s: float) -> torch.Tensor:
    """A fixed random 8×8 tile per channel (zero mean, peak 1), repeated, times s."""
    g = torch.Generator().manual_seed(8)
    tile = torch.rand(3, 8, 8, generator=g) - 0.5
    tile = tile - tile.mean(dim=(1, 2), keepdim=True)
    tile = tile / tile.abs().amax()
    return (x + s * tile.repeat(1, x.shape[-2] // 8, x.shape[-1] // 8)).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _smooth_field(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(1, 3, h // 8, w // 8, generator=g)
    return F.interpolate(e, size=(h, w), mode="bilinear", align_corners=False)


def _edge_error(x: torch.Tensor, s: float, mask: torch.Tensor, colour, seed: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    err = torch.tensor(colour).view(1, 3, 1, 1) + 0.5 * _smooth_field(h, w, seed)
    return (x + s * mask * err).clamp(0, 1)


def border_band(x: torch.Tensor, s: float) -> torch.Tensor:
    """Wrong colour (plus a smooth wobble) in the 8-px band along every edge."""
    h, w = x.shape[-2:]
    m = torch.ones(h, w)
    m[8 : h - 8, 8 : w - 8] = 0
    return _edge_error(x, s, m, (0.6, -0.3, 0.5), seed=1)


def corners(x: torch.Tensor, s: float) -> torch.Tensor:
    """Wrong colour (plus a smooth wobble) in the four 16×16 corners."""
    h, w = x.shape[-2:]
    m = torch.zeros(h, w)
    for rs in (slice(0, 16), slice(h - 16, h)):
        for cs in (slice(0, 16), slice(w - 16, w)):
            m[rs, cs] = 1
    return _edge_error(x, s, m, (-0.5, 0.6, 0.4), seed=2)


def blobs(x: torch.Tensor, s: float, k: int = 3, sigma: float = 3.0) -> torch.Tensor:
    """k bright Gaussian blobs of peak s, centred in the darkest interior 16×16 windows (so they
    are not clipped away), at least 48 px apart."""
    n, _, h, w = x.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = []
    for img in x:
        win = F.avg_pool2d(img.mean(0)[None, None, 16 : h - 16, 16 : w - 16], 16)[0, 0]
        add, used = torch.zeros(h, w), []
        for i in win.flatten().argsort().tolist():
            cy, cx = 24 + 16 * (i // win.shape[1]), 24 + 16 * (i % win.shape[1])
            if any(abs(cy - a) + abs(cx - b) < 48 for a, b in used):
                continue
            used.append((cy, cx))
            add += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
            if len(used) == k:
                break
        out.append((img + s * add).clamp(0, 1))
    return torch.stack(out)


def white_noise(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


# artifact: (injection, strengths, the scores it owns)
ARTIFACTS = {
    "tint": (tint, (0.01, 0.02, 0.04), ("color_shift",)),
    "lattice": (lattice, (0.01, 0.02, 0.04), ("grid",)),
    "blur": (gaussian_blur, (0.4, 0.7, 1.0), ("blur",)),
    "border_band": (border_band, (0.05, 0.1, 0.2), ("border", "corner")),
    "corners": (corners, (0.05, 0.1, 0.2), ("border", "corner")),
    "blobs": (blobs, (0.15, 0.3, 0.6), ("droplet",)),
}
OWN = {
    "tint": "color_shift",
    "lattice": "grid",
    "blur": "blur",
    "border_band": "border",
    "corners": "corner",
    "blobs": "droplet",
}


# ------------------------------------------------------------------------------------------------
# each score fires on its artifact, monotonically, and only there


@pytest.mark.parametrize("artifact", list(ARTIFACTS))
def test_score_rises_with_its_artifact_and_others_stay_clean(photos, artifact):
    inject, strengths, owned = ARTIFACTS[artifact]
    own = OWN[artifact]
    runs = [A.diagnose(photos, inject(photos, s), per_image=True) for s in strengths]
    assert set(runs[0]) == set(A.SCORE_NAMES)
    values = torch.tensor([r[own] for r in runs])  # (strengths, images)
    assert (values[0] >= 2 * NEAR[own]).all(), f"{own} at weakest {artifact}: {values[0].tolist()}"
    assert (values[1:] > values[:-1]).all(), f"{own} not increasing with {artifact}: {values.tolist()}"
    for name in A.SCORE_NAMES:
        if name in owned:
            continue
        worst = max(max(r[name]) for r in runs)
        assert worst <= NEAR[name], f"{name} drifted to {worst:.3g} under {artifact} (allowed {NEAR[name]})"


def test_corner_and_border_separate(photos):
    """The band injection lifts border most, the corner injection lifts corner most."""
    band = A.diagnose(photos, border_band(photos, 0.1), per_image=True)
    corner = A.diagnose(photos, corners(photos, 0.1), per_image=True)
    assert all(b > c for b, c in zip(band["border"], corner["border"]))
    assert all(c > b for b, c in zip(band["corner"], corner["corner"]))


# ------------------------------------------------------------------------------------------------
# clean reconstructions


def test_identical_reconstruction_scores_exactly_zero(photos):
    d = A.diagnose(photos, photos.clone(), per_image=True)
    assert d == {name: [0.0] * len(photos) for name in A.SCORE_NAMES}


@pytest.mark.parametrize("kind", ["white_noise", "uint8_rounding"])
def test_clean_reconstruction_scores_clean(photos, kind):
    if kind == "white_noise":
        x_hat = white_noise(photos, 0.01)
    else:
        x_hat = (white_noise(photos, 0.5 / 255) * 255).round() / 255
    d = A.diagnose(photos, x_hat, per_image=True)
    for name in A.SCORE_NAMES:
        assert max(d[name]) <= CLEAN[name], f"{kind}: {name} = {d[name]}"


def test_grid_is_the_rms_of_the_pattern_in_grey_levels():
    """On a flat image a pure lattice is all excess: grid equals its RMS in units of 1/255."""
    x = torch.full((1, 3, 64, 96), 0.5)
    x_hat = lattice(x, 0.02)
    rms = (x_hat - x).pow(2).mean().sqrt().item() * 255
    assert A.grid(x, x_hat).item() == pytest.approx(rms, rel=1e-3)


def test_grid_does_not_depend_on_image_size():
    x = torch.full((1, 3, 64, 64), 0.5)
    big = torch.full((1, 3, 256, 256), 0.5)
    assert A.grid(x, lattice(x, 0.02)).item() == pytest.approx(A.grid(big, lattice(big, 0.02)).item(), rel=1e-3)


def test_blur_ignores_a_gain_change(photos):
    x_hat = photos * torch.tensor([1.0, 0.9, 0.8]).view(1, 3, 1, 1)
    assert A.blur(photos, x_hat).max().item() <= 0.01


def test_color_shift_matches_a_known_lab_difference():
    # sRGB (0.5, 0.5, 0.5) -> L* = 53.39, a* = b* = 0; pure white -> L* = 100.
    lab = A.rgb_to_lab(torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]), dim=-1)
    assert lab[0].tolist() == pytest.approx([53.389, 0.0, 0.0], abs=0.02)
    assert lab[1].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=0.02)
    assert lab[2].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=0.05)
    x = torch.full((1, 3, 64, 64), 0.5)
    assert A.color_shift(x, torch.ones_like(x)).item() == pytest.approx(100 - 53.389, abs=0.02)


# ------------------------------------------------------------------------------------------------
# interface


def test_diagnose_interface(photos):
    x_hat = gaussian_blur(photos, 0.7)
    per = A.diagnose(photos, x_hat, per_image=True)
    mean = A.diagnose(photos, x_hat)
    assert list(per) == list(A.SCORE_NAMES) and list(mean) == list(A.SCORE_NAMES)
    for name in A.SCORE_NAMES:
        assert len(per[name]) == len(photos) and all(isinstance(v, float) for v in per[name])
        assert isinstance(mean[name], float)
        assert mean[name] == pytest.approx(sum(per[name]) / len(photos), rel=1e-5, abs=1e-7)
    # Per-image scores do not depend on the rest of the batch.
    alone = A.diagnose(photos[1:2], x_hat[1:2])
    for name in A.SCORE_NAMES:
        assert alone[name] == pytest.approx(per[name][1], rel=1e-4, abs=1e-5)
    # The single-score functions agree with diagnose.
    for name in A.SCORE_NAMES:
        assert getattr(A, name)(photos[:2], x_hat[:2]).tolist() == pytest.approx(per[name][:2], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("hw", [(8, 8), (16, 24), (40, 40), (64, 128), (136, 72)])
def test_any_size_multiple_of_8(hw):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, *hw, generator=g)
    d = A.diagnose(x, white_noise(x, 0.02), per_image=True)
    assert all(math.isfinite(v) and v >= 0 for vs in d.values() for v in vs)
    assert A.diagnose(x, x.clone()) == {name: 0.0 for name in A.SCORE_NAMES}


def test_other_dtypes_are_scored_in_fp32(photos):
    x, x_hat = photos[:2], gaussian_blur(photos[:2], 0.7)
    ref = A.diagnose(x, x_hat)
    d64 = A.diagnose(x.double(), x_hat.double())
    for name in A.SCORE_NAMES:
        assert d64[name] == pytest.approx(ref[name], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "x_shape, xh_shape, arg",
    [
        ((2, 3, 64, 64), (2, 3, 64, 72), "x_hat"),
        ((3, 64, 64), (3, 64, 64), "x"),
        ((2, 4, 64, 64), (2, 4, 64, 64), "x"),
        ((2, 3, 60, 64), (2, 3, 60, 64), "x"),
        ((2, 3, 64, 64), (1, 3, 64, 64), "x_hat"),
    ],
)
def test_bad_shapes_raise(x_shape, xh_shape, arg):
    with pytest.raises(ValueError, match=arg):
        A.diagnose(torch.rand(x_shape), torch.rand(xh_shape))


@pytest.mark.parametrize("bad, arg", [(float("nan"), "x_hat"), (float("inf"), "x_hat"), (255.0, "x_hat")])
def test_bad_values_raise(bad, arg):
    x = torch.rand(1, 3, 64, 64)
    x_hat = x.clone()
    x_hat[0, 1, 5, 5] = bad
    with pytest.raises(ValueError, match=arg):
        A.diagnose(x, x_hat)
    with pytest.raises(ValueError, match="x "):
        A.grid(x_hat, x)


# ------------------------------------------------------------------------------------------------
# decoder feature maps


def _random_features(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 64, 16, 16), (2, 64, 32, 32), (2, 32, 64, 64)]
    return [torch.randn(s, generator=g) * (1 + i) + i for i, s in enumerate(shapes)]


def test_droplet_features_fire_on_a_planted_spike():
    clean = _random_features()
    base = A.droplet_features(clean)
    assert (base < 8).all(), base
    spiked = [f.clone() for f in clean]
    g = torch.Generator().manual_seed(1)
    layer = int(torch.randint(len(spiked), (1,), generator=g))
    f = spiked[layer]
    c, i, j = (int(torch.randint(n, (1,), generator=g)) for n in f.shape[1:])
    f[1, c, i, j] += 60 * f[1, c].std()  # only image 1
    score = A.droplet_features(spiked)
    assert score[0] == pytest.approx(base[0].item())
    assert score[1] > 5 * base[1], (score, base)
    # dict input (as recorded) gives the same numbers as a list
    as_dict = {f"decoder.n{k}": t for k, t in enumerate(spiked)}
    assert torch.equal(A.droplet_features(as_dict), score)
    d = A.diagnose(torch.rand(2, 3, 64, 64).clamp(0, 1), torch.rand(2, 3, 64, 64), features=spiked, per_image=True)
    assert d["droplet_features"] == pytest.approx(score.tolist())


def test_spike_map_is_what_droplet_features_ranks():
    g = torch.Generator().manual_seed(4)
    f = torch.randn(2, 6, 12, 10, generator=g)
    f[1, 4, 7, 3] = 50.0
    z = A.spike_map(f)
    assert z.shape == f.shape and (z >= 0).all()
    # by hand for one channel: |a - median| over 1.4826 * MAD
    v = f[1, 4].flatten()
    med = v.median()
    spread = 1.4826 * (v - med).abs().median()
    assert torch.allclose(z[1, 4].flatten(), (v - med).abs() / spread, rtol=1e-6)
    assert z[1].flatten(1).amax(1).argmax() == 4 and z[1, 4].argmax() == 7 * 10 + 3
    ratio = z.flatten(2).amax(-1)
    assert torch.equal(A.droplet_features(f), torch.quantile(ratio, 0.999, dim=1))
    med, spread = A.robust_center_spread(torch.tensor([[1.0, 2.0, 3.0, 100.0]]))
    assert med.item() == 2.0 and spread.item() == pytest.approx(1.4826 * 1.0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        A.spike_map(torch.ones(3, 4, 4))


def test_one_list_of_report_numbers_with_their_direction():
    assert A.REPORT_COLUMNS == (*A.METRICS, *A.ARTIFACT_SCORES)
    assert A.ARTIFACT_SCORES == (*A.SCORE_NAMES, "droplet_features")
    assert A.HIGHER_IS_BETTER == {"psnr", "ssim"} and A.HIGHER_IS_BETTER < set(A.REPORT_COLUMNS)
    assert set(A.REFERENCE_LEVELS) == set(A.ARTIFACT_SCORES)
    x = torch.rand(1, 3, 64, 64)
    assert set(A.diagnose(x, x, features=[torch.randn(1, 4, 8, 8)])) == set(A.ARTIFACT_SCORES)


def test_droplet_features_constant_maps_and_bad_input():
    assert A.droplet_features([torch.ones(2, 8, 4, 4)]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="features"):
        A.droplet_features([torch.ones(2, 8, 4)])
    with pytest.raises(ValueError, match="batch"):
        A.droplet_features([torch.ones(2, 8, 4, 4), torch.ones(3, 8, 4, 4)])
    with pytest.raises(ValueError, match="batch size"):
        A.diagnose(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), features=[torch.ones(2, 8, 4, 4)])


class _SpatialNormLike(nn.Module):
    """Duck-typed SCN: has a ``norm_layer`` and takes (f, zq)."""

    def __init__(self, c: int, zc: int) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(8, c)
        self.conv_y = nn.Conv2d(zc, c, 1)
        self.conv_b = nn.Conv2d(zc, c, 1)

    def forward(self, f, zq):
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


class _Decoder(nn.Module):
    def __init__(self, zc: int = 4, c: int = 16) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(zc, c, 3, padding=1)
        self.mid = nn.ModuleDict({"norm1": nn.GroupNorm(8, c)})
        self.up = nn.ModuleList([nn.ModuleDict({"norm1": _SpatialNormLike(c, zc)})])
        self.norm_out = nn.GroupNorm(8, c)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)
        self.droplet = False

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid["norm1"](h)
        h = F.interpolate(h, scale_factor=2.0)
        if self.droplet:  # a feature spike, as a decoder forms one to game GroupNorm
            h = h.clone()
            h[:, 3, 2, 5] += 500.0
        h = self.up[0]["norm1"](h, zq=z)
        return torch.sigmoid(self.conv_out(F.silu(self.norm_out(h))))


class _ToyVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(8, 16), nn.Conv2d(16, 4, 8, stride=8))
        self.decoder = _Decoder()

    def forward(self, x):
        z = self.encoder(x)
        return F.interpolate(self.decoder(z), scale_factor=4.0)


def test_feature_recorder_hooks_decoder_norms_only():
    torch.manual_seed(0)
    vae = _ToyVAE().eval()
    x = torch.rand(2, 3, 64, 64)
    with A.FeatureRecorder(vae) as rec:
        assert rec.names() == ["decoder.mid.norm1", "decoder.up.0.norm1", "decoder.norm_out"]
        with torch.no_grad():
            x_hat = vae(x)
    assert list(rec.features) == ["decoder.mid.norm1", "decoder.up.0.norm1", "decoder.norm_out"]
    assert [tuple(t.shape) for t in rec.features.values()] == [(2, 16, 8, 8), (2, 16, 16, 16), (2, 16, 16, 16)]
    assert all(not t.requires_grad for t in rec.features.values())
    # the recorded tensor is the module's input
    z = vae.encoder(x)
    assert torch.allclose(rec.features["decoder.mid.norm1"], vae.decoder.conv_in(z), atol=1e-6)
    # hooks are gone after the block
    assert all(not m._forward_pre_hooks for m in vae.modules())
    vae(x)
    assert list(rec.features) == ["decoder.mid.norm1", "decoder.up.0.norm1", "decoder.norm_out"]
    d = A.diagnose(x, x_hat, features=rec.features)
    assert set(d) == set(A.SCORE_NAMES) | {"droplet_features"}


def test_feature_recorder_sees_a_decoder_droplet():
    torch.manual_seed(0)
    vae = _ToyVAE().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        _, clean = A.capture_decoder_features(vae, lambda: vae(x))
        vae.decoder.droplet = True
        _, spiked = A.capture_decoder_features(vae, lambda: vae(x))
    before, after = A.droplet_features(clean), A.droplet_features(spiked)
    assert (after > 5 * before).all(), (before, after)


def test_feature_recorder_removes_hooks_on_error_and_rejects_no_match():
    vae = _ToyVAE()
    with pytest.raises(RuntimeError):
        with A.FeatureRecorder(vae):
            raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks for m in vae.modules())
    with pytest.raises(ValueError, match="filter"):
        with A.FeatureRecorder(vae.encoder):
            pass
    # a bare decoder, with a custom filter
    with A.FeatureRecorder(vae.decoder, lambda name, m: A.is_norm_module(m)) as rec:
        vae.decoder(torch.rand(1, 4, 8, 8))
    assert list(rec.features) == ["mid.norm1", "up.0.norm1", "norm_out"]


# ------------------------------------------------------------------------------------------------
# device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = _skimage_photos()[:2]
    x_hat = blobs(gaussian_blur(lattice(tint(x, 0.02), 0.01), 0.7), 0.3)
    feats = _random_features()
    cpu = A.diagnose(x, x_hat, features=feats, per_image=True)
    gpu = A.diagnose(x.cuda(), x_hat.cuda(), features=[f.cuda() for f in feats], per_image=True)
    for name in cpu:
        assert gpu[name] == pytest.approx(cpu[name], rel=1e-3, abs=1e-3), name
