"""vivat_kernels.patch on diffusers models built from configs, on LDM / FLUX-style blocks and on vivat."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vivat_kernels as vk
from vivat import AutoencoderKL, VAEConfig
from vivat_kernels.nn import FusedGroupNorm, ReflectConv2d, SpatialNorm
from vivat_kernels.patch import FusedGroupNormNd, FusedResnetBlock, ReflectDownsample

TOL = {"rtol": 1e-4, "atol": 1e-5}  # single layers
E2E = {"rtol": 1e-4, "atol": 5e-5}  # whole models (fp32 rounding through a dozen layers)

# (block_out_channels, layers_per_block, norm_num_groups, latent_channels, mid attention)
DIFFUSERS_CONFIGS = [
    ((32, 64), 1, 8, 4, True),
    ((16, 32, 32), 2, 16, 16, False),
]


def diffusers_vae(widths, layers, groups, z, attn):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths,
        layers_per_block=layers,
        norm_num_groups=groups,
        latent_channels=z,
        mid_block_add_attention=attn,
    ).eval()


def movq(norm_groups: int = 8):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.VQModel(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=norm_groups,
        num_vq_embeddings=16,
        norm_type="spatial",
    ).eval()


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def same_state(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[k] is b[k] or a[k].data_ptr() == b[k].data_ptr() for k in a)


def kl_forward(vae, x):
    post = vae.encode(x).latent_dist
    return post.mean, post.logvar, vae.decode(post.mean).sample


# -------------------------------------------------------------------------------------------
# diffusers AutoencoderKL
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", DIFFUSERS_CONFIGS, ids=["2lvl-attn", "3lvl-noattn"])
def test_autoencoderkl_same_outputs_and_state_dict(cfg):
    vae = diffusers_vae(*cfg)
    widths, layers, _, _, attn = cfg
    x = images()
    with torch.no_grad():
        ref = kl_forward(vae, x)
    state = vae.state_dict()
    report = vk.patch(vae)
    assert same_state(state, vae.state_dict())
    with torch.no_grad():
        for a, b in zip(ref, kl_forward(vae, x)):
            torch.testing.assert_close(b, a, **E2E)
    # every ResNet norm and both norm_out fuse SiLU; the attention norms stay plain (any rank)
    resnets = len(widths) * layers + len(widths) * (layers + 1) + 4
    counts = report.counts()
    assert counts["GroupNorm -> FusedGroupNorm(act='silu')"] == 2 * resnets + 2
    assert counts["SiLU -> Identity"] == resnets + 2
    assert counts.get("GroupNorm -> FusedGroupNormNd", 0) == (2 if attn else 0)
    assert not any(type(m) in (nn.GroupNorm, nn.SiLU) for m in vae.modules())
    assert not report.changes_outputs
    assert set(report.left_counts()) == {"Conv2d: zero padding kept (reflect_padding=False)"}
    assert "replaced" in str(report) and "ResnetBlock2D" in str(report)


def test_autoencoderkl_gradients_match():
    vae = diffusers_vae(*DIFFUSERS_CONFIGS[0]).train()
    patched = copy.deepcopy(vae)
    vk.patch(patched)
    x = images()
    grads = []
    for model in (vae, patched):
        xi = x.clone().requires_grad_(True)
        mean, logvar, dec = kl_forward(model, xi)
        (dec.square().mean() + mean.sin().mean() + logvar.mean()).backward()
        grads.append({"x": xi.grad, **{n: p.grad for n, p in model.named_parameters()}})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], **E2E, msg=name)


def test_compile_fullgraph_aot_eager():
    vae = diffusers_vae(*DIFFUSERS_CONFIGS[0])
    vk.patch(vae)
    x = images(1)
    run = torch.compile(lambda t: kl_forward(vae, t), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for a, b in zip(kl_forward(vae, x), run(x)):
            torch.testing.assert_close(b, a, **E2E)


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    vae = diffusers_vae(*DIFFUSERS_CONFIGS[0])
    ref = copy.deepcopy(vae)
    vk.patch(vae)
    x = images(1)
    run = torch.compile(lambda t: kl_forward(vae, t), fullgraph=True)
    with torch.no_grad():
        for a, b in zip(kl_forward(ref, x), run(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_autoencoderkl_on_gpu(dtype):
    vae = diffusers_vae(*DIFFUSERS_CONFIGS[0]).to("cuda", dtype)
    patched = copy.deepcopy(vae)
    vk.patch(patched)
    x = images(2, 64).to("cuda", dtype)

    def check(b, a):
        if dtype == torch.float32:
            torch.testing.assert_close(b, a, **E2E)
        else:  # bf16 rounding differs op by op; compare the error relative to the signal
            assert ((b.float() - a.float()).norm() / a.float().norm()).item() < 2e-2

    with torch.no_grad():
        ref = kl_forward(vae, x)
        for a, b in zip(ref, kl_forward(patched, x)):
            check(b, a)
        run = torch.compile(lambda t: kl_forward(patched, t), fullgraph=True)
        for a, b in zip(ref, run(x)):
            check(b, a)


def test_attention_group_norm_takes_sequences():
    norm = nn.GroupNorm(4, 16)
    fused = FusedGroupNormNd.from_group_norm(norm)
    for shape in [(2, 16), (2, 16, 7), (2, 16, 3, 5), (2, 16, 2, 3, 4)]:
        x = torch.randn(shape)
        torch.testing.assert_close(fused(x), norm(x), **TOL)
    seq = torch.randn(2, 12, 16).transpose(1, 2)  # (N, C, L) view, as diffusers' attention passes it
    torch.testing.assert_close(fused(seq), norm(seq), **TOL)


# -------------------------------------------------------------------------------------------
# MoVQ-style decoder (diffusers VQModel with SpatialNorm)
# -------------------------------------------------------------------------------------------
def test_movq_spatial_norm_decoder_outputs_gradients_compile():
    vq = movq()
    patched = copy.deepcopy(vq)
    report = vk.patch(patched)
    counts = report.counts()
    assert counts["SpatialNorm -> SpatialNorm(act='silu')"] == 2 * (2 + 2 * 2) + 1  # mid, up blocks, norm_out
    assert counts["SpatialNorm -> SpatialNorm"] == 1  # the mid attention's
    assert sum(isinstance(m, SpatialNorm) for m in patched.modules()) == 14
    x = images()
    with torch.no_grad():
        h = vq.encode(x).latents
    outs, grads = [], []
    for model in (vq, patched):
        hi = h.clone().requires_grad_(True)
        out = model.decode(hi).sample
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append({"h": hi.grad, **{n: p.grad for n, p in model.named_parameters() if p.grad is not None}})
    torch.testing.assert_close(outs[1], outs[0], **E2E)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], **E2E, msg=name)
    run = torch.compile(patched.decode, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(run(h).sample, outs[0], **E2E)


def test_spatial_norm_false_keeps_spatial_norms():
    vq = movq()
    report = vk.patch(vq, spatial_norm=False)
    assert not any(isinstance(m, SpatialNorm) for m in vq.modules())
    assert report.left_counts()["SpatialNorm: spatial_norm=False"] == 14
    # their inner GroupNorms still run fused (called as modules by diffusers' SpatialNorm)
    assert not any(type(m) is nn.GroupNorm for m in vq.modules())


# -------------------------------------------------------------------------------------------
# LDM / FLUX-style blocks (written here from the LDM formulas, recognised by name and structure)
# -------------------------------------------------------------------------------------------
class ResnetBlock(nn.Module):
    """LDM's: norm1, SiLU, conv1, [temb], norm2, SiLU, dropout, conv2, nin_shortcut if widths differ."""

    def __init__(self, cin, cout, temb_channels=0, silu_first=True):
        super().__init__()
        self.in_channels, self.out_channels, self.silu_first = cin, cout, silu_first
        self.norm1 = nn.GroupNorm(4, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        if temb_channels:
            self.temb_proj = nn.Linear(temb_channels, cout)
        self.norm2 = nn.GroupNorm(4, cout, eps=1e-6)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)) if self.silu_first else self.norm1(F.silu(x)))
        if temb is not None:
            h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if self.in_channels != self.out_channels else x) + h


