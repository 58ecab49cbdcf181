"""Reflect-padded conv2d without the padded tensor: ``conv2d(pad_reflect(x, pad4), w, b, stride)``.

Registered as ``vivat::reflect_conv2d_fwd`` and ``vivat::reflect_conv2d_bwd``
(``torch.library.custom_op``) with fake kernels and autograd, so ``torch.compile(fullgraph=True)``
sees one opaque node per call. The backward gives dx, dweight, dbias and is bitwise
deterministic on every backend but ``torch`` (the reference).

Four designs compute the same thing:

* ``"eager"``: ``F.pad`` + the library conv (oneDNN / cuDNN), the plain path. Its padded copy is
  transient (forward and backward each rebuild it from x); none is saved for backward. Backward
  is the library's conv backward on that copy, then the transpose of the padding summed
  deterministically (row and column slices in a fixed order, no atomics).
* ``"slab"``: the library's zero-padded conv, plus library convs over thin *border slabs*: for the
  output rows/columns whose window reaches into the padding, the reflect-padded input window with
  everything but its padding zeroed (a few rows or columns of x, gathered by index), whose conv is
  exactly what the zero padding left out. Backward: the library's dgrad/wgrad (deterministic
  algorithms) plus the same slabs' conv backward, the slab gradients folded back onto the mirrored
  rows/columns in a fixed order. Runs on any device; nothing padded is saved.
* ``"border"``: the library's zero-padded conv plus *border terms* that touch only the output positions whose window reaches into
  the padding and the input positions the padding mirrors. Forward adds, at those outputs, the
  taps that read padding (``w[tap] . x[mirror]`` where the library used 0). Backward is the
  library's dgrad/wgrad (deterministic algorithms) plus the transposed border terms: dx gathers
  what reaches each mirrored source (no scatter, no atomics), dweight adds the border products.
  Exact; the border terms run in C++ (``cpp`` backend, CPU) or Triton list kernels (``triton``).
  When the library's symmetric padding cannot reproduce an asymmetric ``pad4`` (e.g. the LDM
  downsample ``(0, 1, 0, 1)`` with even H), the rows/columns it does not produce are
  "uncovered": the border terms (the slabs, for ``"slab"``) compute them in full, and the
  library's result is copied into an output-sized tensor (one output-sized copy).
* ``"implicit_gemm"`` (``triton`` only): Triton implicit GEMM whose loader mirrors the row and
  column of each tap, so nothing is padded and nothing masked to zero; dgrad is a dense kernel
  plus the list kernel for the mirrored positions; wgrad is split over positions with the splits
  summed in a fixed order.

Design choice (``cpp`` and ``triton`` backends). On the ``cpp`` backend, ``auto`` is the plain path
by rule, and :func:`reflect_conv2d` then does not enter the custom op at all: it calls ``F.pad`` +
``F.conv2d`` itself, so eager autograd runs ATen's own backward (no slower than a model's pad +
conv, unlike the op's deterministic unpadding, which only CUDA needs) and ``torch.compile`` sees,
and may fuse, the padding. A rule and not a timing because the designs agree only up to float
rounding, and a choice made by the clock would let two runs of one seed, or a run and its resume,
differ in their bits. On CUDA, and everywhere with
``"timed"``, the choice is a **cached first-call timing**. The first call for a given (phase, backend, device, shapes, stride, padding, dtype, layout) times
every design the backend has (``BACKEND_DESIGNS``; the plain ``"eager"`` path always among them,
so ``auto`` is never slower than eager beyond the timing's noise) on the real inputs (CUDA: 1
warm-up + 5 queued runs between events, median; CPU: 1 warm-up each, then up to 3 rounds that
alternate the designs, fewer past 0.5 s, fastest round) and keeps the fastest; forward and backward are decided separately. :func:`design_decisions` /
:func:`design_timings` / :func:`last_design` show the cache; :func:`use_design` or
``$VIVAT_REFLECT_CONV_DESIGN`` force one by name (the memory-lean designs stay selectable).
Interpreted Triton (tests on CPU) is not timed: it runs ``"border"``. The ``torch`` backend is
the reference ``F.conv2d(F.pad(x, mode="reflect"))``; its backward is what autograd would run
(conv backward on the padded copy, then the reflection-pad backward).

Border-term contract (``cpp``: ``csrc/reflect_conv.cpp``; ``triton``: the list kernels of
``vivat_kernels/triton/reflect_conv_kernels.py``): ``fwd`` adds the terms to y at an int32 (P, 2)
list of border outputs; ``dgrad`` adds to dx at a list of mirrored input positions; ``wgrad``
returns the float32 (float64) dweight terms. "Covered" outputs (``ConvGeometry.cover``) hold the library
result; the others start at 0 and receive every tap plus the bias.

Layouts: NCHW and channels_last (the output and dx keep x's memory format). dtypes: float32,
float16, bfloat16, float64; x, weight and bias share one dtype; border terms accumulate in
float32 (float64 for float64).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _backend, reference
from ._common import as_format, check_same_device, check_tensor, memory_format_of
from ._reflect_designs import (
    ConvGeometry,
    _border_bwd,
    _border_fwd,
    _eager_bwd,
    _eager_fwd,
    _implicit_bwd,
    _implicit_fwd,
    _position_lists,  # noqa: F401 (re-exported: the tests read the lists here)
    _slab_bwd,
    _slab_fwd,
)

DESIGNS = ("auto", "timed", "eager", "slab", "border", "implicit_gemm")
# The designs each backend can run, in the order a tie goes to.
BACKEND_DESIGNS = {"cpp": ("eager", "slab", "border"), "triton": ("eager", "slab", "border", "implicit_gemm")}

_forced_design: str | None = None
_decisions: dict[tuple, str] = {}
_timings: dict[tuple, dict[str, float]] = {}
_decisions_lock = threading.Lock()


# --------------------------------------------------------------------------------------------
# design choice
# --------------------------------------------------------------------------------------------
def set_design(name: str | None) -> None:
    """Force a design for the ``cpp`` and ``triton`` backends (``None``/``"auto"``: the default rule;
    ``"timed"``: the cached first-call timing on every device)."""
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
    """The cached first-call choices: key (phase, backend, device, N, C, H, W, C_out, KH, KW,
    stride, pad4, dtype, layout)."""
    with _decisions_lock:
        return dict(_decisions)


def design_timings() -> dict[tuple, dict[str, float]]:
    """The first-call timings (ms per design) behind :func:`design_decisions`."""
    with _decisions_lock:
        return {k: dict(v) for k, v in _timings.items()}


def clear_design_decisions() -> None:
    with _decisions_lock:
        _decisions.clear()
        _timings.clear()


def _time_ms(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """CUDA: median time of 5 calls queued back to back between events after one warm-up call
    (and Triton compilation), and the last call's result."""
    result = fn()
    torch.cuda.synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(5)]
    for start, end in events:
        start.record()
        result = fn()
        end.record()
    torch.cuda.synchronize(device)
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 2], result


