"""Loss scale and presets, generator / discriminator losses, adaptive weight, LPIPS loading, training signal."""

from __future__ import annotations

import dataclasses
import math
import socket
import warnings

import pytest
import torch
import torch.nn.functional as F

from vivat import AutoencoderKL, VAEConfig
from vivat.config import LDM_ADAPTIVE_WEIGHT_MAX
from vivat.losses import NLayerDiscriminator, VAELoss, hinge_d_loss, load_lpips_vgg

NO_LPIPS = {"perceptual_weight": 0.0}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection (e.g. a weight download) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def tiny_model(seed: int = 0, name: str = "vivat-tiny") -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(VAEConfig.from_preset(name))


def loss_fn(**changes) -> VAELoss:
    torch.manual_seed(0)
    cfg = dataclasses.replace(VAEConfig.from_preset("vivat-tiny").loss, **{**NO_LPIPS, **changes})
    return VAELoss(cfg)


def batch(n: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# -------------------------------------------------------------------------------------------
# Presets and the LDM scale conversion
# -------------------------------------------------------------------------------------------
def test_preset_loss_weights():
    ldm, vivat = VAEConfig.from_preset("ldm-f8c4").loss, VAEConfig.from_preset("vivat-f8c16").loss
    assert (ldm.l1_weight, ldm.perceptual_weight, ldm.kl_weight, ldm.adv_weight) == (1.0, 1.0, 1e-6, 0.5)
    assert ldm.adaptive_weight_max == pytest.approx(1e4 / (3 * 256 * 256)) == LDM_ADAPTIVE_WEIGHT_MAX
    assert (ldm.disc_start, ldm.decoder_only_from) == (50001, None)
    assert vivat.kl_weight == pytest.approx(ldm.kl_weight / 10)
    assert vivat.adaptive_weight_max < ldm.adaptive_weight_max
    assert vivat.decoder_only_from == 0.9 and vivat.decoder_only_step(100_000) == 90_000
    assert ldm.decoder_only_step(100_000) is None
    for name in ("vivat-tiny", "ldm-tiny"):
        tiny = VAEConfig.from_preset(name).loss
        assert tiny.disc_start < ldm.disc_start
    assert VAEConfig.from_preset("ldm-f8c16").loss == ldm


def test_mean_scale_is_ldm_sum_scale_divided_by_element_count():
    """L_ours = L_LDM / (C*H*W) with LDM's weights unchanged, adaptive weight included."""
    model = tiny_model()
    loss = loss_fn(kl_weight=1e-6, disc_start=0, adaptive_weight_max=1e9)
    x = batch(2, 32)
    x_hat, post = model(x)
    n_el = x[0].numel()
    # LDM (logvar 0): per-sample sums, batch mean.
    nll_ldm = (x - x_hat).abs().sum() / x.shape[0]
    kl_ldm = post.kl().sum() / x.shape[0]
    g = -loss.discriminator(x_hat).mean()
    last = model.last_layer()
    grad_nll = torch.autograd.grad(nll_ldm, last, retain_graph=True)[0].norm()
    grad_g = torch.autograd.grad(g, last, retain_graph=True)[0].norm()
    w_ldm = grad_nll / (grad_g + 1e-4)
    total_ldm = nll_ldm + 1e-6 * kl_ldm + 0.5 * w_ldm * g

    total, logs = loss.generator_loss(x, x_hat, post, step=0, last_layer=last)
    torch.testing.assert_close(total, total_ldm / n_el, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(logs["adaptive_weight"] * n_el, w_ldm, rtol=1e-4, atol=1e-6)


# -------------------------------------------------------------------------------------------
# Generator loss
# -------------------------------------------------------------------------------------------
def test_generator_loss_before_disc_start():
    model, loss = tiny_model(), loss_fn(disc_start=10)
    calls = []
    loss.discriminator.register_forward_hook(lambda *a: calls.append(1))
    x = batch()
    x_hat, post = model(x)
    total, logs = loss.generator_loss(x, x_hat, post, step=9, last_layer=model.last_layer())
    assert torch.isfinite(total) and not calls
    assert logs["adaptive_weight"] == 0 and logs["g_loss"] == 0 and logs["lpips"] == 0
    torch.testing.assert_close(total, logs["l1"] + 1e-7 * logs["kl"])
    torch.testing.assert_close(logs["kl"], post.kl().mean().detach() / (3 * 32 * 32))
    total.backward()
    assert model.encoder.conv_in.weight.grad is not None and model.last_layer().grad is not None
    assert all(p.grad is None for p in loss.discriminator.parameters())


def test_adaptive_weight_active_and_capped():
    model = tiny_model()
    x = batch()
    x_hat, post = model(x)
    last = model.last_layer()

    free = loss_fn(disc_start=0, adaptive_weight_max=1e9)
    _, logs = free.generator_loss(x, x_hat, post, step=0, last_layer=last)
    w_free = logs["adaptive_weight"]
    assert w_free > 0 and logs["g_loss"] != 0

    capped = loss_fn(disc_start=0, adaptive_weight_max=float(w_free) / 2)
    capped.discriminator.load_state_dict(free.discriminator.state_dict())
    total, logs = capped.generator_loss(x, x_hat, post, step=0, last_layer=last)
    assert logs["adaptive_weight"] == pytest.approx(float(w_free) / 2)
    expected = logs["l1"] + capped.cfg.kl_weight * logs["kl"] + 0.5 * logs["adaptive_weight"] * logs["g_loss"]
    torch.testing.assert_close(total.detach(), expected)

    flags = [p.requires_grad for p in capped.discriminator.parameters()]
    total.backward()
    assert all(p.grad is None for p in capped.discriminator.parameters())  # D untouched by the G step
    assert flags == [p.requires_grad for p in capped.discriminator.parameters()] and all(flags)
    assert model.decoder.conv_in.weight.grad is not None

    with pytest.raises(ValueError, match="last_layer"):
        capped.generator_loss(x, x_hat, post, step=0)
    with torch.no_grad():  # validation: no autograd, no adaptive weight
        _, logs = capped.generator_loss(x, x_hat.detach(), post, step=0)
    assert logs["adaptive_weight"] == 0


# -------------------------------------------------------------------------------------------
# Discriminator
# -------------------------------------------------------------------------------------------
def test_discriminator_shapes_and_init():
    torch.manual_seed(0)
    d = NLayerDiscriminator()
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)  # 256 px -> 30x30 patches, as LDM
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and abs(float(convs[2].weight.detach().std()) - 0.02) < 2e-3
    norms = [m for m in d.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 3 and all(torch.all(n.bias == 0) for n in norms)
    bn = NLayerDiscriminator(norm="batch")
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 3
    with pytest.raises(ValueError):
        NLayerDiscriminator(norm="layer")


def test_hinge_values():
    ones = torch.ones(2, 1, 3, 3)
    assert hinge_d_loss(2 * ones, -2 * ones) == 0
    assert hinge_d_loss(0 * ones, 0 * ones) == 1
    assert hinge_d_loss(-ones, ones) == 2


def test_discriminator_loss():
    model, loss = tiny_model(), loss_fn(disc_start=5)
    x = batch()
    x_hat, _ = model(x)
    zero, logs = loss.discriminator_loss(x, x_hat, step=4)
    assert zero == 0 and logs["d_loss"] == 0
    zero.backward()  # a loop may backprop it unconditionally
    assert all(p.grad is None for p in loss.discriminator.parameters())

    d_loss, logs = loss.discriminator_loss(x, x_hat, step=5)
    assert torch.isfinite(d_loss) and d_loss > 0
    torch.testing.assert_close(d_loss.detach(), hinge_d_loss(loss.discriminator(x), loss.discriminator(x_hat)).detach())
    d_loss.backward()
    assert all(p.grad is not None for p in loss.discriminator.parameters())
    assert all(p.grad is None for p in model.parameters())  # x_hat is detached for D


# -------------------------------------------------------------------------------------------
# LPIPS: local files only, never a random trunk
# -------------------------------------------------------------------------------------------
def test_lpips_missing_warns_and_disables(empty_torch_home):
    cfg = VAEConfig.from_preset("vivat-tiny").loss
    assert cfg.perceptual_weight == 1.0
    with pytest.warns(
        RuntimeWarning, match=r"LPIPS disabled: .*vgg16-397923af.pth.* not found in .*torch_home.hub.checkpoints"
    ):
        loss = VAELoss(cfg)
    assert loss.lpips is None and loss.perceptual_weight == 0.0
    assert "LPIPS disabled" in loss.lpips_status
    with pytest.raises(FileNotFoundError, match="LPIPS disabled"):
        VAELoss(cfg, require_lpips=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VAELoss(dataclasses.replace(cfg, perceptual_weight=0.0))  # not wanted: not looked for


def test_lpips_loads_local_files_only(empty_torch_home, monkeypatch):
    """Plumbing with a stand-in trunk file (random values): refused for its hash; with the hash
    check patched out, the loader maps and freezes it."""
    ckpt = empty_torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    widths = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    widths += [(256, 512)] + [(512, 512)] * 5
    conv_idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    g = torch.Generator().manual_seed(0)
    trunk = {}
    for i, (cin, cout) in zip(conv_idx, widths):
        trunk[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        trunk[f"features.{i}.bias"] = torch.zeros(cout)
    torch.save(trunk, ckpt / "vgg16-397923af.pth")
    with pytest.raises(FileNotFoundError, match="LPIPS disabled: .*does not match torchvision's published SHA-256"):
        load_lpips_vgg()

    monkeypatch.setattr("vivat.metrics._trunk_hash_ok", lambda path: (True, ""))
    net = load_lpips_vgg()
    assert torch.equal(net.net.slice3.state_dict()["14.weight"], trunk["features.14.weight"])
    assert not net.training and not any(p.requires_grad for p in net.parameters())

    loss = VAELoss(VAEConfig.from_preset("vivat-tiny").loss, require_lpips=True)
    assert loss.lpips is not None and loss.perceptual_weight == 1.0
    loss.train()
    assert not loss.lpips.training and loss.discriminator.training
    x = batch(1, 16)
    post = tiny_model().encode(x)
    _, same = loss.generator_loss(x, x, post, step=0)
    _, diff = loss.generator_loss(x, x.flip(-1), post, step=0)
    assert same["lpips"] == 0 and diff["lpips"] > 0
    torch.testing.assert_close(diff["rec"], diff["l1"] + diff["lpips"])


# -------------------------------------------------------------------------------------------
# Training signal
# -------------------------------------------------------------------------------------------
def test_tiny_vivat_reconstruction_improves_on_a_real_image():
    skimage_data = pytest.importorskip("skimage.data")
    img = torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1).float().div(255)  # (3, 512, 512)
    face = img[:, 0:256, 128:384]  # crop around the face, then downscale: real image statistics
    x = F.interpolate(face[None], size=(32, 32), mode="area") * 2 - 1
    model = tiny_model(seed=0).train()
    loss = loss_fn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for step in range(20):
        x_hat, post = model(x, generator=torch.Generator().manual_seed(step))
        total, logs = loss.generator_loss(x, x_hat, post, step=step, last_layer=model.last_layer())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        history.append(float(logs["l1"]))
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-3:]) / 3 < 0.7 * sum(history[:3]) / 3, history
