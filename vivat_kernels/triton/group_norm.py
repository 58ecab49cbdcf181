"""Triton kernels for the fused GroupNorm family: ``y = act(GN_affine(x) * up(gamma) + up(beta))``.

Backend contract: see :mod:`vivat_kernels.ops.group_norm`. This module exports exactly
:func:`group_norm_fwd` and :func:`group_norm_bwd`.

Layouts and dtypes
    ``x`` (N, C, H, W) is dense NCHW or dense channels_last; both are read in place through their
    strides (never ``.contiguous()``), and outputs keep x's layout. x is float32, float16, bfloat16
    or float64. Statistics and every accumulation are float32 (float64 when x is float64, so that
    fp64 gradcheck under ``TRITON_INTERPRET=1`` is exact); values are cast once at the store.
    ``weight``/``bias`` (C,), ``gamma``/``beta`` (N, C, h, w) are x's dtype or float32 and any
    strides. gamma/beta are nearest-upsampled by index inside the kernels with the exact
    ``F.interpolate(mode="nearest")`` rule ``src = min(floor(float32(dst) * float32(h / H)), h - 1)``.

Forward (bytes per element of x, s = element size; low-res gamma/beta reads are extra, small)
    1. stats:  per-chunk (mean, M2) partials over each group, x read once ............. s
       NCHW: grid (N*G, chunks); a group is one contiguous run of C/G*H*W elements cut into
       flat chunks. channels_last: grid (N, pixel chunks, channel blocks), per-channel partials
       from [pixels, channels] tiles. The chunk count is chosen to give ~16 programs per SM even
       at batch 1 (e.g. 2048 programs for (1, 128, 1024, 1024), G = 32).
    2. merge:  Chan's parallel formula over the (N, G, chunks) partials, one tiny program per
       (n, g), fixed order: deterministic, no atomics ..................................... ~0
    3. apply:  y = act(...) from x, per-channel scalars and upsampled gamma/beta ......... 2s
       NCHW: grid (N*C, row blocks, column blocks), tile [rows, columns] of one plane;
       channels_last: grid (N*H, column blocks, channel blocks), tile [columns, channels].
    Total 3s (read x twice, write y once).

Backward (dp = dy * act'(p), da = dp * up(gamma), dxhat = da * weight, a = xhat*weight + bias)
    1. reduce: partial sums of da and da*xhat per channel and program (for dweight, dbias and the
       two per-group terms of dx), and the low-resolution block sums dgamma = sum(dp * a),
       dbeta = sum(dp). NCHW: grid (N*C, row ranges), a program covers whole rows.
       channels_last: grid (N*row ranges, column runs, channel blocks). A row range never
       straddles a low-res row and the column walk is aligned to low-res columns, so every
       block sum is written by exactly one program; cells taller than a range are split into
       row pieces whose partial block sums are added on the host in a fixed order. Full-res
       gamma/beta skip the block sum (dgamma/dbeta stored straight from the tile). x and dy
       read once ......................................................................... 2s
    2. tiny torch sums of the partials (deterministic reductions over small tensors).
    3. dx = rstd * (dxhat - mean_g(dxhat) - xhat * mean_g(dxhat * xhat)), the apply sweep in
       backward mode: x and dy read again, dx written ..................................... 3s
    Total 5s. Nothing from the forward other than mean/rstd is saved; xhat and the upsampled
    gamma/beta are recomputed.

No float atomics anywhere: every output element and every partial is written by one program,
and partials are combined in a fixed order, so results are bitwise reproducible run to run.
Offsets that can exceed 2**31 (anything scaled by the batch or channel index) are int64; offsets
within one (n, c) plane or one (n, h) row stay int32. The hot loops use 2-D tiles whose channel
and low-res row are scalars or per-row/per-column vectors, so there is no per-element integer
division. Block sizes come from heuristics (memory-bound kernels; no autotuning).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

# Heuristic knobs (memory-bound kernels: fixed rules, no autotuning).
#   tile             elements of one elementwise tile (the reduction kernels use half: they keep
#                    four accumulator tiles live)
#   program_elems    work one backward-reduction program aims for
#   programs_per_sm  forward statistics programs to aim for per SM (fills the GPU at batch 1)
#   max_block_c      channel block of the channels_last backward reduction
#   min_iters        a statistics chunk spans at least this many tiles
#   cl_rows          image rows per channels_last backward-reduction program
# Tests shrink them to push tiny shapes through the multi-chunk / multi-tile / split paths.
_TUNE = {
    "tile": 2048,
    "program_elems": 16384,
    "programs_per_sm": 16,
    "max_block_c": 64,
    "min_iters": 4,
    "cl_rows": 8,
}


# ----------------------------------------------------------------------------------------------
# shared device helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _src_index(dst, scale, src_size):
    """Nearest source index, ``F.interpolate(mode="nearest")``'s rule: the product is an fp32
    multiply of the fp32 destination index by the fp32 scale, truncated (= floor, both >= 0)."""
    return tl.minimum((tl.cast(dst, tl.float32) * scale).to(tl.int32), src_size - 1)


@triton.jit
def _gn_terms(x, mean, rstd, w, b, gam, bet, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
              HAS_G: tl.constexpr, HAS_BE: tl.constexpr):
    """xhat, the affine output a = xhat*w + b, and the pre-activation p = a*gamma + beta."""
    # (x - mean) first: x and mean are close, so the subtraction is (nearly) exact even when the
    # group mean is large (x = 1000 + noise); x*scale + shift would lose ~log2(1000) bits.
    xhat = (x - mean) * rstd
    a = xhat
    if HAS_W:
        a = a * w
    if HAS_B:
        a = a + b
    p = a
    if HAS_G:
        p = p * gam
    if HAS_BE:
        p = p + bet
    return xhat, a, p


@triton.jit
def _silu_grad(p):
    """d silu(p) / dp = s * (1 + p * (1 - s)), s = sigmoid(p); finite for every finite p."""
    s = tl.sigmoid(p)
    return s * (1.0 + p * (1.0 - s))


# ----------------------------------------------------------------------------------------------
# forward: statistics
# ----------------------------------------------------------------------------------------------
@triton.jit
def _stats_nchw_kernel(x_ptr, pmean_ptr, pm2_ptr, L, CHUNK, S,
                       BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Per-chunk (mean, M2) of one group of dense NCHW x.

    Grid (N*G, S). Group (n, g) is the contiguous run [(n*G + g)*L, +L), L = C/G*H*W; program
    (ng, s) reduces elements [s*CHUNK, min((s+1)*CHUNK, L)) of it. x: any float dtype, read once
    (s bytes/element); writes two ACC scalars to the (N*G, S) partial buffers.
    Numerics: values are shifted by the group's first element K (the same K in every chunk of the
    group, and the merge adds it back once), so sums and stored partial means stay small and
    keep their bits for x = 1000 + noise; each BLOCK is reduced two-pass in registers, and blocks
    are merged with Chan's formula, so there is no E[x^2] - E[x]^2 cancellation.
    """
    ng = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    start = s.to(tl.int64) * CHUNK
    n_here = tl.minimum(L - start, CHUNK).to(tl.int32)
    shift = tl.load(x_ptr + ng * L).to(ACC)
    xs = x_ptr + ng * L + start
    cnt = tl.full([], 0.0, ACC)
    mean = tl.full([], 0.0, ACC)
    m2 = tl.full([], 0.0, ACC)
    offs = tl.arange(0, BLOCK)
    for off in range(0, n_here, BLOCK):
        msk = off + offs < n_here
        v = tl.load(xs + off + offs, mask=msk, other=0.0).to(ACC)
        d = tl.where(msk, v - shift, 0.0)
        nb = tl.cast(tl.minimum(n_here - off, BLOCK), ACC)
        bmean = tl.sum(d, axis=0) / nb
        dd = tl.where(msk, d - bmean, 0.0)
        bm2 = tl.sum(dd * dd, axis=0)
        tot = cnt + nb
        delta = bmean - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + bm2 + delta * delta * (cnt * nb / tot)
        cnt = tot
    idx = ng * S + s
    tl.store(pmean_ptr + idx, mean)
    tl.store(pm2_ptr + idx, m2)


