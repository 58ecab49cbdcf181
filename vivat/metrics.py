"""Reconstruction metrics with pinned settings (docs/EVAL.md states the conventions).

Conventions
-----------
* Images are float tensors in [0, 1], shaped (N, 3, H, W) (a single (3, H, W) image is accepted
  too and treated as N = 1).
* The reconstruction is clamped and quantised to uint8 levels before scoring (:func:`quantize`),
  as a saved PNG would be. :func:`evaluate_pairs` does this for you; :func:`psnr` and :func:`ssim`
  score exactly what they are given.
* **PSNR** is computed per image on [0, 1] (data range 1) from the MSE over all of C, H, W, then
  averaged over images (never pooled MSE). Identical images would give +inf; the MSE is floored
  at 1e-10, so the PSNR is capped at **100 dB** and means stay finite. 100 dB is far above any
  real reconstruction (one uint8 step everywhere is 48.1 dB), so the cap only marks "identical".
* **SSIM** uses a Gaussian window of 11 taps, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1,
  computed on each RGB channel over the "valid" region (no padding; the border of 5 pixels is
  left out, as scikit-image and torchmetrics both do), averaged over channels and pixels to one
  value per image, then averaged over images. It is implemented here in float64 and tested
  against ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)`` and torchmetrics'
  ``structural_similarity_index_measure(data_range=1.0)`` map restricted to the same valid region.
  (torchmetrics 1.9's scalar also averages the reflect-padded 5-pixel border, which reads about
  0.004 lower on a 512x512 photo; the valid-region convention is the one of scikit-image,
  pytorch-msssim and the reference implementation of Wang et al.)
* **LPIPS** comes from the ``lpips`` package with inputs in [-1, 1]. Its ImageNet trunk is read
  from torchvision's cache (``torch.hub.get_dir()/checkpoints``); when it is not there it is
  downloaded once from torchvision's published URL into that cache and checked against the
  SHA-256 prefix in its file name, as ``torch.hub`` does (:func:`fetch_lpips_weights`). The linear
  layers ship inside the ``lpips`` package (fetched from the LPIPS project, hash-pinned, only if
  missing). With downloads off (``VIVAT_NO_DOWNLOAD=1``, ``--no-download``) or no network, or a
  file that fails its hash, LPIPS is reported as unavailable, with one message saying why and
  where to put the file, instead of being computed from random weights.
* Evaluation images are cropped or reflect-padded to a multiple of 8 (:func:`prepare_eval_image`),
  and the report says which.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import tempfile
import urllib.request
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from .data import center_crop
from .errors import WeightsError

__all__ = [
    "PSNR_MSE_FLOOR",
    "PSNR_CAP_DB",
    "SSIM_WINDOW",
    "SSIM_SIGMA",
    "SSIM_K1",
    "SSIM_K2",
    "LPIPS_NETS",
    "psnr",
    "ssim",
    "quantize",
    "lpips_trunk_path",
    "lpips_linear_path",
    "lpips_status",
    "downloads_allowed",
    "fetch_lpips_weights",
    "load_lpips",
    "lpips_distance",
    "describe_lpips",
    "evaluate_pairs",
    "EvalPrep",
    "prepare_eval_image",
    "unpad",
]

DATA_RANGE = 1.0
PSNR_MSE_FLOOR = 1e-10
PSNR_CAP_DB = 10.0 * math.log10(DATA_RANGE**2 / PSNR_MSE_FLOOR)  # 100 dB
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# --------------------------------------------------------------------------------------------
# helpers


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{name} must be (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    return x


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = _as_batch(x, "x")
    y = _as_batch(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def _metric_dtype(device: torch.device) -> torch.dtype:
    # float64 everywhere it is supported (Apple's MPS backend has no float64).
    return torch.float32 if device.type == "mps" else torch.float64


# --------------------------------------------------------------------------------------------
# PSNR / SSIM / quantisation


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 256 uint8 levels (k / 255), as saving a PNG would.

    Rounds half up (``floor(255 x + 0.5)``), the same rule :func:`vivat.data.save_image` uses, so
    ``quantize(x)`` equals what ``load_image(save_image(x))`` reads back. Keeps dtype and device.
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"quantize expects a floating-point tensor, got {x.dtype}")
    return torch.floor(x.clamp(0.0, 1.0) * 255.0 + 0.5) / 255.0


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1] (data range 1). Returns a float64 tensor (N,).

    The MSE is taken over C, H, W of each image and floored at 1e-10, so identical images score
    100 dB (``PSNR_CAP_DB``) instead of +inf and means over images stay finite.
    """
    x, y = _check_pair(x, y)
    dt = _metric_dtype(x.device)
    mse = (x.to(dt) - y.to(dt)).pow(2).flatten(1).mean(dim=1)
    mse = mse.clamp_min(PSNR_MSE_FLOOR)
    return 10.0 * torch.log10((DATA_RANGE**2) / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return g.to(dtype=dtype, device=device)


def _ssim_one(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """SSIM of one image pair (C, H, W) -> scalar, valid region only."""
    c = x.shape[0]
    k = win.numel()
    wv = win.view(1, 1, k, 1)
    wh = win.view(1, 1, 1, k)
    # (5C, 1, H, W): x, y, x^2, y^2, xy filtered in one pass per axis.
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=0).unsqueeze(1)
    filt = F.conv2d(F.conv2d(stack, wv), wh)
    mu_x, mu_y, e_xx, e_yy, e_xy = filt.split(c, dim=0)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (num / den).mean()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM on RGB in [0, 1]: Gaussian window 11, sigma 1.5, data range 1. Float64 (N,).

    Each channel is scored over the valid region (pixels whose full 11x11 window lies inside the
    image), then the map is averaged over channels and pixels. Images must be at least 11x11.
    """
    x, y = _check_pair(x, y)
    h, w = x.shape[-2:]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}")
    dt = _metric_dtype(x.device)
    win = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, dt, x.device)
    # one image at a time keeps memory bounded for multi-megapixel photos
    vals = [_ssim_one(x[i].to(dt), y[i].to(dt), win) for i in range(x.shape[0])]
    return torch.stack(vals) if vals else torch.zeros(0, dtype=dt, device=x.device)


# --------------------------------------------------------------------------------------------
# LPIPS: local files, fetched once into the standard caches when missing

# torchvision weight enums the lpips package's trunks correspond to (lpips builds them with
# ``tv.<arch>(pretrained=True)``, i.e. the *_Weights.IMAGENET1K_V1 files).
LPIPS_NETS = ("alex", "vgg", "squeeze")
_TRUNK_WEIGHTS = {
    "alex": ("AlexNet_Weights", "IMAGENET1K_V1"),
    "vgg": ("VGG16_Weights", "IMAGENET1K_V1"),
    "squeeze": ("SqueezeNet1_1_Weights", "IMAGENET1K_V1"),
}
_HASH_RE = re.compile(r"-([a-f0-9]+)\.")
_hash_cache: dict[tuple[str, int, int], str] = {}


def _normalise_net(net: str) -> str:
    net = {"alexnet": "alex", "vgg16": "vgg", "squeezenet": "squeeze"}.get(net, net)
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; expected one of {LPIPS_NETS}")
    return net


def _trunk_filename(net: str) -> str:
    return os.path.basename(urlparse(_trunk_url(net)).path)


def _trunk_url(net: str) -> str:
    import torchvision.models as tvm

    enum_name, member = _TRUNK_WEIGHTS[_normalise_net(net)]
    return getattr(getattr(tvm, enum_name), member).url


def lpips_trunk_path(net: str = "alex") -> Path:
    """Where torchvision keeps the ImageNet trunk for ``net``: ``torch.hub.get_dir()/checkpoints/<file>``.

    ``torch.hub.get_dir()`` follows ``$TORCH_HOME`` (default ``~/.cache/torch``) + ``/hub``.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / _trunk_filename(net)


def lpips_linear_path(net: str = "alex", version: str = "0.1") -> Path | None:
    """The lpips package's linear-layer weights, or None if lpips is absent.

    They ship inside the package; an installation that lacks them gets them fetched (hash-pinned,
    :func:`fetch_lpips_weights`) into ``torch.hub.get_dir()/checkpoints/lpips-v<version>-<net>.pth``,
    which is returned when the package's own file is missing and that one exists.
    """
    shipped = _shipped_linear_path(net, version)
    if shipped is None:
        return None
    fetched = _linear_cache_path(net, version)
    return fetched if not shipped.is_file() and fetched.is_file() else shipped


def _shipped_linear_path(net: str, version: str = "0.1") -> Path | None:
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "weights" / f"v{version}" / f"{_normalise_net(net)}.pth"


def _linear_cache_path(net: str, version: str = "0.1") -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / f"lpips-v{version}-{_normalise_net(net)}.pth"


# Where the LPIPS project publishes its linear layers, and their SHA-256 (lpips 0.1.4, v0.1).
LPIPS_LINEAR_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v{version}/{net}.pth"
_LINEAR_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    "squeeze": "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
}
NO_DOWNLOAD_ENV = "VIVAT_NO_DOWNLOAD"
DOWNLOAD_TIMEOUT_S = 30.0
_fetch_failures: dict[str, str] = {}  # url -> why it failed (tried once per process)


