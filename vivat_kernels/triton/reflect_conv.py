"""Launchers of the reflect-padded conv2d Triton kernels (:mod:`.reflect_conv_kernels`).

:func:`conv_fwd`, :func:`conv_dgrad` and :func:`conv_wgrad` each run one kernel, dense or over a
border position list (``LIST``), with tile sizes and flags picked here: tensor cores when every
GEMM side is >= 16 wide (and on GPU for the thin RGB convs too, padded by masking), small wide
tiles under the interpreter, smaller tiles for the short border lists, and a position split of
the weight gradient sized to fill the GPU (its partial sums added in a fixed order). The weight is
re-laid out per call into a GEMM-friendly copy, weight-sized; every other tensor is read in place
through its strides, so NCHW and channels_last run without copies.
"""

from __future__ import annotations

import torch
import triton

from .._backend import triton_interpret
from .reflect_conv_kernels import reflect_conv2d_dgrad_kernel, reflect_conv2d_fwd_kernel, reflect_conv2d_wgrad_kernel


def _pow2(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(v), 1))))


def _flags(dtype: torch.dtype, device: torch.device) -> dict:
    interp = device.type == "cpu" and triton_interpret()
    precision = None  # only float32 operands have a choice
    if dtype == torch.float32:
        # Same arithmetic as the cuDNN conv it replaces (TF32 unless the user turned it off).
        precision = "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "ieee"
    return {
        "UPCAST": interp and dtype in (torch.float16, torch.bfloat16),
        "ACC_F64": dtype == torch.float64,
        "PRECISION": precision,
    }


