"""Backward kernels of the fused GroupNorm family (dx itself is the apply sweep in BWD mode).

Three launches at most: (1) the reduction (:func:`gn_reduce_nchw_kernel` /
:func:`gn_reduce_cl_kernel`, this module) reads x and dy once and writes per-program partial sums
of da = dp*gamma and da*xhat plus the low-resolution block sums dgamma = sum(dp*a), dbeta =
sum(dp); (2) :func:`.group_norm_bwd_finalize.gn_bwd_finalize_kernel` folds those partials, in a
fixed order, into the per-group terms m1/m2 of dx, dweight/dbias (in the parameters' dtype) and,
when tall low-res cells were split into row pieces, dgamma/dbeta; (3) the apply sweep computes dx.
No host arithmetic, no atomics: every value is written by exactly one program, so results are
bitwise reproducible.

Reduction layout. NCHW: grid (N*C, K), a program covers whole rows of one plane. channels_last:
grid (N*K, column runs, channel blocks). A row range never straddles a low-res row and the column
walk is aligned to low-res columns, so every block sum has one writer; ``MODE`` (see
:mod:`._gn_jit`) says how tiles relate to the block-sum grid. The two layouts share their row
ranges and per-tile terms (:func:`._gn_jit.row_range`, :func:`._gn_jit.reduce_terms`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._gn_jit import BLOCKSUM_CELLS, BLOCKSUM_FULL, BLOCKSUM_ROWS, reduce_terms, row_range, src_index


@triton.jit
def gn_reduce_nchw_kernel(
    x_ptr,
    dy_ptr,
    w_ptr,
    b_ptr,
    g_ptr,
    be_ptr,
    mean_ptr,
    rstd_ptr,
    p_ptr,
    P_OFF,
    dg_ptr,
    db_ptr,
    row_tab,
    col_tab,
    C,
    G,
    CPG,
    H,
    W,
    sxn,
    sxc,
    sxh,
    sxw,
    sdn,
    sdc,
    sdh,
    sdw,
    gh,
    gw,
    g_scale_h,
    g_scale_w,
    sgn,
    sgc,
    sgh,
    sgw,
    bh,
    bw,
    b_scale_h,
    b_scale_w,
    sbn,
    sbc,
    sbh,
    sbw,
    KS,
    L_ROWS,
    NUNITS,
    W_CELLS,
    p_sn,
    p_sc,
    p_sk,
    ogn,
    ogc,
    ogi,
    ogk,
    ogj,
    obn,
    obc,
    obi,
    obk,
    obj,
    MODE: tl.constexpr,
    STATS: tl.constexpr,
    WANT_DG: tl.constexpr,
    WANT_DB: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_G: tl.constexpr,
    HAS_BE: tl.constexpr,
    SILU: tl.constexpr,
    CPB: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    ACC: tl.constexpr,
):
    """NCHW backward reduction over one (n, c) plane's row range.

    Grid (N*C, K), K = cells*KS row ranges: range k is piece k % KS of row-table entry k // KS
    (a low-res row's high-res rows, or a plain row block in modes 0/1), rows [r0, r1). Tile
    [BLOCK_H rows, BLOCK_W columns]; channel and low-res row i are scalars.
    Writes (STATS) the partial sums of da and da*xhat at p + n*p_sn + c*p_sc + k*p_sk (+ P_OFF), and the
    block sums of dp*a (dgamma) and dp (dbeta) of cells (i, j) at out + n*o_n + c*o_c + i*o_i +
    (k % KS)*o_k + j*o_j (straight into dgamma/dbeta when KS == 1, else fp32 row-piece partials).
    Mode 2 walks CPB low-res columns per step: their high-res columns are contiguous and fit in
    BLOCK_W; after the row loop the column sums go to cells through a [CPB, BLOCK_W] membership
    mask built from the column table (segment sum, no division). With CPB == 1 a low-res column
    wider than BLOCK_W is walked in sub-blocks and its block sum is the whole accumulator sum.
    Reads x and dy once (2s bytes/element) plus low-res gamma/beta; writes O(N*C*K) partials and
    the low-res gradients.
    """
    pid = tl.program_id(0)
    n = pid // C
    c = pid % C
    grp = n * G + c // CPG
    n64 = n.to(tl.int64)
    c64 = c.to(tl.int64)
    k = tl.program_id(1)
    i, ks, r0, r1 = row_range(row_tab, k, KS, L_ROWS)

    mean = tl.load(mean_ptr + grp).to(ACC)
    rstd = tl.load(rstd_ptr + grp).to(ACC)
    w = 1.0
    b = 0.0
    if HAS_W:
        w = tl.load(w_ptr + c).to(ACC)
    if HAS_B:
        b = tl.load(b_ptr + c).to(ACC)
    xb = x_ptr + n64 * sxn + c64 * sxc
    db_ = dy_ptr + n64 * sdn + c64 * sdc
    # bases of the optional tensors (absent ones arrive as None and are never offset)
    gb, bb, dgb, dbb = g_ptr, be_ptr, dg_ptr, db_ptr
    if HAS_G:
        gb = g_ptr + n64 * sgn + c64 * sgc
    if HAS_BE:
        bb = be_ptr + n64 * sbn + c64 * sbc
    if WANT_DG:
        dgb = dg_ptr + n64 * ogn + c64 * ogc
    if WANT_DB:
        dbb = db_ptr + n64 * obn + c64 * obc

    hr = tl.arange(0, BLOCK_H)
    wc = tl.arange(0, BLOCK_W)
    acc1 = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
    acc2 = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
    for u in range(NUNITS):
        if MODE == BLOCKSUM_CELLS:
            j0 = u * CPB
            cs = tl.load(col_tab + j0)
            ce = tl.load(col_tab + tl.minimum(j0 + CPB, W_CELLS))
        else:
            cs = u * BLOCK_W
            ce = tl.minimum(cs + BLOCK_W, W)
        accg = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
        accb = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
        # one pass unless a single low-res column is wider than BLOCK_W (CPB == 1); the cell
        # sum is then the sum over every sub-block, so folding them into accg is exact
        for c0 in range(cs, ce, BLOCK_W):
            cols = c0 + wc
            cm = cols < ce
            sc_g = src_index(cols, g_scale_w, gw)
            sc_b = src_index(cols, b_scale_w, bw)
            for r in range(r0, r1, BLOCK_H):
                rows = r + hr
                m = (rows < r1)[:, None] & cm[None, :]
                x = tl.load(xb + rows[:, None] * sxh + cols[None, :] * sxw, mask=m, other=0.0).to(ACC)
                dp = tl.load(db_ + rows[:, None] * sdh + cols[None, :] * sdw, mask=m, other=0.0).to(ACC)
                gam = 1.0
                bet = 0.0
                if HAS_G:
                    sr = src_index(rows, g_scale_h, gh)
                    gam = tl.load(gb + sr[:, None] * sgh + sc_g[None, :] * sgw, mask=m, other=0.0).to(ACC)
                if HAS_BE:
                    sr = src_index(rows, b_scale_h, bh)
                    bet = tl.load(bb + sr[:, None] * sbh + sc_b[None, :] * sbw, mask=m, other=0.0).to(ACC)
                dp, a, da, dax = reduce_terms(x, dp, m, mean, rstd, w, b, gam, bet, HAS_W, HAS_B, HAS_G, HAS_BE, SILU)
                if STATS:
                    acc1 += da
                    acc2 += dax
                if MODE == BLOCKSUM_FULL:
                    if WANT_DG:
                        tl.store(
                            dgb + rows[:, None] * ogi + cols[None, :] * ogj,
                            (dp * a).to(dg_ptr.dtype.element_ty),
                            mask=m,
                        )
                    if WANT_DB:
                        tl.store(
                            dbb + rows[:, None] * obi + cols[None, :] * obj, dp.to(db_ptr.dtype.element_ty), mask=m
                        )
                if MODE >= BLOCKSUM_CELLS:
                    if WANT_DG:
                        accg += tl.where(m, dp * a, 0.0)
                    if WANT_DB:
                        accb += dp
        if MODE == BLOCKSUM_CELLS:
            if CPB == 1:
                if WANT_DG:
                    tl.store(
                        dgb + i * ogi + ks * ogk + j0 * ogj,
                        tl.sum(tl.sum(accg, axis=1), axis=0).to(dg_ptr.dtype.element_ty),
                    )
                if WANT_DB:
                    tl.store(
                        dbb + i * obi + ks * obk + j0 * obj,
                        tl.sum(tl.sum(accb, axis=1), axis=0).to(db_ptr.dtype.element_ty),
                    )
            else:
                # CPB low-res columns share one BLOCK_W-wide sub-block (a single pass above):
                # segment-sum the column sums with a [CPB, BLOCK_W] membership mask
                cols = cs + wc
                cells = j0 + tl.arange(0, CPB)
                cellm = cells < W_CELLS
                lo = tl.load(col_tab + cells, mask=cellm, other=0)
                hi = tl.load(col_tab + cells + 1, mask=cellm, other=0)
                member = (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None])
                if WANT_DG:
                    colsum = tl.sum(accg, axis=0)
                    cell = tl.sum(tl.where(member, colsum[None, :], 0.0), axis=1)
                    tl.store(dgb + i * ogi + ks * ogk + cells * ogj, cell.to(dg_ptr.dtype.element_ty), mask=cellm)
                if WANT_DB:
                    colsum = tl.sum(accb, axis=0)
                    cell = tl.sum(tl.where(member, colsum[None, :], 0.0), axis=1)
                    tl.store(dbb + i * obi + ks * obk + cells * obj, cell.to(db_ptr.dtype.element_ty), mask=cellm)
        if MODE == BLOCKSUM_ROWS:
            cols = cs + wc
            cm = cols < ce
            if WANT_DG:
                tl.store(
                    dgb + i * ogi + ks * ogk + cols * ogj, tl.sum(accg, axis=0).to(dg_ptr.dtype.element_ty), mask=cm
                )
            if WANT_DB:
                tl.store(
                    dbb + i * obi + ks * obk + cols * obj, tl.sum(accb, axis=0).to(db_ptr.dtype.element_ty), mask=cm
                )
    if STATS:
        po = n64 * p_sn + c64 * p_sc + k * p_sk
        tl.store(p_ptr + po, tl.sum(tl.sum(acc1, axis=1), axis=0))
        tl.store(p_ptr + P_OFF + po, tl.sum(tl.sum(acc2, axis=1), axis=0))


@triton.jit
def gn_reduce_cl_kernel(
    x_ptr,
    dy_ptr,
    w_ptr,
    b_ptr,
    g_ptr,
    be_ptr,
    mean_ptr,
    rstd_ptr,
    p_ptr,
    P_OFF,
    dg_ptr,
    db_ptr,
    row_tab,
    col_tab,
    C,
    G,
    CPG,
    H,
    W,
    sxn,
    sxc,
    sxh,
    sxw,
    sdn,
    sdc,
    sdh,
    sdw,
    gh,
    gw,
    g_scale_h,
    g_scale_w,
    sgn,
    sgc,
    sgh,
    sgw,
    bh,
    bw,
    b_scale_h,
    b_scale_w,
    sbn,
    sbc,
    sbh,
    sbw,
    K,
    KS,
    L_ROWS,
    NUNITS,
    UPP,
    NJB,
    p_sn,
    p_sc,
    p_sk,
    ogn,
    ogc,
    ogi,
    ogk,
    ogj,
    obn,
    obc,
    obi,
    obk,
    obj,
    MODE: tl.constexpr,
    STATS: tl.constexpr,
    WANT_DG: tl.constexpr,
    WANT_DB: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_G: tl.constexpr,
    HAS_BE: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """channels_last backward reduction over a row range x a run of column units x channels.

    Grid (N*K, NJB, cdiv(C, BLOCK_C)). Row range k (rows [r0, r1), as in the NCHW kernel); column
    units [jb*UPP, min((jb+1)*UPP, NUNITS)) where a unit is one low-res column (mode 2: its
    high-res columns come from the column table, walked in BLOCK_W sub-blocks that all fold
    into the unit's accumulator) or a BLOCK_W block of columns (other modes). Tile [BLOCK_W
    columns, BLOCK_C channels] of one image row, contiguous along channels; the image row is a scalar loop variable, so the low-res row is a scalar too.
    Writes (STATS) per-channel partial sums of da and da*xhat at p + n*p_sn + c*p_sc +
    (k*NJB + jb)*p_sk, and dgamma/dbeta block sums (or fp32 row-piece partials) as the NCHW kernel.
    Reads x and dy once (2s bytes/element) plus low-res gamma/beta.
    """
    pid = tl.program_id(0)
    n = pid // K
    k = pid % K
    jb = tl.program_id(1)
    n64 = n.to(tl.int64)
    i, ks, r0, r1 = row_range(row_tab, k, KS, L_ROWS)

    chans = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    chm = chans < C
    grp = n * G + chans // CPG  # per-channel vector, once per program
    mean = tl.load(mean_ptr + grp, mask=chm, other=0.0).to(ACC)[None, :]
    rstd = tl.load(rstd_ptr + grp, mask=chm, other=0.0).to(ACC)[None, :]
    w = 1.0
    b = 0.0
    if HAS_W:
        w = tl.load(w_ptr + chans, mask=chm, other=0.0).to(ACC)[None, :]
    if HAS_B:
        b = tl.load(b_ptr + chans, mask=chm, other=0.0).to(ACC)[None, :]
    xb = x_ptr + n64 * sxn
    db_ = dy_ptr + n64 * sdn
    # bases of the optional tensors (absent ones arrive as None and are never offset)
    gb, bb, dgb, dbb = g_ptr, be_ptr, dg_ptr, db_ptr
    if HAS_G:
        gb = g_ptr + n64 * sgn
    if HAS_BE:
        bb = be_ptr + n64 * sbn
    if WANT_DG:
        dgb = dg_ptr + n64 * ogn
    if WANT_DB:
        dbb = db_ptr + n64 * obn

    wc = tl.arange(0, BLOCK_W)
    acc1 = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    acc2 = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    u_lo = jb * UPP
    u_hi = tl.minimum(u_lo + UPP, NUNITS)
    for u in range(u_lo, u_hi):
        if MODE == BLOCKSUM_CELLS:
            cs = tl.load(col_tab + u)
            ce = tl.load(col_tab + u + 1)
        else:
            cs = u * BLOCK_W
            ce = tl.minimum(cs + BLOCK_W, W)
        accg = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
        accb = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
        # one pass unless a low-res column is wider than BLOCK_W (mode 2): its block sum is
        # the sum over all sub-blocks, so folding them into accg is exact
        for c0 in range(cs, ce, BLOCK_W):
            cols = c0 + wc
            m = (cols < ce)[:, None] & chm[None, :]
            sc_g = src_index(cols, g_scale_w, gw)
            sc_b = src_index(cols, b_scale_w, bw)
            for r in range(r0, r1):
                r64 = tl.cast(r, tl.int64)
                x = tl.load(xb + r64 * sxh + cols[:, None] * sxw + chans[None, :] * sxc, mask=m, other=0.0).to(ACC)
                dp = tl.load(db_ + r64 * sdh + cols[:, None] * sdw + chans[None, :] * sdc, mask=m, other=0.0).to(ACC)
                gam = 1.0
                bet = 0.0
                if HAS_G:
                    sr = src_index(r, g_scale_h, gh).to(tl.int64)
                    gam = tl.load(gb + sr * sgh + sc_g[:, None] * sgw + chans[None, :] * sgc, mask=m, other=0.0).to(ACC)
                if HAS_BE:
                    sr = src_index(r, b_scale_h, bh).to(tl.int64)
                    bet = tl.load(bb + sr * sbh + sc_b[:, None] * sbw + chans[None, :] * sbc, mask=m, other=0.0).to(ACC)
                dp, a, da, dax = reduce_terms(x, dp, m, mean, rstd, w, b, gam, bet, HAS_W, HAS_B, HAS_G, HAS_BE, SILU)
                if STATS:
                    acc1 += da
                    acc2 += dax
                if MODE == BLOCKSUM_FULL:
                    if WANT_DG:
                        tl.store(
                            dgb + r64 * ogi + cols[:, None] * ogj + chans[None, :] * ogc,
                            (dp * a).to(dg_ptr.dtype.element_ty),
                            mask=m,
                        )
                    if WANT_DB:
                        tl.store(
                            dbb + r64 * obi + cols[:, None] * obj + chans[None, :] * obc,
                            dp.to(db_ptr.dtype.element_ty),
                            mask=m,
                        )
                if MODE >= BLOCKSUM_CELLS:
                    if WANT_DG:
                        accg += tl.where(m, dp * a, 0.0)
                    if WANT_DB:
                        accb += dp
        if MODE == BLOCKSUM_CELLS:
            # the unit is exactly one low-res column: reduce the tile's columns into it
            if WANT_DG:
                tl.store(
                    dgb + i * ogi + ks * ogk + u * ogj + chans * ogc,
                    tl.sum(accg, axis=0).to(dg_ptr.dtype.element_ty),
                    mask=chm,
                )
            if WANT_DB:
                tl.store(
                    dbb + i * obi + ks * obk + u * obj + chans * obc,
                    tl.sum(accb, axis=0).to(db_ptr.dtype.element_ty),
                    mask=chm,
                )
        if MODE == BLOCKSUM_ROWS:
            cols = cs + wc
            m = (cols < ce)[:, None] & chm[None, :]
            if WANT_DG:
                tl.store(
                    dgb + i * ogi + ks * ogk + cols[:, None] * ogj + chans[None, :] * ogc,
                    accg.to(dg_ptr.dtype.element_ty),
                    mask=m,
                )
            if WANT_DB:
                tl.store(
                    dbb + i * obi + ks * obk + cols[:, None] * obj + chans[None, :] * obc,
                    accb.to(db_ptr.dtype.element_ty),
                    mask=m,
                )
    if STATS:
        po = n64 * p_sn + chans * p_sc + (k * NJB + jb).to(tl.int64) * p_sk
        tl.store(p_ptr + po, tl.sum(acc1, axis=0), mask=chm)
        tl.store(p_ptr + P_OFF + po, tl.sum(acc2, axis=0), mask=chm)
