"""Reflect-padded conv2d without the padded tensor: ``conv2d(pad_reflect(x, pad4), w, b, stride)``.

Registered as ``vivat::reflect_conv2d_fwd`` and ``vivat::reflect_conv2d_bwd``
(``torch.library.custom_op``) with fake kernels and autograd, so ``torch.compile(fullgraph=True)``
sees one opaque node per call. The backward gives dx, dweight, dbias and is bitwise
deterministic on every backend but ``torch`` (the reference).

Two designs compute the same thing:

* ``"border"``: the library's zero-padded conv (oneDNN on CPU, cuDNN on GPU, which pads inside
  the kernel) plus *border terms* that touch only the output positions whose window reaches into
  the padding and the input positions the padding mirrors. Forward adds, at those outputs, the
  taps that read padding (``w[tap] . x[mirror]`` where the library used 0). Backward is the
  library's dgrad/wgrad (deterministic algorithms) plus the transposed border terms: dx gathers
  what reaches each mirrored source (no scatter, no atomics), dweight adds the border products.
  Exact; the border terms run in C++ (``cpp`` backend, CPU) or Triton list kernels (``triton``).
  When the library's symmetric padding cannot reproduce an asymmetric ``pad4`` (e.g. the LDM
  downsample ``(0, 1, 0, 1)`` with even H), the rows/columns it does not produce are
  "uncovered": the border terms compute them in full, and the library's result is copied into
  an output-sized tensor (one output-sized copy; measured by the benchmark).
* ``"implicit_gemm"`` (``triton`` only): Triton implicit GEMM whose loader mirrors the row and
  column of each tap, so nothing is padded and nothing masked to zero; dgrad is a dense kernel
  plus the list kernel for the mirrored positions; wgrad is split over positions with the splits
  summed in a fixed order.

Design choice (``triton`` backend on CUDA): a **cached first-call timing**. The first call for a
given (phase, device, shapes, stride, padding, dtype, layout) times both designs on the real
inputs (1 warm-up + 5 queued runs each, CUDA events, median) and keeps the faster; forward and
backward are decided separately. :func:`design_decisions` shows the cache; :func:`use_design` or
``$VIVAT_REFLECT_CONV_DESIGN`` (``border`` / ``implicit_gemm``) force one. On CPU, ``cpp`` always
uses "border" (Triton is not compiled for CPU) and interpreted Triton defaults to "border".
The ``torch`` backend is the reference ``F.conv2d(F.pad(x, mode="reflect"))``; its backward is
what autograd would run (conv backward on the padded copy, then the reflection-pad backward).

Border-term contract (``cpp``: ``csrc/reflect_conv.cpp``; ``triton``: the list kernels of
``vivat_kernels/triton/reflect_conv.py``): ``fwd`` adds the terms to y at an int32 (P, 2) list of
border outputs; ``dgrad`` adds to dx at a list of mirrored input positions; ``wgrad`` returns the
float32 (float64) dweight terms. "Covered" outputs (``ConvGeometry.cover``) hold the library
result; the others start at 0 and receive every tap plus the bias.

Layouts: NCHW and channels_last (the output and dx keep x's memory format). dtypes: float32,
float16, bfloat16, float64; x, weight and bias share one dtype; border terms accumulate in
float32 (float64 for float64).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _backend, reference
from ._common import as_format, check_same_device, check_tensor, memory_format_of

DESIGNS = ("auto", "border", "implicit_gemm")

_forced_design: str | None = None
_decisions: dict[tuple, str] = {}
_decisions_lock = threading.Lock()


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
        return (self.h + top + bottom - self.kh) // self.stride + 1, (self.w + left + right - self.kw) // self.stride + 1

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
def _position_lists(h: int, w: int, kh: int, kw: int, stride: int, pad4: tuple[int, int, int, int],
                    cover: tuple[int, int], device: str) -> tuple[Tensor, Tensor]:
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


def _border_bwd(dy: Tensor, x: Tensor, weight: Tensor, g: ConvGeometry, backend: str,
                need_dx: bool, need_dw: bool) -> tuple[Tensor | None, Tensor | None]:
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
                dy_lib, x, as_format(weight, fmt), None, [g.stride] * 2, [top, left], [1, 1], False, [0, 0], 1,
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


def _implicit_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, g: ConvGeometry) -> Tensor:
    from ..triton import reflect_conv as tk

    ho, wo = g.out_size
    y = torch.empty((g.n, g.co, ho, wo), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    return tk.conv_fwd(x, weight, bias, y, g.stride, g.pad4)


def _implicit_bwd(dy: Tensor, x: Tensor, weight: Tensor, g: ConvGeometry,
                  need_dx: bool, need_dw: bool) -> tuple[Tensor | None, Tensor | None]:
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


# --------------------------------------------------------------------------------------------
# design choice
# --------------------------------------------------------------------------------------------
def set_design(name: str | None) -> None:
    """Force a design for the ``triton`` backend (``None``/``"auto"`` = cached timing)."""
    global _forced_design
    if name is not None and name not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {name!r}")
    _forced_design = None if name in (None, "auto") else name


def get_design() -> str:
    if _forced_design is not None:
        return _forced_design
    env = os.environ.get("VIVAT_REFLECT_CONV_DESIGN", "").strip().lower()
    if env and env not in DESIGNS:
        raise ValueError(f"$VIVAT_REFLECT_CONV_DESIGN must be one of {DESIGNS}, got {env!r}")
    return env or "auto"


@contextlib.contextmanager
def use_design(name: str | None) -> Iterator[None]:
    """Temporarily force a design: ``with use_design("implicit_gemm"): ...``."""
    global _forced_design
    previous = _forced_design
    set_design(name)
    try:
        yield
    finally:
        _forced_design = previous


def design_decisions() -> dict[tuple, str]:
    """The cached first-call choices: key (phase, device, shapes, stride, pad4, dtype, layout)."""
    with _decisions_lock:
        return dict(_decisions)


def clear_design_decisions() -> None:
    with _decisions_lock:
        _decisions.clear()


def _time_cuda_ms(fn: Callable[[], object], reps: int = 5) -> float:
    """Median GPU time, calls queued back to back (host launch cost hidden unless it dominates)."""
    fn()  # warm-up (and Triton compilation)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 2]


def _choose_design(phase: str, backend: str, x: Tensor, g: ConvGeometry,
                   candidates: dict[str, Callable[[], object]]) -> str:
    if backend == "cpp":
        return "border"
    forced = get_design()
    if forced != "auto":
        return forced
    if x.device.type != "cuda" or x.dtype == torch.float64:
        return "border"
    key = (phase, str(x.device), g.n, g.c, g.h, g.w, g.co, g.kh, g.kw, g.stride, g.pad4, str(x.dtype),
           "cl" if memory_format_of(x) == torch.channels_last else "nchw")
    with _decisions_lock:
        if key in _decisions:
            return _decisions[key]
    timings = {name: _time_cuda_ms(fn) for name, fn in candidates.items()}
    best = min(timings, key=timings.get)
    with _decisions_lock:
        _decisions[key] = best
    return best


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------
def selected_backend(x: Tensor) -> tuple[str, str]:
    """The backend this op would use for ``x`` now, and why."""
    if x.numel() == 0:
        return "torch", "empty tensor"
    return _backend.resolve(x.device)


def _geometry(x: Tensor, weight: Tensor, stride: int, pad4: Sequence[int]) -> ConvGeometry:
    n, c, h, w = x.shape
    co, _, kh, kw = weight.shape
    return ConvGeometry(n, c, h, w, co, kh, kw, int(stride), tuple(int(p) for p in pad4))  # type: ignore[arg-type]


def _forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, pad4: Sequence[int]) -> Tensor:
    backend, _ = selected_backend(x)
    g = _geometry(x, weight, stride, pad4)
    if backend == "torch":
        return reference.reflect_conv2d(x, weight, bias, g.stride, g.pad4)
    candidates = {
        "border": lambda: _border_fwd(x, weight, bias, g, backend),
        "implicit_gemm": lambda: _implicit_fwd(x, weight, bias, g),
    }
    design = _choose_design("fwd", backend, x, g, candidates)
    if design == "implicit_gemm" and backend != "triton":
        raise RuntimeError("the implicit_gemm design needs the triton backend")
    return candidates[design]()


def _torch_backward(dy, x, weight, g: ConvGeometry, need_dx: bool, need_dw: bool):
    """What autograd does for the reference: conv backward on the padded copy, then the
    reflection-pad backward (the op runs below autograd, so the calls are spelled out)."""
    xp = F.pad(x, g.pad4, mode="reflect") if any(g.pad4) else x
    dxp, dw, _ = torch.ops.aten.convolution_backward(
        dy, xp, weight, None, [g.stride] * 2, [0, 0], [1, 1], False, [0, 0], 1, [need_dx, need_dw, False]
    )
    dx = None
    if need_dx:
        dx = torch.ops.aten.reflection_pad2d_backward(dxp, x, list(g.pad4)) if any(g.pad4) else dxp
    return dx, dw


def _backward(dy: Tensor, x: Tensor, weight: Tensor, stride: int, pad4: Sequence[int],
              need_dx: bool, need_dw: bool) -> tuple[Tensor | None, Tensor | None]:
    backend, _ = selected_backend(x)
    g = _geometry(x, weight, stride, pad4)
    if backend == "torch":
        return _torch_backward(dy, x, weight, g, need_dx, need_dw)
    candidates = {
        "border": lambda: _border_bwd(dy, x, weight, g, backend, need_dx, need_dw),
        "implicit_gemm": lambda: _implicit_bwd(dy, x, weight, g, need_dx, need_dw),
    }
    design = _choose_design("bwd", backend, x, g, candidates)
    if design == "implicit_gemm" and backend != "triton":
        raise RuntimeError("the implicit_gemm design needs the triton backend")
    return candidates[design]()


def _dense_strides(shape: Sequence[int], fmt: torch.memory_format) -> tuple[int, ...]:
    """The strides of ``torch.empty(shape, memory_format=fmt)`` (4-D)."""
    _, c, h, w = shape
    if fmt == torch.channels_last:
        return (h * w * c, 1, w * c, c)
    return (c * h * w, h * w, w, 1)


@contextlib.contextmanager
def _no_autocast(device_type: str) -> Iterator[None]:
    """Inputs arrive in one dtype (the public function applies autocast); the matmuls inside the
    op must not be recast. Entering autocast costs tens of microseconds, so only when it is on."""
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield


def _like(t: Tensor, shape: Sequence[int], fmt: torch.memory_format) -> Tensor:
    """``t`` with exactly the strides ``torch.empty(shape, memory_format=fmt)`` has (as the fake)."""
    want = _dense_strides(shape, fmt)
    if t.stride() == want:
        return t
    return torch.empty_strided(shape, want, dtype=t.dtype, device=t.device).copy_(t)


# --------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("vivat::reflect_conv2d_fwd", mutates_args=())
def reflect_conv2d_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, pad4: list[int]) -> Tensor:
    with _no_autocast(x.device.type):
        y = _forward(x, weight, bias, stride, pad4)
    return _like(y, _out_shape(x, weight, stride, pad4), memory_format_of(x))


def _out_shape(x, weight, stride, pad4) -> tuple[int, int, int, int]:
    left, right, top, bottom = pad4
    return (
        x.shape[0],
        weight.shape[0],
        (x.shape[2] + top + bottom - weight.shape[2]) // stride + 1,
        (x.shape[3] + left + right - weight.shape[3]) // stride + 1,
    )


@reflect_conv2d_fwd.register_fake
def _(x, weight, bias, stride, pad4):
    return torch.empty(_out_shape(x, weight, stride, pad4), dtype=x.dtype, device=x.device,
                       memory_format=memory_format_of(x))


@torch.library.custom_op("vivat::reflect_conv2d_bwd", mutates_args=())
def reflect_conv2d_bwd(
    dy: Tensor, x: Tensor, weight: Tensor, stride: int, pad4: list[int], mask: list[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias); an unwanted one (mask False) is an empty tensor."""
    need_dx, need_dw, need_db = (bool(m) for m in mask)
    with _no_autocast(x.device.type):
        dx, dw = _backward(dy, x, weight, stride, pad4, need_dx, need_dw)
        # Accumulates in float32 for low-precision dy; a fixed-order reduction (no atomics).
        db = dy.sum(dim=(0, 2, 3)) if need_db else None
    return (
        _like(dx, x.shape, memory_format_of(x)) if dx is not None else x.new_empty(0),
        _like(dw, weight.shape, memory_format_of(weight)) if dw is not None else x.new_empty(0),
        db if db is not None else x.new_empty(0),
    )