def _gemm_config(m: int, n: int, k: int, dtype: torch.dtype, device: torch.device, *, dot: bool) -> dict:
    """Tile sizes (powers of 2) and launch options for a GEMM tile of m x n with reduction k."""
    if device.type == "cpu":  # interpreter: few, wide programs are the fast way through numpy
        if dot:
            return {"BLOCK_M": _pow2(m, 16, 64), "BLOCK_N": _pow2(n, 16, 64), "BLOCK_K": _pow2(k, 16, 32)}
        return {"BLOCK_M": _pow2(m, 4, 32), "BLOCK_N": _pow2(n, 2, 32), "BLOCK_K": _pow2(k, 2, 16)}
    wide = dtype in (torch.float16, torch.bfloat16)
    if dot:
        bm = 128 if m >= 64 else 64  # few distinct tile shapes: few compilations
        bn = _pow2(n, 16, 128)
        bk = _pow2(k, 16, 64 if wide else 32)
        warps = 8 if bm * bn >= 128 * 128 else 4
        return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": 3}
    # Thin path: the product tile bm x bk x bn lives in registers.
    bn = _pow2(n, 2, 64)
    bm = _pow2(m, 4, 64)
    bk = _pow2(k, 2, max(2, 8192 // (bm * bn)))
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": 4, "num_stages": 2}


def _list_config(cfg: dict, device: torch.device) -> dict:
    """Border lists are short (a few rows of positions): smaller tiles, more programs."""
    if device.type != "cuda":
        return cfg
    return dict(
        cfg, BLOCK_M=min(cfg["BLOCK_M"], 32), BLOCK_N=min(cfg["BLOCK_N"], 64), num_warps=min(cfg.get("num_warps", 4), 4)
    )


def _use_dot(*widths: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Tensor cores when every GEMM side is >= 16 wide. On GPU the thin RGB convs (3 channels) use
    them too, with the tile padded to 16 by masking (faster than the multiply-sum path there);
    the interpreter runs the multiply-sum path for them, float64 on GPU always does."""
    if dtype == torch.float64 and device.type == "cuda":
        return False
    return min(widths) >= 16 or device.type == "cuda"


def _strides(prefix: str, t: torch.Tensor, dims: str = "nchw") -> dict:
    """Keyword arguments ``{prefix}{dim}`` for t's four strides, as the kernels name them."""
    return {prefix + d: s for d, s in zip(dims, t.stride())}


def _geometry(x_shape, w_shape, y_shape, stride, pad4):
    n, c, h, w = x_shape
    co, _, kh, kw = w_shape
    ho, wo = y_shape[-2:]
    left, right, top, bottom = pad4
    return n, c, h, w, co, kh, kw, ho, wo, left, right, top, bottom


def conv_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    stride: int,
    pad4: tuple[int, int, int, int],
    *,
    out_pos: torch.Tensor | None = None,
    cover: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Dense (out_pos None): y = reflect conv, written. List: border terms added to y at out_pos."""
    n, c, h, w, co, kh, kw, ho, wo, left, _, top, _ = _geometry(x.shape, weight.shape, y.shape, stride, pad4)
    listed = out_pos is not None
    p = out_pos.shape[0] if listed else ho * wo
    if n == 0 or p == 0 or co == 0:
        return y
    dot = _use_dot(co, dtype=x.dtype, device=x.device)
    cfg = _gemm_config(p, co, c, x.dtype, x.device, dot=dot)
    if listed:
        cfg = _list_config(cfg, x.device)
    hc, wc = cover if cover is not None else (ho, wo)
    # (KH, KW, C, CO) storage viewed as (CO, C, KH, KW): weight tiles load along contiguous CO.
    wt = weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
    grid = (triton.cdiv(p, cfg["BLOCK_M"]), n, triton.cdiv(co, cfg["BLOCK_N"]))
    reflect_conv2d_fwd_kernel[grid](
        x_ptr=x,
        w_ptr=wt,
        b_ptr=bias if bias is not None else weight,
        y_ptr=y,
        pos_ptr=out_pos if listed else weight,
        C=c,
        H=h,
        W=w,
        CO=co,
        HO=ho,
        WO=wo,
        HO_COV=hc,
        WO_COV=wc,
        P=p,
        PAD_T=top,
        PAD_L=left,
        **_strides("sx", x),
        **_strides("sw", wt, "ochw"),
        **_strides("sy", y),
        STRIDE=stride,
        KH=kh,
        KW=kw,
        LIST=listed,
        HAS_BIAS=bias is not None,
        USE_DOT=dot,
        FLAT=not listed and c % cfg["BLOCK_K"] == 0,
        **_flags(x.dtype, x.device),
        **cfg,
    )
    return y


def conv_dgrad(
    dy: torch.Tensor,
    weight: torch.Tensor,
    dx: torch.Tensor,
    stride: int,
    pad4: tuple[int, int, int, int],
    *,
    src_pos: torch.Tensor | None = None,
    cover: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Dense (src_pos None): dx through each input's own padded position, written.
    List: the mirrored part (and uncovered outputs' direct part) added to dx at src_pos."""
    n, c, h, w, co, kh, kw, ho, wo, left, right, top, bottom = _geometry(dx.shape, weight.shape, dy.shape, stride, pad4)
    listed = src_pos is not None
    p = src_pos.shape[0] if listed else h * w
    if n == 0 or p == 0 or c == 0:
        return dx
    dot = _use_dot(c, dtype=dy.dtype, device=dy.device)
    cfg = _gemm_config(p, c, co, dy.dtype, dy.device, dot=dot)
    if listed:
        cfg = _list_config(cfg, dy.device)
    hc, wc = cover if cover is not None else (ho, wo)
    # (KH, KW, CO, C) storage viewed as (CO, C, KH, KW): weight tiles load along contiguous C.
    wt = weight.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
    grid = (triton.cdiv(p, cfg["BLOCK_M"]), n, triton.cdiv(c, cfg["BLOCK_N"]))
    reflect_conv2d_dgrad_kernel[grid](
        dy_ptr=dy,
        w_ptr=wt,
        dx_ptr=dx,
        pos_ptr=src_pos if listed else weight,
        C=c,
        H=h,
        W=w,
        CO=co,
        HO=ho,
        WO=wo,
        HO_COV=hc,
        WO_COV=wc,
        P=p,
        PAD_T=top,
        PAD_B=bottom,
        PAD_L=left,
        PAD_R=right,
        **_strides("sd", dy),
        **_strides("sw", wt, "ochw"),
        **_strides("sx", dx),
        STRIDE=stride,
        KH=kh,
        KW=kw,
        LIST=listed,
        NCAND=3 if listed else 1,
        USE_DOT=dot,
        FLAT=not listed and co % cfg["BLOCK_K"] == 0,
        **_flags(dy.dtype, dy.device),
        **cfg,
    )
    return dx


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def conv_wgrad(
    dy: torch.Tensor,
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: int,
    pad4: tuple[int, int, int, int],
    *,
    out_pos: torch.Tensor | None = None,
    cover: tuple[int, int] | None = None,
) -> torch.Tensor:
    """dweight (CO, C, KH, KW) in float32 (float64 for float64): dense = the whole sum,
    list = the border terms at out_pos. Splits of the position range are summed in a fixed order."""
    kh, kw = kernel_size
    n, c, h, w = x.shape
    co, ho, wo = dy.shape[1:]
    left, _, top, _ = pad4
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    listed = out_pos is not None
    p = out_pos.shape[0] if listed else ho * wo
    total = n * p
    if total == 0 or c == 0 or co == 0:
        return torch.zeros((co, c, kh, kw), dtype=acc_dtype, device=x.device)
    dot = _use_dot(co, c, dtype=x.dtype, device=x.device)
    cfg = _gemm_config(co, c, total, x.dtype, x.device, dot=dot)
    tiles = triton.cdiv(co, cfg["BLOCK_M"]) * triton.cdiv(c, cfg["BLOCK_N"])
    chunks = triton.cdiv(total, cfg["BLOCK_K"])
    want = max(1, (4 * _num_sms(x.device)) // (tiles * kh * kw))
    # The float32 partial sums stay small: at most ~8 MiB however many splits would fill the chip.
    want = min(want, max(1, (8 << 20) // (co * c * kh * kw * 4)))
    per_split = triton.cdiv(chunks, min(want, chunks))
    splits = triton.cdiv(chunks, per_split)
    part = torch.empty((splits, co, c, kh, kw), dtype=acc_dtype, device=x.device)
    hc, wc = cover if cover is not None else (ho, wo)
    reflect_conv2d_wgrad_kernel[(tiles, kh * kw, splits)](
        dy_ptr=dy,
        x_ptr=x,
        part_ptr=part,
        pos_ptr=out_pos if listed else x,
        C=c,
        H=h,
        W=w,
        CO=co,
        HO=ho,
        WO=wo,
        HO_COV=hc,
        WO_COV=wc,
        P=p,
        TOTAL=total,
        CHUNKS_PER_SPLIT=per_split,
        PAD_T=top,
        PAD_L=left,
        **_strides("sd", dy),
        **_strides("sx", x),
        STRIDE=stride,
        KH=kh,
        KW=kw,
        LIST=listed,
        USE_DOT=dot,
        **_flags(x.dtype, x.device),
        **cfg,
    )
    return part[0] if splits == 1 else part.sum(dim=0)
