"""VAEConfig presets, the AutoencoderKL (shapes, LDM naming, fixes, parity with diffusers) and persistence."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import vivat
from vivat import AutoencoderKL, DiagonalGaussianDistribution, LossConfig, VAEConfig
from vivat.model import AttnBlock, Downsample
from vivat_kernels.nn import FusedGroupNorm, ReflectConv2d, SpatialNorm

FULL = ["vivat-f8c16", "ldm-f8c16", "ldm-f8c4"]
TINY = ["vivat-tiny", "ldm-tiny"]


def tiny(name: str = "vivat-tiny", seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(VAEConfig.from_preset(name)).eval()


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def on_meta(name: str) -> AutoencoderKL:
    with torch.device("meta"):
        return AutoencoderKL(VAEConfig.from_preset(name))


# -------------------------------------------------------------------------------------------
# Config
# -------------------------------------------------------------------------------------------
def test_preset_names_and_unknown_preset():
    assert vivat.preset_names() == ["vivat-f8c16", "ldm-f8c16", "ldm-f8c4", "vivat-tiny", "ldm-tiny"]
    with pytest.raises(ValueError, match="valid presets: vivat-f8c16, ldm-f8c16, ldm-f8c4, vivat-tiny, ldm-tiny"):
        VAEConfig.from_preset("vivat-f16")


def test_preset_switches():
    v, l4, l16 = (VAEConfig.from_preset(n) for n in ("vivat-f8c16", "ldm-f8c4", "ldm-f8c16"))
    assert (v.ch, v.ch_mult, v.num_res_blocks, v.z_channels, v.mid_attn) == (128, (1, 2, 4, 4), 2, 16, True)
    assert (v.padding_mode, v.scn) == ("reflect", True)
    assert (l4.padding_mode, l4.scn, l4.z_channels) == ("zeros", False, 4)
    # ldm-f8c16 is vivat-f8c16 without the fixes (architecture-wise)
    assert l16.replace(padding_mode="reflect", scn=True, loss=v.loss) == v
    vt, lt = VAEConfig.from_preset("vivat-tiny"), VAEConfig.from_preset("ldm-tiny")
    assert vt.downsample_factor == lt.downsample_factor == 8
    assert lt.replace(padding_mode="reflect", scn=True, loss=vt.loss) == vt


@pytest.mark.parametrize("name", FULL + TINY)
def test_config_json_round_trip(name):
    cfg = VAEConfig.from_preset(name)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert isinstance(d["ch_mult"], list) and isinstance(d["loss"], dict)
    assert VAEConfig.from_dict(d) == cfg


def test_config_replace_routes_loss_fields_and_rejects_unknown():
    cfg = VAEConfig.from_preset("vivat-f8c16")
    abl = cfg.replace(padding_mode="zeros", kl_weight=1e-6, decoder_only_from=None)
    assert abl.padding_mode == "zeros" and abl.scn
    assert abl.loss.kl_weight == 1e-6 and abl.loss.decoder_only_from is None
    assert abl.loss.adaptive_weight_max == cfg.loss.adaptive_weight_max
    assert cfg.padding_mode == "reflect" and cfg.loss.kl_weight == 1e-7  # original untouched
    with pytest.raises(ValueError, match="unknown config field"):
        cfg.replace(padding="zeros")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.scn = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown VAEConfig field"):
        VAEConfig.from_dict({**cfg.to_dict(), "typo": 1})
    with pytest.raises(ValueError, match="unknown LossConfig field"):
        VAEConfig.from_dict({**cfg.to_dict(), "loss": {"kl_wieght": 1.0}})


def test_config_validation():
    with pytest.raises(ValueError, match="padding_mode"):
        VAEConfig(padding_mode="circular")
    with pytest.raises(ValueError, match="norm_groups"):
        VAEConfig(ch=48, norm_groups=32)
    with pytest.raises(ValueError, match="decoder_only_from"):
        LossConfig(decoder_only_from=1.5)
    with pytest.raises(ValueError, match="kl_weight"):
        LossConfig(kl_weight=-1.0)


# -------------------------------------------------------------------------------------------
# Structure of the full presets (meta device: no memory, no compute)
# -------------------------------------------------------------------------------------------
def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_ldm_f8c4_has_the_stable_diffusion_vae_parameter_count():
    # SD / LDM kl-f8 (diffusers AutoencoderKL, SD config): 83,653,863 parameters, 34,163,664 on the
    # encoder side (encoder + quant_conv).
    m = on_meta("ldm-f8c4")
    assert _param_count(m) == 83_653_863
    assert sum(p.numel() for p in m.encoder_parameters()) == 34_163_664
    assert len(m.state_dict()) == 248


def test_scn_adds_only_the_conditioning_convs():
    v, l16 = on_meta("vivat-f8c16"), on_meta("ldm-f8c16")
    scn_params = sum(p.numel() for n, p in v.named_parameters() if ".conv_y." in n or ".conv_b." in n)
    assert _param_count(v) - _param_count(l16) == scn_params > 0
    assert {
        k.replace(".norm_layer.", ".") for k in v.state_dict() if ".conv_y." not in k and ".conv_b." not in k
    } == set(l16.state_dict())


@pytest.mark.parametrize("name", FULL)
def test_full_preset_ldm_key_names(name):
    keys = set(on_meta(name).state_dict())
    common = [
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.down.0.block.1.conv2.bias",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.mid.block_1.norm1.bias",
        "encoder.mid.attn_1.q.weight",
        "encoder.mid.attn_1.proj_out.bias",
        "encoder.norm_out.weight",
        "encoder.conv_out.weight",
        "quant_conv.weight",
        "post_quant_conv.bias",
        "decoder.conv_in.weight",
        "decoder.mid.attn_1.q.weight",
        "decoder.up.0.block.2.conv1.weight",
        "decoder.up.3.upsample.conv.weight",
        "decoder.up.1.block.0.nin_shortcut.weight",
        "decoder.conv_out.weight",
    ]
    assert set(common) <= keys
    assert "encoder.down.3.downsample.conv.weight" not in keys
    assert "decoder.up.0.upsample.conv.weight" not in keys
    assert "decoder.up.0.block.3.conv1.weight" not in keys  # num_res_blocks + 1 = 3 blocks
    if name.startswith("vivat"):
        assert {
            "decoder.up.0.block.0.norm1.norm_layer.weight",
            "decoder.up.0.block.0.norm1.conv_y.weight",
            "decoder.up.0.block.0.norm1.conv_b.bias",
            "decoder.mid.attn_1.norm.conv_y.weight",
            "decoder.norm_out.norm_layer.bias",
        } <= keys
        assert "decoder.norm_out.weight" not in keys
    else:
        assert {"decoder.up.0.block.0.norm1.weight", "decoder.norm_out.weight", "decoder.mid.attn_1.norm.bias"} <= keys
        assert not any("conv_y" in k or "norm_layer" in k for k in keys)


@pytest.mark.parametrize("name", ["vivat-f8c16", "ldm-f8c16"])
def test_fix_switches_reach_every_layer(name):
    m = on_meta(name)
    fixed = name.startswith("vivat")
    convs3 = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3)]
    assert convs3 and all(isinstance(c, ReflectConv2d) == fixed for c in convs3)
    downs = [mod for mod in m.modules() if isinstance(mod, Downsample)]
    assert len(downs) == 3
    if fixed:
        assert all(d.conv.pad4 == (0, 1, 0, 1) and d.conv.stride == (2, 2) for d in downs)
    enc_norms = [mod for mod in m.encoder.modules() if isinstance(mod, (torch.nn.GroupNorm, SpatialNorm))]
    assert enc_norms and all(type(n) is FusedGroupNorm for n in enc_norms)
    # decoder: every norm is SCN when fixed (the GroupNorm inside a SpatialNorm is its norm_layer)
    dec_top_norms = [
        mod for n, mod in m.decoder.named_modules() if n.rsplit(".", 1)[-1] in ("norm1", "norm2", "norm", "norm_out")
    ]
    assert len(dec_top_norms) == 2 * 2 + 1 + 4 * 3 * 2 + 1  # mid blocks, mid attn, up blocks, norm_out
    assert all(isinstance(n, SpatialNorm) == fixed for n in dec_top_norms)
    assert all(isinstance(n, FusedGroupNorm) for n in dec_top_norms if not fixed)


# -------------------------------------------------------------------------------------------
# Forward on the tiny presets
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_tiny_shapes(name):
    m = tiny(name)
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        post = m.encode(x)
        assert post.mean.shape == post.logvar.shape == (2, 16, 2, 3)
        assert m.decode(post.mode()).shape == x.shape
        x_hat, post2 = m(x, sample=False)
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()
    assert torch.allclose(x_hat, m.decode(post2.mean))
    with pytest.raises(ValueError, match="multiples of 8"):
        m.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="latents"):
        m.decode(torch.zeros(1, 4, 4, 4))


def test_backward_reaches_every_parameter():
    m = tiny("vivat-tiny").train()
    x = images(1, 16)
    x_hat, post = m(x)
    ((x_hat - x).abs().mean() + 1e-3 * post.kl().mean()).backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]
    assert m.decoder.up[0].block[0].norm1.conv_y.weight.grad.abs().sum() > 0


def test_posterior():
    torch.manual_seed(0)
    moments = torch.randn(3, 8, 4, 4)
    post = DiagonalGaussianDistribution(moments)
    assert torch.equal(post.mode(), moments[:, :4])
    a = post.sample(torch.Generator().manual_seed(1))
    b = post.sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, post.mode())
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(post.mean, post.std), torch.distributions.Normal(0.0, 1.0)
    ).sum(dim=(1, 2, 3))
    assert post.kl().shape == (3,)
    torch.testing.assert_close(post.kl(), ref)
    assert torch.all(DiagonalGaussianDistribution(torch.zeros(2, 8, 4, 4)).kl() == 0)
    clamped = DiagonalGaussianDistribution(
        torch.cat([torch.zeros(1, 2, 1, 1), torch.tensor([-100.0, 100.0]).view(1, 2, 1, 1)], 1)
    )
    assert clamped.logvar.flatten().tolist() == [-30.0, 20.0]


def test_scn_starts_as_identity():
    # vivat-tiny with scn=False has the same parameters minus conv_y/conv_b; at init both decode alike.
    cfg = VAEConfig.from_preset("vivat-tiny")
    torch.manual_seed(0)
    scn = AutoencoderKL(cfg).eval()
    plain = AutoencoderKL(cfg.replace(scn=False)).eval()
    state = {
        k.replace(".norm_layer.", "."): v
        for k, v in scn.state_dict().items()
        if ".conv_y." not in k and ".conv_b." not in k
    }
    plain.load_state_dict(state, strict=True)
    z = torch.randn(1, 16, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(scn.decode(z), plain.decode(z), rtol=1e-5, atol=1e-5)


def test_reflect_downsample_matches_explicit_pad():
    torch.manual_seed(0)
    d = Downsample(8, "reflect")
    x = torch.randn(2, 8, 8, 8)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1), mode="reflect"), d.conv.weight, d.conv.bias, stride=2)
    torch.testing.assert_close(d(x), ref)
    z = Downsample(8, "zeros")
    torch.testing.assert_close(z(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), z.conv.weight, z.conv.bias, stride=2))
    assert d(x).shape == (2, 8, 4, 4)


def test_attention_matches_plain_softmax():
    torch.manual_seed(0)
    a = AttnBlock(16, 8)
    x = torch.randn(2, 16, 3, 5)
    h = F.group_norm(x, 8, a.norm.weight, a.norm.bias, 1e-6)
    q, k, v = (conv(h).flatten(2) for conv in (a.q, a.k, a.v))  # (N, C, HW)
    attn = torch.softmax(q.transpose(1, 2) @ k / 16**0.5, dim=-1)  # (N, HW, HW)
    out = (v @ attn.transpose(1, 2)).view_as(x)
    torch.testing.assert_close(a(x), x + a.proj_out(out), rtol=1e-5, atol=1e-5)


def test_ldm_tiny_matches_diffusers_after_ldm_key_remap():
    """Our LDM naming maps through diffusers' own LDM converter, and the math is identical."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ours = tiny("ldm-tiny")
    cfg = ours.config
    widths = [cfg.ch * m for m in cfg.ch_mult]
    ref = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=tuple(widths),
        layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.z_channels,
        norm_num_groups=cfg.norm_groups,
    ).eval()
    converted = convert_ldm_vae_checkpoint(ours.state_dict(), {"down_block_types": [0] * 4, "up_block_types": [0] * 4})
    ref.load_state_dict(converted, strict=True)
    x = images(1, 16)
    with torch.no_grad():
        ours_post, ref_post = ours.encode(x), ref.encode(x).latent_dist
        torch.testing.assert_close(ours_post.mean, ref_post.mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours_post.logvar, ref_post.logvar, rtol=1e-4, atol=1e-5)
        z = ours_post.mean
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, rtol=1e-4, atol=1e-5)