class Downsample(nn.Module):
    """LDM's: pad right/bottom by one with zeros, stride-2 3x3 conv."""

    def __init__(self, c):
        super().__init__()
        self.with_conv = True
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def ldm_stack():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        ResnetBlock(8, 16),
        Downsample(16),
        ResnetBlock(16, 16),
        nn.GroupNorm(4, 16),
        nn.SiLU(),
        nn.Conv2d(16, 3, 3, padding=1),
    ).eval()


def test_ldm_blocks_fused_and_equal():
    model = ldm_stack()
    ref = copy.deepcopy(model)
    state = model.state_dict()
    report = vk.patch(model)
    assert same_state(state, model.state_dict())
    assert isinstance(model[1], FusedResnetBlock) and isinstance(model[3], FusedResnetBlock)
    assert model[1].norm1.act == "silu" and isinstance(model[5], nn.Identity)
    assert report.counts()["ResnetBlock -> FusedResnetBlock"] == 2
    x = images()
    torch.testing.assert_close(model(x), ref(x), **E2E)


def test_ldm_blocks_left_when_not_the_known_formula():
    model = nn.Sequential(ResnetBlock(8, 8, temb_channels=4), ResnetBlock(8, 8, silu_first=False))
    report = vk.patch(model)
    assert not any(isinstance(m, FusedResnetBlock) for m in model.modules())
    reasons = " ".join(e.reason for e in report.left)
    assert "time embedding" in reasons and "differs from the known LDM formula" in reasons
    assert all(type(m.norm1) is FusedGroupNormNd for m in model)  # plain GN still fused


