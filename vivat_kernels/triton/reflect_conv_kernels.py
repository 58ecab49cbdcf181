"""Triton kernels of the reflect-padded conv2d: implicit GEMM with a reflecting loader.

Launched by :mod:`.reflect_conv` (tile sizes, flags, grids, the weight re-layout).

``y = conv2d(pad_reflect(x, (left, right, top, bottom)), w, b, stride)`` without the padded
tensor: an output position (oy, ox) and tap (ky, kx) read x at the mirrored row and column
``r(i) = (L-1) - |(L-1) - |i||`` of ``i = oy*stride - top + ky`` (resp. ``ox*stride - left + kx``),
computed once per tap for the whole tile, so every address is in range and nothing is masked to 0.

Three kernels, each in two modes:

* **dense** (``LIST=False``): the whole op. ``fwd`` writes y; ``dgrad`` writes the part of dx
  that reaches each input position through its own padded position; ``wgrad`` writes per-split
  partial sums of dweight (summed afterwards in a fixed order).
* **list** (``LIST=True``): only the border terms, over an int32 (P, 2) list of positions.
  ``fwd`` adds, at the listed outputs, the taps that read padding (every tap for "uncovered"
  outputs: rows >= HO_COV or cols >= WO_COV); ``dgrad`` adds, at the listed inputs, what reaches
  them through a mirrored padding position (and through their own position from uncovered
  outputs); ``wgrad`` writes dweight's border terms. The "border" design adds these to a
  zero-padded library conv (cuDNN); the implicit-GEMM design uses list-mode ``dgrad`` for the
  mirrored part of dx.

Layouts: every tensor is addressed through its strides, so NCHW and channels_last run without
copies (the weight is re-laid out per call into a GEMM-friendly (KH, KW, C, CO) / (KH, KW, CO, C)
copy, weight-sized). dtypes: float32, float16, bfloat16 (float64 too, without tensor cores);
accumulation in float32 (float64 for float64). Dense forward and dgrad with channel counts that
are multiples of BLOCK_K run one flattened, software-pipelined loop over (tap, channel block).

Thin RGB convs (C_in or C_out = 3, where a 16-wide ``tl.dot`` tile does not fit the data): on GPU
they use ``tl.dot`` with the thin side padded to 16 by masking (measured faster on H200 than the
alternative, 2.2 ms -> 0.39 ms for the 128->3 conv at 512^2); the broadcast-multiply-sum path
(``USE_DOT=False``) serves float64 on GPU and the thin convs under the interpreter. All offsets are
int64. No atomics: every output element is written by one program and every sum runs in a fixed
order, so results are bitwise reproducible.

Bytes (forward, dense): x is read once per output-channel tile and per tap through the cache,
w once per position tile, y written once: ~ (N*C*H*W + N*CO*HO*WO) * s from DRAM when the tap
re-reads hit L2. Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (low-precision
tiles are upcast to float32 there, as the interpreter has no bf16 arithmetic).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _reflect(i, L):
    # Mirror i into [0, L) without reflecting the edge sample; exact for -(L-1) <= i <= 2(L-1).
    return (L - 1) - tl.abs((L - 1) - tl.abs(i))


@triton.jit
def _mma(acc, a, b, USE_DOT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc[M, N] += a[M, K] @ b[K, N] (tensor cores when USE_DOT, else multiply + sum)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if USE_DOT:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        acc += tl.sum(a[:, :, None].to(acc.dtype) * b[None, :, :].to(acc.dtype), axis=1)
    return acc


@triton.jit
def _acc_zeros(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC_F64: tl.constexpr):
    """The [BLOCK_M, BLOCK_N] accumulator: float64 for float64 operands, else float32."""
    if ACC_F64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    return acc


@triton.jit
def _positions(pos_ptr, offs, mask, width, LIST: tl.constexpr):
    """(row, column) of the positions ``offs``: read from the int32 (P, 2) list in list mode,
    else the flat index split by the row width."""
    if LIST:
        row = tl.load(pos_ptr + 2 * offs, mask=mask, other=0)
        col = tl.load(pos_ptr + 2 * offs + 1, mask=mask, other=0)
    else:
        row = offs // width
        col = offs % width
    return row, col


@triton.jit
def reflect_conv2d_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    pos_ptr,
    C,
    H,
    W,
    CO,
    HO,
    WO,
    HO_COV,
    WO_COV,
    P,
    PAD_T,
    PAD_L,
    sxn,
    sxc,
    sxh,
    sxw,
    swo,
    swc,
    swh,
    sww,
    syn,
    syc,
    syh,
    syw,
    STRIDE: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    LIST: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    FLAT: tl.constexpr,
    USE_DOT: tl.constexpr,
    UPCAST: tl.constexpr,
    ACC_F64: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Tile = BLOCK_M output positions of image n x BLOCK_N output channels; K = taps x C.

    FLAT (dense mode, C a multiple of BLOCK_K): one loop over (tap, channel block), so the
    software pipeline spans all taps; otherwise a loop per tap (list mode skips unused taps).
    """
    pid_m = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    pid_n = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < P
    oy, ox = _positions(pos_ptr, offs_m, mask_m, WO, LIST)
    if LIST:
        uncovered = (oy >= HO_COV) | (ox >= WO_COV)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < CO
    offs_k = tl.arange(0, BLOCK_K)
    acc = _acc_zeros(BLOCK_M, BLOCK_N, ACC_F64)
    x_img = x_ptr + n * sxn
    if FLAT:
        blocks_per_tap = C // BLOCK_K
        for it in range(KH * KW * blocks_per_tap):
            tap = it // blocks_per_tap
            c0 = (it % blocks_per_tap) * BLOCK_K
            ky = tap // KW
            kx = tap % KW
            iy = _reflect(oy * STRIDE - PAD_T + ky, H)
            ix = _reflect(ox * STRIDE - PAD_L + kx, W)
            cc = c0 + offs_k
            a = tl.load(
                x_img + (iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw)[:, None] + cc[None, :].to(tl.int64) * sxc,
                mask=mask_m[:, None],
                other=0.0,
            )
            b = tl.load(
                w_ptr + ky * swh + kx * sww + cc[:, None].to(tl.int64) * swc + offs_n[None, :].to(tl.int64) * swo,
                mask=mask_n[None, :],
                other=0.0,
            )
            acc = _mma(acc, a, b, USE_DOT, UPCAST, PRECISION)
    else:
        for ky in tl.static_range(KH):
            iy_raw = oy * STRIDE - PAD_T + ky
            iy = _reflect(iy_raw, H)
            row_pad = (iy_raw < 0) | (iy_raw >= H)
            for kx in tl.static_range(KW):
                ix_raw = ox * STRIDE - PAD_L + kx
                ix = _reflect(ix_raw, W)
                if LIST:
                    use = mask_m & (row_pad | (ix_raw < 0) | (ix_raw >= W) | uncovered)
                else:
                    use = mask_m
                if tl.max(use.to(tl.int32), axis=0) > 0:
                    x_sp = x_img + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw
                    w_tap = w_ptr + ky * swh + kx * sww
                    for c0 in range(0, C, BLOCK_K):
                        cc = c0 + offs_k
                        mask_c = cc < C
                        a = tl.load(
                            x_sp[:, None] + cc[None, :].to(tl.int64) * sxc,
                            mask=use[:, None] & mask_c[None, :],
                            other=0.0,
                        )
                        b = tl.load(
                            w_tap + cc[:, None].to(tl.int64) * swc + offs_n[None, :].to(tl.int64) * swo,
                            mask=mask_c[:, None] & mask_n[None, :],
                            other=0.0,
                        )
                        acc = _mma(acc, a, b, USE_DOT, UPCAST, PRECISION)
    y_ptrs = (
        y_ptr + n * syn + (oy.to(tl.int64) * syh + ox.to(tl.int64) * syw)[:, None] + offs_n[None, :].to(tl.int64) * syc
    )
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(acc.dtype)
    if LIST:
        if HAS_BIAS:
            acc += tl.where(uncovered[:, None], bias[None, :], 0.0)
        acc += tl.load(y_ptrs, mask=mask, other=0.0).to(acc.dtype)
    else:
        if HAS_BIAS:
            acc += bias[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def reflect_conv2d_dgrad_kernel(
    dy_ptr,
    w_ptr,
    dx_ptr,
    pos_ptr,
    C,
    H,
    W,
    CO,
    HO,
    WO,
    HO_COV,
    WO_COV,
    P,
    PAD_T,
    PAD_B,
    PAD_L,
    PAD_R,
    sdn,
    sdc,
    sdh,
    sdw,
    swo,
    swc,
    swh,
    sww,
    sxn,
    sxc,
    sxh,
    sxw,
    STRIDE: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    LIST: tl.constexpr,
    NCAND: tl.constexpr,
    FLAT: tl.constexpr,
    USE_DOT: tl.constexpr,
    UPCAST: tl.constexpr,
    ACC_F64: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Tile = BLOCK_M input positions of image n x BLOCK_N input channels; K = taps x CO.

    Input row h sits at padded row h + top (candidate 0), and its mirrors at top - h (candidate 1,
    for 1 <= h <= top) and 2(H-1) - h + top (candidate 2, for H-1-bottom <= h <= H-2); the same
    for columns. Dense mode takes candidate (0, 0) only; list mode takes the mirrored ones, plus
    (0, 0) from uncovered outputs.
    """
    pid_m = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    pid_n = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < P
    h, w = _positions(pos_ptr, offs_m, mask_m, W, LIST)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < C
    offs_k = tl.arange(0, BLOCK_K)
    acc = _acc_zeros(BLOCK_M, BLOCK_N, ACC_F64)
    dy_img = dy_ptr + n * sdn
    if FLAT:
        # Dense mode, CO a multiple of BLOCK_K: one pipelined loop over (tap, channel block).
        a = h + PAD_T
        b = w + PAD_L
        blocks_per_tap = CO // BLOCK_K
        for it in range(KH * KW * blocks_per_tap):
            tap = it // blocks_per_tap
            o0 = (it % blocks_per_tap) * BLOCK_K
            ky = tap // KW
            kx = tap % KW
            ty = tl.maximum(a - ky, 0)
            tx = tl.maximum(b - kx, 0)
            py = ty // STRIDE
            px = tx // STRIDE
            valid = (
                mask_m & (a - ky >= 0) & (ty % STRIDE == 0) & (py < HO) & (b - kx >= 0) & (tx % STRIDE == 0) & (px < WO)
            )
            oo = o0 + offs_k
            g = tl.load(
                dy_img + (py.to(tl.int64) * sdh + px.to(tl.int64) * sdw)[:, None] + oo[None, :].to(tl.int64) * sdc,
                mask=valid[:, None],
                other=0.0,
            )
            wt = tl.load(
                w_ptr + ky * swh + kx * sww + oo[:, None].to(tl.int64) * swo + offs_n[None, :].to(tl.int64) * swc,
                mask=mask_n[None, :],
                other=0.0,
            )
            acc = _mma(acc, g, wt, USE_DOT, UPCAST, PRECISION)
    else:
        # Candidates run in a loop (not unrolled) so only the KH x KW tap bodies are compiled.
        for cand in range(NCAND * NCAND):
            cy = cand // NCAND
            cx = cand % NCAND
            a = tl.where(cy == 0, h + PAD_T, tl.where(cy == 1, PAD_T - h, 2 * (H - 1) - h + PAD_T))
            ok_a = (cy == 0) | ((cy == 1) & (h >= 1) & (h <= PAD_T)) | ((cy == 2) & (h <= H - 2) & (h >= H - 1 - PAD_B))
            b = tl.where(cx == 0, w + PAD_L, tl.where(cx == 1, PAD_L - w, 2 * (W - 1) - w + PAD_L))
            ok_b = (cx == 0) | ((cx == 1) & (w >= 1) & (w <= PAD_L)) | ((cx == 2) & (w <= W - 2) & (w >= W - 1 - PAD_R))
            v_ab = mask_m & ok_a & ok_b
            for ky in tl.static_range(KH):
                ty = tl.maximum(a - ky, 0)
                py = ty // STRIDE
                ok_y = (a - ky >= 0) & (ty % STRIDE == 0) & (py < HO)
                for kx in tl.static_range(KW):
                    tx = tl.maximum(b - kx, 0)
                    px = tx // STRIDE
                    valid = v_ab & ok_y & (b - kx >= 0) & (tx % STRIDE == 0) & (px < WO)
                    if LIST:
                        # Through its own position (candidate 0), only uncovered outputs are missing.
                        valid = valid & ((cand != 0) | (py >= HO_COV) | (px >= WO_COV))
                    if tl.max(valid.to(tl.int32), axis=0) > 0:
                        dy_sp = dy_img + py.to(tl.int64) * sdh + px.to(tl.int64) * sdw
                        w_tap = w_ptr + ky * swh + kx * sww
                        for o0 in range(0, CO, BLOCK_K):
                            oo = o0 + offs_k
                            mask_o = oo < CO
                            g = tl.load(
                                dy_sp[:, None] + oo[None, :].to(tl.int64) * sdc,
                                mask=valid[:, None] & mask_o[None, :],
                                other=0.0,
                            )
                            wt = tl.load(
                                w_tap + oo[:, None].to(tl.int64) * swo + offs_n[None, :].to(tl.int64) * swc,
                                mask=mask_o[:, None] & mask_n[None, :],
                                other=0.0,
                            )
                            acc = _mma(acc, g, wt, USE_DOT, UPCAST, PRECISION)
    dx_ptrs = (
        dx_ptr + n * sxn + (h.to(tl.int64) * sxh + w.to(tl.int64) * sxw)[:, None] + offs_n[None, :].to(tl.int64) * sxc
    )
    mask = mask_m[:, None] & mask_n[None, :]
    if LIST:
        acc += tl.load(dx_ptrs, mask=mask, other=0.0).to(acc.dtype)
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def reflect_conv2d_wgrad_kernel(
    dy_ptr,
    x_ptr,
    part_ptr,
    pos_ptr,
    C,
    H,
    W,
    CO,
    HO,
    WO,
    HO_COV,
    WO_COV,
    P,
    TOTAL,
    CHUNKS_PER_SPLIT,
    PAD_T,
    PAD_L,
    sdn,
    sdc,
    sdh,
    sdw,
    sxn,
    sxc,
    sxh,
    sxw,
    STRIDE: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    LIST: tl.constexpr,
    USE_DOT: tl.constexpr,
    UPCAST: tl.constexpr,
    ACC_F64: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Tile = BLOCK_M output channels x BLOCK_N input channels for one tap; K = (n, position).

    Program (tile, tap, split) sums its split's range of positions and writes
    part[split, o, c, ky, kx] (float32/float64, contiguous); the splits are summed afterwards.
    """
    num_n = tl.cdiv(C, BLOCK_N)
    pid_m = tl.program_id(0) // num_n
    pid_n = tl.program_id(0) % num_n
    tap = tl.program_id(1)
    ky = tap // KW
    kx = tap % KW
    split = tl.program_id(2)
    offs_o = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_o = offs_o < CO
    offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_c = offs_c < C
    acc = _acc_zeros(BLOCK_M, BLOCK_N, ACC_F64)
    start = split * CHUNKS_PER_SPLIT * BLOCK_K
    for i in range(CHUNKS_PER_SPLIT):
        offs_t = start + i * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_t = offs_t < TOTAL
        img = (offs_t // P).to(tl.int64)
        pp = offs_t % P
        oy, ox = _positions(pos_ptr, pp, mask_t, WO, LIST)
        iy_raw = oy * STRIDE - PAD_T + ky
        ix_raw = ox * STRIDE - PAD_L + kx
        iy = _reflect(iy_raw, H)
        ix = _reflect(ix_raw, W)
        if LIST:
            use = mask_t & (
                (iy_raw < 0) | (iy_raw >= H) | (ix_raw < 0) | (ix_raw >= W) | (oy >= HO_COV) | (ox >= WO_COV)
            )
        else:
            use = mask_t
        g = tl.load(
            dy_ptr
            + (img * sdn + oy.to(tl.int64) * sdh + ox.to(tl.int64) * sdw)[None, :]
            + offs_o[:, None].to(tl.int64) * sdc,
            mask=mask_o[:, None] & use[None, :],
            other=0.0,
        )
        xt = tl.load(
            x_ptr
            + (img * sxn + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw)[:, None]
            + offs_c[None, :].to(tl.int64) * sxc,
            mask=use[:, None] & mask_c[None, :],
            other=0.0,
        )
        acc = _mma(acc, g, xt, USE_DOT, UPCAST, PRECISION)
    k2 = KH * KW
    out = (
        part_ptr
        + split.to(tl.int64) * CO * C * k2
        + offs_o[:, None].to(tl.int64) * (C * k2)
        + offs_c[None, :] * k2
        + tap
    )
    tl.store(out, acc, mask=mask_o[:, None] & mask_c[None, :])