def test_decoder_only_stage_freezes_encoder_side():
    m = tiny()
    m.set_encoder_trainable(False)
    assert not any(p.requires_grad for p in m.encoder.parameters())
    assert not any(p.requires_grad for p in m.quant_conv.parameters())
    assert all(p.requires_grad for p in m.decoder.parameters()) and m.post_quant_conv.weight.requires_grad
    assert m.last_layer() is m.decoder.conv_out.weight
    m.set_encoder_trainable(True)
    assert all(p.requires_grad for p in m.parameters())


# -------------------------------------------------------------------------------------------
# Persistence
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scn_kernel", [1, 3])
def test_scn_kernel_starts_as_identity_and_learns_from_neighbours(scn_kernel):
    """scn_kernel 3: reflect-padded 3x3 scale/shift convs, still an identity at init; once trained,
    a latent cell's scale reads its neighbours (with 1, only its own cell)."""
    cfg = VAEConfig.from_preset("vivat-tiny").replace(scn_kernel=scn_kernel)
    torch.manual_seed(0)
    model = AutoencoderKL(cfg).eval()
    norm = model.decoder.norm_out
    assert isinstance(norm, SpatialNorm) and norm.conv_y.weight.shape[-1] == scn_kernel
    assert isinstance(norm.conv_y, ReflectConv2d) == (scn_kernel == 3)
    plain = AutoencoderKL(cfg.replace(scn=False, scn_kernel=1)).eval()
    plain.load_state_dict(
        {
            k.replace(".norm_layer.", "."): v
            for k, v in model.state_dict().items()
            if ".conv_y." not in k and ".conv_b." not in k
        }
    )
    z = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(z), plain.decode(z), rtol=1e-5, atol=1e-5)
        torch.nn.init.normal_(norm.conv_y.weight)
        z2 = z.clone()
        z2[..., 0, 0] += 1.0  # change one corner cell of the latent
        f = torch.randn(1, 32, 32, 32)
        diff = (norm(f, z2) - norm(f, z)).abs().amax(dim=1)[0]  # (32, 32) at image resolution
    changed = diff > 1e-6
    assert changed[:8, :8].all()  # the corner cell's own 8x8 pixels
    assert changed[8:16, :8].any() == (scn_kernel == 3)  # its neighbour's pixels only with 3x3


