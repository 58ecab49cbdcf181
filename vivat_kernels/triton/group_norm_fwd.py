"""Forward kernels of the fused GroupNorm family: ``y = act(GN_affine(x) * up(gamma) + up(beta))``.

Two designs, chosen per shape by the launcher (:mod:`vivat_kernels.triton.group_norm`):

* **per group** (:func:`gn_group_kernel`, one launch, grid (N*G,)): one program owns a whole group.
  When the group fits one register tile it is read once and y written once (2 bytes per byte of
  x); otherwise the program sweeps the group twice, statistics then apply, and the second sweep
  finds the group in L2 (DRAM traffic still 2s for groups far smaller than L2). Both layouts
  through strides: element (channel j of the group, pixel p) sits at ``j*sxc + p*sxp``
  (NCHW: sxc = H*W, sxp = 1; channels_last: sxc = 1, sxp = C).
* **split** (two launches, for few large groups that would leave most SMs idle):
  :func:`gn_stats_kernel` writes per-chunk (mean, M2) partials, grid (N*G, S); the apply sweep
  (:func:`gn_apply_nchw_kernel` / :func:`gn_apply_cl_kernel`, ``MERGE=True``) merges its group's
  partials itself (fixed order, so every program gets the same bits; no merge launch, no
  atomics), writes mean/rstd once per group and y. Traffic 3s.

The apply kernels also compute dx in the backward (``BWD=True``, with m1/m2 from the finaliser).
Statistics are fp32 (fp64 for fp64 x); offsets scaled by batch or channel are int64.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._gn_jit import activate, dx_value, gn_terms, merge_partials, src_index


@triton.jit
def _chan_update(cnt, mean, m2, d, msk, nb):
    """Fold one tile (values d, relative to the group's shift) into running (cnt, mean, M2)."""
    bmean = tl.sum(tl.sum(d, axis=1), axis=0) / nb
    dd = tl.where(msk, d - bmean, 0.0)
    bm2 = tl.sum(tl.sum(dd * dd, axis=1), axis=0)
    tot = cnt + nb
    delta = bmean - mean
    return tot, mean + delta * (nb / tot), m2 + bm2 + delta * delta * (cnt * nb / tot)


@triton.jit
def _lowres_tile(ptr, n64, chans, rows, cols, scale_h, scale_w, h, w, sn, sc, sh, sw, msk, ACC: tl.constexpr):
    """gamma/beta values for a [channels, pixels] tile: rows/cols are the pixels' full-res
    coordinates (1-D), mapped to low-res sources once per pixel, not per element."""
    src = src_index(rows, scale_h, h) * sh + src_index(cols, scale_w, w) * sw
    return tl.load(ptr + n64 * sn + chans.to(tl.int64)[:, None] * sc + src[None, :], mask=msk, other=0.0).to(ACC)


@triton.jit
def gn_group_kernel(
    x_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    g_ptr,
    be_ptr,
    mean_ptr,
    rstd_ptr,
    G,
    CPG,
    HW,
    W,
    sxn,
    sxc,
    sxp,
    eps_hi,
    eps_lo,
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
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_G: tl.constexpr,
    HAS_BE: tl.constexpr,
    SILU: tl.constexpr,
    ONE_TILE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ACC: tl.constexpr,
):
    """One program per (n, g): statistics and y of one group.

    Tile [BLOCK_C channels, BLOCK_P pixels]. ONE_TILE: the group is one tile, read once, two-pass
    statistics in registers. Otherwise pass 1 folds pixel blocks with Chan's formula (values
    shifted by the group's first element so x = 1000 + noise keeps its bits) and pass 2 re-reads
    the group (from L2) to apply. Writes y, mean and rstd = 1/sqrt(var_biased + eps).
    """
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    n64 = n.to(tl.int64)
    j = tl.arange(0, BLOCK_C)
    cm = j < CPG
    chans = g * CPG + j
    base = n64 * sxn + (g * CPG).to(tl.int64) * sxc
    coff = j[:, None] * sxc
    ps = tl.arange(0, BLOCK_P)
    total = tl.cast(CPG * HW, ACC)
    if ONE_TILE:
        msk = cm[:, None] & (ps < HW)[None, :]
        x = tl.load(x_ptr + base + coff + ps[None, :] * sxp, mask=msk, other=0.0).to(ACC)
        mean = tl.sum(tl.sum(x, axis=1), axis=0) / total
        d = tl.where(msk, x - mean, 0.0)
        var = tl.sum(tl.sum(d * d, axis=1), axis=0) / total
    else:
        shift = tl.load(x_ptr + base).to(ACC)
        cnt = tl.full([], 0.0, ACC)
        mrel = tl.full([], 0.0, ACC)
        m2 = tl.full([], 0.0, ACC)
        for p0 in range(0, HW, BLOCK_P):
            pix = p0 + ps
            msk = cm[:, None] & (pix < HW)[None, :]
            v = tl.load(x_ptr + base + coff + pix[None, :] * sxp, mask=msk, other=0.0).to(ACC)
            nb = tl.cast(tl.minimum(HW - p0, BLOCK_P) * CPG, ACC)
            cnt, mrel, m2 = _chan_update(cnt, mrel, m2, tl.where(msk, v - shift, 0.0), msk, nb)
        mean = shift + mrel
        var = m2 / total
    rstd = 1.0 / tl.sqrt(var + eps_hi + eps_lo)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, rstd)

    w = 1.0
    b = 0.0
    if HAS_W:
        w = tl.load(w_ptr + chans, mask=cm, other=0.0).to(ACC)[:, None]
    if HAS_B:
        b = tl.load(b_ptr + chans, mask=cm, other=0.0).to(ACC)[:, None]
    for p0 in range(0, HW, BLOCK_P):
        pix = p0 + ps
        msk = cm[:, None] & (pix < HW)[None, :]
        offs = base + coff + pix[None, :] * sxp
        if not ONE_TILE:
            x = tl.load(x_ptr + offs, mask=msk, other=0.0).to(ACC)
        gam = 1.0
        bet = 0.0
        if HAS_G or HAS_BE:
            rows = pix // W  # once per pixel vector, not per element
            cols = pix - rows * W
            if HAS_G:
                gam = _lowres_tile(
                    g_ptr, n64, chans, rows, cols, g_scale_h, g_scale_w, gh, gw, sgn, sgc, sgh, sgw, msk, ACC
                )
            if HAS_BE:
                bet = _lowres_tile(
                    be_ptr, n64, chans, rows, cols, b_scale_h, b_scale_w, bh, bw, sbn, sbc, sbh, sbw, msk, ACC
                )
        _, _, p = gn_terms(x, mean, rstd, w, b, gam, bet, HAS_W, HAS_B, HAS_G, HAS_BE)
        tl.store(y_ptr + offs, activate(p, SILU).to(y_ptr.dtype.element_ty), mask=msk)


