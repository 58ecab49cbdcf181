"""The fused GroupNorm family: ``y = act(GroupNorm(x) * up(gamma) + up(beta))``.

One op covers plain GN (``gamma = beta = None``), GN + SiLU (``act="silu"``) and the spatially
conditional norm of MoVQ / VIVAT (``gamma``, ``beta`` of shape (N, C, h, w), nearest-upsampled to
(H, W) by index inside the kernel). It is registered as ``vivat::group_norm_fwd`` and
``vivat::group_norm_bwd`` (``torch.library.custom_op``) with fake kernels and autograd, so
``torch.compile(fullgraph=True)`` sees one opaque node per call and no graph break.

Backend contract (``triton`` and ``cpp`` implement the same two functions):

* ``group_norm_fwd(x, weight, bias, gamma, beta, num_groups, eps, silu) -> (y, mean, rstd)``
  x dense NCHW or channels_last; weight/bias (C,) or None; gamma/beta (N, C, h, w) in x's memory
  format or None; each of the four has x's dtype or float32. y = empty_like(x), filled;
  mean/rstd (N, G) float32 (float64 for float64 x).
* ``group_norm_bwd(dy, x, weight, bias, gamma, beta, mean, rstd, num_groups, eps, silu, mask)
  -> (dx, dweight, dbias, dgamma, dbeta)``: dy in x's layout; ``mask`` is five bools saying which
  gradients are wanted, unwanted ones (and those of absent inputs) are None. dx like x;
  dweight/dbias in the accumulation dtype (float32, float64 for float64 x) or already in the
  parameter's dtype (triton); dgamma/dbeta like gamma/beta, at low resolution (the sum over each
  upsampled block).

Eager calls of :func:`fused_group_norm` run the backend through a lean ``autograd.Function``
(custom-op dispatch costs more host time than the kernels at small shapes); under
``torch.compile`` the custom ops are used, so graphs stay whole. Under the ``auto`` backend each
call shape is also weighed against plain eager ATen (see :func:`fused_group_norm`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _backend, reference
from ._common import as_format, check_param_dtype, check_same_device, check_tensor, memory_format_of

ACTS = (None, "silu")


# --------------------------------------------------------------------------------------------
# torch backend: the reference forward, and its autograd for the backward
# --------------------------------------------------------------------------------------------
def _torch_fwd(x, weight, bias, gamma, beta, num_groups, eps, silu):
    y = reference.group_norm(x, num_groups, weight, bias, gamma=gamma, beta=beta, eps=eps, act="silu" if silu else None)
    mean, rstd = reference.group_stats(x, num_groups, eps)
    return y.contiguous(memory_format=memory_format_of(x)), mean, rstd


def _block_sum(t: Tensor, h: int, w: int) -> Tensor:
    """Transpose of nearest upsampling (N, C, H, W) -> (N, C, h, w): sum over each source block."""
    H, W = t.shape[-2:]
    if (h, w) == (H, W):
        return t.clone()  # never alias dy: a custom op's outputs must not share storage with inputs
    rows = nearest_source_index(h, H, t.device)
    cols = nearest_source_index(w, W, t.device)
    rh = torch.nn.functional.one_hot(rows, h).to(t.dtype)  # (H, h)
    rw = torch.nn.functional.one_hot(cols, w).to(t.dtype)  # (W, w)
    return torch.einsum("nchw,hi,wj->ncij", t, rh, rw)


def nearest_source_index(src: int, dst: int, device=None) -> Tensor:
    """For each of ``dst`` output positions, the source index ``F.interpolate(mode="nearest")`` reads."""
    probe = torch.arange(src, dtype=torch.float32, device=device).view(1, 1, src, 1)
    return torch.nn.functional.interpolate(probe, size=(dst, 1), mode="nearest").view(dst).long()


def _torch_bwd(dy, x, weight, bias, gamma, beta, mean, rstd, num_groups, eps, silu, mask):
    # Plain formulas in the accumulation dtype, recomputing the normalised value from mean/rstd.
    n, c, H, W = x.shape
    g = num_groups
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc).reshape(n, g, c // g * H * W)
    xhat = ((xf - mean.to(acc).unsqueeze(-1)) * rstd.to(acc).unsqueeze(-1)).reshape(n, c, H, W)
    a = xhat
    if weight is not None:
        a = a * weight.to(acc).view(1, c, 1, 1)
    if bias is not None:
        a = a + bias.to(acc).view(1, c, 1, 1)
    size = (H, W)
    gu = None if gamma is None else reference.nearest_up(gamma, size).to(acc)
    bu = None if beta is None else reference.nearest_up(beta, size).to(acc)
    dp = dy.to(acc)
    if silu:
        p = a if gu is None else a * gu
        if bu is not None:
            p = p + bu
        s = torch.sigmoid(p)
        dp = dp * s * (1 + p * (1 - s))
    dgamma = _block_sum(dp * a, *gamma.shape[-2:]) if (gamma is not None and mask[3]) else None
    dbeta = _block_sum(dp, *beta.shape[-2:]) if (beta is not None and mask[4]) else None
    da = dp if gu is None else dp * gu
    dbias = da.sum(dim=(0, 2, 3)) if (bias is not None and mask[2]) else None
    dweight = (da * xhat).sum(dim=(0, 2, 3)) if (weight is not None and mask[1]) else None
    dx = None
    if mask[0]:
        dxhat = da if weight is None else da * weight.to(acc).view(1, c, 1, 1)
        dxhat = dxhat.reshape(n, g, c // g * H * W)
        xh = xhat.reshape(n, g, c // g * H * W)
        m1 = dxhat.mean(-1, keepdim=True)
        m2 = (dxhat * xh).mean(-1, keepdim=True)
        dx = (rstd.to(acc).unsqueeze(-1) * (dxhat - m1 - xh * m2)).reshape(n, c, H, W)
        dx = dx.to(x.dtype).contiguous(memory_format=memory_format_of(x))
    return (
        dx,
        dweight,
        dbias,
        None if dgamma is None else dgamma.to(gamma.dtype).contiguous(memory_format=memory_format_of(gamma)),
        None if dbeta is None else dbeta.to(beta.dtype).contiguous(memory_format=memory_format_of(beta)),
    )


_IMPLS: dict = {}


def _impl(backend: str):
    """(fwd, bwd) of a backend; modules are imported once, on first use."""
    hit = _IMPLS.get(backend)
    if hit is None:
        if backend == "triton":
            from ..triton import group_norm as mod

            hit = (mod.group_norm_fwd, mod.group_norm_bwd)
        elif backend == "cpp":
            from .._build import load_extension

            ext = load_extension()
            hit = (ext.group_norm_fwd, ext.group_norm_bwd)
        else:
            hit = (_torch_fwd, _torch_bwd)
        _IMPLS[backend] = hit
    return hit


# Backend resolution per (forced backend, device type, dtype), computed once: the environment
# ($VIVAT_BACKEND, TRITON_INTERPRET) and the extension build are looked at on the first call only.
# Call clear_caches() after changing those variables.
_RESOLVED: dict = {}
# auto's per-shape choice between the fused kernel and plain eager ATen: key -> (backend, why)
_AUTO: dict = {}
_LAST: list = [("", "no call yet")]


def clear_caches() -> None:
    """Forget cached backend resolutions and auto's per-shape choices."""
    _RESOLVED.clear()
    _AUTO.clear()