def test_scn_kernel_validated_and_saved(tmp_path):
    with pytest.raises(vivat.errors.ConfigError, match="scn_kernel"):
        VAEConfig.from_preset("vivat-tiny").replace(scn_kernel=2)
    m = AutoencoderKL(VAEConfig.from_preset("vivat-tiny").replace(scn_kernel=3))
    loaded = AutoencoderKL.from_pretrained(m.save_pretrained(tmp_path / "vae"))
    assert loaded.config.scn_kernel == 3
    assert loaded.decoder.norm_out.conv_b.weight.shape[-2:] == (3, 3)


def test_save_load_round_trip(tmp_path, monkeypatch):
    m = tiny("vivat-tiny", seed=3)
    out = m.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text()) == m.config.to_dict()

    def no_pickle(*args, **kwargs):
        raise AssertionError("from_pretrained must not unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = AutoencoderKL.from_pretrained(out).eval()
    assert loaded.config == m.config
    sd_a, sd_b = m.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert all(p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())
    x = images(1, 16)
    with torch.no_grad():
        assert torch.equal(m(x, sample=False)[0], loaded(x, sample=False)[0])
    m.save_pretrained(out)  # overwriting an existing directory works
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_load_errors_name_the_keys(tmp_path):
    out = tiny("ldm-tiny").save_pretrained(tmp_path / "vae")
    weights = out / "model.safetensors"
    good = load_file(str(weights))

    def write(state):
        save_file(state, str(weights))

    bad = dict(good)
    del bad["decoder.conv_out.bias"]
    bad["decoder.extra.weight"] = torch.zeros(1)
    bad["quant_conv.weight"] = torch.zeros(2, 2, 1, 1)
    write(bad)
    with pytest.raises(ValueError) as err:
        AutoencoderKL.from_pretrained(out)
    msg = str(err.value)
    assert "1 missing: decoder.conv_out.bias" in msg
    assert "1 unexpected: decoder.extra.weight" in msg
    assert "quant_conv.weight: file (2, 2, 1, 1) vs model (32, 32, 1, 1)" in msg

    # weights of another preset: SCN keys missing in the file
    write(good)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "scn": True}))
    with pytest.raises(ValueError, match="missing: decoder.mid.attn_1.norm.conv_b.bias"):
        AutoencoderKL.from_pretrained(out)
    (out / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        AutoencoderKL.from_pretrained(out)


def test_compile_for_training_is_in_place_and_leaves_the_last_conv_eager():
    model = AutoencoderKL(VAEConfig.from_preset("vivat-tiny"))
    keys = list(model.state_dict())
    assert model.compile_for_training() is model
    assert list(model.state_dict()) == keys  # nn.Module.compile: no _orig_mod prefixes
    assert model.encoder._compiled_call_impl is not None
    assert all(level._compiled_call_impl is not None for level in model.decoder.up)
    assert model.decoder.conv_out._compiled_call_impl is None


# -------------------------------------------------------------------------------------------
# Damaged model folders: errors name the file (and the field); files are readable by others
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, field",
    [
        ("{ not json", "not valid JSON"),
        ("[1, 2]", "a list"),
        ('"vivat"', "a string"),
        ({"ch": "32"}, "ch must be an integer, got '32' (a string)"),
        ({"ch": 32.5}, "ch must be an integer"),
        ({"scn": "yes"}, "scn must be true or false"),
        ({"ch_mult": [1, "2"]}, "ch_mult"),
        ({"ch_mult": 4}, "ch_mult"),
        ({"z_channels": -4}, "z_channels must be >= 1"),
        ({"chanels": 32}, "unknown VAEConfig field(s) ['chanels']"),
        ({"loss": {"kl_weight": -1}}, "loss.kl_weight must be >= 0"),
        ({"loss": {"disc_start": "soon"}}, "loss.disc_start must be an integer"),
        ({"loss": {"kl_wieght": 1e-6}}, "kl_wieght"),
        ({"loss": [1]}, "loss must be an object"),
        ({"padding_mode": "circular"}, "padding_mode"),
    ],
)
def test_malformed_config_json_names_the_file_and_the_field(tmp_path, text, field):
    from vivat.errors import ConfigError

    out = tiny("ldm-tiny").save_pretrained(tmp_path / "vae")
    if isinstance(text, dict):
        text = json.dumps({**json.loads((out / "config.json").read_text()), **text})
    (out / "config.json").write_text(text)
    with pytest.raises(ConfigError) as err:
        AutoencoderKL.from_pretrained(out)
    msg = str(err.value)
    assert str(out / "config.json") in msg and field in msg and "\n" not in msg
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "header_only"])
def test_damaged_weights_name_the_file(tmp_path, damage):
    from vivat.errors import WeightsError

    out = tiny("ldm-tiny").save_pretrained(tmp_path / "vae")
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {
            "garbage": bytes(range(256)) * 8,
            "empty": b"",
            "truncated": data[: len(data) // 2],
            "header_only": data[:8],
        }[damage]
    )
    with pytest.raises(WeightsError) as err:
        AutoencoderKL.from_pretrained(out)
    assert str(weights) in str(err.value) and "\n" not in str(err.value)


def test_mismatched_weights_are_a_weights_error(tmp_path):
    from vivat.errors import WeightsError

    out = tiny("ldm-tiny").save_pretrained(tmp_path / "vae")
    tiny("vivat-tiny").save_pretrained(tmp_path / "other")
    (out / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(WeightsError, match="model.safetensors does not match the model config"):
        AutoencoderKL.from_pretrained(out)


def test_saved_model_files_are_readable_by_others(tmp_path):
    import os

    if os.name != "posix":
        pytest.skip("POSIX permissions")
    old = os.umask(0o022)
    try:
        out = tiny("ldm-tiny").save_pretrained(tmp_path / "vae")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "config.json": 0o644,
        "model.safetensors": 0o644,
    }
    old = os.umask(0o077)  # a stricter umask is honoured, not widened
    try:
        out = tiny("ldm-tiny").save_pretrained(tmp_path / "private")
    finally:
        os.umask(old)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o600