@triton.jit
def gn_stats_kernel(
    x_ptr,
    part_ptr,
    PART_OFF,
    G,
    CPG,
    HW,
    PCH,
    S,
    sxn,
    sxc,
    sxp,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ACC: tl.constexpr,
):
    """Per-chunk (mean, M2) partials of each group (split design, first launch).

    Grid (N*G, S): program (q, s) reduces pixels [s*PCH, min((s+1)*PCH, HW)) of all CPG channels
    of group q, tile [BLOCK_C, BLOCK_P]; writes part[q*S + s] (mean relative to the group's first
    element) and part[PART_OFF + q*S + s] (M2). Reads x once.
    """
    q = tl.program_id(0)
    s = tl.program_id(1)
    n = q // G
    g = q % G
    base = n.to(tl.int64) * sxn + (g * CPG).to(tl.int64) * sxc
    shift = tl.load(x_ptr + base).to(ACC)
    p0 = s.to(tl.int64) * PCH
    n_here = tl.minimum(HW - p0, PCH).to(tl.int32)
    j = tl.arange(0, BLOCK_C)
    cm = j < CPG
    ps = tl.arange(0, BLOCK_P)
    xs = x_ptr + base + p0 * sxp
    cnt = tl.full([], 0.0, ACC)
    mean = tl.full([], 0.0, ACC)
    m2 = tl.full([], 0.0, ACC)
    for off in range(0, n_here, BLOCK_P):
        pix = off + ps
        msk = cm[:, None] & (pix < n_here)[None, :]
        v = tl.load(xs + j[:, None] * sxc + pix[None, :] * sxp, mask=msk, other=0.0).to(ACC)
        nb = tl.cast(tl.minimum(n_here - off, BLOCK_P) * CPG, ACC)
        cnt, mean, m2 = _chan_update(cnt, mean, m2, tl.where(msk, v - shift, 0.0), msk, nb)
    tl.store(part_ptr + q * S + s, mean)
    tl.store(part_ptr + PART_OFF + q * S + s, m2)


