"""Forward launch planning of the Triton GroupNorm: the per-group or split design, its launches.

See :mod:`.group_norm_fwd` for the kernels and :mod:`.group_norm` for the launcher that caches
these plans.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import group_norm_fwd as kf
from ._gn_host import (
    _TUNE,
    _acc_types,
    _apply_launch,
    _cdiv,
    _eps_parts,
    _flags,
    _is_channels_last,
    _Launch,
    _lowres_geometry,
    _np2,
    _sm_count,
    _warps,
)


class _FwdPlan(NamedTuple):
    launches: tuple  # (_Launch, ...): 1 (per group) or 2 (split: stats, apply)
    stats_shape: tuple
    acc: torch.dtype
    part_numel: int  # split design's partial buffer (0 for the per-group design)


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