def _resolve(x: Tensor) -> tuple[str, str, bool]:
    """(backend, why, chosen automatically) for x's device and dtype."""
    key = (_backend._forced, x.device.type, x.dtype)
    hit = _RESOLVED.get(key)
    if hit is None:
        backend, why = _backend.resolve(x.device)
        if backend == "cpp" and x.dtype == torch.float16:
            # The C++ kernels are written for fp32/fp64/bf16; fp16 on CPU is rare and stays eager.
            backend, why = "torch", "cpp backend has no float16 kernel"
        hit = _RESOLVED[key] = (backend, why, _backend.get_backend() == "auto")
    return hit


def selected_backend(
    x: Tensor,
    num_groups: int | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    act: str | None = None,
) -> tuple[str, str]:
    """The backend this op would use for ``x`` now, and why.

    With only ``x``: the kernel family for x's device and dtype ("triton", "cpp" or "torch").
    With the call's other arguments too: what ``auto`` picked (or would first try) for exactly
    that call, which may be ``"eager"`` (plain ATen GroupNorm [+ SiLU]) when it measured faster.
    """
    if x.numel() == 0:
        return "torch", "empty tensor"
    backend, why, auto = _resolve(x)
    if num_groups is None or not auto or backend == "torch":
        return backend, why
    hit = _AUTO.get(_auto_key(x, num_groups, weight, bias, gamma, beta, act, torch.is_grad_enabled()))
    return hit if hit is not None else (backend, why + "; auto has not timed this call's shape yet")


