"""The GroupNorm family inside CUDA graphs (GPU only; run by bench/gpu_check.sh).

A launch path that allocates on the host between kernels, reads a tensor back, or synchronises
cannot be captured. These tests capture forward + backward after one warm-up and replay it, and
run a small model under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs through inductor).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vivat_kernels as vk
from vivat_kernels import reference
from vivat_kernels.nn import FusedGroupNorm, SpatialNorm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape,low", [((2, 64, 32, 32), (4, 4)), ((1, 128, 96, 80), (12, 10))], ids=["small", "mid"])
def test_graph_replays_forward_backward(shape, low, channels_last):
    n, c = shape[:2]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dev = "cuda"
    x = torch.randn(shape, device=dev, dtype=torch.bfloat16).contiguous(memory_format=fmt).requires_grad_(True)
    wt = torch.randn(c, device=dev, requires_grad=True)
    bs = torch.randn(c, device=dev, requires_grad=True)
    gm = torch.randn(n, c, *low, device=dev, dtype=torch.bfloat16).contiguous(memory_format=fmt).requires_grad_(True)
    bt = torch.randn(n, c, *low, device=dev, dtype=torch.bfloat16).contiguous(memory_format=fmt).requires_grad_(True)
    dy = torch.randn(shape, device=dev, dtype=torch.bfloat16).contiguous(memory_format=fmt)
    leaves = (x, wt, bs, gm, bt)

    def step():
        y = vk.fused_group_norm(x, 32, wt, bs, gamma=gm, beta=bt, act="silu")
        return (y, *torch.autograd.grad(y, leaves, dy))

    with vk.use_backend("triton"):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            eager = [t.clone() for t in step()]  # warm-up: plans built, kernels compiled
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = step()
        for _ in range(2):
            graph.replay()
        torch.cuda.synchronize()
    for got, want in zip(static, eager):
        assert torch.equal(got, want), (got.float() - want.float()).abs().max()
    # and the replay is right, not only repeatable
    ref = reference.group_norm(
        x.detach().float(),
        32,
        wt.detach(),
        bs.detach(),
        gamma=gm.detach().float(),
        beta=bt.detach().float(),
        act="silu",
    )
    rel = ((static[0].float() - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, rel


class _Block(nn.Module):
    def __init__(self, c: int, zc: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.norm = FusedGroupNorm(32, c, act="silu")
        self.snorm = SpatialNorm(c, zc, num_groups=32, act="silu")

    def forward(self, x, zq):
        return self.snorm(self.conv(self.norm(x)), zq) + x


def test_reduce_overhead_compile():
    torch.manual_seed(0)
    model = _Block(64, 4).cuda()
    x = torch.randn(2, 64, 32, 32, device="cuda")
    zq = torch.randn(2, 4, 4, 4, device="cuda")
    with torch.no_grad(), vk.use_backend("triton"):
        want = model(x, zq)
        compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):  # record, then replay the CUDA graph
            got = compiled(x, zq)
        torch.cuda.synchronize()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
