"""Launch budget of the Triton GroupNorm path, counted on CPU.

Per call, after the first (which builds and caches the launch plan): forward 1 Triton launch when
each group fits one program (the per-group design), 2 for the split design; backward at most 3;
and no ATen op besides allocating outputs. Launches are counted with a hook on the interpreter's
launcher (the kernels are not run: only the host path is under test), ATen calls with a
``TorchDispatchMode``. Every flag set and both layouts.
"""

from __future__ import annotations

import collections

import pytest
import torch
from test_group_norm import FLAGS, make_inputs
from torch.utils._python_dispatch import TorchDispatchMode

import vivat_kernels as vk
from vivat_kernels import _backend

pytestmark = pytest.mark.skipif(
    _backend.triton_import_error() is not None or not _backend.triton_interpret(),
    reason="counts launches on the Triton interpreter (TRITON_INTERPRET=1)",
)

ALLOCATIONS = {"aten.empty.memory_format", "aten.empty_like.default", "aten.empty_strided.default"}


class _AtenCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def launches(monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction

    from vivat_kernels.triton import group_norm as tgn

    seen = []

    def counting_run(self, *args, grid, warmup, **kwargs):
        seen.append(self.fn.__name__)  # stub: the kernel itself does not run

    monkeypatch.setattr(InterpretedFunction, "run", counting_run)
    tgn.clear_plans()
    yield seen, tgn
    tgn.clear_plans()


def _count(fn, seen):
    seen.clear()
    with _AtenCalls() as mode:
        out = fn()
    return out, list(seen), mode.ops


@pytest.mark.parametrize("design,fwd_budget", [("group", 1), ("split", 2)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("flags", FLAGS, ids=[f"f{i}" for i in range(len(FLAGS))])
def test_launch_and_aten_budget(launches, monkeypatch, design, fwd_budget, channels_last, flags):
    seen, tgn = launches
    monkeypatch.setitem(tgn._TUNE, "design", design)
    shape = (2, 15, 5, 44, 13, (26, 5))  # non-integer low-res ratio: the block-sum path
    x, params, extra, g = make_inputs(shape, flags, torch.float32, "cpu", channels_last)
    leaves = [t for t in (x, *params.values(), extra["gamma"], extra["beta"]) if t is not None]
    for t in leaves:
        t.requires_grad_(True)

    def forward():
        return vk.fused_group_norm(x, g, params["weight"], params["bias"], eps=1e-6, **extra)

    with vk.use_backend("triton"):
        y = forward()  # builds the plans
        dy = torch.randn_like(y)
        torch.autograd.grad(y, leaves, dy)
        y, fwd_launches, fwd_ops = _count(forward, seen)
        _, bwd_launches, bwd_ops = _count(lambda: torch.autograd.grad(y, leaves, dy), seen)

    assert len(fwd_launches) == fwd_budget, fwd_launches
    assert 1 <= len(bwd_launches) <= 3, bwd_launches
    for ops in (fwd_ops, bwd_ops):
        assert set(ops) <= ALLOCATIONS, f"ATen ops on the hot path: {dict(ops)}"
    # outputs only: forward y, mean, rstd (+ one partial buffer for the split design); backward
    # one partial buffer, m1, m2, the wanted gradients and at most two row-piece buffers
    assert sum(fwd_ops.values()) <= 3 + (design == "split"), dict(fwd_ops)
    assert sum(bwd_ops.values()) <= 3 + len(leaves) + 2, dict(bwd_ops)


def test_plans_are_cached_per_shape(launches):
    _, tgn = launches
    x = torch.randn(1, 8, 6, 6)
    with vk.use_backend("triton"):
        vk.fused_group_norm(x, 4)
        n_plans = len(tgn._FWD_PLANS)
        vk.fused_group_norm(torch.randn(1, 8, 6, 6), 4)
        assert len(tgn._FWD_PLANS) == n_plans
        vk.fused_group_norm(torch.randn(1, 8, 6, 7), 4)
        vk.fused_group_norm(x.contiguous(memory_format=torch.channels_last).add(0), 4)
        assert len(tgn._FWD_PLANS) == n_plans + 2


@pytest.mark.parametrize("path", ["eager", "custom_op"])
def test_no_zero_gradients_materialised(launches, path):
    """Only y feeds the loss: no zero gradients are materialised for mean/rstd, in the lean eager
    path or in the custom op that torch.compile uses."""
    x = torch.randn(1, 8, 6, 6, requires_grad=True)

    def fwd():
        if path == "eager":
            return vk.fused_group_norm(x, 4, eps=1e-5)
        return torch.ops.vivat.group_norm_fwd(x, None, None, None, None, 4, 1e-5, "none")[0]

    with vk.use_backend("triton"):
        y = fwd()
        dy = torch.randn_like(y)
        torch.autograd.grad(y, x, dy)
        y = fwd()
        with _AtenCalls() as mode:
            torch.autograd.grad(y, x, dy)
    zeros = {op for op in mode.ops if "zero" in op or "fill" in op or "full" in op}
    assert not zeros, dict(mode.ops)
