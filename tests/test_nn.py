"""Drop-in modules: weights load both ways, outputs match the modules they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vivat_kernels as vk
from vivat_kernels.nn import FusedGroupNorm, SpatialNorm


class EagerSpatialNorm(nn.Module):
    """The diffusers / MoVQ formulation: upsample zq, full-resolution 1x1 convs, GN, mul, add."""

    def __init__(self, f_channels, zq_channels, num_groups=32, eps=1e-6):
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_channels=f_channels, num_groups=num_groups, eps=eps, affine=True)
        self.conv_y = nn.Conv2d(zq_channels, f_channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, f_channels, 1)

    def forward(self, f, zq):
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


def test_fused_group_norm_loads_group_norm(target):
    _, device = target
    gn = nn.GroupNorm(4, 12, eps=1e-5).to(device)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    fused = FusedGroupNorm(4, 12, eps=1e-5).to(device)
    fused.load_state_dict(gn.state_dict())
    assert list(fused.state_dict()) == list(gn.state_dict())
    gn.load_state_dict(fused.state_dict())
    x = torch.randn(2, 12, 9, 7, device=device)
    torch.testing.assert_close(fused(x), gn(x), rtol=1e-5, atol=1e-5)
    fused_act = FusedGroupNorm.from_group_norm(gn, act="silu")
    assert fused_act.weight is gn.weight
    torch.testing.assert_close(fused_act(x), F.silu(gn(x)), rtol=1e-5, atol=1e-5)
    nonaffine = FusedGroupNorm(3, 12, affine=False).to(device)
    torch.testing.assert_close(nonaffine(x), F.group_norm(x, 3, eps=1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("zq_size", [(5, 4), (2, 2), (13, 9), (26, 7)])
def test_spatial_norm_matches_eager_any_ratio(target, zq_size):
    """1x1 conv at low resolution + index upsampling == upsample then full-resolution conv."""
    _, device = target
    eager = EagerSpatialNorm(16, 4, num_groups=4).to(device)
    fused = SpatialNorm(16, 4, num_groups=4).to(device)
    fused.load_state_dict(eager.state_dict())
    f = torch.randn(2, 16, 44, 18, device=device, requires_grad=True)
    zq = torch.randn(2, 4, *zq_size, device=device, requires_grad=True)
    y_e, y_f = eager(f, zq), fused(f, zq)
    torch.testing.assert_close(y_f, y_e, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y_e)
    g_e = torch.autograd.grad(y_e, [f, zq, *eager.parameters()], dy)
    g_f = torch.autograd.grad(y_f, [f, zq, *fused.parameters()], dy)
    for a, b in zip(g_f, g_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * (b.abs().max().item() + 1))


@pytest.mark.parametrize("act", [None, "silu"])
def test_spatial_norm_matches_diffusers(act):
    attention_processor = pytest.importorskip("diffusers.models.attention_processor")
    ref = attention_processor.SpatialNorm(f_channels=64, zq_channels=4)
    ours = SpatialNorm(64, 4, act=act)
    ours.load_state_dict(ref.state_dict())  # same parameter names, no remap
    f, zq = torch.randn(2, 64, 32, 24), torch.randn(2, 4, 4, 3)
    want = ref(f, zq)
    if act == "silu":
        want = F.silu(want)
    torch.testing.assert_close(ours(f, zq), want, rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_spatial_norm():
    """No graph break: the fused op is one opaque node for dynamo, forward and backward."""
    torch._dynamo.reset()
    mod = SpatialNorm(16, 4, num_groups=4, act="silu")
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    f = torch.randn(2, 16, 12, 10, requires_grad=True)
    zq = torch.randn(2, 4, 3, 5, requires_grad=True)
    y_c = compiled(f, zq)
    y_e = mod(f, zq)
    torch.testing.assert_close(y_c, y_e)
    g_c = torch.autograd.grad(y_c.square().sum(), (f, zq))
    g_e = torch.autograd.grad(y_e.square().sum(), (f, zq))
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compile_inductor_spatial_norm():
    torch._dynamo.reset()
    mod = SpatialNorm(16, 4, num_groups=4, act="silu")
    compiled = torch.compile(mod, fullgraph=True)
    f, zq = torch.randn(2, 16, 12, 10), torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(compiled(f, zq), mod(f, zq), rtol=1e-5, atol=1e-5)


def test_modules_reject_unknown_act():
    with pytest.raises(ValueError, match="act"):
        FusedGroupNorm(2, 4, act="gelu")
    with pytest.raises(ValueError, match="act"):
        SpatialNorm(4, 2, num_groups=2, act="gelu")
    with pytest.raises(ValueError, match="zq"):
        SpatialNorm(4, 2, num_groups=2)(torch.randn(1, 4, 4, 4), torch.randn(2, 2, 2, 2))


def test_backend_choice_is_reported():
    from vivat_kernels.ops.group_norm import selected_backend

    with vk.use_backend("torch"):
        assert selected_backend(torch.randn(1, 4, 2, 2))[0] == "torch"
    assert selected_backend(torch.randn(0, 4, 2, 2))[0] == "torch"
