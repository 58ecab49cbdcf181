"""Device helpers shared by every GroupNorm-family kernel (NCHW and channels_last alike).

The tile math lives here once: the nearest-upsampling source index, the normalised value and the
pre-activation, the activation and its derivative, the dx formula, the backward reduction's row
ranges and per-tile terms, and the fixed-order merge of (mean, M2) partials. Kernels differ only
in how they walk memory.
"""

from __future__ import annotations

import triton
import triton.language as tl

# How the backward reduction relates its tiles to dgamma/dbeta (``MODE`` of the reduce kernels).
BLOCKSUM_NONE = tl.constexpr(0)  # no gamma/beta gradient: only the dweight/dbias/dx partials
BLOCKSUM_FULL = tl.constexpr(1)  # full-resolution gamma/beta: dgamma/dbeta stored from the tile
BLOCKSUM_CELLS = tl.constexpr(2)  # low-res rows and columns: cell sums by column segment
BLOCKSUM_ROWS = tl.constexpr(3)  # low-res rows, full-res columns: a column's row sum is its cell


@triton.jit
def src_index(dst, scale, src_size):
    """Nearest source index, ``F.interpolate(mode="nearest")``'s rule: the product is an fp32
    multiply of the fp32 destination index by the fp32 scale, truncated (= floor, both >= 0)."""
    return tl.minimum((tl.cast(dst, tl.float32) * scale).to(tl.int32), src_size - 1)


@triton.jit
def gn_terms(
    x, mean, rstd, w, b, gam, bet, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_G: tl.constexpr, HAS_BE: tl.constexpr
):
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
def activate(p, SILU: tl.constexpr):
    if SILU:
        return p * tl.sigmoid(p)
    return p


@triton.jit
def silu_grad(p):
    """d silu(p) / dp = s * (1 + p * (1 - s)), s = sigmoid(p); finite for every finite p."""
    s = tl.sigmoid(p)
    return s * (1.0 + p * (1.0 - s))


@triton.jit
def dx_value(dp, p, xhat, gam, w, rstd, m1, m2, SILU: tl.constexpr, HAS_G: tl.constexpr, HAS_W: tl.constexpr):
    """dx = rstd * (dxhat - m1 - xhat * m2), dxhat = dy * act'(p) * gamma * weight; m1, m2 are the
    group means of dxhat and dxhat * xhat."""
    if SILU:
        dp = dp * silu_grad(p)
    dxh = dp
    if HAS_G:
        dxh = dxh * gam
    if HAS_W:
        dxh = dxh * w
    return rstd * (dxh - m1 - xhat * m2)


@triton.jit
def row_range(row_tab, k, KS, L_ROWS):
    """Row range k of a backward reduction: piece ``k % KS`` of row-table entry ``i = k // KS``
    (a low-res row's high-res rows, or a plain row block); returns (i, piece, r0, r1)."""
    i = k // KS
    ks = k % KS
    rs = tl.load(row_tab + i)
    re = tl.load(row_tab + i + 1)
    r0 = rs + ks * L_ROWS
    r1 = tl.minimum(r0 + L_ROWS, re)
    return i, ks, r0, r1


@triton.jit
def reduce_terms(
    x,
    dp,
    m,
    mean,
    rstd,
    w,
    b,
    gam,
    bet,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_G: tl.constexpr,
    HAS_BE: tl.constexpr,
    SILU: tl.constexpr,
):
    """A backward-reduction tile's terms from x and dy (``dp`` on entry): dp = dy * act'(p) (0
    outside the mask m), the affine output a, da = dp * gamma and da * xhat (0 outside m).
    dgamma sums dp * a, dbeta dp; the dx and dweight/dbias partials sum da and da * xhat."""
    xhat, a, p = gn_terms(x, mean, rstd, w, b, gam, bet, HAS_W, HAS_B, HAS_G, HAS_BE)
    if SILU:
        dp = dp * silu_grad(p)
    dp = tl.where(m, dp, 0.0)
    da = dp
    if HAS_G:
        da = da * gam
    return dp, a, da, tl.where(m, da * xhat, 0.0)


@triton.jit
def merge_partials(
    pmean_ptr, pm2_ptr, grp, S, PCH, NPIX, CPG, BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, ACC: tl.constexpr
):
    """Mean offset and variance of the groups ``grp`` (BLOCK_G group indices, -1 = none) from their S
    chunk partials, Chan's formula in a fixed order (so every program that merges a group gets
    the same bits): d = sum(n_s m_s) / n, var = sum(M2_s + n_s (m_s - d)^2) / n.

    Partial s of group q sits at q*S + s and covers CPG channels of pixels [s*PCH, min(+PCH, NPIX)).
    Means are relative to the group's shift; the caller adds it back.
    """
    ss = tl.arange(0, BLOCK_S)
    base = grp.to(tl.int64)[:, None] * S
    acc_d = tl.zeros([BLOCK_G, BLOCK_S], dtype=ACC)
    acc_n = tl.zeros([BLOCK_G, BLOCK_S], dtype=ACC)
    for s0 in range(0, S, BLOCK_S):
        sv = s0 + ss
        m = (sv < S)[None, :] & (grp >= 0)[:, None]
        cnt = tl.cast(tl.minimum(NPIX - sv * PCH, PCH) * CPG, ACC)[None, :]
        pm = tl.load(pmean_ptr + base + sv[None, :], mask=m, other=0.0).to(ACC)
        acc_d += tl.where(m, cnt * pm, 0.0)
        acc_n += tl.where(m, cnt, 0.0)
    total = tl.maximum(tl.sum(acc_n, axis=1), 1.0)  # masked groups (grp < 0) have no partials
    d = tl.sum(acc_d, axis=1) / total
    acc_m2 = tl.zeros([BLOCK_G, BLOCK_S], dtype=ACC)
    for s0 in range(0, S, BLOCK_S):
        sv = s0 + ss
        m = (sv < S)[None, :] & (grp >= 0)[:, None]
        cnt = tl.cast(tl.minimum(NPIX - sv * PCH, PCH) * CPG, ACC)[None, :]
        pm = tl.load(pmean_ptr + base + sv[None, :], mask=m, other=0.0).to(ACC)
        q = tl.load(pm2_ptr + base + sv[None, :], mask=m, other=0.0).to(ACC)
        dlt = pm - d[:, None]
        acc_m2 += tl.where(m, q + cnt * dlt * dlt, 0.0)
    return d, tl.sum(acc_m2, axis=1) / total