def last_selection() -> tuple[str, str]:
    """(backend, why) of the most recent ``fused_group_norm`` call."""
    return _LAST[0]


def _none_to_empty(t: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


# --------------------------------------------------------------------------------------------
# auto: fused kernel or plain eager ATen, per call shape
# --------------------------------------------------------------------------------------------
# A fused kernel wins clearly on large tensors; on small ones per-call host cost decides, and
# plain ATen (one GroupNorm kernel, one SiLU) may be faster. Below AUTO_TIMED_NUMEL elements the
# first call of each shape times both candidates (forward, or forward + backward when gradients
# are wanted) and caches the faster; above it the fused kernel is taken without timing.
AUTO_TIMED_NUMEL = 1 << 22
# Devices where auto weighs eager ATen at all. CPU keeps the C++ kernels: mixing eager and fused
# arithmetic per shape would make GN and an identity SCN of one model differ in the last bits.
AUTO_EAGER_DEVICES = ("cuda",)
_AUTO_REPS = 3


def _tsig(t):
    return None if t is None else (tuple(t.shape), t.dtype, t.requires_grad)


def _auto_key(x, num_groups, weight, bias, gamma, beta, act, grad):
    return (
        tuple(x.shape),
        x.stride(),
        x.dtype,
        x.device,
        num_groups,
        _tsig(weight),
        _tsig(bias),
        _tsig(gamma),
        _tsig(beta),
        act,
        grad and (x.requires_grad or any(t is not None and t.requires_grad for t in (weight, bias, gamma, beta))),
    )


def _eager(x, num_groups, weight, bias, gamma, beta, eps, act):
    """Plain ATen: GroupNorm in x's dtype, then the SCN terms and SiLU (autograd as usual)."""
    w = None if weight is None else weight.to(x.dtype)
    b = None if bias is None else bias.to(x.dtype)
    # bias without weight is added outside: F.group_norm(weight=None, bias=b) cannot be
    # differentiated on torch <= 2.13 (native_group_norm_backward: "tensor does not have a device")
    y = F.group_norm(x, num_groups, w, b if w is not None else None, eps)
    if w is None and b is not None:
        y = y + b.view(1, -1, 1, 1)
    size = tuple(x.shape[-2:])
    if gamma is not None:
        y = y * reference.nearest_up(gamma.to(x.dtype), size)
    if beta is not None:
        y = y + reference.nearest_up(beta.to(x.dtype), size)
    return F.silu(y) if act == "silu" else y


@torch.compiler.assume_constant_result
def _inductor_decomposes(device_type: str) -> bool:
    """Under ``torch.compile`` on CPU with the backend left on ``auto``: hand the op to Inductor as
    plain ATen (GroupNorm, the nearest-upsampled SCN terms, SiLU) instead of the opaque C++ op.

    Inductor fuses those with the neighbouring convs' bias, the residual adds and the layout it
    picks for the convs, which an opaque op prevents; on two CPU cores that made the compiled
    vivat-tiny decode faster than with the C++ op inside (bench/results/model-*-cpu.md). SCN's
    scale and shift are still computed at latent resolution (the upsampling is an index that
    Inductor folds into its kernel). A forced backend (``use_backend("cpp")``) keeps the op.
    Decided once per compiled graph.
    """
    return device_type == "cpu" and _backend.get_backend() == "auto"


def _time_call(fn, x: Tensor, backward: bool) -> float:
    import time

    def once():
        y = fn()
        if backward:
            y.backward(torch.ones_like(y))

    once()  # warm-up (kernel compile, plan build)
    best = float("inf")
    for _ in range(_AUTO_REPS):
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        once()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        best = min(best, time.perf_counter() - t0)
    return best


def _auto_choice(key, x, num_groups, weight, bias, gamma, beta, eps, act, fused_backend, why, grad):
    if x.numel() >= AUTO_TIMED_NUMEL:
        return fused_backend, f"{why}; auto: large tensor, fused kernel"
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return fused_backend, f"{why}; auto: cannot time inside CUDA graph capture"
    leaves = [
        None if t is None else t.detach().requires_grad_(grad and t.requires_grad)
        for t in (x, weight, bias, gamma, beta)
    ]
    args = (leaves[0], num_groups, leaves[1], leaves[2], leaves[3], leaves[4], eps, act)
    with torch.enable_grad() if grad else torch.no_grad():
        t_eager = _time_call(lambda: _eager(*args), x, grad)
        t_fused = _time_call(lambda: _fused_apply(fused_backend, *args, grad), x, grad)
    if t_eager < t_fused:
        return "eager", f"auto: plain ATen measured faster here ({t_eager * 1e6:.0f} vs {t_fused * 1e6:.0f} us)"
    return fused_backend, f"{why}; auto: fused measured faster ({t_fused * 1e6:.0f} vs {t_eager * 1e6:.0f} us)"


# --------------------------------------------------------------------------------------------
# eager calls: a lean autograd.Function (torch.compile uses the custom ops below instead)
# --------------------------------------------------------------------------------------------
class _FusedGroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, num_groups, eps, act, backend):
        fwd, bwd = _impl(backend)
        y, mean, rstd = fwd(x, weight, bias, gamma, beta, num_groups, eps, act == "silu")
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, bias, gamma, beta, mean, rstd)
        ctx.cfg = (num_groups, eps, act == "silu", bwd, memory_format_of(x))
        return y

    @staticmethod
    def backward(ctx, dy):
        mask = ctx.needs_input_grad[:5]
        if dy is None or not any(mask):
            return None, None, None, None, None, None, None, None, None
        x, weight, bias, gamma, beta, mean, rstd = ctx.saved_tensors
        num_groups, eps, silu, bwd, fmt = ctx.cfg
        if not dy.is_contiguous(memory_format=fmt):
            dy = dy.contiguous(memory_format=fmt)
        grads = bwd(dy, x, weight, bias, gamma, beta, mean, rstd, num_groups, eps, silu, list(mask))
        outs = [
            None if g is None else (g if g.dtype == t.dtype else g.to(t.dtype))
            for g, t in zip(grads, (x, weight, bias, gamma, beta))
        ]
        return (*outs, None, None, None, None)


