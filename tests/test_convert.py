"""vivat.convert: LDM / FLUX / diffusers weights in and out, and the VIVAT retrofit (SCN + reflect)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import vivat_kernels as vk
from vivat import AutoencoderKL, VAEConfig, convert
from vivat.cli import build_parser
from vivat.data import save_image
from vivat.errors import ConfigError, WeightsError

TOL = {"rtol": 1e-4, "atol": 1e-5}
E2E = {"rtol": 1e-4, "atol": 5e-5}  # whole models, two implementations
TINY = VAEConfig.from_preset("ldm-tiny")  # 8 norm groups: tests pass the config (32 is the default)


def tiny(config: VAEConfig = TINY, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    model = AutoencoderKL(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped key cannot go unnoticed
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def assert_same_weights(a: AutoencoderKL, b: AutoencoderKL) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def diffusers_twin(model: AutoencoderKL):
    """A diffusers AutoencoderKL of the same architecture (random weights)."""
    diffusers = pytest.importorskip("diffusers")
    cfg = model.config
    levels = len(cfg.ch_mult)
    return diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
        layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.z_channels,
        norm_num_groups=cfg.norm_groups,
        mid_block_add_attention=cfg.mid_attn,
    ).eval()


# -------------------------------------------------------------------------------------------
# Round trips
# -------------------------------------------------------------------------------------------
def test_ldm_to_vivat_to_diffusers_to_vivat_is_bitwise(tmp_path):
    ref = tiny()
    ckpt = {"first_stage_model." + k: v for k, v in ref.state_dict().items()}
    ckpt["cond_stage_model.transformer.x"] = torch.zeros(3)  # the rest of an SD 1.x checkpoint
    ckpt["model.diffusion_model.y"] = torch.zeros(3)
    torch.save({"state_dict": ckpt, "global_step": 10}, tmp_path / "sd.ckpt")
    model = convert.from_ldm(tmp_path / "sd.ckpt", config=TINY, family="sd")
    assert_same_weights(model, ref)
    assert (model.config.scaling_factor, model.config.shift_factor) == (0.18215, 0.0)
    out = convert.to_diffusers(model, tmp_path / "diffusers")
    d = json.loads((out / "config.json").read_text())
    assert d["block_out_channels"] == [32, 64, 64, 128] and d["scaling_factor"] == 0.18215
    back = convert.from_diffusers(out)
    assert back.config == model.config
    assert_same_weights(back, ref)


def test_ldm_family_guessed_from_pipeline_checkpoint_and_loss_keys_dropped():
    ref = tiny()
    sdxl = {"first_stage_model." + k: v for k, v in ref.state_dict().items()}
    sdxl["conditioner.embedders.0.x"] = torch.zeros(1)
    assert convert.from_ldm(sdxl, TINY).config.scaling_factor == 1.0  # a given config is kept as is
    notes: list[str] = []
    model = convert.from_ldm(sdxl, notes=notes)  # inferred config: 32 groups, not in the weights
    assert model.config.norm_groups == 32 and model.config.scaling_factor == 0.13025
    assert any("sdxl" in n for n in notes)
    vae_ckpt = dict(
        ref.state_dict(), **{"loss.discriminator.main.0.weight": torch.zeros(1), "loss.logvar": torch.zeros(())}
    )
    notes = []
    model = convert.from_ldm(vae_ckpt, TINY, notes=notes)
    assert_same_weights(model, ref)
    assert any("2 'loss.*'" in n for n in notes)


def test_flux_style_weights_without_quant_convs(tmp_path):
    cfg = TINY.replace(z_channels=16)
    ref = tiny(cfg)
    state = {k: v for k, v in ref.state_dict().items() if "quant_conv" not in k}
    save_file({"vae." + k: v for k, v in state.items()}, str(tmp_path / "ae.safetensors"))
    model = convert.from_ldm(tmp_path / "ae.safetensors", cfg, family="flux")
    assert (model.config.scaling_factor, model.config.shift_factor) == (0.3611, 0.1159)
    assert torch.equal(model.quant_conv.weight, torch.eye(32).view(32, 32, 1, 1))
    assert torch.equal(model.post_quant_conv.weight, torch.eye(16).view(16, 16, 1, 1))
    assert not model.quant_conv.bias.any() and not model.post_quant_conv.bias.any()
    out = convert.to_diffusers(model, tmp_path / "flux-diffusers")
    d = json.loads((out / "config.json").read_text())
    assert d["use_quant_conv"] is False and d["use_post_quant_conv"] is False and d["shift_factor"] == 0.1159
    assert_same_weights(convert.from_diffusers(out), model)
    # the identity convs change nothing: same outputs as applying the encoder / decoder directly
    x = images(1)
    with torch.no_grad():
        moments = model.encoder(x)
        torch.testing.assert_close(model.encode(x).mean, moments[:, :16], rtol=0, atol=0)


def test_diffusers_model_imports_with_same_outputs(tmp_path):
    dv = diffusers_twin(tiny())
    model = convert.from_diffusers(dv)
    assert model.config.norm_groups == 8 and model.config.scaling_factor == dv.config.scaling_factor
    x = images()
    with torch.no_grad():
        post, ref = model.encode(x), dv.encode(x).latent_dist
        torch.testing.assert_close(post.mean, ref.mean, **TOL)
        torch.testing.assert_close(post.logvar, ref.logvar, **TOL)
        torch.testing.assert_close(model.decode(post.mean), dv.decode(ref.mean).sample, **TOL)
    dv.save_pretrained(tmp_path / "pipe" / "vae")  # a pipeline folder: the vae/ subfolder is found
    assert_same_weights(convert.from_diffusers(tmp_path / "pipe"), model)
    assert_same_weights(convert.load(tmp_path / "pipe" / "vae"), model)


def test_old_attention_names_and_conv_shaped_weights():
    ref = tiny()
    state = convert.diffusers_state_dict(ref)
    old = {}
    for k, v in state.items():
        for new_name, old_name in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if f".attentions.0.{new_name}." in k:
                k = k.replace(new_name, old_name)
                v = v[:, :, None, None] if v.dim() == 2 else v  # 1x1-conv-shaped, as some exports store them
        old[k] = v
    assert any(".query.weight" in k for k in old)
    assert_same_weights(convert.from_diffusers(old, TINY), ref)
    assert_same_weights(convert.load(old, TINY), ref)


def test_exported_folder_loads_in_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    model = tiny()
    out = convert.to_diffusers(model, tmp_path / "vae")
    dv = diffusers.AutoencoderKL.from_pretrained(out).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(dv(x).sample, model(x, sample=False)[0], **E2E)


def test_reflect_export_plus_patch_reproduces_vivat(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    model = convert.vivatize(tiny(), scn=False, reflect=True)
    with pytest.warns(UserWarning, match="reflect_padding=True"):
        out = convert.to_diffusers(model, tmp_path / "vae")
    dv = diffusers.AutoencoderKL.from_pretrained(out).eval()
    assert vk.patch(dv, reflect_padding=True).changes_outputs
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(dv(x).sample, model(x, sample=False)[0], **E2E)


# -------------------------------------------------------------------------------------------
# VIVAT-ize
# -------------------------------------------------------------------------------------------
def test_identity_scn_reproduces_the_plain_decoder_exactly():
    plain = tiny()
    scn = convert.vivatize(plain, scn=True, reflect=False)
    assert scn.config.scn and scn.config.padding_mode == "zeros"
    assert scn.config.loss == VAEConfig.from_preset("vivat-tiny").loss  # the recipe of the model's scale
    norm = scn.decoder.up[0].block[0].norm1
    assert not norm.conv_y.weight.any() and torch.equal(norm.conv_y.bias, torch.ones_like(norm.conv_y.bias))
    assert not norm.conv_b.weight.any() and not norm.conv_b.bias.any()
    x = images()
    with torch.no_grad():
        z = plain.encode(x).mode()
        assert torch.equal(scn.encode(x).mode(), z)
        torch.testing.assert_close(scn.decode(z), plain.decode(z), rtol=0, atol=1e-6)
    result = convert.conversion_psnr(plain, scn, x)
    assert result["decode_psnr_db"] > 90 and result["latent_max_abs_diff"] == 0


@pytest.mark.parametrize(
    "config, preset",
    [
        (VAEConfig.from_preset("ldm-tiny"), "vivat-tiny"),
        (VAEConfig.from_preset("vivat-tiny"), "vivat-tiny"),
        (VAEConfig.from_preset("ldm-f8c4"), "vivat-f8c16"),  # SD's VAE: the full recipe, whatever z is
        (VAEConfig.from_preset("ldm-f8c16"), "vivat-f8c16"),
        (VAEConfig(ch=64, ch_mult=(1, 2, 4), num_res_blocks=1, norm_groups=16), "vivat-tiny"),  # nearest width
        (VAEConfig(ch=160, ch_mult=(1, 2, 4, 4), num_res_blocks=2), "vivat-f8c16"),
    ],
)
def test_vivatize_takes_the_loss_recipe_of_the_models_scale(config, preset):
    assert convert.vivat_recipe_preset(config) == preset
    with torch.device("meta"):
        model = AutoencoderKL(config)
    assert convert.vivat_recipe_preset(model.config) == preset
    recipe = VAEConfig.from_preset(preset).loss
    assert convert.vivatize(tiny(config.replace(padding_mode="zeros", scn=False)), reflect=False).config.loss == recipe


def test_reflect_vivatize_is_close_but_not_identical():
    plain = tiny()
    model = convert.vivatize(plain, scn=True, reflect=True)
    assert model.config.padding_mode == "reflect"
    result = convert.conversion_psnr(plain, model, images(size=64))
    assert 5 < result["decode_psnr_db"] < 100 and result["latent_max_abs_diff"] > 0


def test_scn_export_matches_diffusers_spatial_norm_decoder(tmp_path):
    """The SCN export uses the names of diffusers' spatial-norm decoder, and computes the same."""
    vae_module = pytest.importorskip("diffusers.models.autoencoders.vae")
    cfg = VAEConfig(
        ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, norm_groups=32, padding_mode="zeros", scn=True
    )
    model = tiny(cfg)
    with torch.no_grad():  # SCN away from the identity
        for name, p in model.named_parameters():
            if ".conv_y." in name or ".conv_b." in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("conv_y.bias") else 0.0))
    with pytest.warns(UserWarning, match="cannot load"):
        out = convert.to_diffusers(model, tmp_path / "scn")
    assert_same_weights(convert.from_diffusers(out), model)
    dec = vae_module.Decoder(
        in_channels=4,
        out_channels=3,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=32,
        norm_type="spatial",
    ).eval()
    state = convert.diffusers_state_dict(model)
    dec.load_state_dict({k[len("decoder.") :]: v for k, v in state.items() if k.startswith("decoder.")}, strict=True)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(dec(model.post_quant_conv(z), z), model.decode(z), **TOL)