def test_reflect_padding_converts_convs_and_ldm_pad():
    model = ldm_stack()
    report = vk.patch(model, reflect_padding=True)
    assert report.changes_outputs
    assert isinstance(model[2], ReflectDownsample) and model[2].conv.pad4 == (0, 1, 0, 1)
    assert report.counts()["Conv2d -> ReflectConv2d"] == 6  # conv_in, 2 x (conv1, conv2), conv_out
    x = images()
    h = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), model[0].weight, model[0].bias)
    torch.testing.assert_close(model[0](x), h, **TOL)
    f = torch.randn(2, 16, 16, 16)
    d = F.conv2d(F.pad(f, (0, 1, 0, 1), mode="reflect"), model[2].conv.weight, model[2].conv.bias, stride=2)
    torch.testing.assert_close(model[2](f), d, **TOL)


def test_existing_reflect_convs_become_reflect_conv2d():
    conv = nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect")
    model = nn.Sequential(conv)
    x = torch.randn(1, 4, 9, 7)
    ref = conv(x)
    vk.patch(model)
    assert type(model[0]) is ReflectConv2d and model[0].weight is conv.weight
    torch.testing.assert_close(model[0](x), ref, **TOL)


def test_shared_and_hooked_modules_are_not_fused():
    act = nn.SiLU()
    shared = nn.Sequential(nn.GroupNorm(2, 4), act, nn.Conv2d(4, 4, 1), act)
    report = vk.patch(shared)
    assert type(shared[0]) is FusedGroupNormNd and shared[1] is act  # plain GN, SiLU kept
    conv = nn.Conv2d(4, 4, 1)
    repeated = nn.Sequential(conv, nn.GroupNorm(2, 4), conv, nn.SiLU())  # GN is not followed by the SiLU
    vk.patch(repeated)
    assert repeated[1].act is None and type(repeated[3]) is nn.SiLU
    hooked = nn.Sequential(nn.GroupNorm(2, 4), nn.SiLU())
    hooked[0].register_forward_hook(lambda *a: None)
    report = vk.patch(hooked)
    assert type(hooked[0]) is nn.GroupNorm
    assert any("hooks" in e.reason for e in report.left)


def test_meta_model_patches_without_probing():
    with torch.device("meta"):
        model = nn.Sequential(ResnetBlock(8, 16), Downsample(16))
    report = vk.patch(model, reflect_padding=True)
    assert isinstance(model[0], FusedResnetBlock) and isinstance(model[1], ReflectDownsample)
    assert all("not probed" in e.reason for e in report.replaced if e.before in ("ResnetBlock", "Downsample"))


# -------------------------------------------------------------------------------------------
# vivat's own model: already fused; reflect_padding turns ldm-* into the vivat padding
# -------------------------------------------------------------------------------------------
def test_vivat_zero_padded_model_patched_to_reflect_equals_reflect_model():
    torch.manual_seed(0)
    plain = AutoencoderKL(VAEConfig.from_preset("ldm-tiny")).eval()
    reflect = AutoencoderKL(plain.config.replace(padding_mode="reflect")).eval()
    reflect.load_state_dict(plain.state_dict())
    report = vk.patch(plain)
    assert not report.replaced  # nothing left to fuse
    report = vk.patch(plain, reflect_padding=True)
    counts = report.counts()
    assert counts["Downsample -> ReflectDownsample"] == 3 and counts["Conv2d -> ReflectConv2d"] > 0
    x = images(1)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, sample=False)[0], reflect(x, sample=False)[0], **E2E)


def test_patched_module_types():
    vae = diffusers_vae(*DIFFUSERS_CONFIGS[0])
    vk.patch(vae)
    block = vae.encoder.down_blocks[0].resnets[0]
    assert isinstance(block.norm1, FusedGroupNorm) and block.norm1.act == "silu"
    assert isinstance(block.nonlinearity, nn.Identity)
    assert type(vae.encoder.mid_block.attentions[0].group_norm) is FusedGroupNormNd


def test_channels_last_option_keeps_parameters_and_outputs():
    vae = diffusers_vae(*DIFFUSERS_CONFIGS[0])
    x = images()
    with torch.no_grad():
        ref = kl_forward(vae, x)
    params = dict(vae.named_parameters())
    report = vk.patch(vae, channels_last=True)
    assert report.channels_last and "channels_last" in str(report)
    assert all(p is params[name] for name, p in vae.named_parameters())  # same objects, for optimisers
    convs = [m for m in vae.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    with torch.no_grad():
        out = kl_forward(vae, x)
    for a, b in zip(ref, out):
        torch.testing.assert_close(b, a, **E2E)
    assert out[2].is_contiguous(memory_format=torch.channels_last)
    assert not vk.patch(diffusers_vae(*DIFFUSERS_CONFIGS[1])).channels_last