def _fused_apply(backend, x, num_groups, weight, bias, gamma, beta, eps, act, grad):
    if grad:
        return _FusedGroupNorm.apply(x, weight, bias, gamma, beta, num_groups, eps, act, backend)
    return _impl(backend)[0](x, weight, bias, gamma, beta, num_groups, eps, act == "silu")[0]


# --------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------
# ``flexible_layout``: the kernels read and write NCHW and channels_last alike, so Inductor may hand
# over its buffers in whichever of the two it chose for the neighbouring convs (without the tag it
# would convert every input back to the layout seen while tracing, and the output again after).
# Any other layout is made dense (NCHW) inside the op; the fake kernels state the same rule.
_LAYOUT_TAGS = (torch.Tag.flexible_layout,)


def _dense(t: Tensor | None) -> Tensor | None:
    return None if t is None else as_format(t, memory_format_of(t))


def _empty_in_format(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device, memory_format=memory_format_of(t))


@torch.library.custom_op("vivat::group_norm_fwd", mutates_args=(), tags=_LAYOUT_TAGS)
def group_norm_fwd(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    num_groups: int,
    eps: float,
    act: str,
) -> tuple[Tensor, Tensor, Tensor]:
    fwd, _ = _impl(_resolve(x)[0])
    x, gamma, beta = _dense(x), _dense(gamma), _dense(beta)
    y, mean, rstd = fwd(x, weight, bias, gamma, beta, num_groups, eps, act == "silu")
    return y, mean, rstd


