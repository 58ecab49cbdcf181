"""Triton launchers for the fused GroupNorm family: ``y = act(GN_affine(x) * up(gamma) + up(beta))``.

Backend contract: see :mod:`vivat_kernels.ops.group_norm`. This module exports
:func:`group_norm_fwd` and :func:`group_norm_bwd`; the kernels live in
:mod:`.group_norm_fwd`, :mod:`.group_norm_bwd` and the shared helpers in :mod:`._gn_jit`.

Launch budget (per call, plan cached):
    forward   1 launch when the per-group design is chosen (a group per program; most shapes),
              2 for the split design (statistics partials, then apply with the merge folded in);
    backward  3: reduction, finalisation (m1/m2, dweight/dbias, row-piece sums), dx sweep
              (one more reduction only when gamma and beta have different low-res shapes).
No ATen arithmetic between launches: the host allocates outputs and launches, nothing else.

Launch plans -- kernel, grid, keyword arguments, block sizes, lookup tables -- are built once per
(shape, strides, dtypes, flags, alignment, device) and kept in a dict; a call looks its plan up,
allocates and launches with keyword arguments. Absent inputs are passed as ``None``.

Layouts and dtypes: x is dense NCHW or dense channels_last, read in place; outputs keep x's
layout. Statistics and accumulation are fp32 (fp64 for fp64 x, so fp64 gradcheck under
``TRITON_INTERPRET=1`` is exact). gamma/beta are nearest-upsampled by index with the exact
``F.interpolate(mode="nearest")`` rule ``src = min(floor(float32(dst) * float32(h / H)), h - 1)``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton.language as tl
from torch import Tensor

from . import group_norm_bwd as kb
from . import group_norm_fwd as kf
from ._gn_jit import BLOCKSUM_CELLS, BLOCKSUM_FULL, BLOCKSUM_NONE, BLOCKSUM_ROWS

# Heuristic knobs (memory-bound kernels: fixed rules, no autotuning). Tests shrink them to push
# tiny shapes through every path; call clear_plans() after changing them.
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

_FWD_PLANS: dict = {}
_BWD_PLANS: dict = {}


def clear_plans() -> None:
    """Forget every cached launch plan (after changing ``_TUNE``)."""
    _FWD_PLANS.clear()
    _BWD_PLANS.clear()


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


# ----------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------
class _FwdPlan(NamedTuple):
    launches: tuple  # (_Launch, ...): 1 (per group) or 2 (split: stats, apply)
    stats_shape: tuple
    acc: torch.dtype
    part_numel: int  # split design's partial buffer (0 for the per-group design)


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


def _fwd_design(x: Tensor, G: int, BLOCK_C: int) -> tuple[str, bool]:
    """("group" | "split", the group is one register tile)."""
    N, C, H, W = x.shape
    one_tile = BLOCK_C * _np2(H * W) <= _TUNE["group_tile_elems"]
    if _TUNE["design"] is not None:
        return _TUNE["design"], one_tile and _TUNE["design"] == "group"
    if one_tile:
        return "group", True
    fits_l2 = C // G * H * W * x.element_size() <= _TUNE["l2_group_bytes"]
    return ("group" if fits_l2 and N * G >= _sm_count(x.device) else "split"), False


def _fwd_plan(x, weight, bias, gamma, beta, G, eps, silu) -> _FwdPlan:
    N, C, H, W = x.shape
    CPG, HW = C // G, H * W
    acc_t, ACC = _acc_types(x)
    cl = _is_channels_last(x)
    sxc, sxp = (1, C) if cl else (HW, 1)
    eps_parts = _eps_parts(eps)
    flags = _flags(weight, bias, gamma, beta, silu)
    geo = {**_lowres_geometry("g", gamma, H, W), **_lowres_geometry("b", beta, H, W)}
    tile = max(16, _TUNE["tile_bytes"] // x.element_size())
    BLOCK_C = _np2(CPG)
    design, one_tile = _fwd_design(x, G, BLOCK_C)
    if design == "group":
        BLOCK_P = _np2(HW) if one_tile else max(1, min(_np2(HW), tile // BLOCK_C))
        kw = dict(
            G=G,
            CPG=CPG,
            HW=HW,
            W=W,
            sxn=x.stride(0),
            sxc=sxc,
            sxp=sxp,
            eps_hi=eps_parts[0],
            eps_lo=eps_parts[1],
            **geo,
            **flags,
            ONE_TILE=one_tile,
            BLOCK_C=BLOCK_C,
            BLOCK_P=BLOCK_P,
            ACC=ACC,
            num_warps=max(1, min(16, BLOCK_C * BLOCK_P // 512)) if one_tile else _warps(BLOCK_C * BLOCK_P),
        )
        return _FwdPlan((_Launch(kf.gn_group_kernel, (N * G,), kw),), (N, G), acc_t, 0)
    BLOCK_P = max(1, min(_np2(HW), tile // BLOCK_C))
    target = _sm_count(x.device) * _TUNE["programs_per_sm"]
    S = max(1, min(_cdiv(target, N * G), _cdiv(HW, _TUNE["min_iters"] * BLOCK_P)))
    PCH = _cdiv(_cdiv(HW, S), BLOCK_P) * BLOCK_P
    S = _cdiv(HW, PCH)
    part_off = N * G * S
    stats = _Launch(
        kf.gn_stats_kernel,
        (N * G, S),
        {
            "PART_OFF": part_off,
            "G": G,
            "CPG": CPG,
            "HW": HW,
            "PCH": PCH,
            "S": S,
            "sxn": x.stride(0),
            "sxc": sxc,
            "sxp": sxp,
            "BLOCK_C": BLOCK_C,
            "BLOCK_P": BLOCK_P,
            "ACC": ACC,
            "num_warps": _warps(BLOCK_C * BLOCK_P),
        },
    )
    apply = _apply_launch(x, G, flags, geo, bwd=False, merge=True, S=S, PCH=PCH, PART_OFF=part_off, eps=eps_parts)
    return _FwdPlan((stats, apply), (N, G), acc_t, 2 * part_off)


def group_norm_fwd(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    gamma: Tensor | None,
    beta: Tensor | None,
    num_groups: int,
    eps: float,
    silu: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward: ``(y, mean, rstd)``; y = empty_like(x) (x's layout), mean/rstd (N, G) fp32 (fp64
    for fp64 x). One launch (per-group design) or two (split design)."""
    key = (
        x.shape,
        x.stride(),
        x.dtype,
        x.device,
        x.data_ptr() % 16,
        _tkey(weight),
        _tkey(bias),
        _tkey(gamma),
        _tkey(beta),
        num_groups,
        eps,
        silu,
    )
    plan = _FWD_PLANS.get(key)
    if plan is None:
        _check_layout(x, num_groups)
        plan = _FWD_PLANS[key] = _fwd_plan(x, weight, bias, gamma, beta, num_groups, eps, silu)
    y = torch.empty_like(x)
    mean = torch.empty(plan.stats_shape, dtype=plan.acc, device=x.device)
    rstd = torch.empty(plan.stats_shape, dtype=plan.acc, device=x.device)
    if len(plan.launches) == 1:
        _run(
            plan.launches[0],
            x_ptr=x,
            y_ptr=y,
            w_ptr=weight,
            b_ptr=bias,
            g_ptr=gamma,
            be_ptr=beta,
            mean_ptr=mean,
            rstd_ptr=rstd,
        )
    else:
        part = torch.empty(plan.part_numel, dtype=plan.acc, device=x.device)
        _run(plan.launches[0], x_ptr=x, part_ptr=part)
        _run(
            plan.launches[1],
            x_ptr=x,
            dy_ptr=None,
            out_ptr=y,
            w_ptr=weight,
            b_ptr=bias,
            g_ptr=gamma,
            be_ptr=beta,
            mean_ptr=mean,
            rstd_ptr=rstd,
            m1_ptr=None,
            m2_ptr=None,
            part_ptr=part,
        )
    return y, mean, rstd