# -------------------------------------------------------------------------------------------
# Checks and inference
# -------------------------------------------------------------------------------------------
def test_every_key_and_shape_is_checked():
    state = dict(tiny().state_dict())
    bad = dict(state)
    del bad["decoder.conv_out.bias"]
    with pytest.raises(ValueError, match="1 missing: decoder.conv_out.bias"):
        convert.from_ldm(bad, TINY)
    bad = dict(state, **{"decoder.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="1 unexpected: decoder.extra.weight"):
        convert.from_ldm(bad, TINY)
    bad = dict(state, **{"encoder.conv_in.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match="shape mismatch: encoder.conv_in.bias"):
        convert.from_ldm(bad, TINY)
    with pytest.raises(ValueError, match="diffusers naming"):
        convert.from_ldm(convert.diffusers_state_dict(tiny()), TINY)


def test_unreadable_weights_name_the_file(tmp_path):
    for name, payload in (
        ("vae.safetensors", b"\x00garbage" * 8),
        ("vae.ckpt", b"not a pickle"),
        ("e.safetensors", b""),
    ):
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(WeightsError, match=str(path)):
            convert.read_state_dict(path)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="config.json holds a JSON list"):
        convert.from_diffusers(tmp_path / "vae")


@pytest.mark.parametrize("preset", ["ldm-f8c4", "ldm-f8c16", "vivat-f8c16"])
def test_infer_config_from_weights(preset):
    cfg = VAEConfig.from_preset(preset)
    with torch.device("meta"):
        state = AutoencoderKL(cfg).state_dict()
    inferred = convert.infer_config(state)
    assert inferred == cfg.replace(padding_mode="zeros", loss=inferred.loss)
    assert (
        convert.infer_config(
            convert.diffusers_to_ldm_state({convert.ldm_to_diffusers_key(k, 4): v for k, v in state.items()})
        )
        == inferred
    )


def test_every_key_of_an_f8c4_model_round_trips_through_the_key_table():
    with torch.device("meta"):
        ldm = AutoencoderKL(VAEConfig.from_preset("ldm-f8c4")).state_dict()
    keys = list(ldm)
    levels = len(VAEConfig.from_preset("ldm-f8c4").ch_mult)
    mapped = [convert.ldm_to_diffusers_key(k, levels) for k in keys]
    assert len(set(mapped)) == len(keys)
    assert [convert.diffusers_to_ldm_key(k, levels) for k in mapped] == keys
    assert "decoder.up_blocks.0.resnets.0.conv1.weight" in mapped  # LDM's up.3: the lowest resolution
    assert "encoder.down_blocks.1.resnets.0.conv_shortcut.weight" in mapped
    assert "decoder.mid_block.attentions.0.to_out.0.bias" in mapped
    assert "encoder.conv_norm_out.weight" in mapped
    # the diffusers names are exactly those of diffusers' own AutoencoderKL of this architecture
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        twin = diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
        )
    assert sorted(mapped) == sorted(twin.state_dict())
    # the whole state dict, both ways, in one call each
    assert list(convert.diffusers_to_ldm_state(dict(zip(mapped, ldm.values())))) == keys


def test_old_diffusers_attention_names_read_as_current_ones():
    for old, current in (("query", "q"), ("key", "k"), ("value", "v"), ("proj_attn", "proj_out")):
        name = f"decoder.mid_block.attentions.0.{old}.weight"
        assert convert.diffusers_to_ldm_key(name, 4) == f"decoder.mid.attn_1.{current}.weight"


def test_key_maps_are_inverse():
    with torch.device("meta"):
        keys = list(AutoencoderKL(VAEConfig.from_preset("vivat-f8c16")).state_dict())
    mapped = [convert.ldm_to_diffusers_key(k, 4) for k in keys]
    assert len(set(mapped)) == len(keys)
    assert "decoder.up_blocks.0.resnets.2.norm1.conv_y.weight" in mapped  # up.3 = lowest resolution
    assert "decoder.mid_block.attentions.0.spatial_norm.norm_layer.weight" in mapped
    assert [convert.diffusers_to_ldm_key(k, 4) for k in mapped] == keys


# -------------------------------------------------------------------------------------------
# vivat convert (the CLI entry points)
# -------------------------------------------------------------------------------------------
def test_convert_command_vivatizes_and_reports_psnr(tmp_path, capsys):
    ref = tiny()
    save_file(ref.state_dict(), str(tmp_path / "vae.safetensors"))
    for i in range(2):
        save_image(images(1, 40, seed=i)[0] * 0.5 + 0.5, tmp_path / "imgs" / f"{i}.png")
    parser = build_parser()
    args = parser.parse_args(
        [
            "convert",
            "--from",
            str(tmp_path / "vae.safetensors"),
            "--to",
            str(tmp_path / "out"),
            "--scn",
            "--config",
            "ldm-tiny",
            "--family",
            "sdxl",
            "--images",
            str(tmp_path / "imgs"),
            "--size",
            "32",
        ]
    )
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "decoder PSNR vs original 100.00 dB" in printed
    model = AutoencoderKL.from_pretrained(tmp_path / "out")
    assert model.config.scn and model.config.scaling_factor == 0.13025
    args = parser.parse_args(
        ["convert", "--from", str(tmp_path / "out"), "--to", str(tmp_path / "d"), "--format", "diffusers"]
    )
    assert args.run(args) == 0
    assert "cannot load" in capsys.readouterr().out
    assert_same_weights(convert.from_diffusers(tmp_path / "d"), model)
