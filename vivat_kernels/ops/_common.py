"""Argument checks and small helpers shared by the ops."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is laid out so (and not also plain contiguous), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def as_format(t: torch.Tensor | None, fmt: torch.memory_format) -> torch.Tensor | None:
    """``t`` dense in ``fmt`` (no copy when it already is)."""
    if t is None:
        return None
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


def check_tensor(name: str, t: object, *, dim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float32, float16, bfloat16, float64), got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    return t


def check_same_device(x: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; all tensors must share one device")


def check_param_dtype(x: torch.Tensor, name: str, t: torch.Tensor | None) -> None:
    """Parameters may be x's dtype or float32 (fp32 master weights with low-precision activations)."""
    if t is None:
        return
    if t.dtype != x.dtype and t.dtype != torch.float32:
        raise TypeError(f"{name} has dtype {t.dtype} but x is {x.dtype}; use x's dtype or float32")