# ----------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------
def _reduce_rows(lowres: tuple[int, int] | None, H: int, W: int, rows_target: int, device) -> dict:
    """How the reduction cuts rows and columns for one block-sum grid (see BLOCKSUM_* modes)."""
    if lowres is None or tuple(lowres) == (H, W):
        mode = BLOCKSUM_NONE.value if lowres is None else BLOCKSUM_FULL.value
        rb = max(1, min(H, rows_target))
        return {
            "mode": mode,
            "row_tab": _row_blocks(H, rb, device),
            "cells_h": _cdiv(H, rb),
            "KS": 1,
            "L_ROWS": rb,
            "col_tab": None,
            "cells_w": 0,
            "max_cw": 1,
        }
    h, w = lowres
    row_tab, max_rows = _cell_starts(h, H, device)
    KS = max(1, _cdiv(max_rows, rows_target))
    L_ROWS = _cdiv(max_rows, KS)
    if w == W:
        return {
            "mode": BLOCKSUM_ROWS.value,
            "row_tab": row_tab,
            "cells_h": h,
            "KS": KS,
            "L_ROWS": L_ROWS,
            "col_tab": None,
            "cells_w": W,
            "max_cw": 1,
        }
    col_tab, max_cw = _cell_starts(w, W, device)
    return {
        "mode": BLOCKSUM_CELLS.value,
        "row_tab": row_tab,
        "cells_h": h,
        "KS": KS,
        "L_ROWS": L_ROWS,
        "col_tab": col_tab,
        "cells_w": w,
        "max_cw": max_cw,
    }


