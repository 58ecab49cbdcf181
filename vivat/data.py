"""Image folders, image I/O and the embedded demo photos.

* :class:`ImageFolderDataset`: square crops in [-1, 1] from a folder tree, robust to odd files,
  with augmentation that is reproducible from (seed, epoch, index).
* :func:`load_image` / :func:`save_image` / :func:`save_grid`: [0, 1] tensors <-> PNG files.
* :func:`center_crop`: the one center crop every part of vivat uses (dataset, evaluation, reports).
* :func:`demo_images`: the project's default data, written from the colour photographs that ship
  inside scikit-image (no download, no external folder).

Colour handling (shared by the dataset and :func:`load_image`): EXIF orientation is applied;
grayscale, palette, CMYK etc. are converted to RGB; images with transparency (RGBA, LA, palette
with a transparent index) are composited over white; 16-bit grayscale is scaled by 65535.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

__all__ = [
    "COLOR_AUGMENTATIONS",
    "IMAGE_EXTENSIONS",
    "IMAGE_LOAD_ERRORS",
    "ImageFolderDataset",
    "DemoImages",
    "DEMO_TRAIN",
    "DEMO_VAL",
    "center_crop",
    "check_scale",
    "demo_images",
    "load_image",
    "reflect_pad_to",
    "save_image",
    "save_png_array",
    "save_grid",
    "scan_images",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

# Errors PIL raises for unreadable, truncated or hostile files.
IMAGE_LOAD_ERRORS = (OSError, ValueError, SyntaxError, EOFError, UnidentifiedImageError, Image.DecompressionBombError)

# Files that failed to decode in this process: each is warned about once, however many datasets
# (training and validation crops of one folder) read it.
_WARNED_UNDECODABLE: set[str] = set()


# --------------------------------------------------------------------------------------------
# decoding


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """PIL image -> float32 (H, W, 3) array in [0, 1] (see module doc for the colour rules)."""
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF must not make the image unusable
        pass
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode in ("L", "RGB") and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        return np.ascontiguousarray(rgba[..., :3] * alpha + (1.0 - alpha))
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        if mode == "F":
            scale = 1.0 if float(arr.max(initial=0.0)) <= 1.0 else 255.0
        elif mode.startswith("I;16") or float(arr.max(initial=0.0)) > 255.0:
            scale = 65535.0
        else:
            scale = 255.0
        arr = np.clip(arr / scale, 0.0, 1.0)
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) / 255.0


def _open_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return _to_rgb_array(im)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a float32 tensor (3, H, W) in [0, 1], converted to RGB."""
    arr = _open_rgb(Path(path))
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def center_crop(image: torch.Tensor, size: int | tuple[int, int] | None = None, *, multiple: int = 1) -> torch.Tensor:
    """The central ``size`` region of the last two dims of ``image`` (..., H, W), as a view.

    ``size`` is one side or (height, width); a side longer than the image keeps the image's (so
    ``size=max_side`` limits both sides to at most ``max_side``); None keeps both. Each side is then
    rounded down to a multiple of ``multiple``. The region starts at ((H - h) // 2, (W - w) // 2):
    an odd excess drops the extra row or column at the bottom or right.
    """
    if not isinstance(image, torch.Tensor) or image.dim() < 2:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor (..., H, W), got {shape}")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    h, w = image.shape[-2:]
    if size is None:
        size = (h, w)
    elif isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
    ):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    h2, w2 = min(h, size[0]), min(w, size[1])
    h2, w2 = h2 - h2 % multiple, w2 - w2 % multiple
    if h2 == 0 or w2 == 0:
        raise ValueError(f"image {h}x{w} has no {multiple}-pixel multiple to crop to; pad it instead")
    top, left = (h - h2) // 2, (w - w2) // 2
    return image[..., top : top + h2, left : left + w2]


# --------------------------------------------------------------------------------------------
# writing


