"""The four designs of :func:`.reflect_conv.reflect_conv2d`, each a forward and a backward.

``eager`` (F.pad + the library conv), ``slab`` (the zero-padded library conv plus library convs
over thin reflected border slabs), ``border`` (the zero-padded library conv plus border terms
from C++ or the Triton list kernels) and ``implicit_gemm`` (the Triton kernels alone); and what
they share: the call's :class:`ConvGeometry` and the border position lists. The design choice,
the custom ops and the public function live in :mod:`.reflect_conv`, whose docstring describes
the designs in full.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import as_format, memory_format_of


# --------------------------------------------------------------------------------------------
# geometry and the border position lists
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one call. ``pad4`` = (left, right, top, bottom) as in ``F.pad``."""

    n: int
    c: int
    h: int
    w: int
    co: int
    kh: int
    kw: int
    stride: int
    pad4: tuple[int, int, int, int]

    @functools.cached_property
    def out_size(self) -> tuple[int, int]:
        left, right, top, bottom = self.pad4
        return (self.h + top + bottom - self.kh) // self.stride + 1, (
            self.w + left + right - self.kw
        ) // self.stride + 1

    @functools.cached_property
    def library_size(self) -> tuple[int, int]:
        """Output size of the library conv with symmetric zero padding (top, left); may be <= 0."""
        left, _, top, _ = self.pad4
        return (self.h + 2 * top - self.kh) // self.stride + 1, (self.w + 2 * left - self.kw) // self.stride + 1

    @functools.cached_property
    def cover(self) -> tuple[int, int]:
        """Outputs (oy < cover[0] and ox < cover[1]) that the library conv produces."""
        (ho, wo), (hl, wl) = self.out_size, self.library_size
        if hl <= 0 or wl <= 0:
            return 0, 0
        return min(ho, hl), min(wo, wl)


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _bands(size: int, out: int, k: int, s: int, before: int, cover: int) -> tuple[int, int]:
    """Along one axis: outputs [0, lo) read the leading padding, [hi, out) the trailing padding
    or are uncovered."""
    lo = min(out, _ceil_div(before, s))
    hi = min(out, _ceil_div(size + before - k + 1, s), max(cover, lo))
    return lo, max(lo, hi)


def _source_set(size: int, out: int, k: int, s: int, before: int, after: int, cover: int) -> list[int]:
    """Input indices along one axis that the padding mirrors or that uncovered outputs read."""
    idx = set(range(1, min(before, size - 1) + 1))
    idx |= set(range(max(size - 1 - after, 0), size - 1))
    if cover < out:
        idx |= set(range(max(cover * s - before, 0), min((out - 1) * s - before + k, size)))
    return sorted(idx)


@functools.lru_cache(maxsize=512)
def _position_lists(
    h: int, w: int, kh: int, kw: int, stride: int, pad4: tuple[int, int, int, int], cover: tuple[int, int], device: str
) -> tuple[Tensor, Tensor]:
    """int32 (P, 2) lists: border outputs (row, col) and mirrored/uncovered input sources.

    Rows that need it are listed in full, then the remaining columns column by column, so a tile
    of consecutive entries shares its pattern of padded taps.
    """
    left, right, top, bottom = pad4
    ho = (h + top + bottom - kh) // stride + 1
    wo = (w + left + right - kw) // stride + 1
    r0, r1 = _bands(h, ho, kh, stride, top, cover[0])
    c0, c1 = _bands(w, wo, kw, stride, left, cover[1])
    rows = list(range(r0)) + list(range(r1, ho))
    cols = list(range(c0)) + list(range(c1, wo))
    out = [(y, x) for y in rows for x in range(wo)] + [(y, x) for x in cols for y in range(r0, r1)]

    srows = _source_set(h, ho, kh, stride, top, bottom, cover[0])
    scols = _source_set(w, wo, kw, stride, left, right, cover[1])
    in_rows = set(srows)
    middle = [y for y in range(h) if y not in in_rows]
    src = [(y, x) for y in srows for x in range(w)] + [(y, x) for x in scols for y in middle]

    def as_tensor(pairs):
        return torch.tensor(pairs, dtype=torch.int32, device=device).reshape(-1, 2).contiguous()

    return as_tensor(out), as_tensor(src)