def _piece_strides(t: Tensor, KS: int) -> tuple[tuple, tuple]:
    """(shape, strides (n, c, i, k, j)) of the fp32 row-piece buffer of a low-res gradient with
    KS pieces per cell; channels stay innermost for channels_last gamma."""
    N, C, h, w = t.shape
    if t.is_contiguous() or not t.is_contiguous(memory_format=torch.channels_last):
        return (N, C, h, KS, w), (C * h * KS * w, h * KS * w, KS * w, w, 1)
    return (N, h, KS, w, C), (h * KS * w * C, 1, KS * w * C, w * C, C)


class _BwdPlan(NamedTuple):
    reduces: tuple  # ((_Launch, wants dgamma, wants dbeta, row pieces, row table, column table), ...)
    finalize: _Launch | None
    apply: _Launch | None
    part_numel: int
    acc: torch.dtype
    stats_numel: int  # N*G for m1/m2 (0 when dx is not wanted)
    pieces: tuple  # (dgamma piece buffer shape or None, dbeta piece buffer shape or None)


def _reduce_launch(
    x, gamma, beta, weight, bias, G, silu, plan, stats, want_dg, want_db, og, ob, P_OFF, p_strides
) -> _Launch:
    N, C, H, W = x.shape
    cl = _is_channels_last(x)
    mode = plan["mode"]
    tile_r = max(1, _TUNE["tile_bytes"] // 8)  # four fp32 accumulator tiles live: half an elementwise tile
    load_beta = beta is not None and silu  # beta matters to the backward only through act'(p)
    geo = {**_lowres_geometry("g", gamma, H, W), **_lowres_geometry("b", beta if load_beta else None, H, W)}
    K = plan["cells_h"] * plan["KS"]
    sxn, sxc, sxh, sxw = x.stride()
    kw = dict(
        C=C,
        G=G,
        CPG=C // G,
        H=H,
        W=W,
        sxn=sxn,
        sxc=sxc,
        sxh=sxh,
        sxw=sxw,
        sdn=sxn,
        sdc=sxc,
        sdh=sxh,
        sdw=sxw,
        **geo,
        KS=plan["KS"],
        L_ROWS=plan["L_ROWS"],
        P_OFF=P_OFF,
        p_sn=p_strides[0],
        p_sc=p_strides[1],
        p_sk=p_strides[2],
        ogn=og[0],
        ogc=og[1],
        ogi=og[2],
        ogk=og[3],
        ogj=og[4],
        obn=ob[0],
        obc=ob[1],
        obi=ob[2],
        obk=ob[3],
        obj=ob[4],
        MODE=mode,
        STATS=stats,
        WANT_DG=want_dg,
        WANT_DB=want_db,
        **_flags(weight, bias, gamma, beta, silu, load_beta),
        ACC=_acc_types(x)[1],
    )
    if not cl:
        if mode == BLOCKSUM_CELLS.value:
            # up to CPB low-res columns per sub-block, their high-res columns spanning at most
            # `seg`; a single low-res column wider than BLOCK_W is walked in sub-blocks
            seg = max(2, tile_r // 8)
            CPB = min(32, _prev_pow2(max(1, seg // plan["max_cw"])), _np2(plan["cells_w"]))
            BLOCK_W = min(_np2(CPB * plan["max_cw"]), max(1, tile_r // 4)) if CPB == 1 else _np2(CPB * plan["max_cw"])
            nunits = _cdiv(plan["cells_w"], CPB)
        else:
            CPB = 1
            BLOCK_W = min(_np2(W), 256)
            nunits = _cdiv(W, BLOCK_W)
        BLOCK_H = max(1, min(_np2(plan["L_ROWS"]), tile_r // BLOCK_W))
        kw.update(
            NUNITS=nunits,
            W_CELLS=plan["cells_w"],
            CPB=CPB,
            BLOCK_H=BLOCK_H,
            BLOCK_W=BLOCK_W,
            num_warps=_warps_reduce(BLOCK_H * BLOCK_W),
        )
        return _Launch(kb.gn_reduce_nchw_kernel, (N * C, K), kw)
    BLOCK_C = min(_np2(C), _TUNE["max_block_c"])
    if mode == BLOCKSUM_CELLS.value:
        # a unit is one low-res column; wider ones are walked in BLOCK_W sub-blocks
        BLOCK_W = max(1, min(_np2(plan["max_cw"]), tile_r // BLOCK_C))
        nunits = plan["cells_w"]
        unit_cols = max(1, W // plan["cells_w"])
    else:
        BLOCK_W = max(1, min(_np2(W), tile_r // BLOCK_C))
        nunits = _cdiv(W, BLOCK_W)
        unit_cols = BLOCK_W
    upp = min(max(1, _TUNE["program_elems"] // (plan["L_ROWS"] * unit_cols * BLOCK_C)), nunits)
    NJB = _cdiv(nunits, upp)
    kw.update(
        K=K,
        NUNITS=nunits,
        UPP=upp,
        NJB=NJB,
        BLOCK_W=BLOCK_W,
        BLOCK_C=BLOCK_C,
        num_warps=_warps_reduce(BLOCK_W * BLOCK_C),
    )
    return _Launch(kb.gn_reduce_cl_kernel, (N * K, NJB, _cdiv(C, BLOCK_C)), kw)


def _partials_geometry(x: Tensor, plan: dict) -> tuple[int, tuple, int]:
    """(pieces KP per (n, c), partial strides (n, c, k), numel of one of the two partial sets)."""
    N, C, _, W = x.shape
    K = plan["cells_h"] * plan["KS"]
    if not _is_channels_last(x):
        return K, (C * K, K, 1), N * C * K
    # must match _reduce_launch's NJB: recompute it the same way
    tile_r = max(1, _TUNE["tile_bytes"] // 8)
    BLOCK_C = min(_np2(C), _TUNE["max_block_c"])
    if plan["mode"] == BLOCKSUM_CELLS.value:
        nunits, unit_cols = plan["cells_w"], max(1, W // plan["cells_w"])
    else:
        bw = max(1, min(_np2(W), tile_r // BLOCK_C))
        nunits, unit_cols = _cdiv(W, bw), bw
    upp = min(max(1, _TUNE["program_elems"] // (plan["L_ROWS"] * unit_cols * BLOCK_C)), nunits)
    KP = K * _cdiv(nunits, upp)
    return KP, (KP * C, 1, C), N * KP * C


def _bwd_plan(x, weight, bias, gamma, beta, G, eps, silu, want) -> _BwdPlan:
    N, C, H, W = x.shape
    cl = _is_channels_last(x)
    acc_t, ACC = _acc_types(x)
    want_dx, want_dw, want_db, want_dg, want_dbe = want
    stats = want_dx or want_dw or want_db
    # rows per reduction program: NCHW programs cover whole rows (all W columns); channels_last
    # programs also split the columns, so they keep a few rows and grow along W instead
    rows_target = min(max(1, _TUNE["program_elems"] // W), 64) if not cl else _TUNE["cl_rows"]
    # One reduction per distinct block-sum grid: gamma and beta share one when their shapes
    # agree (the usual case); a differing beta gets a second, block-sum-only launch.
    jobs = []
    if want_dg and want_dbe and tuple(gamma.shape[-2:]) != tuple(beta.shape[-2:]):
        jobs += [(tuple(gamma.shape[-2:]), stats, True, False), (tuple(beta.shape[-2:]), False, False, True)]
    elif want_dg or want_dbe:
        jobs.append((tuple((gamma if want_dg else beta).shape[-2:]), stats, want_dg, want_dbe))
    elif stats:
        jobs.append((None, True, False, False))

    reduces, pieces = [], [None, None]
    part_numel, KP, p_strides, fin_rows = 0, 1, (0, 0, 0), None
    for lowres, st, wg, wb in jobs:
        plan = _reduce_rows(lowres, H, W, rows_target, x.device)
        split = plan["mode"] in (BLOCKSUM_CELLS.value, BLOCKSUM_ROWS.value) and plan["KS"] > 1
        og = ob = (0, 0, 0, 0, 0)
        if wg:
            if split:
                pieces[0], og = _piece_strides(gamma, plan["KS"])
            else:
                s = gamma.stride()
                og = (s[0], s[1], s[2], 0, s[3])
        if wb:
            if split:
                pieces[1], ob = _piece_strides(beta, plan["KS"])
            else:
                s = beta.stride()
                ob = (s[0], s[1], s[2], 0, s[3])
        if split:
            fin_rows = (plan["cells_h"], (gamma if wg else beta).shape[-1], plan["KS"], og, ob)
        if st:
            KP, p_strides, part_numel = _partials_geometry(x, plan)
        launch = _reduce_launch(
            x, gamma, beta, weight, bias, G, silu, plan, st, wg, wb, og, ob, part_numel, p_strides if st else (0, 0, 0)
        )
        col_tab = plan["col_tab"] if plan["col_tab"] is not None else plan["row_tab"]
        reduces.append((launch, wg, wb, split, plan["row_tab"], col_tab))

    finalize = None
    ng_progs = N * G if want_dx else 0
    BLOCK_CF = min(_np2(C), 64)
    ncb_progs = _cdiv(C, BLOCK_CF) if (want_dw or want_db) else 0
    row_progs = 0 if fin_rows is None else N * C * fin_rows[0]
    if ng_progs + ncb_progs + row_progs:
        lowh, loww, KS, og, ob = fin_rows if fin_rows is not None else (1, 1, 1, (0,) * 5, (0,) * 5)
        og_out = ob_out = (0, 0, 0, 0)
        if fin_rows is not None and want_dg and pieces[0] is not None:
            og_out = gamma.stride()
        if fin_rows is not None and want_dbe and pieces[1] is not None:
            ob_out = beta.stride()
        finalize = _Launch(
            kb.gn_bwd_finalize_kernel,
            (ng_progs + ncb_progs + row_progs,),
            {
                "P_OFF": part_numel,
                "N": N,
                "C": C,
                "CPG": C // G,
                "KP": KP,
                "p_sn": p_strides[0],
                "p_sc": p_strides[1],
                "p_sk": p_strides[2],
                "inv_cnt": 1.0 / float(C // G * H * W),
                "NG_PROGS": ng_progs,
                "NCB_PROGS": ncb_progs,
                "LOWH": lowh,
                "LOWW": loww,
                "KS": KS,
                "pgn": og[0],
                "pgc": og[1],
                "pgi": og[2],
                "pgk": og[3],
                "pgj": og[4],
                "ogn": og_out[0],
                "ogc": og_out[1],
                "ogi": og_out[2],
                "ogj": og_out[3],
                "pbn": ob[0],
                "pbc": ob[1],
                "pbi": ob[2],
                "pbk": ob[3],
                "pbj": ob[4],
                "obn": ob_out[0],
                "obc": ob_out[1],
                "obi": ob_out[2],
                "obj": ob_out[3],
                "WANT_M": want_dx,
                "WANT_DW": want_dw,
                "WANT_DB": want_db,
                "HAS_W": weight is not None,
                "SUM_DG": pieces[0] is not None,
                "SUM_DBE": pieces[1] is not None,
                "BLOCK_J": _np2(C // G),
                "BLOCK_K": max(_np2(min(KP, 64)), _np2(KS)),
                "BLOCK_CF": BLOCK_CF,
                "BLOCK_LW": max(1, min(_np2(loww), 1024 // _np2(KS))),
                "ACC": ACC,
                "num_warps": 1,
            },
        )
    apply = None
    if want_dx:
        flags = _flags(weight, bias, gamma, beta, silu, load_beta=silu)
        geo = {**_lowres_geometry("g", gamma, H, W), **_lowres_geometry("b", beta if silu else None, H, W)}
        apply = _apply_launch(x, G, flags, geo, bwd=True, merge=False)
    return _BwdPlan(tuple(reduces), finalize, apply, part_numel, acc_t, N * G if want_dx else 0, tuple(pieces))


def group_norm_bwd(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    gamma: Tensor | None,
    beta: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    num_groups: int,
    eps: float,
    silu: bool,
    mask: list[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Backward: ``(dx, dweight, dbias, dgamma, dbeta)``, each None unless wanted by ``mask`` and
    its input exists. dy must have x's layout. dx like x; dweight/dbias and dgamma/dbeta in their
    input's dtype and layout, dgamma/dbeta at their own (low) resolution. At most 3 launches."""
    want = (
        bool(mask[0]),
        bool(mask[1]) and weight is not None,
        bool(mask[2]) and bias is not None,
        bool(mask[3]) and gamma is not None,
        bool(mask[4]) and beta is not None,
    )
    key = (
        x.shape,
        x.stride(),
        x.dtype,
        x.device,
        x.data_ptr() % 16,
        dy.stride(),
        _tkey(weight),
        _tkey(bias),
        _tkey(gamma),
        _tkey(beta),
        num_groups,
        silu,
        want,
    )
    plan = _BWD_PLANS.get(key)
    if plan is None:
        _check_layout(x, num_groups)
        if dy.shape != x.shape or dy.stride() != x.stride():
            raise ValueError(f"dy must have x's shape and layout {tuple(x.shape)} {x.stride()}, got {dy.stride()}")
        plan = _BWD_PLANS[key] = _bwd_plan(x, weight, bias, gamma, beta, num_groups, eps, silu, want)
    dev = x.device
    want_dx, want_dw, want_db, want_dg, want_dbe = want
    part = torch.empty(plan.part_numel * 2, dtype=plan.acc, device=dev) if plan.part_numel else None
    dgamma = torch.empty_like(gamma) if want_dg else None
    dbeta = torch.empty_like(beta) if want_dbe else None
    dg_pieces = torch.empty(plan.pieces[0], dtype=plan.acc, device=dev) if plan.pieces[0] is not None else None
    db_pieces = torch.empty(plan.pieces[1], dtype=plan.acc, device=dev) if plan.pieces[1] is not None else None
    for launch, wg, wb, split, row_tab, col_tab in plan.reduces:
        _run(
            launch,
            x_ptr=x,
            dy_ptr=dy,
            w_ptr=weight,
            b_ptr=bias,
            g_ptr=gamma,
            be_ptr=beta if silu else None,
            mean_ptr=mean,
            rstd_ptr=rstd,
            p_ptr=part if launch.kw["STATS"] else None,
            dg_ptr=(dg_pieces if split else dgamma) if wg else None,
            db_ptr=(db_pieces if split else dbeta) if wb else None,
            row_tab=row_tab,
            col_tab=col_tab,
        )
    dweight = torch.empty_like(weight) if want_dw else None
    dbias = torch.empty_like(bias) if want_db else None
    m1 = m2 = None
    if want_dx:
        m1 = torch.empty(plan.stats_numel, dtype=plan.acc, device=dev)
        m2 = torch.empty(plan.stats_numel, dtype=plan.acc, device=dev)
    if plan.finalize is not None:
        _run(
            plan.finalize,
            p_ptr=part,
            w_ptr=weight,
            m1_ptr=m1,
            m2_ptr=m2,
            dw_ptr=dweight,
            db_ptr=dbias,
            dgp_ptr=dg_pieces,
            dbp_ptr=db_pieces,
            dg_ptr=dgamma if dg_pieces is not None else None,
            dbe_ptr=dbeta if db_pieces is not None else None,
        )
    dx = None
    if want_dx:
        dx = torch.empty_like(x)
        _run(
            plan.apply,
            x_ptr=x,
            dy_ptr=dy,
            out_ptr=dx,
            w_ptr=weight,
            b_ptr=bias,
            g_ptr=gamma,
            be_ptr=beta if silu else None,
            mean_ptr=mean,
            rstd_ptr=rstd,
            m1_ptr=m1,
            m2_ptr=m2,
            part_ptr=None,
        )
    return dx, dweight, dbias, dgamma, dbeta
