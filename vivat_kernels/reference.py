"""Eager PyTorch ground truth for every op, written plainly.

Every fused path in this package is tested against these functions. They upsample, normalise and
pad exactly as a diffusers / LDM model written in plain PyTorch would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_up(t: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """Nearest upsampling to ``size`` with ``F.interpolate``'s index rule (identity if equal)."""
    if t is None or tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="nearest")


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    gamma: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    eps: float = 1e-5,
    act: str | None = None,
) -> torch.Tensor:
    """``act(GroupNorm(x) * up(gamma) + up(beta))`` computed in fp32 and cast back to x's dtype."""
    size = tuple(x.shape[-2:])
    dtype = x.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    # F.group_norm(weight=None, bias=b) is avoided: its backward raises "tensor does not have a
    # device" in native_group_norm_backward on torch <= 2.13 whenever the bias gradient is wanted.
    # Without a weight the bias is added outside, which is the same function.
    w = None if weight is None else weight.to(compute)
    b = None if bias is None else bias.to(compute)
    y = F.group_norm(x.to(compute), num_groups, w, b if w is not None else None, eps)
    if w is None and b is not None:
        y = y + b.view(1, -1, *([1] * (x.dim() - 2)))
    g = nearest_up(gamma, size)
    b = nearest_up(beta, size)
    if g is not None:
        y = y * g.to(compute)
    if b is not None:
        y = y + b.to(compute)
    if act == "silu":
        y = F.silu(y)
    return y.to(dtype)


def group_stats(x: torch.Tensor, num_groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, group) mean and 1/std (biased variance), fp32 (fp64 for fp64 x)."""
    n = x.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.numel() == 0:  # no samples (or no elements per group): empty statistics, no var_mean warning
        empty = x.new_empty((n, num_groups), dtype=acc)
        return empty, empty.clone()
    xf = x.reshape(n, num_groups, x.numel() // (n * num_groups)).to(acc)
    var, mean = torch.var_mean(xf, dim=-1, unbiased=False)
    return mean, torch.rsqrt(var + eps)


def reflect_pad4(padding: int | tuple[int, ...]) -> tuple[int, int, int, int]:
    """Normalise ``padding`` (int, (ph, pw), or F.pad-style (left, right, top, bottom))."""
    if isinstance(padding, int):
        return (padding, padding, padding, padding)
    p = tuple(int(v) for v in padding)
    if len(p) == 2:
        return (p[1], p[1], p[0], p[0])
    if len(p) == 4:
        return p  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (ph, pw) or (left, right, top, bottom), got {padding!r}")


def reflect_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int | tuple[int, ...] = 1,
) -> torch.Tensor:
    """``F.conv2d(F.pad(x, pad4, mode="reflect"), weight, bias, stride)``."""
    pad4 = reflect_pad4(padding)
    if any(pad4):
        x = F.pad(x, pad4, mode="reflect")
    return F.conv2d(x, weight, bias, stride)