@triton.jit
def _stats_cl_kernel(x_ptr, pmean_ptr, pm2_ptr, HW, C, CPG, PCH, S,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Per-channel, per-pixel-chunk (mean, M2) of dense channels_last x.

    Grid (N, S, cdiv(C, BLOCK_C)). Pixel p = h*W + w of sample n sits at (n*H*W + p)*C + c, so a
    tile [BLOCK_P pixels, BLOCK_C channels] reads contiguous channel runs. Program (n, s, cb)
    reduces pixels [s*PCH, min((s+1)*PCH, HW)) for its channels. x read once (s bytes/element);
    writes (N, S, C) partials, merged per group afterwards (a group is C/G adjacent channels).
    Same numerics as the NCHW kernel, per channel; the shift of channel c is the first element
    of its group (pixel 0, channel (c // CPG) * CPG), shared by all partials of the group.
    """
    n = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    cb = tl.program_id(2)
    p0 = s.to(tl.int64) * PCH
    n_here = tl.minimum(HW - p0, PCH).to(tl.int32)
    chans = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = chans < C
    xn = x_ptr + n * HW * C
    shift = tl.load(xn + (chans // CPG) * CPG, mask=cm, other=0.0).to(ACC)  # once per program
    xs = xn + p0 * C  # int64 base; in-chunk offsets (< PCH*C) stay int32
    cnt = tl.full([], 0.0, ACC)
    mean = tl.zeros([BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    rows = tl.arange(0, BLOCK_P)
    for off in range(0, n_here, BLOCK_P):
        pm = off + rows < n_here
        m = pm[:, None] & cm[None, :]
        v = tl.load(xs + (off + rows)[:, None] * C + chans[None, :], mask=m, other=0.0).to(ACC)
        d = tl.where(m, v - shift[None, :], 0.0)
        nb = tl.cast(tl.minimum(n_here - off, BLOCK_P), ACC)
        bmean = tl.sum(d, axis=0) / nb
        dd = tl.where(m, d - bmean[None, :], 0.0)
        bm2 = tl.sum(dd * dd, axis=0)
        tot = cnt + nb
        delta = bmean - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + bm2 + delta * delta * (cnt * nb / tot)
        cnt = tot
    out = (n * S + s) * C + chans
    tl.store(pmean_ptr + out, mean, mask=cm)
    tl.store(pm2_ptr + out, m2, mask=cm)


@triton.jit
def _merge_stats_kernel(x_ptr, pmean_ptr, pm2_ptr, mean_ptr, rstd_ptr, G, S, J,
                        x_sn, x_sg, p_n, p_g, p_s, p_j, CHUNK, EXTENT, eps_hi, eps_lo,
                        BLOCK_S: tl.constexpr, BLOCK_J: tl.constexpr, ACC: tl.constexpr):
    """Merge one group's partials into mean and rstd = 1/sqrt(var_biased + eps).

    Grid (N*G,). The group's partials are indexed (s, j), s < S chunks of the chunked extent
    (each CHUNK elements but the last, of EXTENT in all), j < J channels (J = 1 when a partial
    already covers whole groups); partial (n, g, s, j) lives at n*p_n + g*p_g + s*p_s + j*p_j and
    holds a mean relative to the group's shift K = x[n*x_sn + g*x_sg] (its first element).
    Chan's formula in two fixed-order passes: d = sum(n_i m_i) / n, then
    M2 = sum(M2_i + n_i (m_i - d)^2); mean = K + d. Reads/writes O(N*G*S) ACC values: negligible.
    eps comes as eps_hi + eps_lo (fp32 each; scalar float arguments are fp32) so that the fp64
    path adds the exact fp64 eps.
    """
    ng = tl.program_id(0)
    n = ng // G
    g = ng % G
    shift = tl.load(x_ptr + n.to(tl.int64) * x_sn + g.to(tl.int64) * x_sg).to(ACC)
    base = n.to(tl.int64) * p_n + g.to(tl.int64) * p_g
    ss = tl.arange(0, BLOCK_S)
    js = tl.arange(0, BLOCK_J)
    jm = js < J
    acc_d = tl.zeros([BLOCK_S, BLOCK_J], dtype=ACC)
    acc_n = tl.zeros([BLOCK_S, BLOCK_J], dtype=ACC)
    for s0 in range(0, S, BLOCK_S):
        sv = s0 + ss
        m = (sv < S)[:, None] & jm[None, :]
        cnt = tl.cast(tl.minimum(EXTENT - sv.to(tl.int64) * CHUNK, CHUNK), ACC)
        pm = tl.load(pmean_ptr + base + sv[:, None] * p_s + js[None, :] * p_j, mask=m, other=0.0).to(ACC)
        acc_d += tl.where(m, cnt[:, None] * pm, 0.0)
        acc_n += tl.where(m, cnt[:, None], 0.0)
    total = tl.sum(tl.sum(acc_n, axis=1), axis=0)
    d = tl.sum(tl.sum(acc_d, axis=1), axis=0) / total
    acc_m2 = tl.zeros([BLOCK_S, BLOCK_J], dtype=ACC)
    for s0 in range(0, S, BLOCK_S):
        sv = s0 + ss
        m = (sv < S)[:, None] & jm[None, :]
        cnt = tl.cast(tl.minimum(EXTENT - sv.to(tl.int64) * CHUNK, CHUNK), ACC)
        offs = base + sv[:, None] * p_s + js[None, :] * p_j
        pm = tl.load(pmean_ptr + offs, mask=m, other=0.0).to(ACC)
        q = tl.load(pm2_ptr + offs, mask=m, other=0.0).to(ACC)
        dlt = pm - d
        acc_m2 += tl.where(m, q + cnt[:, None] * dlt * dlt, 0.0)
    var = tl.sum(tl.sum(acc_m2, axis=1), axis=0) / total
    rstd = 1.0 / tl.sqrt(var + eps_hi + eps_lo)
    tl.store(mean_ptr + ng, shift + d)
    tl.store(rstd_ptr + ng, rstd)


# ----------------------------------------------------------------------------------------------
# forward apply and backward dx (the same elementwise sweep)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _apply_nchw_kernel(
    x_ptr, dy_ptr, out_ptr, w_ptr, b_ptr, g_ptr, be_ptr, mean_ptr, rstd_ptr, m1_ptr, m2_ptr,
    C, G, CPG, H, W,
    sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, son, soc, soh, sow,
    gh, gw, g_scale_h, g_scale_w, sgn, sgc, sgh, sgw,
    bh, bw, b_scale_h, b_scale_w, sbn, sbc, sbh, sbw,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_G: tl.constexpr, HAS_BE: tl.constexpr,
    SILU: tl.constexpr, BWD: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, ACC: tl.constexpr,
):
    """NCHW elementwise sweep: forward y (BWD=False) or backward dx (BWD=True).

    Grid (N*C, cdiv(H, BLOCK_H), cdiv(W, BLOCK_W)); tile [BLOCK_H rows, BLOCK_W columns] of one
    (n, c) plane, so channel, group, mean/rstd, weight and bias are program scalars and the gamma
    source row/column are per-row/per-column vectors.
    Forward: reads x (s), writes y (s). Backward: reads x and dy (2s), writes dx (s), with the
    per-group terms m1 = mean_g(dxhat), m2 = mean_g(dxhat*xhat) from the reduction pass.
    gamma/beta reads are low-res gathers (mostly cache hits). Any strides for dy/out/gamma/beta.
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
    lr = tl.arange(0, BLOCK_H)[:, None]

    xo = n64 * sxn + c64 * sxc + r0.to(tl.int64) * sxh
    x = tl.load(x_ptr + xo + lr * sxh + cols[None, :] * sxw, mask=m, other=0.0).to(ACC)
    mean = tl.load(mean_ptr + grp).to(ACC)
    rstd = tl.load(rstd_ptr + grp).to(ACC)
    w = 1.0
    b = 0.0
    gam = 1.0
    bet = 0.0
    if HAS_W:
        w = tl.load(w_ptr + c).to(ACC)
    if HAS_B:
        b = tl.load(b_ptr + c).to(ACC)
    if HAS_G:
        sr = _src_index(rows, g_scale_h, gh)
        sc = _src_index(cols, g_scale_w, gw)
        gam = tl.load(g_ptr + n64 * sgn + c64 * sgc + sr[:, None] * sgh + sc[None, :] * sgw,
                      mask=m, other=0.0).to(ACC)
    if HAS_BE:
        sr = _src_index(rows, b_scale_h, bh)
        sc = _src_index(cols, b_scale_w, bw)
        bet = tl.load(be_ptr + n64 * sbn + c64 * sbc + sr[:, None] * sbh + sc[None, :] * sbw,
                      mask=m, other=0.0).to(ACC)
    xhat, _, p = _gn_terms(x, mean, rstd, w, b, gam, bet, HAS_W, HAS_B, HAS_G, HAS_BE)
    oo = n64 * son + c64 * soc + r0.to(tl.int64) * soh
    if BWD:
        dp = tl.load(dy_ptr + n64 * sdn + c64 * sdc + r0.to(tl.int64) * sdh + lr * sdh
                     + cols[None, :] * sdw, mask=m, other=0.0).to(ACC)
        if SILU:
            dp = dp * _silu_grad(p)
        dxh = dp
        if HAS_G:
            dxh = dxh * gam
        if HAS_W:
            dxh = dxh * w
        m1 = tl.load(m1_ptr + grp).to(ACC)
        m2 = tl.load(m2_ptr + grp).to(ACC)
        res = rstd * (dxh - m1 - xhat * m2)
    else:
        res = p
        if SILU:
            res = p * tl.sigmoid(p)
    tl.store(out_ptr + oo + lr * soh + cols[None, :] * sow, res.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _apply_cl_kernel(
    x_ptr, dy_ptr, out_ptr, w_ptr, b_ptr, g_ptr, be_ptr, mean_ptr, rstd_ptr, m1_ptr, m2_ptr,
    C, G, CPG, H, W,
    sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, son, soc, soh, sow,
    gh, gw, g_scale_h, g_scale_w, sgn, sgc, sgh, sgw,
    bh, bw, b_scale_h, b_scale_w, sbn, sbc, sbh, sbw,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_G: tl.constexpr, HAS_BE: tl.constexpr,
    SILU: tl.constexpr, BWD: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """channels_last elementwise sweep: forward y (BWD=False) or backward dx (BWD=True).

    Grid (N*H, cdiv(W, BLOCK_W), cdiv(C, BLOCK_C)); tile [BLOCK_W columns, BLOCK_C channels] of
    one image row, contiguous along channels. The row (and gamma's source row) is a program
    scalar; group index, mean/rstd, weight, bias are per-channel vectors computed once per
    program; gamma's source column is a per-tile-row vector.
    Bytes as in the NCHW sweep: forward 2s (x in, y out), backward 3s (x, dy in, dx out).
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
    grp = n * G + chans // CPG  # per-channel vector, once per program

    x = tl.load(x_ptr + n64 * sxn + r64 * sxh + cols[:, None] * sxw + chans[None, :] * sxc,
                mask=m, other=0.0).to(ACC)
    mean = tl.load(mean_ptr + grp, mask=chm, other=0.0).to(ACC)[None, :]
    rstd = tl.load(rstd_ptr + grp, mask=chm, other=0.0).to(ACC)[None, :]
    w = 1.0
    b = 0.0
    gam = 1.0
    bet = 0.0
    if HAS_W:
        w = tl.load(w_ptr + chans, mask=chm, other=0.0).to(ACC)[None, :]
    if HAS_B:
        b = tl.load(b_ptr + chans, mask=chm, other=0.0).to(ACC)[None, :]
    if HAS_G:
        sr = _src_index(r, g_scale_h, gh)
        sc = _src_index(cols, g_scale_w, gw)
        gam = tl.load(g_ptr + n64 * sgn + sr.to(tl.int64) * sgh + sc[:, None] * sgw + chans[None, :] * sgc,
                      mask=m, other=0.0).to(ACC)
    if HAS_BE:
        sr = _src_index(r, b_scale_h, bh)
        sc = _src_index(cols, b_scale_w, bw)
        bet = tl.load(be_ptr + n64 * sbn + sr.to(tl.int64) * sbh + sc[:, None] * sbw + chans[None, :] * sbc,
                      mask=m, other=0.0).to(ACC)
    xhat, _, p = _gn_terms(x, mean, rstd, w, b, gam, bet, HAS_W, HAS_B, HAS_G, HAS_BE)
    if BWD:
        dp = tl.load(dy_ptr + n64 * sdn + r64 * sdh + cols[:, None] * sdw + chans[None, :] * sdc,
                     mask=m, other=0.0).to(ACC)
        if SILU:
            dp = dp * _silu_grad(p)
        dxh = dp
        if HAS_G:
            dxh = dxh * gam
        if HAS_W:
            dxh = dxh * w
        m1 = tl.load(m1_ptr + grp, mask=chm, other=0.0).to(ACC)[None, :]
        m2 = tl.load(m2_ptr + grp, mask=chm, other=0.0).to(ACC)[None, :]
        res = rstd * (dxh - m1 - xhat * m2)
    else:
        res = p
        if SILU:
            res = p * tl.sigmoid(p)
    tl.store(out_ptr + n64 * son + r64 * soh + cols[:, None] * sow + chans[None, :] * soc,
             res.to(out_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------
# backward: reduction pass
# ----------------------------------------------------------------------------------------------
# MODE of the block-sum layout (how dgamma/dbeta relate to the program's tiles):
#   0  no block sums (plain row ranges, only the dweight/dbias/dx partials);
#   1  full resolution: dgamma/dbeta are elementwise, stored straight from the tile;
#   2  low-res columns: the column loop walks whole low-res cells; cell sums by segment;
#   3  low-res rows but full-res columns: a column's row-sum is its block sum.
@triton.jit
def _bwd_reduce_nchw_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, g_ptr, be_ptr, mean_ptr, rstd_ptr,
    p1_ptr, p2_ptr, dg_ptr, db_ptr, row_tab, col_tab,
    C, G, CPG, H, W,
    sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw,
    gh, gw, g_scale_h, g_scale_w, sgn, sgc, sgh, sgw,
    bh, bw, b_scale_h, b_scale_w, sbn, sbc, sbh, sbw,
    KS, L_ROWS, NUNITS, W_CELLS,
    p_sn, p_sc, p_sk,
    ogn, ogc, ogi, ogk, ogj, obn, obc, obi, obk, obj,
    MODE: tl.constexpr, STATS: tl.constexpr, WANT_DG: tl.constexpr, WANT_DB: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_G: tl.constexpr, HAS_BE: tl.constexpr,
    SILU: tl.constexpr, CPB: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, ACC: tl.constexpr,
):
    """NCHW backward reduction over one (n, c) plane's row range.

    Grid (N*C, K), K = cells*KS row ranges: range k is piece k % KS of row-table entry k // KS
    (a low-res row's high-res rows, or a plain row block in modes 0/1), rows [r0, r1). Tile
    [BLOCK_H rows, BLOCK_W columns]; channel and low-res row i are scalars.
    Writes (STATS) the partial sums of da and da*xhat at p + n*p_sn + c*p_sc + k*p_sk, and the
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
    i = k // KS
    ks = k % KS
    rs = tl.load(row_tab + i)
    re = tl.load(row_tab + i + 1)
    r0 = rs + ks * L_ROWS
    r1 = tl.minimum(r0 + L_ROWS, re)

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
    gb = g_ptr + n64 * sgn + c64 * sgc
    bb = be_ptr + n64 * sbn + c64 * sbc
    dgb = dg_ptr + n64 * ogn + c64 * ogc
    dbb = db_ptr + n64 * obn + c64 * obc

    hr = tl.arange(0, BLOCK_H)
    wc = tl.arange(0, BLOCK_W)
    acc1 = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
    acc2 = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
    for u in range(NUNITS):
        if MODE == 2:
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
            sc_g = _src_index(cols, g_scale_w, gw)
            sc_b = _src_index(cols, b_scale_w, bw)
            for r in range(r0, r1, BLOCK_H):
                rows = r + hr
                m = (rows < r1)[:, None] & cm[None, :]
                x = tl.load(xb + rows[:, None] * sxh + cols[None, :] * sxw, mask=m, other=0.0).to(ACC)
                dp = tl.load(db_ + rows[:, None] * sdh + cols[None, :] * sdw, mask=m, other=0.0).to(ACC)
                gam = 1.0
                bet = 0.0
                if HAS_G:
                    sr = _src_index(rows, g_scale_h, gh)
                    gam = tl.load(gb + sr[:, None] * sgh + sc_g[None, :] * sgw, mask=m, other=0.0).to(ACC)
                if HAS_BE:
                    sr = _src_index(rows, b_scale_h, bh)
                    bet = tl.load(bb + sr[:, None] * sbh + sc_b[None, :] * sbw, mask=m, other=0.0).to(ACC)
                xhat, a, p = _gn_terms(x, mean, rstd, w, b, gam, bet, HAS_W, HAS_B, HAS_G, HAS_BE)
                if SILU:
                    dp = dp * _silu_grad(p)
                dp = tl.where(m, dp, 0.0)
                if STATS:
                    da = dp
                    if HAS_G:
                        da = da * gam
                    acc1 += da
                    acc2 += tl.where(m, da * xhat, 0.0)
                if MODE == 1:
                    if WANT_DG:
                        tl.store(dgb + rows[:, None] * ogi + cols[None, :] * ogj,
                                 (dp * a).to(dg_ptr.dtype.element_ty), mask=m)
                    if WANT_DB:
                        tl.store(dbb + rows[:, None] * obi + cols[None, :] * obj,
                                 dp.to(db_ptr.dtype.element_ty), mask=m)
                if MODE >= 2:
                    if WANT_DG:
                        accg += tl.where(m, dp * a, 0.0)
                    if WANT_DB:
                        accb += dp
        if MODE == 2:
            if CPB == 1:
                if WANT_DG:
                    tl.store(dgb + i * ogi + ks * ogk + j0 * ogj,
                             tl.sum(tl.sum(accg, axis=1), axis=0).to(dg_ptr.dtype.element_ty))
                if WANT_DB:
                    tl.store(dbb + i * obi + ks * obk + j0 * obj,
                             tl.sum(tl.sum(accb, axis=1), axis=0).to(db_ptr.dtype.element_ty))
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
        if MODE == 3:
            cols = cs + wc
            cm = cols < ce
            if WANT_DG:
                tl.store(dgb + i * ogi + ks * ogk + cols * ogj,
                         tl.sum(accg, axis=0).to(dg_ptr.dtype.element_ty), mask=cm)
            if WANT_DB:
                tl.store(dbb + i * obi + ks * obk + cols * obj,
                         tl.sum(accb, axis=0).to(db_ptr.dtype.element_ty), mask=cm)
    if STATS:
        po = n64 * p_sn + c64 * p_sc + k * p_sk
        tl.store(p1_ptr + po, tl.sum(tl.sum(acc1, axis=1), axis=0))
        tl.store(p2_ptr + po, tl.sum(tl.sum(acc2, axis=1), axis=0))


@triton.jit
def _bwd_reduce_cl_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, g_ptr, be_ptr, mean_ptr, rstd_ptr,
    p1_ptr, p2_ptr, dg_ptr, db_ptr, row_tab, col_tab,
    C, G, CPG, H, W,
    sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw,
    gh, gw, g_scale_h, g_scale_w, sgn, sgc, sgh, sgw,
    bh, bw, b_scale_h, b_scale_w, sbn, sbc, sbh, sbw,
    K, KS, L_ROWS, NUNITS, UPP, NJB,
    p_sn, p_sc, p_sk,
    ogn, ogc, ogi, ogk, ogj, obn, obc, obi, obk, obj,
    MODE: tl.constexpr, STATS: tl.constexpr, WANT_DG: tl.constexpr, WANT_DB: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_G: tl.constexpr, HAS_BE: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
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
    i = k // KS
    ks = k % KS
    jb = tl.program_id(1)
    n64 = n.to(tl.int64)
    rs = tl.load(row_tab + i)
    re = tl.load(row_tab + i + 1)
    r0 = rs + ks * L_ROWS
    r1 = tl.minimum(r0 + L_ROWS, re)

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
    gb = g_ptr + n64 * sgn
    bb = be_ptr + n64 * sbn
    dgb = dg_ptr + n64 * ogn
    dbb = db_ptr + n64 * obn

    wc = tl.arange(0, BLOCK_W)
    acc1 = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    acc2 = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    u_lo = jb * UPP
    u_hi = tl.minimum(u_lo + UPP, NUNITS)
    for u in range(u_lo, u_hi):
        if MODE == 2:
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
            sc_g = _src_index(cols, g_scale_w, gw)
            sc_b = _src_index(cols, b_scale_w, bw)
            for r in range(r0, r1):
                r64 = tl.cast(r, tl.int64)
                x = tl.load(xb + r64 * sxh + cols[:, None] * sxw + chans[None, :] * sxc,
                            mask=m, other=0.0).to(ACC)
                dp = tl.load(db_ + r64 * sdh + cols[:, None] * sdw + chans[None, :] * sdc,
                             mask=m, other=0.0).to(ACC)
                gam = 1.0
                bet = 0.0
                if HAS_G:
                    sr = _src_index(r, g_scale_h, gh).to(tl.int64)
                    gam = tl.load(gb + sr * sgh + sc_g[:, None] * sgw + chans[None, :] * sgc,
                                  mask=m, other=0.0).to(ACC)
                if HAS_BE:
                    sr = _src_index(r, b_scale_h, bh).to(tl.int64)
                    bet = tl.load(bb + sr * sbh + sc_b[:, None] * sbw + chans[None, :] * sbc,
                                  mask=m, other=0.0).to(ACC)
                xhat, a, p = _gn_terms(x, mean, rstd, w, b, gam, bet, HAS_W, HAS_B, HAS_G, HAS_BE)
                if SILU:
                    dp = dp * _silu_grad(p)
                dp = tl.where(m, dp, 0.0)
                if STATS:
                    da = dp
                    if HAS_G:
                        da = da * gam
                    acc1 += da
                    acc2 += tl.where(m, da * xhat, 0.0)
                if MODE == 1:
                    if WANT_DG:
                        tl.store(dgb + r64 * ogi + cols[:, None] * ogj + chans[None, :] * ogc,
                                 (dp * a).to(dg_ptr.dtype.element_ty), mask=m)
                    if WANT_DB:
                        tl.store(dbb + r64 * obi + cols[:, None] * obj + chans[None, :] * obc,
                                 dp.to(db_ptr.dtype.element_ty), mask=m)
                if MODE >= 2:
                    if WANT_DG:
                        accg += tl.where(m, dp * a, 0.0)
                    if WANT_DB:
                        accb += dp
        if MODE == 2:
            # the unit is exactly one low-res column: reduce the tile's columns into it
            if WANT_DG:
                tl.store(dgb + i * ogi + ks * ogk + u * ogj + chans * ogc,
                         tl.sum(accg, axis=0).to(dg_ptr.dtype.element_ty), mask=chm)
            if WANT_DB:
                tl.store(dbb + i * obi + ks * obk + u * obj + chans * obc,
                         tl.sum(accb, axis=0).to(db_ptr.dtype.element_ty), mask=chm)
        if MODE == 3:
            cols = cs + wc
            m = (cols < ce)[:, None] & chm[None, :]
            if WANT_DG:
                tl.store(dgb + i * ogi + ks * ogk + cols[:, None] * ogj + chans[None, :] * ogc,
                         accg.to(dg_ptr.dtype.element_ty), mask=m)
            if WANT_DB:
                tl.store(dbb + i * obi + ks * obk + cols[:, None] * obj + chans[None, :] * obc,
                         accb.to(db_ptr.dtype.element_ty), mask=m)
    if STATS:
        po = n64 * p_sn + chans * p_sc + (k * NJB + jb).to(tl.int64) * p_sk
        tl.store(p1_ptr + po, tl.sum(acc1, axis=0), mask=chm)
        tl.store(p2_ptr + po, tl.sum(acc2, axis=0), mask=chm)


# ----------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------
def _np2(v: int) -> int:
    return triton.next_power_of_2(max(1, int(v)))


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
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _target_programs(x: Tensor) -> int:
    sms = _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device()) \
        if x.is_cuda else 4
    return sms * _TUNE["programs_per_sm"]


def _acc_types(x: Tensor):
    if x.dtype == torch.float64:
        return torch.float64, tl.float64
    return torch.float32, tl.float32


def _is_channels_last(x: Tensor) -> bool:
    if x.is_contiguous():
        return False
    if x.is_contiguous(memory_format=torch.channels_last):
        return True
    raise ValueError(
        f"x must be dense NCHW or dense channels_last, got shape {tuple(x.shape)} strides {x.stride()}"
    )


@functools.cache
def _scale(src: int, dst: int) -> float:
    """float32(src) / float32(dst) as F.interpolate computes it; exactly representable in fp32."""
    return (torch.tensor(float(src), dtype=torch.float32) / torch.tensor(float(dst), dtype=torch.float32)).item()


@functools.lru_cache(maxsize=64)
def _eps_parts(eps: float) -> tuple[float, float]:
    """eps = hi + lo with hi its fp32 rounding: kernels take float arguments as fp32."""
    hi = torch.tensor(eps, dtype=torch.float32).item()
    return hi, float(eps) - hi


_TABLES: dict = {}


def _cell_starts(src: int, dst: int, device: torch.device) -> tuple[Tensor, int]:
    """int32 table t of length src+1: destination positions [t[i], t[i+1]) read source i under
    nearest upsampling (the map is monotone, so each source cell is a contiguous run); and the
    largest run. Computed once per (src, dst, device) on the CPU with F.interpolate itself."""
    key = ("cells", src, dst, device)
    hit = _TABLES.get(key)
    if hit is None:
        probe = torch.arange(src, dtype=torch.float32).view(1, 1, src, 1)
        idx = F.interpolate(probe, size=(dst, 1), mode="nearest").view(dst).long()
        starts = torch.searchsorted(idx, torch.arange(src + 1, dtype=torch.long))
        hit = (starts.to(torch.int32).to(device), int((starts[1:] - starts[:-1]).max()))
        _TABLES[key] = hit
    return hit


def _row_blocks(H: int, rb: int, device: torch.device) -> Tensor:
    """int32 table [0, rb, 2rb, ..., H]: plain row ranges when no block sum fixes them."""
    key = ("rows", H, rb, device)
    hit = _TABLES.get(key)
    if hit is None:
        hit = torch.tensor(list(range(0, H, rb)) + [H], dtype=torch.int32).to(device)
        _TABLES[key] = hit
    return hit


def _lowres_args(t: Tensor | None, H: int, W: int, like: Tensor):
    """(tensor or dummy, h, w, scale_h, scale_w, 4 strides) for gamma/beta."""
    if t is None:
        return (like, 1, 1, 1.0, 1.0, 0, 0, 0, 0)
    h, w = t.shape[-2:]
    return (t, h, w, _scale(h, H), _scale(w, W), *t.stride())


def _check_layout(x: Tensor, num_groups: int) -> tuple[int, int, int, int, int]:
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    N, C, H, W = x.shape
    if N * C * H * W == 0:
        raise ValueError("empty x is handled by the op, not the triton backend")
    if C % num_groups != 0:
        raise ValueError(f"num_groups={num_groups} must divide C={C}")
    return N, C, H, W, C // num_groups


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
    for fp64 x). Three launches: chunked statistics, the per-group merge, the apply sweep."""
    N, C, H, W, CPG = _check_layout(x, num_groups)
    G = num_groups
    HW = H * W
    cl = _is_channels_last(x)
    acc_t, ACC = _acc_types(x)
    dev = x.device
    mean = torch.empty((N, G), dtype=acc_t, device=dev)
    rstd = torch.empty((N, G), dtype=acc_t, device=dev)
    target = _target_programs(x)
    tile = _TUNE["tile"]
    eps_hi, eps_lo = _eps_parts(eps)

    # ---- statistics partials + merge
    if not cl:
        L = CPG * HW
        BLOCK = min(_np2(L), tile)
        S = max(1, min(_cdiv(target, N * G), _cdiv(L, _TUNE["min_iters"] * BLOCK)))
        CHUNK = _cdiv(_cdiv(L, S), BLOCK) * BLOCK
        S = _cdiv(L, CHUNK)
        pmean = torch.empty((N, G, S), dtype=acc_t, device=dev)
        pm2 = torch.empty((N, G, S), dtype=acc_t, device=dev)
        _stats_nchw_kernel[(N * G, S)](x, pmean, pm2, L, CHUNK, S, BLOCK=BLOCK, ACC=ACC,
                                       num_warps=_warps(BLOCK))
        J, p_n, p_g, p_s, p_j, extent = 1, G * S, S, 1, 0, L
        x_sn, x_sg = C * HW, L
    else:
        BLOCK_C = min(_np2(C), 128)
        BLOCK_P = max(1, min(_np2(HW), tile // BLOCK_C))
        NCB = _cdiv(C, BLOCK_C)
        S = max(1, min(_cdiv(target, N * NCB), _cdiv(HW, _TUNE["min_iters"] * BLOCK_P)))
        CHUNK = _cdiv(_cdiv(HW, S), BLOCK_P) * BLOCK_P
        S = _cdiv(HW, CHUNK)
        pmean = torch.empty((N, S, C), dtype=acc_t, device=dev)
        pm2 = torch.empty((N, S, C), dtype=acc_t, device=dev)
        _stats_cl_kernel[(N, S, NCB)](x, pmean, pm2, HW, C, CPG, CHUNK, S, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C,
                                      ACC=ACC, num_warps=_warps(BLOCK_P * BLOCK_C))
        J, p_n, p_g, p_s, p_j, extent = CPG, S * C, CPG, C, 1, HW
        x_sn, x_sg = HW * C, CPG
    BLOCK_J = _np2(J)
    BLOCK_S = max(1, min(_np2(S), 1024 // BLOCK_J))
    _merge_stats_kernel[(N * G,)](x, pmean, pm2, mean, rstd, G, S, J, x_sn, x_sg, p_n, p_g, p_s, p_j,
                                  CHUNK, extent,
                                  eps_hi, eps_lo, BLOCK_S=BLOCK_S, BLOCK_J=BLOCK_J, ACC=ACC,
                                  num_warps=_warps(BLOCK_S * BLOCK_J))

    # ---- apply
    y = torch.empty_like(x)
    _launch_apply(x, None, y, weight, bias, gamma, beta, mean, rstd, None, None, G, silu, cl, ACC)
    return y, mean, rstd


def _launch_apply(x, dy, out, weight, bias, gamma, beta, mean, rstd, m1, m2, G, silu, cl, ACC):
    N, C, H, W = x.shape
    CPG = C // G
    bwd = dy is not None
    tile = _TUNE["tile"]
    g_args = _lowres_args(gamma, H, W, x)
    # beta only shapes the pre-activation; dx needs it only through act'(p)
    load_beta = beta is not None and (silu or not bwd)
    b_args = _lowres_args(beta if load_beta else None, H, W, x)
    d = dy if bwd else x
    common = (
        x, d, out,
        x if weight is None else weight, x if bias is None else bias,
        g_args[0], b_args[0], mean, rstd,
        mean if m1 is None else m1, mean if m2 is None else m2,
        C, G, CPG, H, W,
        *x.stride(), *d.stride(), *out.stride(),
        *g_args[1:], *b_args[1:],
    )
    flags = {"HAS_W": weight is not None, "HAS_B": bias is not None, "HAS_G": gamma is not None,
             "HAS_BE": load_beta, "SILU": bool(silu), "BWD": bwd, "ACC": ACC}
    if not cl:
        BLOCK_W = min(_np2(W), max(tile, 16))
        BLOCK_H = max(1, min(_np2(H), tile // BLOCK_W))
        grid = (N * C, _cdiv(H, BLOCK_H), _cdiv(W, BLOCK_W))
        _apply_nchw_kernel[grid](*common, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W,
                                 num_warps=_warps(BLOCK_H * BLOCK_W), **flags)
    else:
        BLOCK_C = min(_np2(C), 128, max(tile, 1))
        BLOCK_W = max(1, min(_np2(W), tile // BLOCK_C))
        grid = (N * H, _cdiv(W, BLOCK_W), _cdiv(C, BLOCK_C))
        _apply_cl_kernel[grid](*common, BLOCK_W=BLOCK_W, BLOCK_C=BLOCK_C,
                               num_warps=_warps(BLOCK_W * BLOCK_C), **flags)


def _reduce_plan(lowres: tuple[int, int] | None, H: int, W: int, rows_target: int, device):
    """How the reduction pass cuts rows and columns for one block-sum grid (see MODE above)."""
    if lowres is None or tuple(lowres) == (H, W):
        mode = 0 if lowres is None else 1
        rb = max(1, min(H, rows_target))
        return {"mode": mode, "row_tab": _row_blocks(H, rb, device), "cells_h": _cdiv(H, rb), "KS": 1,
                "L_ROWS": rb, "col_tab": None, "cells_w": 0, "max_cw": 1}
    h, w = lowres
    row_tab, max_rows = _cell_starts(h, H, device)
    KS = max(1, _cdiv(max_rows, rows_target))
    L_ROWS = _cdiv(max_rows, KS)
    if w == W:
        return {"mode": 3, "row_tab": row_tab, "cells_h": h, "KS": KS, "L_ROWS": L_ROWS, "col_tab": None,
                "cells_w": W, "max_cw": 1}
    col_tab, max_cw = _cell_starts(w, W, device)
    return {"mode": 2, "row_tab": row_tab, "cells_h": h, "KS": KS, "L_ROWS": L_ROWS, "col_tab": col_tab,
            "cells_w": w, "max_cw": max_cw}


def _blocksum_out(t: Tensor, plan, acc_t):
    """Where a launch writes dgamma/dbeta: straight into the result, or fp32 row-piece partials
    (N, C, h, KS, w) when tall cells were split (summed over KS on the host afterwards)."""
    if plan["mode"] in (0, 1) or plan["KS"] == 1:
        out = torch.empty_like(t)
        s = out.stride()
        return out, out, (s[0], s[1], s[2], 0, s[3])
    N, C, h, w = t.shape
    KS = plan["KS"]
    if t.is_contiguous() or not t.is_contiguous(memory_format=torch.channels_last):
        buf = torch.empty((N, C, h, KS, w), dtype=acc_t, device=t.device)
    else:  # keep channels innermost, as the kernel writes channel runs
        buf = torch.empty((N, h, KS, w, C), dtype=acc_t, device=t.device).permute(0, 4, 1, 2, 3)
    return buf, None, tuple(buf.stride())


def _launch_reduce(x, dy, weight, bias, gamma, beta, mean, rstd, G, silu, cl, ACC, acc_t,
                   plan, stats, want_dg, want_db):
    N, C, H, W = x.shape
    CPG = C // G
    dev = x.device
    mode = plan["mode"]
    # the reduction keeps four accumulators per tile element: half the elementwise tile
    tile_r = max(1, _TUNE["tile"] // 2)
    g_args = _lowres_args(gamma, H, W, x)
    load_beta = beta is not None and silu  # beta matters to the backward only through act'(p)
    b_args = _lowres_args(beta if load_beta else None, H, W, x)
    K = plan["cells_h"] * plan["KS"]
    row_tab = plan["row_tab"]
    col_tab = plan["col_tab"] if plan["col_tab"] is not None else row_tab

    dg_buf = dg_res = db_buf = db_res = None
    og = ob = (0, 0, 0, 0, 0)
    if want_dg:
        dg_buf, dg_res, og = _blocksum_out(gamma, plan, acc_t)
    if want_db:
        db_buf, db_res, ob = _blocksum_out(beta, plan, acc_t)

    if not cl:
        if mode == 2:
            max_cw = plan["max_cw"]
            # up to CPB low-res columns per sub-block, their high-res columns spanning at most
            # `seg`; a single low-res column wider than BLOCK_W is walked in sub-blocks
            seg = max(2, tile_r // 8)
            CPB = min(32, _prev_pow2(max(1, seg // max_cw)), _np2(plan["cells_w"]))
            BLOCK_W = min(_np2(CPB * max_cw), max(1, tile_r // 4)) if CPB == 1 else _np2(CPB * max_cw)
            nunits = _cdiv(plan["cells_w"], CPB)
        else:
            CPB = 1
            BLOCK_W = min(_np2(W), 256)
            nunits = _cdiv(W, BLOCK_W)
        BLOCK_H = max(1, min(_np2(plan["L_ROWS"]), tile_r // BLOCK_W))
        if stats:
            p1 = torch.empty((N, C, K), dtype=acc_t, device=dev)
            p2 = torch.empty((N, C, K), dtype=acc_t, device=dev)
            psn, psc, psk = C * K, K, 1
        else:
            p1 = p2 = mean
            psn = psc = psk = 0
        _bwd_reduce_nchw_kernel[(N * C, K)](
            x, dy, x if weight is None else weight, x if bias is None else bias, g_args[0], b_args[0],
            mean, rstd, p1, p2, x if dg_buf is None else dg_buf, x if db_buf is None else db_buf,
            row_tab, col_tab, C, G, CPG, H, W, *x.stride(), *dy.stride(), *g_args[1:], *b_args[1:],
            plan["KS"], plan["L_ROWS"], nunits, plan["cells_w"], psn, psc, psk, *og, *ob,
            MODE=mode, STATS=stats, WANT_DG=want_dg, WANT_DB=want_db,
            HAS_W=weight is not None, HAS_B=bias is not None, HAS_G=gamma is not None,
            HAS_BE=load_beta, SILU=bool(silu), CPB=CPB, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, ACC=ACC,
            num_warps=_warps_reduce(BLOCK_H * BLOCK_W),
        )
        parts = None if not stats else (p1.sum(-1), p2.sum(-1))
    else:
        BLOCK_C = min(_np2(C), _TUNE["max_block_c"])
        if mode == 2:
            # a unit is one low-res column; wider ones are walked in BLOCK_W sub-blocks
            BLOCK_W = max(1, min(_np2(plan["max_cw"]), tile_r // BLOCK_C))
            nunits = plan["cells_w"]
            unit_cols = max(1, W // plan["cells_w"])
        else:
            BLOCK_W = max(1, min(_np2(W), tile_r // BLOCK_C))
            nunits = _cdiv(W, BLOCK_W)
            unit_cols = BLOCK_W
        upp = max(1, _TUNE["program_elems"] // (plan["L_ROWS"] * unit_cols * BLOCK_C))
        upp = min(upp, nunits)
        NJB = _cdiv(nunits, upp)
        NCB = _cdiv(C, BLOCK_C)
        if stats:
            p1 = torch.empty((N, K * NJB, C), dtype=acc_t, device=dev)
            p2 = torch.empty((N, K * NJB, C), dtype=acc_t, device=dev)
            psn, psc, psk = K * NJB * C, 1, C
        else:
            p1 = p2 = mean
            psn = psc = psk = 0
        _bwd_reduce_cl_kernel[(N * K, NJB, NCB)](
            x, dy, x if weight is None else weight, x if bias is None else bias, g_args[0], b_args[0],
            mean, rstd, p1, p2, x if dg_buf is None else dg_buf, x if db_buf is None else db_buf,
            row_tab, col_tab, C, G, CPG, H, W, *x.stride(), *dy.stride(), *g_args[1:], *b_args[1:],
            K, plan["KS"], plan["L_ROWS"], nunits, upp, NJB, psn, psc, psk, *og, *ob,
            MODE=mode, STATS=stats, WANT_DG=want_dg, WANT_DB=want_db,
            HAS_W=weight is not None, HAS_B=bias is not None, HAS_G=gamma is not None,
            HAS_BE=load_beta, SILU=bool(silu), BLOCK_W=BLOCK_W, BLOCK_C=BLOCK_C, ACC=ACC,
            num_warps=_warps_reduce(BLOCK_W * BLOCK_C),
        )
        parts = None if not stats else (p1.sum(1), p2.sum(1))

    def finish(buf, res, t):
        if buf is None:
            return None
        if res is not None:
            return res
        fmt = torch.channels_last if (not t.is_contiguous() and
                                      t.is_contiguous(memory_format=torch.channels_last)) \
            else torch.contiguous_format
        return buf.sum(3).to(t.dtype).contiguous(memory_format=fmt)

    return parts, finish(dg_buf, dg_res, gamma), finish(db_buf, db_res, beta)


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
    its input exists. dx like x; dweight/dbias fp32 (fp64 for fp64 x); dgamma/dbeta at gamma's /
    beta's own (low) resolution, dtype and layout. Recomputes xhat from x and mean/rstd."""
    N, _, H, W, CPG = _check_layout(x, num_groups)
    G = num_groups
    cl = _is_channels_last(x)
    acc_t, ACC = _acc_types(x)
    want = [bool(m) and t is not None for m, t in zip(mask, (x, weight, bias, gamma, beta))]
    want_dx, want_dw, want_dbias, want_dg, want_dbe = want
    stats = want_dx or want_dw or want_dbias
    mean = mean.contiguous()
    rstd = rstd.contiguous()
    # rows per reduction program: NCHW programs cover whole rows (all W columns); channels_last
    # programs also split the columns, so they keep a few rows and grow along W instead
    rows_target = min(max(1, _TUNE["program_elems"] // W), 64) if not cl else _TUNE["cl_rows"]

    # One reduction launch per distinct block-sum grid: gamma and beta share one when their
    # shapes agree (the usual case); a differing beta gets a second, block-sum-only launch.
    launches = []
    if want_dg and want_dbe and tuple(gamma.shape[-2:]) != tuple(beta.shape[-2:]):
        launches.append((tuple(gamma.shape[-2:]), stats, True, False))
        launches.append((tuple(beta.shape[-2:]), False, False, True))
    elif want_dg or want_dbe:
        lowres = tuple((gamma if want_dg else beta).shape[-2:])
        launches.append((lowres, stats, want_dg, want_dbe))
    elif stats:
        launches.append((None, True, False, False))

    parts = dgamma = dbeta = None
    for lowres, st, wg, wb in launches:
        plan = _reduce_plan(lowres, H, W, rows_target, x.device)
        p, dg, db = _launch_reduce(x, dy, weight, bias, gamma, beta, mean, rstd, G, silu, cl, ACC,
                                   acc_t, plan, st, wg, wb)
        parts = p if p is not None else parts
        dgamma = dg if dg is not None else dgamma
        dbeta = db if db is not None else dbeta

    dx = dweight = dbias = None
    if stats:
        s1, s2 = parts  # (N, C) sums of da and da*xhat, in a fixed order
        if want_dbias:
            dbias = s1.sum(0)
        if want_dw:
            dweight = s2.sum(0)
        if want_dx:
            if weight is not None:
                wv = weight.to(acc_t)
                s1 = s1 * wv
                s2 = s2 * wv
            cnt = float(CPG * H * W)
            m1 = (s1.view(N, G, CPG).sum(-1) / cnt).contiguous()
            m2 = (s2.view(N, G, CPG).sum(-1) / cnt).contiguous()
            dx = torch.empty_like(x)
            _launch_apply(x, dy, dx, weight, bias, gamma, beta, mean, rstd, m1, m2, G, silu, cl, ACC)
    return dx, dweight, dbias, dgamma, dbeta