@reflect_conv2d_bwd.register_fake
def _(dy, x, weight, stride, pad4, mask):
    return (
        torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
        if mask[0] else x.new_empty(0),
        torch.empty(weight.shape, dtype=weight.dtype, device=weight.device, memory_format=memory_format_of(weight))
        if mask[1] else x.new_empty(0),
        dy.new_empty((weight.shape[0],)) if mask[2] else x.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, pad4 = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.stride = stride
    ctx.pad4 = pad4


def _autograd_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]),
            bool(ctx.has_bias and ctx.needs_input_grad[2])]
    if not any(mask):
        return None, None, None, None, None
    dy = dy.contiguous(memory_format=memory_format_of(x))  # no copy when the layouts already agree
    dx, dw, db = reflect_conv2d_bwd(dy, x, weight, ctx.stride, ctx.pad4, mask)
    return dx if mask[0] else None, dw if mask[1] else None, db if mask[2] else None, None, None


reflect_conv2d_fwd.register_autograd(_autograd_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# public function
# --------------------------------------------------------------------------------------------
def _normalise_stride(stride) -> int:
    if isinstance(stride, (tuple, list)):
        if len(stride) != 2 or stride[0] != stride[1]:
            raise ValueError(f"stride must be an int or a pair of equal ints, got {stride!r}")
        stride = stride[0]
    if isinstance(stride, bool) or not isinstance(stride, int):
        raise TypeError(f"stride must be an int, got {type(stride).__name__}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return stride


def _normalise_padding(padding) -> tuple[int, int, int, int]:
    items = padding if isinstance(padding, (tuple, list)) else (padding,)
    for p in items:
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"padding must be an int, (ph, pw) or (left, right, top, bottom) of ints, got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) not in (2, 4):
        raise ValueError(f"padding must be an int, (ph, pw) or (left, right, top, bottom), got {padding!r}")
    pad4 = reference.reflect_pad4(padding if isinstance(padding, int) else tuple(padding))
    if min(pad4) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return pad4


def _check(x, weight, bias, stride: int, pad4: tuple[int, int, int, int]) -> None:
    check_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    check_tensor("weight", weight)
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in, KH, KW), got shape {tuple(weight.shape)}")
    _, c, h, w = x.shape
    co, ci, kh, kw = weight.shape
    if ci != c:
        raise ValueError(
            f"weight has C_in={ci} but x has C={c} channels (x {tuple(x.shape)}, weight {tuple(weight.shape)}); "
            "only groups=1 is supported"
        )
    if c == 0 or co == 0:
        raise ValueError(f"channel counts must be >= 1, got C_in={c}, C_out={co}")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel size must be odd (1, 3, 5, ...), got {kh}x{kw}; even kernels are not supported")
    if bias is not None:
        check_tensor("bias", bias)
        if tuple(bias.shape) != (co,):
            raise ValueError(f"bias must have shape ({co},) for weight {tuple(weight.shape)}, got {tuple(bias.shape)}")
    check_same_device(x, weight=weight, bias=bias)
    left, right, top, bottom = pad4
    for side, p, size, axis in (("left", left, w, "W"), ("right", right, w, "W"),
                                ("top", top, h, "H"), ("bottom", bottom, h, "H")):
        if p > size - 1:
            raise ValueError(
                f"padding {side}={p} must be <= {axis}-1 = {size - 1} for x of shape {tuple(x.shape)}: "
                "reflect padding mirrors at most size-1 samples"
            )
    if h + top + bottom < kh or w + left + right < kw:
        raise ValueError(
            f"padded input ({h + top + bottom}x{w + left + right}) is smaller than the kernel ({kh}x{kw})"
        )


def _check_dtypes(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x is {x.dtype}; x, weight and bias must share one dtype")


def reflect_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    padding: int | tuple[int, ...] = 1,
) -> Tensor:
    """``F.conv2d(F.pad(x, pad4, mode="reflect"), weight, bias, stride)`` without the padded copy.

    Args:
        x: (N, C, H, W), NCHW or channels_last (the output keeps x's memory format); float32,
            float16, bfloat16 or float64.
        weight: (C_out, C, KH, KW) with odd KH, KW (groups 1, dilation 1); x's dtype.
        bias: optional (C_out,), x's dtype.
        stride: int >= 1 (or a pair of equal ints).
        padding: int, (ph, pw), or F.pad-style (left, right, top, bottom), e.g. (0, 1, 0, 1) for
            the LDM stride-2 downsample; each side at most size - 1 (the reflect limit).

    Under autocast, x, weight and bias are cast to the autocast dtype first, as ``F.conv2d``
    would be. Backward gives dx, dweight, dbias, bitwise reproducible (cpp and triton backends).
    """
    stride = _normalise_stride(stride)
    pad4 = _normalise_padding(padding)
    _check(x, weight, bias, stride, pad4)  # shapes, devices and kinds first: any device, meta included
    device_type = x.device.type
    if (x.dtype != torch.float64 and torch.amp.is_autocast_available(device_type)
            and torch.is_autocast_enabled(device_type)):
        # As F.conv2d under autocast: every floating input in the autocast dtype.
        dtype = torch.get_autocast_dtype(device_type)
        x, weight, bias = (t.to(dtype) if t is not None else None for t in (x, weight, bias))
    _check_dtypes(x, weight, bias)
    x = as_format(x, memory_format_of(x))
    weight = weight if weight.is_contiguous() or weight.is_contiguous(memory_format=torch.channels_last) \
        else weight.contiguous()
    return reflect_conv2d_fwd(x, weight, bias, stride, list(pad4))