# --------------------------------------------------------------------------------------------
# border terms: C++ (CPU) and Triton (list kernels) behind one interface
# --------------------------------------------------------------------------------------------
class _CppTerms:
    def __init__(self):
        from .._build import load_extension

        self.ext = load_extension()

    def fwd(self, x, weight, bias, y, pos, g: ConvGeometry) -> None:
        self.ext.reflect_conv2d_border_fwd(x, weight, bias, y, pos, g.stride, list(g.pad4), *g.cover)

    def dgrad(self, dy, weight, dx, pos, g: ConvGeometry) -> None:
        self.ext.reflect_conv2d_border_dgrad(dy, weight, dx, pos, g.stride, list(g.pad4), *g.cover)

    def wgrad(self, dy, x, pos, g: ConvGeometry) -> Tensor:
        return self.ext.reflect_conv2d_border_wgrad(dy, x, g.kh, g.kw, pos, g.stride, list(g.pad4), *g.cover)


class _TritonTerms:
    def __init__(self):
        from ..triton import reflect_conv as tk

        self.tk = tk

    def fwd(self, x, weight, bias, y, pos, g: ConvGeometry) -> None:
        self.tk.conv_fwd(x, weight, bias, y, g.stride, g.pad4, out_pos=pos, cover=g.cover)

    def dgrad(self, dy, weight, dx, pos, g: ConvGeometry) -> None:
        self.tk.conv_dgrad(dy, weight, dx, g.stride, g.pad4, src_pos=pos, cover=g.cover)

    def wgrad(self, dy, x, pos, g: ConvGeometry) -> Tensor:
        return self.tk.conv_wgrad(dy, x, (g.kh, g.kw), g.stride, g.pad4, out_pos=pos, cover=g.cover)


def _terms(backend: str):
    return _CppTerms() if backend == "cpp" else _TritonTerms()


