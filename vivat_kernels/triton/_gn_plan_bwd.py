"""Backward launch planning of the Triton GroupNorm: reductions, finaliser and the dx sweep.

One reduction per distinct block-sum grid of dgamma/dbeta (see the ``BLOCKSUM_*`` modes in
:mod:`._gn_jit`), then :func:`.group_norm_bwd_finalize.gn_bwd_finalize_kernel`, then the apply
sweep in BWD mode. Kernels: :mod:`.group_norm_bwd`; the launcher that caches these plans:
:mod:`.group_norm`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import group_norm_bwd as kb
from . import group_norm_bwd_finalize as kfin
from ._gn_host import (
    _TUNE,
    _acc_types,
    _apply_launch,
    _cdiv,
    _cell_starts,
    _flags,
    _is_channels_last,
    _Launch,
    _lowres_geometry,
    _np2,
    _prev_pow2,
    _row_blocks,
    _warps_reduce,
)
from ._gn_jit import BLOCKSUM_CELLS, BLOCKSUM_FULL, BLOCKSUM_NONE, BLOCKSUM_ROWS


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


def _cl_units(C: int, W: int, plan: dict) -> tuple[int, int, int, int, int]:
    """Column walk of the channels_last reduction: (BLOCK_C, BLOCK_W, units, units per program,
    column runs NJB). One rule for the launch and for the partial buffer it writes."""
    tile_r = max(1, _TUNE["tile_bytes"] // 8)  # as in _reduce_launch
    BLOCK_C = min(_np2(C), _TUNE["max_block_c"])
    if plan["mode"] == BLOCKSUM_CELLS.value:
        # a unit is one low-res column; wider ones are walked in BLOCK_W sub-blocks
        BLOCK_W = max(1, min(_np2(plan["max_cw"]), tile_r // BLOCK_C))
        nunits = plan["cells_w"]
        unit_cols = max(1, W // plan["cells_w"])
    else:
        BLOCK_W = max(1, min(_np2(W), tile_r // BLOCK_C))
        nunits = _cdiv(W, BLOCK_W)
        unit_cols = BLOCK_W
    upp = min(max(1, _TUNE["program_elems"] // (plan["L_ROWS"] * unit_cols * BLOCK_C)), nunits)
    return BLOCK_C, BLOCK_W, nunits, upp, _cdiv(nunits, upp)


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
    BLOCK_C, BLOCK_W, nunits, upp, NJB = _cl_units(C, W, plan)
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
    KP = K * _cl_units(C, W, plan)[4]  # the channels_last reduction's column runs per row range
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
            kfin.gn_bwd_finalize_kernel,
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