def _time_cpu_rounds(candidates: dict[str, Callable[[], object]]) -> tuple[dict[str, float], dict[str, object]]:
    """CPU: one warm-up call each, then rounds that alternate the candidates (so a change of
    machine load hits them alike), up to 3 rounds or until 0.5 s are spent; each candidate's
    fastest round (the least disturbed one on a shared machine) and its last result."""
    results = {name: fn() for name, fn in candidates.items()}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    spent = 0.0
    while len(times[next(iter(times))]) < 3 and spent < 0.5:
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            results[name] = fn()
            dt = time.perf_counter() - t0
            times[name].append(dt * 1e3)
            spent += dt
    return {name: min(v) for name, v in times.items()}, results


def _decision_key(phase: str, backend: str, x: Tensor, g: ConvGeometry) -> tuple:
    return (
        phase,
        backend,
        str(x.device),
        g.n,
        g.c,
        g.h,
        g.w,
        g.co,
        g.kh,
        g.kw,
        g.stride,
        g.pad4,
        str(x.dtype),
        "cl" if memory_format_of(x) == torch.channels_last else "nchw",
    )


def _run_design(phase: str, backend: str, x: Tensor, g: ConvGeometry, candidates: dict[str, Callable[[], object]]):
    """Run the forced design, else the cached choice for this call's key, else time every
    candidate on these inputs once, cache the fastest and return its result.

    Candidates: the plain eager path (``F.pad`` + the library conv, ``"eager"``) and every
    padding-free design the backend has, so ``auto`` is never slower than eager by more than the
    timing's noise; the padding-free designs stay selectable by name (:func:`use_design`).
    Interpreted Triton (tests on CPU) is not timed: it runs ``"border"``.
    """
    forced = get_design()
    if forced == "auto" and backend == "cpp":
        # On CPU the plain path is the rule, not a timing: designs differ in the last bits, and a
        # choice made by the clock would make two runs (or a run and its resume) differ.
        forced = "eager"
    if forced not in ("auto", "timed"):
        if forced not in candidates:
            raise RuntimeError(
                f"the {forced} design cannot run on the {backend} backend (it has {', '.join(candidates)})"
            )
        return candidates[forced]()
    if backend == "triton" and x.device.type != "cuda":
        return candidates["border"]()
    key = _decision_key(phase, backend, x, g)
    with _decisions_lock:
        chosen = _decisions.get(key)
    if chosen is not None:
        return candidates[chosen]()
    if x.device.type == "cuda":
        timings, results = {}, {}
        for name, fn in candidates.items():
            timings[name], results[name] = _time_ms(fn, x.device)
    else:
        timings, results = _time_cpu_rounds(candidates)
    best = min(timings, key=timings.get)
    with _decisions_lock:
        _decisions[key] = best
        _timings[key] = timings
    return results[best]