@contextlib.contextmanager
def _deterministic_library(device: torch.device) -> Iterator[None]:
    """cuDNN restricted to deterministic algorithms (no autotuning) for the calls inside."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


def _border_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, g: ConvGeometry, backend: str) -> Tensor:
    fmt = memory_format_of(x)
    (ho, wo), (hl, wl), (hc, wc) = g.out_size, g.library_size, g.cover
    left, _, top, _ = g.pad4
    if hc > 0 and wc > 0:
        with _deterministic_library(x.device):
            y_lib = F.conv2d(x, as_format(weight, fmt), bias, g.stride, (top, left))
        if (hl, wl) == (ho, wo):
            y = as_format(y_lib, fmt)
        else:
            y = torch.empty((g.n, g.co, ho, wo), dtype=x.dtype, device=x.device, memory_format=fmt).zero_()
            y[:, :, :hc, :wc] = y_lib[:, :, :hc, :wc]
    else:
        y = torch.empty((g.n, g.co, ho, wo), dtype=x.dtype, device=x.device, memory_format=fmt).zero_()
    out_pos, _ = _position_lists(g.h, g.w, g.kh, g.kw, g.stride, g.pad4, g.cover, str(x.device))
    _terms(backend).fwd(x, weight, bias, y, out_pos, g)
    return y


def _border_bwd(
    dy: Tensor, x: Tensor, weight: Tensor, g: ConvGeometry, backend: str, need_dx: bool, need_dw: bool
) -> tuple[Tensor | None, Tensor | None]:
    fmt = memory_format_of(x)
    (ho, wo), (hl, wl), (hc, wc) = g.out_size, g.library_size, g.cover
    left, _, top, _ = g.pad4
    dx = dw = None
    if hc > 0 and wc > 0:
        if (hl, wl) == (ho, wo):
            dy_lib = dy
        else:
            dy_lib = torch.empty((g.n, g.co, hl, wl), dtype=dy.dtype, device=dy.device, memory_format=fmt).zero_()
            dy_lib[:, :, :hc, :wc] = dy[:, :, :hc, :wc]
        with _deterministic_library(x.device):
            dx, dw, _ = torch.ops.aten.convolution_backward(
                dy_lib,
                x,
                as_format(weight, fmt),
                None,
                [g.stride] * 2,
                [top, left],
                [1, 1],
                False,
                [0, 0],
                1,
                [need_dx, need_dw, False],
            )
    terms = _terms(backend)
    out_pos, src_pos = _position_lists(g.h, g.w, g.kh, g.kw, g.stride, g.pad4, g.cover, str(x.device))
    if need_dx:
        dx = torch.zeros_like(x) if dx is None else as_format(dx, fmt)
        terms.dgrad(dy, weight, dx, src_pos, g)
    if need_dw:
        border = terms.wgrad(dy, x, out_pos, g)
        dw = border if dw is None else dw.to(border.dtype) + border
        dw = dw.to(weight.dtype)
    return dx, dw


# --------------------------------------------------------------------------------------------
# "eager" design: F.pad + the library conv (a transient padded copy; none is saved)
# --------------------------------------------------------------------------------------------
def _eager_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, g: ConvGeometry) -> Tensor:
    with _deterministic_library(x.device):
        xp = F.pad(x, g.pad4, mode="reflect") if any(g.pad4) else x
        return F.conv2d(xp, as_format(weight, memory_format_of(x)), bias, g.stride)


def _unpad_sum(dxp: Tensor, g: ConvGeometry) -> Tensor:
    """Transpose of reflect padding, deterministic (``reflection_pad2d_backward`` adds with
    atomics on CUDA): the interior plus each padded row, then each padded column, in order."""
    left, right, top, bottom = g.pad4
    rows = dxp[:, :, top : top + g.h].clone()
    for j, i in enumerate(_reflect_index(-top, top, g.h) + _reflect_index(g.h, bottom, g.h)):
        src = j if j < top else top + g.h + (j - top)
        rows[:, :, i].add_(dxp[:, :, src])
    dx = rows[:, :, :, left : left + g.w].clone(memory_format=memory_format_of(dxp))
    for j, i in enumerate(_reflect_index(-left, left, g.w) + _reflect_index(g.w, right, g.w)):
        src = j if j < left else left + g.w + (j - left)
        dx[:, :, :, i].add_(rows[:, :, :, src])
    return dx


def _eager_bwd(
    dy: Tensor, x: Tensor, weight: Tensor, g: ConvGeometry, need_dx: bool, need_dw: bool
) -> tuple[Tensor | None, Tensor | None]:
    """The library's conv backward on the padded copy, rebuilt from x (not saved by forward)."""
    with _deterministic_library(x.device):
        xp = F.pad(x, g.pad4, mode="reflect") if any(g.pad4) else x
        dxp, dw, _ = torch.ops.aten.convolution_backward(
            dy,
            xp,
            as_format(weight, memory_format_of(x)),
            None,
            [g.stride] * 2,
            [0, 0],
            [1, 1],
            False,
            [0, 0],
            1,
            [need_dx, need_dw, False],
        )
    dx = None
    if need_dx:
        dx = _unpad_sum(dxp, g) if any(g.pad4) else dxp
    return dx, dw


# --------------------------------------------------------------------------------------------
# "slab" design: the library conv plus library convs over thin reflected border slabs
# --------------------------------------------------------------------------------------------
def _segments(size: int, out: int, k: int, s: int, before: int, cover: int) -> list[tuple[int, int, str]]:
    """Along one axis, runs of outputs [o0, o1) that are "clean" (window inside x, library value
    exact), "pad" (window reads padding; library value needs the padding's taps added) or "full"
    (the library conv does not produce them)."""

    def kind(o: int) -> str:
        if o >= cover:
            return "full"
        return "pad" if o * s - before < 0 or o * s - before + k > size else "clean"

    runs: list[tuple[int, int, str]] = []
    for o in range(out):
        what = kind(o)
        if runs and runs[-1][2] == what:
            runs[-1] = (runs[-1][0], o + 1, what)
        else:
            runs.append((o, o + 1, what))
    return runs


def _reflect_index(start: int, length: int, size: int) -> list[int]:
    """x indices that padded positions start .. start+length-1 read (reflection, no edge repeat)."""
    return [-i if i < 0 else (2 * (size - 1) - i if i >= size else i) for i in range(start, start + length)]


