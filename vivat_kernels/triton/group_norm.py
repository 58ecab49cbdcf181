"""Triton launchers for the fused GroupNorm family: ``y = act(GN_affine(x) * up(gamma) + up(beta))``.

Backend contract: see :mod:`vivat_kernels.ops.group_norm`. This module exports
:func:`group_norm_fwd` and :func:`group_norm_bwd` and keeps their plan caches. Launch planning
lives in :mod:`._gn_plan_fwd` / :mod:`._gn_plan_bwd` (host helpers and the tuning knobs
``_TUNE`` in :mod:`._gn_host`); the kernels in :mod:`.group_norm_fwd`, :mod:`.group_norm_bwd`,
:mod:`.group_norm_bwd_finalize`, and the shared device helpers in :mod:`._gn_jit`.

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

import torch
from torch import Tensor

from ._gn_host import _TUNE, _check_layout, _run, _tkey  # noqa: F401 (_TUNE: the knobs, reached from here)
from ._gn_plan_bwd import _bwd_plan
from ._gn_plan_fwd import _fwd_plan

# launch plans by call signature; _TUNE (re-exported from ._gn_host) shapes them
_FWD_PLANS: dict = {}
_BWD_PLANS: dict = {}


def clear_plans() -> None:
    """Forget every cached launch plan (after changing ``_TUNE``)."""
    _FWD_PLANS.clear()
    _BWD_PLANS.clear()


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