@triton.jit
def _group_stats(
    x_ptr,
    mean_ptr,
    rstd_ptr,
    part_ptr,
    grp,
    n64,
    chans,
    CPG,
    sxn,
    sxc,
    S,
    PCH,
    HW,
    PART_OFF,
    eps_hi,
    eps_lo,
    MERGE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_S: tl.constexpr,
    ACC: tl.constexpr,
):
    """mean and rstd of the groups ``grp`` (1-D block, -1 = masked): merged from the split
    design's partials (MERGE) or loaded from the forward's saved statistics."""
    gm = grp >= 0
    if MERGE:
        d, var = merge_partials(part_ptr, part_ptr + PART_OFF, grp, S, PCH, HW, CPG, BLOCK_G, BLOCK_S, ACC)
        first = (chans // CPG) * CPG
        shift = tl.load(x_ptr + n64 * sxn + first.to(tl.int64) * sxc, mask=gm, other=0.0).to(ACC)
        return shift + d, 1.0 / tl.sqrt(var + eps_hi + eps_lo)
    return tl.load(mean_ptr + grp, mask=gm, other=0.0).to(ACC), tl.load(rstd_ptr + grp, mask=gm, other=1.0).to(ACC)


@triton.jit
def gn_apply_nchw_kernel(
    x_ptr,
    dy_ptr,
    out_ptr,
    w_ptr,
    b_ptr,
    g_ptr,
    be_ptr,
    mean_ptr,
    rstd_ptr,
    m1_ptr,
    m2_ptr,
    part_ptr,
    C,
    G,
    CPG,
    H,
    W,
    S,
    PCH,
    PART_OFF,
    eps_hi,
    eps_lo,
    sxn,
    sxc,
    sxh,
    sxw,
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
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_G: tl.constexpr,
    HAS_BE: tl.constexpr,
    SILU: tl.constexpr,
    BWD: tl.constexpr,
    MERGE: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    ACC: tl.constexpr,
):
    """NCHW elementwise sweep: y (forward) or dx (BWD). x, dy and out share x's dense layout.

    Grid (N*C, cdiv(H, BLOCK_H), cdiv(W, BLOCK_W)); tile [BLOCK_H rows, BLOCK_W columns] of one
    (n, c) plane: channel, group, statistics, weight and bias are program scalars, gamma's source
    row/column per-row/per-column vectors. MERGE: statistics from the split partials, and the
    first tile of each group's first channel stores mean/rstd.
    """
    pid = tl.program_id(0)
    n = pid // C
    c = pid % C
    grp = n * G + c // CPG
    n64 = n.to(tl.int64)
    c64 = c.to(tl.int64)
    r0 = tl.program_id(1) * BLOCK_H
    rows = r0 + tl.arange(0, BLOCK_H)
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    m = (rows < H)[:, None] & (cols < W)[None, :]
    offs = n64 * sxn + c64 * sxc + r0.to(tl.int64) * sxh + tl.arange(0, BLOCK_H)[:, None] * sxh + cols[None, :] * sxw
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(ACC)
    gv = tl.full([1], 0, tl.int32) + grp
    mean_v, rstd_v = _group_stats(
        x_ptr,
        mean_ptr,
        rstd_ptr,
        part_ptr,
        gv,
        n64,
        tl.full([1], 0, tl.int32) + c,
        CPG,
        sxn,
        sxc,
        S,
        PCH,
        H * W,
        PART_OFF,
        eps_hi,
        eps_lo,
        MERGE,
        1,
        BLOCK_S,
        ACC,
    )
    mean = tl.sum(mean_v, axis=0)
    rstd = tl.sum(rstd_v, axis=0)
    if MERGE:  # noqa: SIM102 (a constexpr test, then a runtime one)
        if (c % CPG == 0) & (tl.program_id(1) == 0) & (tl.program_id(2) == 0):
            tl.store(mean_ptr + grp, mean)
            tl.store(rstd_ptr + grp, rstd)
    w = 1.0
    b = 0.0
    gam = 1.0
    bet = 0.0
    if HAS_W:
        w = tl.load(w_ptr + c).to(ACC)
    if HAS_B:
        b = tl.load(b_ptr + c).to(ACC)
    if HAS_G:
        src = src_index(rows, g_scale_h, gh)[:, None] * sgh + src_index(cols, g_scale_w, gw)[None, :] * sgw
        gam = tl.load(g_ptr + n64 * sgn + c64 * sgc + src, mask=m, other=0.0).to(ACC)
    if HAS_BE:
        src = src_index(rows, b_scale_h, bh)[:, None] * sbh + src_index(cols, b_scale_w, bw)[None, :] * sbw
        bet = tl.load(be_ptr + n64 * sbn + c64 * sbc + src, mask=m, other=0.0).to(ACC)
    xhat, _, p = gn_terms(x, mean, rstd, w, b, gam, bet, HAS_W, HAS_B, HAS_G, HAS_BE)
    if BWD:
        dp = tl.load(dy_ptr + offs, mask=m, other=0.0).to(ACC)
        res = dx_value(dp, p, xhat, gam, w, rstd, tl.load(m1_ptr + grp), tl.load(m2_ptr + grp), SILU, HAS_G, HAS_W)
    else:
        res = activate(p, SILU)
    tl.store(out_ptr + offs, res.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def gn_apply_cl_kernel(
    x_ptr,
    dy_ptr,
    out_ptr,
    w_ptr,
    b_ptr,
    g_ptr,
    be_ptr,
    mean_ptr,
    rstd_ptr,
    m1_ptr,
    m2_ptr,
    part_ptr,
    C,
    G,
    CPG,
    H,
    W,
    S,
    PCH,
    PART_OFF,
    eps_hi,
    eps_lo,
    sxn,
    sxc,
    sxh,
    sxw,
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
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_G: tl.constexpr,
    HAS_BE: tl.constexpr,
    SILU: tl.constexpr,
    BWD: tl.constexpr,
    MERGE: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """channels_last elementwise sweep: y (forward) or dx (BWD).

    Grid (N*H, cdiv(W, BLOCK_W), cdiv(C, BLOCK_C)); tile [BLOCK_W columns, BLOCK_C channels] of
    one image row, contiguous along channels. The image row and gamma's source row are program
    scalars (each low-res row is read as one run per tile); statistics, weight and bias are
    per-channel vectors loaded once per program. MERGE: statistics from the split partials, and
    the programs of row 0, column block 0 store mean/rstd.
    """
    pid = tl.program_id(0)
    n = pid // H
    r = pid % H
    n64 = n.to(tl.int64)
    r64 = r.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    chans = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    chm = chans < C
    m = (cols < W)[:, None] & chm[None, :]
    grp = tl.where(chm, n * G + chans // CPG, -1)
    offs = n64 * sxn + r64 * sxh + cols[:, None] * sxw + chans[None, :] * sxc
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(ACC)
    mean, rstd = _group_stats(
        x_ptr,
        mean_ptr,
        rstd_ptr,
        part_ptr,
        grp,
        n64,
        chans,
        CPG,
        sxn,
        sxc,
        S,
        PCH,
        H * W,
        PART_OFF,
        eps_hi,
        eps_lo,
        MERGE,
        BLOCK_C,
        BLOCK_S,
        ACC,
    )
    if MERGE:  # noqa: SIM102 (a constexpr test, then a runtime one)
        if (r == 0) & (tl.program_id(1) == 0):
            tl.store(mean_ptr + grp, mean, mask=chm)  # the CPG channels of a group store equal bits
            tl.store(rstd_ptr + grp, rstd, mask=chm)
    mean = mean[None, :]
    rstd = rstd[None, :]
    w = 1.0
    b = 0.0
    gam = 1.0
    bet = 0.0
    if HAS_W:
        w = tl.load(w_ptr + chans, mask=chm, other=0.0).to(ACC)[None, :]
    if HAS_B:
        b = tl.load(b_ptr + chans, mask=chm, other=0.0).to(ACC)[None, :]
    if HAS_G:
        sr = src_index(r, g_scale_h, gh).to(tl.int64)
        sc = src_index(cols, g_scale_w, gw)
        gam = tl.load(g_ptr + n64 * sgn + sr * sgh + sc[:, None] * sgw + chans[None, :] * sgc, mask=m, other=0.0).to(
            ACC
        )
    if HAS_BE:
        sr = src_index(r, b_scale_h, bh).to(tl.int64)
        sc = src_index(cols, b_scale_w, bw)
        bet = tl.load(be_ptr + n64 * sbn + sr * sbh + sc[:, None] * sbw + chans[None, :] * sbc, mask=m, other=0.0).to(
            ACC
        )
    xhat, _, p = gn_terms(x, mean, rstd, w, b, gam, bet, HAS_W, HAS_B, HAS_G, HAS_BE)
    if BWD:
        dp = tl.load(dy_ptr + offs, mask=m, other=0.0).to(ACC)
        m1 = tl.load(m1_ptr + grp, mask=chm, other=0.0).to(ACC)[None, :]
        m2 = tl.load(m2_ptr + grp, mask=chm, other=0.0).to(ACC)[None, :]
        res = dx_value(dp, p, xhat, gam, w, rstd, m1, m2, SILU, HAS_G, HAS_W)
    else:
        res = activate(p, SILU)
    tl.store(out_ptr + offs, res.to(out_ptr.dtype.element_ty), mask=m)