@group_norm_fwd.register_fake
def _(x, weight, bias, gamma, beta, num_groups, eps, act):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    stats = x.new_empty((x.shape[0], num_groups), dtype=acc)
    return _empty_in_format(x), stats, torch.empty_like(stats)


@torch.library.custom_op("vivat::group_norm_bwd", mutates_args=(), tags=_LAYOUT_TAGS)
def group_norm_bwd(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    num_groups: int,
    eps: float,
    act: str,
    mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    mask = [bool(m) and t is not None for m, t in zip(mask, (x, weight, bias, gamma, beta))]
    _, bwd = _impl(_resolve(x)[0])
    x, gamma, beta = _dense(x), _dense(gamma), _dense(beta)
    dy = as_format(dy, memory_format_of(x))
    grads = bwd(dy, x, weight, bias, gamma, beta, mean, rstd, num_groups, eps, act == "silu", mask)
    return tuple(_none_to_empty(g, x) for g in grads)  # type: ignore[return-value]


@group_norm_bwd.register_fake
def _(dy, x, weight, bias, gamma, beta, mean, rstd, num_groups, eps, act, mask):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = []
    for t, m, is_param in zip((x, weight, bias, gamma, beta), mask, (False, True, True, False, False)):
        if t is None or not m:
            out.append(x.new_empty(0))
        elif is_param:
            out.append(torch.empty_like(t, dtype=acc))
        else:
            out.append(_empty_in_format(t))
    return tuple(out)


def _setup_context(ctx, inputs, output):
    x, weight, bias, gamma, beta, num_groups, eps, act = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, gamma, beta, mean, rstd)
    ctx.num_groups = num_groups
    ctx.eps = eps
    ctx.act = act
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, gamma, beta, mean, rstd = ctx.saved_tensors
    mask = [bool(m) for m in ctx.needs_input_grad[:5]]
    if dy is None or not any(mask):
        return None, None, None, None, None, None, None, None
    dy = dy.contiguous(memory_format=memory_format_of(x))  # no copy when layouts already agree
    grads = group_norm_bwd(dy, x, weight, bias, gamma, beta, mean, rstd, ctx.num_groups, ctx.eps, ctx.act, mask)
    outs = []
    for g, t, m in zip(grads, (x, weight, bias, gamma, beta), mask):
        outs.append(g.to(t.dtype) if (m and t is not None) else None)
    return (*outs, None, None, None)