def downloads_allowed(download: bool | None = None) -> bool:
    """Whether missing LPIPS weights may be fetched: ``download`` if given, else not when
    ``$VIVAT_NO_DOWNLOAD`` is set to anything but ``0``/``false``/``no`` (``--no-download`` sets it)."""
    if download is not None:
        return bool(download)
    return os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")


def download_file(url: str, dst: Path, sha256: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch ``url`` to ``dst`` if its SHA-256 starts with ``sha256`` (a prefix or the full digest).

    Written to a temporary file next to ``dst`` and moved into place only after the check, so an
    interrupted or refused download leaves nothing behind. A mismatch raises :class:`WeightsError`;
    network failures raise ``OSError`` (``urllib.error.URLError``).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".partial", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                h.update(chunk)
                f.write(chunk)
        digest = h.hexdigest()
        if not digest.startswith(sha256.lower()):
            raise WeightsError(
                f"{url} does not match its published SHA-256 {sha256[:16]} (got {digest[:16]}); the download was "
                f"discarded and {dst} was not written"
            )
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def fetch_lpips_weights(net: str = "alex", timeout: float = DOWNLOAD_TIMEOUT_S) -> tuple[bool, str]:
    """Download what LPIPS(net) lacks, the standard way; ``(True, "ok")`` or ``(False, why)``.

    The ImageNet trunk comes from torchvision's URL (``<Arch>_Weights.IMAGENET1K_V1``) into
    ``torch.hub.get_dir()/checkpoints``, checked against the SHA-256 prefix in its file name as
    ``torch.hub.load_state_dict_from_url(check_hash=True)`` checks it; the linear layers, only if
    the lpips package lacks them, from :data:`LPIPS_LINEAR_URL` against pinned hashes. A URL that
    failed is not tried again in the same process. Does not look at :func:`downloads_allowed`.
    """
    net = _normalise_net(net)
    wanted = []
    lin = lpips_linear_path(net)
    if lin is not None and not lin.is_file():
        url = LPIPS_LINEAR_URL.format(version="0.1", net=net)
        wanted.append((url, _linear_cache_path(net), _LINEAR_SHA256[net]))
    trunk = lpips_trunk_path(net)
    if not trunk.is_file():
        m = _HASH_RE.search(trunk.name)
        wanted.append((_trunk_url(net), trunk, m.group(1) if m else ""))
    for url, dst, sha in wanted:
        if url in _fetch_failures:
            return False, _fetch_failures[url]
        try:
            download_file(url, dst, sha, timeout=timeout)
        except (OSError, WeightsError) as err:
            why = f"{dst.name} for LPIPS({net}) is not in {dst.parent} and could not be downloaded from {url} ({err})"
            _fetch_failures[url] = why
            return False, why
    return True, "ok"


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


def _trunk_hash_ok(path: Path) -> tuple[bool, str]:
    m = _HASH_RE.search(path.name)
    if m is None:  # no published hash in the name: nothing to compare against
        return True, ""
    prefix = m.group(1)
    digest = _file_sha256(path)
    if digest.startswith(prefix):
        return True, ""
    return False, (
        f"ImageNet trunk file {path} does not match torchvision's published SHA-256 prefix {prefix} "
        f"(got {digest[: len(prefix)]}); refusing to compute LPIPS from it"
    )


def lpips_status(net: str = "alex", *, check_hash: bool = True, download: bool | None = None) -> tuple[bool, str]:
    """Whether LPIPS(net) can be built, and why not: ``(True, "ok")`` or ``(False, reason)``.

    Checks, without constructing anything: the ``lpips`` package, its linear weights file, the
    torchvision ImageNet trunk file in ``torch.hub.get_dir()/checkpoints`` and (``check_hash``)
    that file's SHA-256 against the prefix in its torchvision file name. Missing files are first
    fetched by :func:`fetch_lpips_weights` when :func:`downloads_allowed` (``download``; default:
    unless ``$VIVAT_NO_DOWNLOAD`` is set).
    """
    net = _normalise_net(net)
    lin = lpips_linear_path(net)
    if lin is None:
        return False, "the lpips package is not installed (pip install lpips)"
    trunk = lpips_trunk_path(net)
    fetch_failed = ""
    if (not lin.is_file() or not trunk.is_file()) and downloads_allowed(download):
        ok, why = fetch_lpips_weights(net)
        fetch_failed = "" if ok else why
        lin = lpips_linear_path(net) or lin
    off = f"downloads are off ({NO_DOWNLOAD_ENV}=1 / --no-download)"
    if not lin.is_file():
        return False, fetch_failed or f"the lpips package's linear weights {lin} are missing ({off}; reinstall lpips)"
    if not trunk.is_file():
        if fetch_failed:
            return False, f"{fetch_failed}; copy torchvision's {trunk.name} there to use LPIPS offline"
        return False, (
            f"ImageNet trunk weights {trunk.name} for LPIPS({net}) not found in {trunk.parent} "
            f"({off}; copy torchvision's {trunk.name} there or point TORCH_HOME at a cache that has it)"
        )
    if check_hash:
        ok, why = _trunk_hash_ok(trunk)
        if not ok:
            return False, why
    return True, "ok"


def _load_trunk_into(model: torch.nn.Module, trunk_file: Path) -> None:
    """Copy torchvision ``features.*`` weights from ``trunk_file`` into lpips' sliced trunk.

    lpips splits ``tv.<arch>().features`` into ``slice1..sliceK`` whose children keep the original
    indices as names, so ``features.<i>.<param>`` maps to the child named ``<i>``. Every trunk
    parameter must be found in the file and every ``features.*`` entry of the file must be used.
    """
    sd = torch.load(trunk_file, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise RuntimeError(f"{trunk_file} does not hold a state_dict")
    feat = {k: v for k, v in sd.items() if k.startswith("features.")}
    if not feat:
        raise RuntimeError(f"{trunk_file} has no 'features.*' entries; is it a torchvision classifier checkpoint?")
    used: set[str] = set()
    with torch.no_grad():
        for slice_name, sl in model.net.named_children():
            for idx, module in sl.named_children():
                for pname, tensor in list(module.named_parameters(recurse=False)) + list(
                    module.named_buffers(recurse=False)
                ):
                    key = f"features.{idx}.{pname}"
                    if key not in feat:
                        raise RuntimeError(f"{trunk_file} lacks {key} (needed by LPIPS {slice_name})")
                    src = feat[key]
                    if tuple(src.shape) != tuple(tensor.shape):
                        raise RuntimeError(
                            f"{trunk_file}: {key} has shape {tuple(src.shape)}, LPIPS expects {tuple(tensor.shape)}"
                        )
                    tensor.copy_(src)
                    used.add(key)
    unused = sorted(set(feat) - used)
    if unused:
        raise RuntimeError(f"{trunk_file} holds trunk weights LPIPS does not use: {unused[:4]}...; wrong architecture?")


def _build_lpips(net: str, trunk_file: Path, lin_file: Path) -> torch.nn.Module:
    import lpips as lpips_pkg

    with warnings.catch_warnings():
        # pnet_rand=True makes lpips build the torchvision trunk with pretrained=False (no download);
        # torchvision warns that the 'pretrained' argument is deprecated.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips_pkg.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    _load_trunk_into(model, trunk_file)

    lin_sd = torch.load(lin_file, map_location="cpu", weights_only=True)
    # lin0..linK hold the weights; "lins.*" are the same modules seen through a ModuleList
    expected = {k for k in model.state_dict() if re.match(r"lin\d+\.", k)}
    missing = sorted(expected - set(lin_sd))
    unexpected = sorted(set(lin_sd) - expected)
    if missing or unexpected:
        raise RuntimeError(f"{lin_file} does not fit LPIPS({net}): missing {missing}, unexpected {unexpected}")
    model.load_state_dict(lin_sd, strict=False)

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_lpips(
    net: str = "alex",
    require: bool = False,
    *,
    device: torch.device | str | None = None,
    check_hash: bool = True,
) -> torch.nn.Module | None:
    """Build ``lpips.LPIPS(net)`` from its weight files, or return None (one warning) if it cannot.

    The trunk comes from torchvision's cache file (see :func:`lpips_trunk_path`, fetched there
    first when missing and downloads are allowed, see :func:`lpips_status`) and the linear layers
    from the lpips package; a randomly initialised trunk is never returned. With ``require=True`` a missing piece raises ``RuntimeError`` instead of warning.
    ``check_hash=False`` skips the SHA-256 check of the trunk file: such a model is marked
    ``vivat_trunk_verified = False`` and :func:`evaluate_pairs` labels its numbers as unverified
    (only meant for plumbing tests with stand-in weights).

    The returned module is in eval mode with ``requires_grad=False`` everywhere; it takes inputs in
    [-1, 1] (see :func:`lpips_distance` for [0, 1] inputs). Attributes set on it: ``vivat_net``,
    ``vivat_trunk_file``, ``vivat_trunk_verified``.
    """
    net = _normalise_net(net)
    ok, reason = lpips_status(net, check_hash=check_hash)
    if ok:
        trunk = lpips_trunk_path(net)
        lin = lpips_linear_path(net)
        assert lin is not None
        try:
            model = _build_lpips(net, trunk, lin)
        except Exception as e:  # corrupt / mismatched files
            ok, reason = False, f"could not load LPIPS({net}) from {trunk}: {e}"
    if not ok:
        msg = f"LPIPS unavailable: {reason}. LPIPS will not be reported."
        if require:
            raise RuntimeError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return None
    model.vivat_net = net
    model.vivat_trunk_file = str(trunk)
    model.vivat_trunk_verified = bool(check_hash)
    if device is not None:
        model = model.to(device)
    return model


def describe_lpips(model: torch.nn.Module | None, reason: str | None = None) -> str:
    """The ``settings['lpips']`` string: the net name, or ``"unavailable: <reason>"``."""
    if model is None:
        return f"unavailable: {reason or 'no LPIPS model given'}"
    net = getattr(model, "vivat_net", None) or getattr(model, "pnet_type", "unknown")
    if getattr(model, "vivat_trunk_verified", True) is False:
        return f"{net} (trunk NOT verified against torchvision's hash: plumbing only, not a valid LPIPS)"
    return str(net)


def lpips_distance(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS (N,) for images in [0, 1] (mapped to [-1, 1] for the lpips model)."""
    x, y = _check_pair(x, y)
    p = next(model.parameters(), None)
    dev = p.device if p is not None else x.device
    d = model(x.to(dev, torch.float32) * 2.0 - 1.0, y.to(dev, torch.float32) * 2.0 - 1.0)
    return d.reshape(x.shape[0])


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate_pairs(
    x: torch.Tensor | Sequence[torch.Tensor],
    y: torch.Tensor | Sequence[torch.Tensor],
    lpips_model: torch.nn.Module | None = None,
    *,
    quantise: bool = True,
    lpips_unavailable_reason: str | None = None,
) -> dict[str, Any]:
    """Score originals ``x`` against reconstructions ``y`` (both in [0, 1]).

    ``x`` and ``y`` are (N, 3, H, W) tensors or equal-length sequences of (3, H, W) tensors (sizes
    may differ between pairs). The reconstruction is clamped and quantised to uint8 levels first
    (``quantise=True``, the convention of docs/EVAL.md); originals are used as given and must lie in [0, 1].

    Returns ``{"n", "psnr", "ssim", "lpips", "psnr_mean", "ssim_mean", "lpips_mean", "settings"}``
    where the metric entries are per-image lists (``lpips`` is None when no model is given) and the
    means are plain floats (PSNR capped at 100 dB per image, see module doc). ``settings`` pins
    every choice so it can be printed next to the numbers; its ``lpips`` entry is the net name or
    ``"unavailable: <reason>"`` (pass ``lpips_unavailable_reason``, e.g. from :func:`lpips_status`).
    """
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        xb, yb = _check_pair(x, y)
        pairs = [(xb[i], yb[i]) for i in range(xb.shape[0])]
    else:
        xs, ys = list(x), list(y)
        if len(xs) != len(ys):
            raise ValueError(f"x and y must hold as many images, got {len(xs)} and {len(ys)}")
        pairs = list(zip(xs, ys))
    if not pairs:
        raise ValueError("evaluate_pairs needs at least one image pair")

    psnrs: list[float] = []
    ssims: list[float] = []
    lpipss: list[float] | None = [] if lpips_model is not None else None
    with torch.no_grad():
        for i, (a, b) in enumerate(pairs):
            a = _as_batch(a, "x")
            b = _as_batch(b, "y")
            if a.shape != b.shape:
                raise ValueError(f"pair {i}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
            if a.shape[1] != 3:
                raise ValueError(f"pair {i}: expected RGB (3 channels), got {a.shape[1]}")
            lo, hi = float(a.min()), float(a.max())
            if lo < -1e-3 or hi > 1.0 + 1e-3:
                raise ValueError(
                    f"pair {i}: original has values in [{lo:.3f}, {hi:.3f}], expected [0, 1] "
                    "(convert from [-1, 1] with (x + 1) / 2)"
                )
            a = a.float().clamp(0.0, 1.0)
            b = quantize(b.float()) if quantise else b.float()
            psnrs.extend(psnr(a, b).tolist())
            ssims.extend(ssim(a, b).tolist())
            if lpipss is not None:
                lpipss.extend(lpips_distance(lpips_model, a, b).tolist())

    def _mean(v: list[float] | None) -> float | None:
        return None if v is None else float(sum(v) / len(v))

    settings = {
        "data_range": DATA_RANGE,
        "psnr": f"per image (MSE over C,H,W), MSE floored at {PSNR_MSE_FLOOR:g} -> cap {PSNR_CAP_DB:.0f} dB, "
        "then mean over images",
        "ssim_window": SSIM_WINDOW,
        "ssim_sigma": SSIM_SIGMA,
        "ssim_k1": SSIM_K1,
        "ssim_k2": SSIM_K2,
        "ssim": "Gaussian window, RGB channels, valid region (no padding, as skimage / pytorch-msssim), "
        "per image then mean",
        "quantised": bool(quantise),
        "quantisation": "reconstruction clamped to [0,1] and rounded to uint8 levels" if quantise else "none",
        "lpips": describe_lpips(lpips_model, lpips_unavailable_reason),
        "lpips_input_range": "[-1, 1]",
    }
    return {
        "n": len(pairs),
        "psnr": psnrs,
        "ssim": ssims,
        "lpips": lpipss,
        "psnr_mean": _mean(psnrs),
        "ssim_mean": _mean(ssims),
        "lpips_mean": _mean(lpipss),
        "settings": settings,
    }


# --------------------------------------------------------------------------------------------
# sizing to the f8 stride


@dataclass(frozen=True)
class EvalPrep:
    """How :func:`prepare_eval_image` changed an image.

    mode: "crop" or "pad" (or "none" when the size already was a multiple).
    orig_size / size: (H, W) before / after.
    offset: (top, left) of the kept region in the original (crop mode).
    pad: (top, bottom, left, right) pixels added by reflection (pad mode; only bottom/right are used).
    """

    mode: str
    orig_size: tuple[int, int]
    size: tuple[int, int]
    multiple: int
    offset: tuple[int, int] = (0, 0)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)

    def describe(self) -> str:
        (h, w), (h2, w2) = self.orig_size, self.size
        if self.mode == "crop":
            return f"center-cropped {h}x{w} -> {h2}x{w2} (multiple of {self.multiple})"
        if self.mode == "pad":
            return f"reflect-padded {h}x{w} -> {h2}x{w2} (multiple of {self.multiple}), cropped back for scoring"
        return f"{h}x{w} already a multiple of {self.multiple}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["description"] = self.describe()
        return d


def _reflect_pad(x: torch.Tensor, bottom: int, right: int) -> torch.Tensor:
    """Reflect-pad a (N, C, H, W) tensor at the bottom/right, repeating when the pad exceeds the size.

    A side of a single pixel cannot be reflected and is replicated instead.
    """
    if bottom > 0 and x.shape[-2] == 1:
        x = F.pad(x, (0, 0, 0, bottom), mode="replicate")
        bottom = 0
    if right > 0 and x.shape[-1] == 1:
        x = F.pad(x, (0, right, 0, 0), mode="replicate")
        right = 0
    while bottom > 0 or right > 0:
        h, w = x.shape[-2:]
        pb, pr = min(bottom, h - 1), min(right, w - 1)
        x = F.pad(x, (0, pr, 0, pb), mode="reflect")
        bottom -= pb
        right -= pr
    return x


def prepare_eval_image(img: torch.Tensor, mode: str = "crop", multiple: int = 8) -> tuple[torch.Tensor, EvalPrep]:
    """Bring an image (3, H, W) or batch (N, 3, H, W) to H, W multiples of ``multiple``.

    ``mode="crop"``: center crop to the largest multiple (drops at most multiple-1 rows/columns).
    ``mode="pad"``: reflect-pad at the bottom/right to the next multiple; after decoding, use
    :func:`unpad` to score only the original pixels. Returns ``(tensor, EvalPrep)``.
    """
    if mode not in ("crop", "pad"):
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    single = img.dim() == 3
    x = _as_batch(img, "img")
    h, w = x.shape[-2:]
    if h % multiple == 0 and w % multiple == 0:
        return img, EvalPrep("none", (h, w), (h, w), multiple)
    if mode == "crop":
        if h < multiple or w < multiple:
            raise ValueError(f"image {h}x{w} is smaller than {multiple} pixels; use mode='pad'")
        out = center_crop(x, multiple=multiple)
        h2, w2 = out.shape[-2:]
        info = EvalPrep("crop", (h, w), (h2, w2), multiple, offset=((h - h2) // 2, (w - w2) // 2))
    else:
        h2, w2 = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        out = _reflect_pad(x, h2 - h, w2 - w)
        info = EvalPrep("pad", (h, w), (h2, w2), multiple, pad=(0, h2 - h, 0, w2 - w))
    return (out[0] if single else out), info


def unpad(x: torch.Tensor, info: EvalPrep) -> torch.Tensor:
    """Undo the padding of :func:`prepare_eval_image` (crop back to the original H, W).

    For "crop" / "none" the tensor is returned unchanged: the cropped region is what gets scored
    (compare it with the equally cropped original).
    """
    if info.mode != "pad":
        return x
    h, w = info.orig_size
    if tuple(x.shape[-2:]) != tuple(info.size):
        raise ValueError(f"expected spatial size {info.size}, got {tuple(x.shape[-2:])}")
    return x[..., :h, :w]
