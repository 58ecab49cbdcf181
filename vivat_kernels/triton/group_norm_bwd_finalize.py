"""Finaliser of the fused GroupNorm backward (second of its three launches).

:func:`gn_bwd_finalize_kernel` folds the reduction's per-program partials (see
:mod:`.group_norm_bwd`), in a fixed order, into the per-group terms m1/m2 of dx, dweight/dbias
(in the parameters' dtype) and, when tall low-res cells were split into row pieces,
dgamma/dbeta. One program per output value set, no atomics: bitwise reproducible.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _group_terms(
    p_ptr,
    P_OFF,
    w_ptr,
    m1_ptr,
    m2_ptr,
    q,
    C,
    CPG,
    KP,
    p_sn,
    p_sc,
    p_sk,
    inv_cnt,
    HAS_W: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACC: tl.constexpr,
):
    """m1 = sum_c w_c s1 / cnt and m2 = sum_c w_c s2 / cnt of group q = n*G + g."""
    n = q // (C // CPG)
    g = q % (C // CPG)
    j = tl.arange(0, BLOCK_J)
    ks = tl.arange(0, BLOCK_K)
    chans = g * CPG + j
    cm = j < CPG
    wv = tl.full([BLOCK_J], 1.0, ACC)
    if HAS_W:
        wv = tl.load(w_ptr + chans, mask=cm, other=0.0).to(ACC)
    a1 = tl.zeros([BLOCK_J, BLOCK_K], dtype=ACC)
    a2 = tl.zeros([BLOCK_J, BLOCK_K], dtype=ACC)
    base = p_ptr + n.to(tl.int64) * p_sn + chans.to(tl.int64)[:, None] * p_sc
    for k0 in range(0, KP, BLOCK_K):
        kv = k0 + ks
        m = cm[:, None] & (kv < KP)[None, :]
        a1 += tl.load(base + kv[None, :] * p_sk, mask=m, other=0.0).to(ACC)
        a2 += tl.load(base + P_OFF + kv[None, :] * p_sk, mask=m, other=0.0).to(ACC)
    tl.store(m1_ptr + q, tl.sum(tl.sum(a1, axis=1) * wv, axis=0) * inv_cnt)
    tl.store(m2_ptr + q, tl.sum(tl.sum(a2, axis=1) * wv, axis=0) * inv_cnt)


@triton.jit
def _param_grads(
    p_ptr,
    P_OFF,
    dw_ptr,
    db_ptr,
    cb,
    N,
    C,
    KP,
    p_sn,
    p_sc,
    p_sk,
    WANT_DW: tl.constexpr,
    WANT_DB: tl.constexpr,
    BLOCK_CF: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACC: tl.constexpr,
):
    """dbias = sum_{n,k} s1 and dweight = sum_{n,k} s2 for channel block cb."""
    chans = cb * BLOCK_CF + tl.arange(0, BLOCK_CF)
    ks = tl.arange(0, BLOCK_K)
    cm = chans < C
    a1 = tl.zeros([BLOCK_CF, BLOCK_K], dtype=ACC)
    a2 = tl.zeros([BLOCK_CF, BLOCK_K], dtype=ACC)
    for n in range(N):
        base = p_ptr + n * p_sn + chans.to(tl.int64)[:, None] * p_sc
        for k0 in range(0, KP, BLOCK_K):
            kv = k0 + ks
            m = cm[:, None] & (kv < KP)[None, :]
            if WANT_DB:
                a1 += tl.load(base + kv[None, :] * p_sk, mask=m, other=0.0).to(ACC)
            if WANT_DW:
                a2 += tl.load(base + P_OFF + kv[None, :] * p_sk, mask=m, other=0.0).to(ACC)
    if WANT_DB:
        tl.store(db_ptr + chans, tl.sum(a1, axis=1).to(db_ptr.dtype.element_ty), mask=cm)
    if WANT_DW:
        tl.store(dw_ptr + chans, tl.sum(a2, axis=1).to(dw_ptr.dtype.element_ty), mask=cm)


@triton.jit
def _piece_sum(
    src_ptr,
    dst_ptr,
    row,
    C,
    LOWH,
    LOWW,
    KS,
    sn,
    sc,
    si,
    sk,
    sj,
    on,
    oc,
    oi,
    oj,
    BLOCK_LW: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACC: tl.constexpr,
):
    """Low-res row (n, c, i) of dgamma/dbeta: the sum of its KS row pieces, in order."""
    i = row % LOWH
    nc = row // LOWH
    n = (nc // C).to(tl.int64)
    c = (nc % C).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    lw = tl.arange(0, BLOCK_LW)
    for j0 in range(0, LOWW, BLOCK_LW):
        jv = j0 + lw
        m = (jv < LOWW)[:, None] & (ks < KS)[None, :]
        v = tl.load(src_ptr + n * sn + c * sc + i * si + ks[None, :] * sk + jv[:, None] * sj, mask=m, other=0.0)
        tl.store(
            dst_ptr + n * on + c * oc + i * oi + jv * oj,
            tl.sum(v.to(ACC), axis=1).to(dst_ptr.dtype.element_ty),
            mask=jv < LOWW,
        )


@triton.jit
def gn_bwd_finalize_kernel(
    p_ptr,
    P_OFF,
    w_ptr,
    m1_ptr,
    m2_ptr,
    dw_ptr,
    db_ptr,
    dgp_ptr,
    dbp_ptr,
    dg_ptr,
    dbe_ptr,
    N,
    C,
    CPG,
    KP,
    p_sn,
    p_sc,
    p_sk,
    inv_cnt,
    NG_PROGS,
    NCB_PROGS,
    LOWH,
    LOWW,
    KS,
    pgn,
    pgc,
    pgi,
    pgk,
    pgj,
    ogn,
    ogc,
    ogi,
    ogj,
    pbn,
    pbc,
    pbi,
    pbk,
    pbj,
    obn,
    obc,
    obi,
    obj,
    WANT_M: tl.constexpr,
    WANT_DW: tl.constexpr,
    WANT_DB: tl.constexpr,
    HAS_W: tl.constexpr,
    SUM_DG: tl.constexpr,
    SUM_DBE: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_CF: tl.constexpr,
    BLOCK_LW: tl.constexpr,
    ACC: tl.constexpr,
):
    """Fold the reduction's partials; three roles by program id, each a fixed-order sum.

    Partials: s1 (sum of da) at p + n*p_sn + c*p_sc + k*p_sk for k < KP, s2 (sum of da*xhat)
    at the same offsets + P_OFF.
    * programs [0, NG_PROGS): the per-group terms m1/m2 of dx (:func:`_group_terms`);
    * the next NCB_PROGS: dweight/dbias of a channel block, in the parameters' dtype;
    * the rest: one low-res row of dgamma/dbeta from its KS row pieces (tall cells only).
    """
    pid = tl.program_id(0)
    if pid < NG_PROGS:
        if WANT_M:
            _group_terms(
                p_ptr,
                P_OFF,
                w_ptr,
                m1_ptr,
                m2_ptr,
                pid,
                C,
                CPG,
                KP,
                p_sn,
                p_sc,
                p_sk,
                inv_cnt,
                HAS_W,
                BLOCK_J,
                BLOCK_K,
                ACC,
            )
    elif pid < NG_PROGS + NCB_PROGS:
        if WANT_DW or WANT_DB:
            _param_grads(
                p_ptr,
                P_OFF,
                dw_ptr,
                db_ptr,
                pid - NG_PROGS,
                N,
                C,
                KP,
                p_sn,
                p_sc,
                p_sk,
                WANT_DW,
                WANT_DB,
                BLOCK_CF,
                BLOCK_K,
                ACC,
            )
    else:
        row = pid - NG_PROGS - NCB_PROGS
        if SUM_DG:
            _piece_sum(
                dgp_ptr,
                dg_ptr,
                row,
                C,
                LOWH,
                LOWW,
                KS,
                pgn,
                pgc,
                pgi,
                pgk,
                pgj,
                ogn,
                ogc,
                ogi,
                ogj,
                BLOCK_LW,
                BLOCK_K,
                ACC,
            )
        if SUM_DBE:
            _piece_sum(
                dbp_ptr,
                dbe_ptr,
                row,
                C,
                LOWH,
                LOWW,
                KS,
                pbn,
                pbc,
                pbi,
                pbk,
                pbj,
                obn,
                obc,
                obi,
                obj,
                BLOCK_LW,
                BLOCK_K,
                ACC,
            )