group_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# public function
# --------------------------------------------------------------------------------------------
def _check(x, num_groups, weight, bias, gamma, beta, eps, act) -> None:
    check_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    n, c, h, w = x.shape
    if num_groups <= 0:
        raise ValueError(f"num_groups must be positive, got {num_groups}")
    if c % num_groups != 0:
        raise ValueError(f"num_groups={num_groups} must divide the channel count C={c} of x {tuple(x.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS}, got {act!r}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(name, t)
            if tuple(t.shape) != (c,):
                raise ValueError(f"{name} must have shape ({c},) for x of shape {tuple(x.shape)}, got {tuple(t.shape)}")
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t is not None:
            check_tensor(name, t)
            if t.dim() != 4 or t.shape[0] != n or t.shape[1] != c or t.shape[2] > h or t.shape[3] > w:
                raise ValueError(
                    f"{name} must have shape ({n}, {c}, h, w) with 1 <= h <= {h} and 1 <= w <= {w} "
                    f"for x of shape {tuple(x.shape)}, got {tuple(t.shape)}"
                )
            if (t.shape[2] == 0 or t.shape[3] == 0) and h * w > 0:
                raise ValueError(f"{name} must have h, w >= 1, got shape {tuple(t.shape)}")
    check_same_device(x, weight=weight, bias=bias, gamma=gamma, beta=beta)
    for name, t in (("weight", weight), ("bias", bias), ("gamma", gamma), ("beta", beta)):
        check_param_dtype(x, name, t)


def fused_group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    eps: float = 1e-5,
    act: str | None = None,
) -> Tensor:
    """``act(GroupNorm(x; num_groups, weight, bias, eps) * up(gamma) + up(beta))`` in one pass.

    Args:
        x: (N, C, H, W), NCHW or channels_last (the output keeps x's memory format); float32,
            float16, bfloat16, or float64. Statistics and accumulation are always fp32 (fp64 for
            fp64 inputs). C, H and W must be positive; N = 0 gives an empty result.
        num_groups: number of groups G; must divide C.
        weight, bias: optional per-channel affine (C,), dtype x.dtype or float32.
        gamma, beta: optional (N, C, h, w) with h <= H, w <= W, upsampled to (H, W) by nearest
            neighbour exactly as ``F.interpolate(mode="nearest")`` does it (never materialised).
        eps: added to the variance, > 0; 1e-5 by default, as ``F.group_norm`` and ``nn.GroupNorm``.
        act: None or ``"silu"``.

    Backward gives dx, dweight, dbias and dgamma/dbeta at their own (low) resolution.

    Backend: see :mod:`vivat_kernels._backend`. Under ``auto`` each call shape is also matched
    against plain eager ATen (GroupNorm [+ SiLU]); small shapes time both once and keep the faster,
    so ``auto`` is not slower than eager. :func:`last_selection` says what ran and why. Eager calls
    go through a lean ``autograd.Function``; under ``torch.compile`` the registered custom ops
    (``vivat::group_norm_fwd`` / ``_bwd``) are used, one opaque node, no graph break.
    """
    _check(x, num_groups, weight, bias, gamma, beta, eps, act)
    n, c, h, w = x.shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"x must have C, H, W >= 1 (only the batch may be empty), got shape {tuple(x.shape)}")
    act = act or "none"
    eps = float(eps)
    fmt = memory_format_of(x)
    x = as_format(x, fmt)
    gamma = as_format(gamma, fmt)
    beta = as_format(beta, fmt)
    if torch.compiler.is_compiling():
        if _inductor_decomposes(x.device.type):
            return _eager(x, num_groups, weight, bias, gamma, beta, eps, act)
        return group_norm_fwd(x, weight, bias, gamma, beta, num_groups, eps, act)[0]
    if n == 0:
        _LAST[0] = ("eager", "empty batch")
        return _eager(x, num_groups, weight, bias, gamma, beta, eps, act)
    backend, why, auto = _resolve(x)
    grad = torch.is_grad_enabled() and (
        x.requires_grad or any(t is not None and t.requires_grad for t in (weight, bias, gamma, beta))
    )
    if auto and backend != "torch" and x.device.type in AUTO_EAGER_DEVICES:
        key = _auto_key(x, num_groups, weight, bias, gamma, beta, act, grad)
        hit = _AUTO.get(key)
        if hit is None:
            hit = _AUTO[key] = _auto_choice(key, x, num_groups, weight, bias, gamma, beta, eps, act, backend, why, grad)
        backend, why = hit
    _LAST[0] = (backend, why)
    if backend == "eager":
        return _eager(x, num_groups, weight, bias, gamma, beta, eps, act)
    return _fused_apply(backend, x, num_groups, weight, bias, gamma, beta, eps, act, grad)