def _to_uint8_hwc(t: torch.Tensor) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(t).__name__}")
    t = t.detach()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected an image (3, H, W) or (1, H, W), got shape {tuple(t.shape)}")
    t = t.float().cpu()
    # round half up, the same rule as vivat.metrics.quantize
    u8 = torch.floor(t.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
    arr = u8.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[2] == 1 else arr


def save_png_array(arr: np.ndarray, path: Path, compress_level: int = 6) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"images are saved as PNG; give a .png path, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(arr).save(f, format="PNG", compress_level=compress_level)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def save_image(t: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a tensor (3, H, W) (or (1, 3, H, W), or 1-channel) in [0, 1] as an 8-bit PNG.

    Values are clamped and rounded half up to uint8 (matching ``vivat.metrics.quantize``). The file
    is written to a temporary name in the same folder and renamed into place, so readers never see
    a partial file. Parent folders are created. Returns the path.
    """
    return save_png_array(_to_uint8_hwc(t), Path(path))


def save_grid(
    rows: Sequence[Sequence[torch.Tensor] | torch.Tensor],
    path: str | os.PathLike,
    *,
    padding: int = 2,
    pad_value: float = 1.0,
) -> Path:
    """Save rows of images (each (3, H, W) in [0, 1]; a row may also be an (N, 3, H, W) tensor) as one PNG.

    Every cell is as large as the largest image; smaller images sit in the top-left of their cell.
    Cells are separated by ``padding`` pixels of ``pad_value``. No labels are drawn.
    """
    grid_rows: list[list[torch.Tensor]] = []
    for r in rows:
        imgs = list(r.unbind(0)) if isinstance(r, torch.Tensor) and r.dim() == 4 else list(r)
        cells = []
        for im in imgs:
            im = im.detach().float().cpu()
            if im.dim() == 2:
                im = im.unsqueeze(0)
            if im.dim() != 3 or im.shape[0] not in (1, 3):
                raise ValueError(f"grid cells must be (3, H, W) or (1, H, W), got {tuple(im.shape)}")
            cells.append(im.expand(3, -1, -1) if im.shape[0] == 1 else im)
        grid_rows.append(cells)
    if not grid_rows or not any(grid_rows):
        raise ValueError("save_grid needs at least one image")
    ch = max(im.shape[1] for r in grid_rows for im in r)
    cw = max(im.shape[2] for r in grid_rows for im in r)
    ncols = max(len(r) for r in grid_rows)
    nrows = len(grid_rows)
    H = nrows * ch + (nrows + 1) * padding
    W = ncols * cw + (ncols + 1) * padding
    canvas = torch.full((3, H, W), float(pad_value))
    for i, r in enumerate(grid_rows):
        for j, im in enumerate(r):
            y0 = padding + i * (ch + padding)
            x0 = padding + j * (cw + padding)
            canvas[:, y0 : y0 + im.shape[1], x0 : x0 + im.shape[2]] = im
    return save_image(canvas, path)


# --------------------------------------------------------------------------------------------
# scanning


def scan_images(root: str | os.PathLike) -> list[Path]:
    """All files under ``root`` (recursively) with an image extension (case-insensitive), sorted.

    Sorting is by the path relative to ``root`` (POSIX form), so the order is the same on every
    machine. Hidden files and folders (names starting with '.') are ignored; symlinked folders are
    not followed.
    """
    root = Path(root)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            p = Path(dirpath) / name
            if p.is_file():
                found.append((p.relative_to(root).as_posix(), p))
    found.sort(key=lambda t: t[0])
    return [p for _, p in found]


def _header_size(path: Path) -> tuple[int, int]:
    """(W, H) from the file header (pixels are not decoded)."""
    with Image.open(path) as im:
        return im.size


# --------------------------------------------------------------------------------------------
# dataset


def _reflect_pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad an (H, W, 3) array (centered) so both sides are at least ``size``."""
    h, w = arr.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return arr
    # numpy's reflect repeats the reflection when the pad exceeds the image size;
    # a 1-pixel side cannot reflect and is replicated.
    mode_h = "reflect" if h > 1 else "edge"
    mode_w = "reflect" if w > 1 else "edge"
    arr = np.pad(arr, ((ph // 2, ph - ph // 2), (0, 0), (0, 0)), mode=mode_h)
    arr = np.pad(arr, ((0, 0), (pw // 2, pw - pw // 2), (0, 0)), mode=mode_w)
    return arr


def reflect_pad_to(image: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-pad an image (C, H, W), centered, so both sides are at least ``size``.

    The padding of :class:`ImageFolderDataset` for images smaller than the crop (``small="pad"``):
    the reflection repeats when the pad exceeds the image, and a 1-pixel side is replicated.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor (C, H, W), got {shape}")
    if min(image.shape[-2:]) >= size:
        return image
    arr = _reflect_pad_to(image.permute(1, 2, 0).cpu().numpy(), size)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous().to(image.device)


COLOR_AUGMENTATIONS = ("none", "permute", "hue")

# RGB <-> YIQ (NTSC): Y is luma, (I, Q) the chroma plane that "hue" rotates.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def check_scale(scale, name: str = "scale") -> tuple[float, float] | None:
    """``scale`` as a pair of floats ``(lo, hi)`` with ``0 < lo <= hi <= 1``, or None; ValueError naming
    ``name`` otherwise. The one check of the zoom-out range (dataset, training config, CLI)."""
    if scale is None:
        return None
    try:
        lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be None or a pair (lo, hi) of zoom factors in (0, 1], got {scale!r}") from None
    if not (0.0 < lo <= hi <= 1.0):
        raise ValueError(f"{name} must be a pair (lo, hi) with 0 < lo <= hi <= 1, got {scale!r}")
    return (lo, hi)


def _color_augment(t: torch.Tensor, mode: str, g: torch.Generator | None) -> torch.Tensor:
    """A random colour change of a (3, H, W) crop in [0, 1] that keeps its structure.

    ``permute``: one of the six orders of the RGB channels (exact, no clipping). ``hue``: a rotation
    of the chroma plane of YIQ by a uniform angle, luma kept; the result is clipped to [0, 1].
    Either way a handful of photos covers every hue, so a short run does not learn their palette.
    """
    if mode == "permute":
        return t[torch.randperm(3, generator=g)]
    angle = 2.0 * math.pi * float(torch.rand((), generator=g))
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    m = (_YIQ_TO_RGB @ rot @ _RGB_TO_YIQ).to(t.dtype)
    return torch.einsum("ij,jhw->ihw", m, t).clamp(0.0, 1.0)


class _DecodedCache:
    """Decoded images by index, least recently used first out, within a byte budget (0: off)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._items: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(self, key: int) -> np.ndarray | None:
        arr = self._items.get(key)
        if arr is not None:
            self._items.move_to_end(key)
        return arr

    def put(self, key: int, arr: np.ndarray) -> None:
        if arr.nbytes > self.budget:
            return
        while self.used + arr.nbytes > self.budget and self._items:
            self.used -= self._items.popitem(last=False)[1].nbytes
        self._items[key] = arr
        self.used += arr.nbytes


def _item_seed(seed: int, epoch: int, index: int) -> int:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Square crops from every image under ``root``, as float32 tensors (3, size, size) in [-1, 1].

    Args:
        root: folder scanned recursively for .png/.jpg/.jpeg/.webp (any case); sorted order.
        size: crop side in pixels.
        train: random crop + random horizontal flip (p = 0.5) when True, center crop when False.
        small: images with a side shorter than ``size`` are reflect-padded ("pad", centered) or
            left out at scan time ("skip", decided from the file header without decoding).
        seed: with an int, the augmentation of item ``index`` in epoch ``e`` depends only on
            (seed, e, index), so a resumed run sees exactly the same crops and flips, with any number
            of DataLoader workers. Index the dataset with ``(index, epoch)`` tuples (as the
            trainer's sampler does) or call :meth:`get`; a plain index reads epoch 0. With None the
            global torch RNG is used (DataLoader seeds each worker differently).
        scale: training crops only. None: crops at the image's own resolution. A pair (lo, hi):
            each crop draws a zoom-out factor f uniformly from [lo, hi], cuts a square of
            ``size / f`` pixels (at most the image's shorter side) and resizes it to ``size``
            (bilinear, antialiased), so large photos are also seen at the scale of small ones.
        color: training crops only, one of :data:`COLOR_AUGMENTATIONS`: "none", "permute" (a random
            order of the RGB channels) or "hue" (a random rotation of the YIQ chroma plane).
        cache_mb: keep up to this many megabytes of decoded images in memory (least recently used
            out first; per process, so per DataLoader worker). 0 decodes every item from its file.

    Files that cannot be opened at scan time are skipped with one warning each. A file that fails
    to decode later (e.g. truncated data) is warned about once per process (also when a second
    dataset of the same folder meets it) and replaced by the next usable index (index + 1,
    index + 2, ...), drawn with the failed item's own random stream, so the result is still
    deterministic. :meth:`failed_files` lists such files, including those met in DataLoader
    workers (the flags live in shared memory).

    Counts: ``found`` (files with an image extension), ``skipped_small``, ``skipped_unreadable``,
    ``failed_at_load`` and ``padded`` (usable images that need padding); :meth:`stats` returns
    them as a dict, its ``failed_at_load`` being ``len(failed_files())``. The attribute
    ``failed_at_load`` only counts failures in this process (DataLoader workers keep their own
    copies).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int,
        *,
        train: bool = True,
        small: str = "pad",
        seed: int | None = None,
        scale: tuple[float, float] | None = None,
        color: str = "none",
        cache_mb: float = 0,
    ) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if small not in ("pad", "skip"):
            raise ValueError(f"small must be 'pad' or 'skip', got {small!r}")
        self.root = Path(root)
        self.size = int(size)
        self.train = bool(train)
        self.small = small
        self.seed = None if seed is None else int(seed)
        self.scale = check_scale(scale)
        if color not in COLOR_AUGMENTATIONS:
            raise ValueError(f"color must be one of {COLOR_AUGMENTATIONS}, got {color!r}")
        self.color = color
        if isinstance(cache_mb, bool) or not isinstance(cache_mb, numbers.Real) or not cache_mb >= 0:
            raise ValueError(f"cache_mb must be a number >= 0 (megabytes of decoded images kept), got {cache_mb!r}")
        self._cache = _DecodedCache(int(float(cache_mb) * 2**20))

        if not self.root.exists():
            raise InputError(f"image folder {self.root} does not exist")
        if not self.root.is_dir():
            raise InputError(f"image folder {self.root} is not a directory")
        candidates = scan_images(self.root)
        self.found = len(candidates)
        if not candidates:
            raise InputError(f"no images found in {self.root} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")

        self.skipped_small = 0
        self.skipped_unreadable = 0
        self.failed_at_load = 0
        self.padded = 0
        self.paths: list[Path] = []
        self.sizes: list[tuple[int, int]] = []  # (W, H) from the header
        for p in candidates:
            try:
                w, h = _header_size(p)
            except IMAGE_LOAD_ERRORS as e:
                self.skipped_unreadable += 1
                warnings.warn(f"skipping unreadable image {p}: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
                continue
            if min(w, h) < self.size:
                if self.small == "skip":
                    self.skipped_small += 1
                    continue
                self.padded += 1
            self.paths.append(p)
            self.sizes.append((w, h))
        if not self.paths:
            raise InputError(
                f"no usable images in {self.root}: {self.found} found, {self.skipped_small} smaller than "
                f"{self.size}px (small='skip'), {self.skipped_unreadable} unreadable"
            )
        self._bad: set[int] = set()
        # one flag per image, set when it fails to decode; shared with DataLoader worker processes
        self._failed = torch.zeros(len(self.paths), dtype=torch.bool).share_memory_()

    # -- bookkeeping ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.paths)

    def stats(self) -> dict:
        return {
            "root": str(self.root),
            "size": self.size,
            "found": self.found,
            "used": len(self.paths),
            "skipped_small": self.skipped_small,
            "skipped_unreadable": self.skipped_unreadable,
            "failed_at_load": len(self.failed_files()),
            "padded": self.padded,
            "small": self.small,
        }

    def failed_files(self) -> list[str]:
        """Paths of the images that passed the scan but failed to decode, in any process."""
        return [str(self.paths[j]) for j in torch.nonzero(self._failed).flatten().tolist()]

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"ImageFolderDataset(root={s['root']!r}, size={self.size}, train={self.train}, n={s['used']}, "
            f"skipped_small={s['skipped_small']}, skipped_unreadable={s['skipped_unreadable']})"
        )

    # -- items --------------------------------------------------------------------------------

    def generator(self, index: int, epoch: int = 0) -> torch.Generator | None:
        """The random stream for (seed, epoch, index); None when the dataset has no seed."""
        if self.seed is None:
            return None
        g = torch.Generator()
        g.manual_seed(_item_seed(self.seed, epoch, index))
        return g

    def _crop(self, arr: np.ndarray, g: torch.Generator | None) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(_reflect_pad_to(arr, self.size))).permute(2, 0, 1)
        h, w = t.shape[-2:]
        s = self.size
        if self.train:
            # the region cropped: `s` pixels, or `s / f` pixels resized to `s` with a zoom-out f
            r = s
            if self.scale is not None:
                lo, hi = self.scale
                f = lo + (hi - lo) * float(torch.rand((), generator=g))
                r = max(s, min(int(round(s / f)), h, w))
            top = int(torch.randint(0, h - r + 1, (1,), generator=g))
            left = int(torch.randint(0, w - r + 1, (1,), generator=g))
            t = t[:, top : top + r, left : left + r]
            if r != s:
                t = F.interpolate(t[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
                t = t.clamp(0.0, 1.0)
            if bool(torch.rand((), generator=g) < 0.5):
                t = t.flip(-1)
            if self.color != "none":
                t = _color_augment(t, self.color, g)
        else:
            t = center_crop(t, s)
        return t.contiguous() * 2.0 - 1.0

    def _decode(self, j: int) -> np.ndarray:
        arr = self._cache.get(j)
        if arr is None:
            arr = _open_rgb(self.paths[j])
            self._cache.put(j, arr)
        return arr

    def get(self, index: int, epoch: int = 0) -> torch.Tensor:
        """Item ``index`` with the augmentation of ``epoch``."""
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        last_err: BaseException | None = None
        for k in range(n):
            j = (index + k) % n
            if j in self._bad:
                continue
            try:
                arr = self._decode(j)
            except IMAGE_LOAD_ERRORS as e:
                last_err = e
                self._bad.add(j)
                self.failed_at_load += 1
                seen = bool(self._failed[j]) or str(self.paths[j]) in _WARNED_UNDECODABLE
                self._failed[j] = True
                _WARNED_UNDECODABLE.add(str(self.paths[j]))
                if not seen:
                    warnings.warn(
                        f"could not decode {self.paths[j]} ({type(e).__name__}: {e}); using the next image instead",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                continue
            # a fresh stream per attempt keeps the replacement deterministic
            return self._crop(arr, self.generator(index, epoch))
        raise RuntimeError(f"none of the {n} images in {self.root} could be decoded (last error: {last_err})")

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, tuple):
            idx, epoch = index
            return self.get(int(idx), int(epoch))
        return self.get(int(index))


# --------------------------------------------------------------------------------------------
# embedded demo data

# Colour photographs stored inside the scikit-image package (skimage/data), loaded from disk with
# no fetching. The stereo partner motorcycle_right.png is left out (a near-duplicate).
DEMO_TRAIN = (
    ("astronaut", "astronaut.png"),
    ("coffee", "coffee.png"),
    ("hubble_deep_field", "hubble_deep_field.jpg"),
    ("immunohistochemistry", "ihc.png"),
    ("motorcycle_left", "motorcycle_left.png"),
    ("retina", "retina.jpg"),
)
DEMO_VAL = (
    ("chelsea", "chelsea.png"),
    ("rocket", "rocket.jpg"),
)


@dataclass
class DemoImages:
    """Paths written by :func:`demo_images`."""

    root: Path
    train: list[Path] = field(default_factory=list)
    val: list[Path] = field(default_factory=list)

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def val_dir(self) -> Path:
        return self.root / "val"

    @property
    def all(self) -> list[Path]:
        return self.train + self.val


def _skimage_data_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).resolve().parent


def _write_demo(entries: Iterable[tuple[str, str]], src_dir: Path, dst_dir: Path) -> list[Path]:
    out = []
    for name, fname in entries:
        src = src_dir / fname
        if not src.is_file():
            warnings.warn(f"demo photo {fname} is not in {src_dir}; left out", RuntimeWarning, stacklevel=3)
            continue
        with Image.open(src) as im:
            im.load()
            arr = (np.clip(_to_rgb_array(im), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        # light compression: these are written on every fresh setup, speed matters more than size
        out.append(save_png_array(arr, dst_dir / f"{name}.png", compress_level=1))
    return out


def demo_images(out_dir: str | os.PathLike) -> DemoImages:
    """Write the embedded default photos as RGB PNGs to ``out_dir/train`` and ``out_dir/val``.

    The photos are scikit-image's bundled colour pictures (astronaut, coffee, Hubble deep field,
    immunohistochemistry, motorcycle, retina for training; chelsea and rocket for validation), read
    straight from the installed package: no network, no external data folder. Existing files of
    the same name are replaced; nothing else in ``out_dir`` is touched. Returns a
    :class:`DemoImages` with the ``train`` and ``val`` path lists.
    """
    root = Path(out_dir)
    src = _skimage_data_dir()
    res = DemoImages(root=root)
    res.train = _write_demo(DEMO_TRAIN, src, root / "train")
    res.val = _write_demo(DEMO_VAL, src, root / "val")
    if not res.train or not res.val:
        raise RuntimeError(f"scikit-image's bundled photos are missing from {src}; cannot write demo data")
    return res