@functools.lru_cache(maxsize=512)
def _slab_regions(g: ConvGeometry) -> tuple[tuple[int, int, int, int, bool], ...]:
    """Output regions (r0, r1, c0, c1, full) whose values the border slabs compute: ``full``
    False adds the padding's taps to the library value, True computes the value (plus bias)."""
    (ho, wo), (hc, wc) = g.out_size, g.cover
    left, _, top, _ = g.pad4
    rows = _segments(g.h, ho, g.kh, g.stride, top, hc)
    cols = _segments(g.w, wo, g.kw, g.stride, left, wc)
    regions = []
    for r0, r1, rk in rows:
        merged: list[list] = []
        for c0, c1, ck in cols:
            mode = "full" if "full" in (rk, ck) else ("pad" if "pad" in (rk, ck) else None)
            if mode is None:
                continue
            if merged and merged[-1][1] == c0 and merged[-1][2] == mode:
                merged[-1][1] = c1
            else:
                merged.append([c0, c1, mode])
        regions += [(r0, r1, c0, c1, mode == "full") for c0, c1, mode in merged]
    return tuple(regions)


def _slab(x: Tensor, g: ConvGeometry, r0: int, r1: int, c0: int, c1: int, full: bool) -> tuple[Tensor, tuple]:
    """The reflect-padded input window that outputs [r0, r1) x [c0, c1) read (only its padding,
    the rest zero, unless ``full``), and what :func:`_fold` needs to send gradients back."""
    ridx, cidx, rows, cols, mask = _slab_index(g, r0, r1, c0, c1, full, str(x.device))
    slab = x.index_select(2, rows).index_select(3, cols)
    if mask is not None:
        slab = slab * mask.to(slab.dtype)
    return slab.contiguous(memory_format=memory_format_of(x)), (ridx, cidx, mask)


@functools.lru_cache(maxsize=1024)
def _slab_index(g: ConvGeometry, r0: int, r1: int, c0: int, c1: int, full: bool, device: str):
    """Row and column indices of one slab (lists, and tensors on ``device``), and the mask of its
    padding (None when ``full``); cached so a CUDA call copies nothing from the host."""
    left, _, top, _ = g.pad4
    s = g.stride
    rs, rn = r0 * s - top, (r1 - 1 - r0) * s + g.kh
    cs, cn = c0 * s - left, (c1 - 1 - c0) * s + g.kw
    ridx, cidx = _reflect_index(rs, rn, g.h), _reflect_index(cs, cn, g.w)
    mask = None
    if not full:
        rin = torch.tensor([0 <= i < g.h for i in range(rs, rs + rn)], device=device)
        cin = torch.tensor([0 <= i < g.w for i in range(cs, cs + cn)], device=device)
        mask = ~(rin.view(-1, 1) & cin.view(1, -1))
    return ridx, cidx, torch.tensor(ridx, device=device), torch.tensor(cidx, device=device), mask


def _fold(t: Tensor, dim: int, idx: list[int]) -> tuple[Tensor, int]:
    """Transpose of ``index_select(dim, idx)``: sums of ``t``'s slices per x index, as a tensor
    over the x indices [lo, hi) it touches, and lo. Fixed order of additions: deterministic."""
    lo, hi = min(idx), max(idx) + 1
    shape = list(t.shape)
    shape[dim] = hi - lo
    out = t.new_zeros(shape)
    for j, i in enumerate(idx):
        out.narrow(dim, i - lo, 1).add_(t.narrow(dim, j, 1))
    return out, lo


def _slab_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, g: ConvGeometry) -> Tensor:
    fmt = memory_format_of(x)
    (ho, wo), (hl, wl), (hc, wc) = g.out_size, g.library_size, g.cover
    left, _, top, _ = g.pad4
    w = as_format(weight, fmt)
    with _deterministic_library(x.device):
        if hc > 0 and wc > 0:
            y_lib = F.conv2d(x, w, bias, g.stride, (top, left))
            if (hl, wl) == (ho, wo):
                y = y_lib
            else:
                y = torch.empty((g.n, g.co, ho, wo), dtype=x.dtype, device=x.device, memory_format=fmt).zero_()
                y[:, :, :hc, :wc] = y_lib[:, :, :hc, :wc]
        else:
            y = torch.empty((g.n, g.co, ho, wo), dtype=x.dtype, device=x.device, memory_format=fmt).zero_()
        for r0, r1, c0, c1, full in _slab_regions(g):
            slab, _ = _slab(x, g, r0, r1, c0, c1, full)
            part = F.conv2d(slab, w, bias if full else None, g.stride)
            if full:
                y[:, :, r0:r1, c0:c1] = part
            else:
                y[:, :, r0:r1, c0:c1] += part
    return y


