"""Host side of the Triton GroupNorm launchers: tuning knobs, the launch record, plan helpers.

Shared by the forward planner (:mod:`._gn_plan_fwd`), the backward planner
(:mod:`._gn_plan_bwd`) and the public launchers (:mod:`.group_norm`). Nothing here runs per call
except :func:`_run`; the rest builds launch plans once per (shape, strides, dtypes, flags,
alignment, device). :func:`_apply_launch` is shared: the elementwise sweep writes y in the
forward's split design and dx in the backward.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton.language as tl
from torch import Tensor

from . import group_norm_fwd as kf

# Heuristic knobs (memory-bound kernels: fixed rules, no autotuning). Tests shrink them to push
# tiny shapes through every path; call group_norm.clear_plans() after changing them.
#   tile_bytes        bytes of x per elementwise / statistics tile (elements = tile_bytes / size)
#   group_tile_elems  a group whose padded size fits this many fp32 registers is one tile: read once
#   l2_group_bytes    per-group design (second sweep from L2) up to this group size, given enough groups
#   programs_per_sm   split-design statistics programs to aim for per SM (fills the GPU at batch 1)
#   min_iters         a statistics chunk spans at least this many tiles
#   program_elems     work one backward-reduction program aims for
#   max_block_c       channel block of the channels_last backward reduction
#   cl_rows           image rows per channels_last backward-reduction program
#   design            None (heuristic), "group" or "split": force a forward design
_TUNE = {
    "tile_bytes": 16384,
    "group_tile_elems": 8192,
    "l2_group_bytes": 1 << 20,
    "programs_per_sm": 16,
    "min_iters": 4,
    "program_elems": 16384,
    "max_block_c": 64,
    "cl_rows": 8,
    "design": None,
}


class _Launch(NamedTuple):
    kernel: object
    grid: tuple
    kw: dict  # static keyword arguments: sizes, strides, flags, block sizes, num_warps


def _run(launch: _Launch, **tensors) -> None:
    launch.kernel[launch.grid](**tensors, **launch.kw)


# ----------------------------------------------------------------------------------------------
# small host helpers (plan building only)
# ----------------------------------------------------------------------------------------------
def _np2(v: int) -> int:
    return 1 << (max(1, int(v)) - 1).bit_length()


def _prev_pow2(v: int) -> int:
    return 1 << (max(1, int(v)).bit_length() - 1)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _warps(elems: int) -> int:
    # about 8 elements per thread for the big tiles; never more than 8 warps (memory-bound)
    return max(1, min(8, elems // 256))


def _warps_reduce(elems: int) -> int:
    # about 4 elements per thread: the reduction kernels hold four accumulator tiles
    return max(1, min(8, elems // 128))


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device.index if device.index is not None else 0).multi_processor_count


def _acc_types(x: Tensor):
    if x.dtype == torch.float64:
        return torch.float64, tl.float64
    return torch.float32, tl.float32


def _is_channels_last(x: Tensor) -> bool:
    if x.is_contiguous():
        return False
    if x.is_contiguous(memory_format=torch.channels_last):
        return True
    raise ValueError(f"x must be dense NCHW or dense channels_last, got shape {tuple(x.shape)} strides {x.stride()}")


@functools.cache
def _scale(src: int, dst: int) -> float:
    """float32(src) / float32(dst) as F.interpolate computes it; exactly representable in fp32."""
    return (torch.tensor(float(src), dtype=torch.float32) / torch.tensor(float(dst), dtype=torch.float32)).item()


@functools.cache
def _eps_parts(eps: float) -> tuple[float, float]:
    """eps = hi + lo with hi its fp32 rounding: kernels take float arguments as fp32."""
    hi = torch.tensor(eps, dtype=torch.float32).item()
    return hi, float(eps) - hi


def _cell_starts(src: int, dst: int, device: torch.device) -> tuple[Tensor, int]:
    """int32 table t of length src+1: destination positions [t[i], t[i+1]) read source i under
    nearest upsampling (monotone, so each source cell is a contiguous run); and the largest run."""
    probe = torch.arange(src, dtype=torch.float32).view(1, 1, src, 1)
    idx = F.interpolate(probe, size=(dst, 1), mode="nearest").view(dst).long()
    starts = torch.searchsorted(idx, torch.arange(src + 1, dtype=torch.long))
    return starts.to(torch.int32).to(device), int((starts[1:] - starts[:-1]).max())


def _row_blocks(H: int, rb: int, device: torch.device) -> Tensor:
    """int32 table [0, rb, 2rb, ..., H]: plain row ranges when no block sum fixes them."""
    return torch.tensor(list(range(0, H, rb)) + [H], dtype=torch.int32).to(device)


def _lowres_geometry(prefix: str, t: Tensor | None, H: int, W: int) -> dict:
    """gamma's (prefix "g") or beta's ("b") low-res size, fp32 scales and strides."""
    if t is None:
        vals = (1, 1, 1.0, 1.0, 0, 0, 0, 0)
    else:
        h, w = t.shape[-2:]
        vals = (h, w, _scale(h, H), _scale(w, W), *t.stride())
    p = prefix
    names = (f"{p}h", f"{p}w", f"{p}_scale_h", f"{p}_scale_w", f"s{p}n", f"s{p}c", f"s{p}h", f"s{p}w")
    return dict(zip(names, vals))


def _tkey(t: Tensor | None):
    return None if t is None else (t.shape, t.stride(), t.dtype, t.data_ptr() % 16)


def _check_layout(x: Tensor, num_groups: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError("empty x is handled by the op, not the triton backend")
    if x.shape[1] % num_groups != 0:
        raise ValueError(f"num_groups={num_groups} must divide C={x.shape[1]}")


def _flags(weight, bias, gamma, beta, silu, load_beta=True) -> dict:
    return {
        "HAS_W": weight is not None,
        "HAS_B": bias is not None,
        "HAS_G": gamma is not None,
        "HAS_BE": beta is not None and load_beta,
        "SILU": bool(silu),
    }


def _apply_launch(
    x: Tensor,
    G: int,
    flags: dict,
    geo: dict,
    *,
    bwd: bool,
    merge: bool,
    S: int = 1,
    PCH: int = 1,
    PART_OFF: int = 0,
    eps: tuple[float, float] = (0.0, 0.0),
) -> _Launch:
    N, C, H, W = x.shape
    cl = _is_channels_last(x)
    tile = max(16, _TUNE["tile_bytes"] // x.element_size())
    sxn, sxc, sxh, sxw = x.stride()
    kw = dict(
        C=C,
        G=G,
        CPG=C // G,
        H=H,
        W=W,
        S=S,
        PCH=PCH,
        PART_OFF=PART_OFF,
        eps_hi=eps[0],
        eps_lo=eps[1],
        sxn=sxn,
        sxc=sxc,
        sxh=sxh,
        sxw=sxw,
        **geo,
        **flags,
        BWD=bwd,
        MERGE=merge,
        ACC=_acc_types(x)[1],
    )
    if not cl:
        BLOCK_W = min(_np2(W), max(tile, 16))
        BLOCK_H = max(1, min(_np2(H), tile // BLOCK_W))
        kw.update(BLOCK_S=min(_np2(S), 256), BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, num_warps=_warps(BLOCK_H * BLOCK_W))
        return _Launch(kf.gn_apply_nchw_kernel, (N * C, _cdiv(H, BLOCK_H), _cdiv(W, BLOCK_W)), kw)
    BLOCK_C = min(_np2(C), 128, max(tile, 1))
    BLOCK_W = max(1, min(_np2(W), tile // BLOCK_C))
    kw.update(
        BLOCK_S=max(1, min(_np2(S), 2048 // BLOCK_C)),
        BLOCK_W=BLOCK_W,
        BLOCK_C=BLOCK_C,
        num_warps=_warps(BLOCK_W * BLOCK_C),
    )
    return _Launch(kf.gn_apply_cl_kernel, (N * H, _cdiv(W, BLOCK_W), _cdiv(C, BLOCK_C)), kw)