def last_design(phase: str, x: Tensor, weight: Tensor, stride: int = 1, padding=1) -> str | None:
    """The design ``auto`` chose for a call like this one (``phase`` "fwd" or "bwd"), or None
    when no such call ran yet (or a design is forced: see :func:`get_design`)."""
    backend, _ = selected_backend(x)
    g = _geometry(x, weight, _normalise_stride(stride), _normalise_padding(padding))
    with _decisions_lock:
        return _decisions.get(_decision_key(phase, backend, x, g))


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
        "eager": lambda: _eager_fwd(x, weight, bias, g),
        "slab": lambda: _slab_fwd(x, weight, bias, g),
        "border": lambda: _border_fwd(x, weight, bias, g, backend),
        "implicit_gemm": lambda: _implicit_fwd(x, weight, bias, g),
    }
    return _run_design("fwd", backend, x, g, {k: candidates[k] for k in BACKEND_DESIGNS[backend]})


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


def _backward(
    dy: Tensor, x: Tensor, weight: Tensor, stride: int, pad4: Sequence[int], need_dx: bool, need_dw: bool
) -> tuple[Tensor | None, Tensor | None]:
    backend, _ = selected_backend(x)
    g = _geometry(x, weight, stride, pad4)
    if backend == "torch":
        return _torch_backward(dy, x, weight, g, need_dx, need_dw)
    candidates = {
        "eager": lambda: _eager_bwd(dy, x, weight, g, need_dx, need_dw),
        "slab": lambda: _slab_bwd(dy, x, weight, g, need_dx, need_dw),
        "border": lambda: _border_bwd(dy, x, weight, g, backend, need_dx, need_dw),
        "implicit_gemm": lambda: _implicit_bwd(dy, x, weight, g, need_dx, need_dw),
    }
    return _run_design("bwd", backend, x, g, {k: candidates[k] for k in BACKEND_DESIGNS[backend]})


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
    return torch.empty(
        _out_shape(x, weight, stride, pad4), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x)
    )


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
        if mask[0]
        else x.new_empty(0),
        torch.empty(weight.shape, dtype=weight.dtype, device=weight.device, memory_format=memory_format_of(weight))
        if mask[1]
        else x.new_empty(0),
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
    mask = [
        bool(ctx.needs_input_grad[0]),
        bool(ctx.needs_input_grad[1]),
        bool(ctx.has_bias and ctx.needs_input_grad[2]),
    ]
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
    for side, p, size, axis in (
        ("left", left, w, "W"),
        ("right", right, w, "W"),
        ("top", top, h, "H"),
        ("bottom", bottom, h, "H"),
    ):
        if p > size - 1:
            raise ValueError(
                f"padding {side}={p} must be <= {axis}-1 = {size - 1} for x of shape {tuple(x.shape)}: "
                "reflect padding mirrors at most size-1 samples"
            )
    if h + top + bottom < kh or w + left + right < kw:
        raise ValueError(f"padded input ({h + top + bottom}x{w + left + right}) is smaller than the kernel ({kh}x{kw})")


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
    if (
        x.dtype != torch.float64
        and torch.amp.is_autocast_available(device_type)
        and torch.is_autocast_enabled(device_type)
    ):
        # As F.conv2d under autocast: every floating input in the autocast dtype.
        dtype = torch.get_autocast_dtype(device_type)
        x, weight, bias = (t.to(dtype) if t is not None else None for t in (x, weight, bias))
    _check_dtypes(x, weight, bias)
    if _plain_composite(x.device.type):
        # F.pad + F.conv2d in the open: autograd runs ATen's own backward, Inductor sees both calls.
        fmt = memory_format_of(x)
        xp = F.pad(x, pad4, mode="reflect") if any(pad4) else x
        return F.conv2d(xp, as_format(weight, fmt), bias, stride).contiguous(memory_format=fmt)
    x = as_format(x, memory_format_of(x))
    weight = (
        weight
        if weight.is_contiguous() or weight.is_contiguous(memory_format=torch.channels_last)
        else weight.contiguous()
    )
    return reflect_conv2d_fwd(x, weight, bias, stride, list(pad4))


@torch.compiler.assume_constant_result
def _plain_composite(device_type: str) -> bool:
    """True when ``auto`` on this device means the plain path by rule (the ``cpp`` backend, CPU).

    The call then never enters the custom op: ``F.pad`` + ``F.conv2d`` run as a model would run
    them, so eager autograd is exactly eager's (ATen's conv and reflection-pad backward, both
    deterministic on CPU) and ``torch.compile`` sees, and may fuse, the padding. Decided once per
    compiled graph (a constant to ``torch.compile``); eagerly, on every call.
    """
    key = (
        device_type,
        _forced_design,
        _backend._forced,
        os.environ.get("VIVAT_REFLECT_CONV_DESIGN"),
        os.environ.get("VIVAT_BACKEND"),
    )
    hit = _PLAIN.get(key)
    if hit is None:
        hit = (
            device_type == "cpu" and get_design() == "auto" and _backend.resolve(torch.device(device_type))[0] == "cpp"
        )
        _PLAIN[key] = hit
    return hit


# _plain_composite's answers by (device type, forced design, forced backend, their two variables):
# a dict lookup per call instead of resolving the backend (and the extension) every time.
_PLAIN: dict[tuple, bool] = {}