def _slab_bwd(
    dy: Tensor, x: Tensor, weight: Tensor, g: ConvGeometry, need_dx: bool, need_dw: bool
) -> tuple[Tensor | None, Tensor | None]:
    fmt = memory_format_of(x)
    (ho, wo), (hl, wl), (hc, wc) = g.out_size, g.library_size, g.cover
    left, _, top, _ = g.pad4
    w = as_format(weight, fmt)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dx = dw = None
    with _deterministic_library(x.device):
        if hc > 0 and wc > 0:
            if (hl, wl) == (ho, wo):
                dy_lib = dy
            else:
                dy_lib = torch.empty((g.n, g.co, hl, wl), dtype=dy.dtype, device=dy.device, memory_format=fmt).zero_()
                dy_lib[:, :, :hc, :wc] = dy[:, :, :hc, :wc]
            dx, dw, _ = torch.ops.aten.convolution_backward(
                dy_lib, x, w, None, [g.stride] * 2, [top, left], [1, 1], False, [0, 0], 1, [need_dx, need_dw, False]
            )
        if need_dx:
            dx = torch.zeros_like(x) if dx is None else as_format(dx, fmt)
        if need_dw:
            dw = torch.zeros(weight.shape, dtype=acc, device=x.device) if dw is None else dw.to(acc)
        for r0, r1, c0, c1, full in _slab_regions(g):
            slab, (ridx, cidx, mask) = _slab(x, g, r0, r1, c0, c1, full)
            dslab, dw_part, _ = torch.ops.aten.convolution_backward(
                dy[:, :, r0:r1, c0:c1],
                slab,
                w,
                None,
                [g.stride] * 2,
                [0, 0],
                [1, 1],
                False,
                [0, 0],
                1,
                [need_dx, need_dw, False],
            )
            if need_dw:
                dw += dw_part.to(acc)
            if need_dx:
                if mask is not None:
                    dslab = dslab * mask.to(dslab.dtype)
                rows, rlo = _fold(dslab, 2, ridx)
                both, clo = _fold(rows, 3, cidx)
                dx[:, :, rlo : rlo + both.shape[2], clo : clo + both.shape[3]] += both
    return dx, (dw.to(weight.dtype) if dw is not None else None)


# --------------------------------------------------------------------------------------------
# "implicit_gemm" design: the Triton kernels with a reflecting loader (triton backend only)
# --------------------------------------------------------------------------------------------
def _implicit_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, g: ConvGeometry) -> Tensor:
    from ..triton import reflect_conv as tk

    ho, wo = g.out_size
    y = torch.empty((g.n, g.co, ho, wo), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    return tk.conv_fwd(x, weight, bias, y, g.stride, g.pad4)


def _implicit_bwd(
    dy: Tensor, x: Tensor, weight: Tensor, g: ConvGeometry, need_dx: bool, need_dw: bool
) -> tuple[Tensor | None, Tensor | None]:
    from ..triton import reflect_conv as tk

    dx = dw = None
    if need_dx:
        full = g.out_size
        _, src_pos = _position_lists(g.h, g.w, g.kh, g.kw, g.stride, g.pad4, full, str(x.device))
        dx = tk.conv_dgrad(dy, weight, torch.empty_like(x), g.stride, g.pad4)
        tk.conv_dgrad(dy, weight, dx, g.stride, g.pad4, src_pos=src_pos, cover=full)
    if need_dw:
        dw = tk.conv_wgrad(dy, x, (g.kh, g.kw), g.stride, g.pad4).to(weight.dtype)
    return dx, dw
