"""Tests for vivat.metrics: pinned PSNR / SSIM / quantisation, offline LPIPS loading, eval sizing."""

import math
from pathlib import Path

import pytest
import torch

from vivat import metrics as M


def _photo(size=192):
    """A real photograph (scikit-image's bundled astronaut), cropped, as (3, H, W) in [0, 1]."""
    from skimage import data

    img = data.astronaut()[100 : 100 + size, 150 : 150 + size]  # (H, W, 3) uint8
    return torch.from_numpy(img).permute(2, 0, 1).double() / 255.0


def _distort(x, seed=0):
    g = torch.Generator().manual_seed(seed)
    blurred = torch.nn.functional.avg_pool2d(x.unsqueeze(0), 3, stride=1, padding=1, count_include_pad=False)[0]
    noisy = blurred + 0.03 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return M.quantize(noisy)


# ---------------------------------------------------------------------------- PSNR


def test_psnr_identical_is_capped_at_100db():
    x = torch.rand(2, 3, 16, 16)
    p = M.psnr(x, x)
    assert p.shape == (2,)
    assert torch.all(torch.isfinite(p))
    assert torch.allclose(p, torch.full((2,), 100.0, dtype=p.dtype))
    assert M.PSNR_CAP_DB == pytest.approx(100.0)


def test_psnr_constant_offset_known_value():
    x = torch.rand(3, 3, 32, 32) * 0.6 + 0.2
    for off, expected in [(0.1, 20.0), (0.01, 40.0), (0.05, -20 * math.log10(0.05))]:
        p = M.psnr(x, x + off)
        assert torch.allclose(p, torch.full_like(p, expected), atol=1e-5), (off, p)


def test_psnr_is_per_image_not_pooled():
    x = torch.zeros(2, 3, 16, 16)
    y = x.clone()
    y[0] += 0.1  # 20 dB
    y[1] += 0.01  # 40 dB
    p = M.psnr(x, y)
    assert p.tolist() == pytest.approx([20.0, 40.0], abs=1e-6)
    r = M.evaluate_pairs(x, y, quantise=False)
    assert r["psnr_mean"] == pytest.approx(30.0, abs=1e-6)
    pooled = 10 * math.log10(1 / ((0.1**2 + 0.01**2) / 2))
    assert abs(r["psnr_mean"] - pooled) > 1.0


def test_psnr_accepts_single_image_and_checks_shapes():
    x = torch.rand(3, 8, 8)
    assert M.psnr(x, x).shape == (1,)
    with pytest.raises(ValueError):
        M.psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


# ---------------------------------------------------------------------------- SSIM


def test_ssim_matches_skimage_on_a_photo():
    from skimage.metrics import structural_similarity

    x = _photo()
    y = _distort(x)
    ours = M.ssim(x, y)
    assert ours.shape == (1,)
    ref = structural_similarity(
        x.numpy(),
        y.numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=0,
    )
    assert 0.3 < ref < 0.99  # a meaningful, non-trivial comparison
    assert abs(float(ours[0]) - ref) < 1e-3
    assert abs(float(ours[0]) - ref) < 1e-6  # in practice the same numbers


def test_ssim_matches_torchmetrics_per_image():
    # torchmetrics (1.9) reflect-pads and averages the whole map, including the 5-pixel border
    # whose windows reach into the padding; scikit-image, pytorch-msssim and the reference
    # implementation score only the valid region, which is the convention here. On the valid
    # region the two agree.
    tm = pytest.importorskip("torchmetrics.functional.image")
    x = torch.stack([_photo(96), _photo(96).flip(-1)])
    y = torch.stack([_distort(x[0], 1), _distort(x[1], 2)])
    _, ssim_map = tm.structural_similarity_index_measure(
        y,
        x,
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        data_range=1.0,
        reduction="none",
        return_full_image=True,
    )
    ref = ssim_map[..., 5:-5, 5:-5].flatten(1).mean(1)
    ours = M.ssim(x, y)
    assert ours.shape == (2,)
    assert torch.allclose(ours, ref.double(), atol=1e-6)


def test_ssim_identical_and_too_small():
    x = torch.rand(2, 3, 24, 20)
    assert torch.allclose(M.ssim(x, x), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError):
        M.ssim(torch.rand(1, 3, 10, 40), torch.rand(1, 3, 10, 40))


# ---------------------------------------------------------------------------- quantize


def test_quantize_clamps_and_rounds_to_uint8_levels():
    x = torch.tensor([-0.5, 0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 0.3, 1.0, 1.7])
    q = M.quantize(x)
    levels = q * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert q.min() >= 0 and q.max() <= 1
    assert q[0] == 0 and q[-1] == 1 and q[-2] == 1
    assert q[2] == 0 and q[3] == pytest.approx(1 / 255)
    assert float(q[4]) == pytest.approx(77 / 255)  # 76.5 rounds half up
    assert q.dtype == x.dtype
    assert torch.equal(M.quantize(q), q)  # idempotent


def test_quantize_equals_png_round_trip(tmp_path):
    from vivat.data import load_image, save_image

    x = torch.rand(3, 9, 13) * 1.2 - 0.1
    p = save_image(x, tmp_path / "q.png")
    assert torch.allclose(load_image(p), M.quantize(x), atol=1e-7)


# ---------------------------------------------------------------------------- LPIPS


def test_lpips_trunk_file_names_follow_torchvision(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert M.lpips_trunk_path("alex") == tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert M.lpips_trunk_path("vgg").name == "vgg16-397923af.pth"
    assert torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url.endswith(M.lpips_trunk_path("alex").name)
    assert torchvision.models.VGG16_Weights.IMAGENET1K_V1.url.endswith(M.lpips_trunk_path("vgg").name)


def test_lpips_linear_weights_ship_with_the_package():
    pytest.importorskip("lpips")
    for net in ("alex", "vgg"):
        p = M.lpips_linear_path(net)
        assert p is not None and p.is_file(), p


def test_lpips_missing_trunk_warns_and_returns_none(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ok, reason = M.lpips_status("alex")
    assert not ok and "alexnet-owt-7be5be79.pth" in reason
    with pytest.warns(RuntimeWarning) as rec:
        model = M.load_lpips("alex")
    assert model is None
    msgs = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1
    assert "alexnet-owt-7be5be79.pth" in msgs[0]
    assert str(tmp_path / "hub" / "checkpoints") in msgs[0]

    with pytest.raises(RuntimeError, match="vgg16-397923af.pth"):
        M.load_lpips("vgg", require=True)

    r = M.evaluate_pairs(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), lpips_unavailable_reason=reason)
    assert r["lpips"] is None and r["lpips_mean"] is None
    assert r["settings"]["lpips"].startswith("unavailable: ")
    assert "alexnet-owt-7be5be79.pth" in r["settings"]["lpips"]


def _write_fake_alex_trunk(torch_home: Path):
    """Random AlexNet trunk weights saved under torchvision's file name (stand-in for the real file)."""
    import torchvision

    tv = torchvision.models.alexnet(weights=None)
    sd = {k: v.clone() for k, v in tv.state_dict().items() if k.startswith("features.")}
    sd["classifier.1.weight"] = torch.zeros(1)  # non-trunk entries in the file are ignored
    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    path = ckpt / "alexnet-owt-7be5be79.pth"
    torch.save(sd, path)
    return tv.features.eval(), path


def test_lpips_offline_plumbing_with_fake_trunk(tmp_path, monkeypatch):
    # PLUMBING ONLY: the trunk below is random, so the numbers are not LPIPS. The test proves that
    # the trunk is read from $TORCH_HOME/hub/checkpoints, mapped into lpips' layers correctly and
    # that nothing is downloaded.
    pytest.importorskip("lpips")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    features, path = _write_fake_alex_trunk(tmp_path)

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(M, "download_file", no_download)
    monkeypatch.delenv("VIVAT_NO_DOWNLOAD", raising=False)  # the file is there: nothing to fetch anyway

    # the random file does not carry torchvision's hash: refused by default
    with pytest.warns(RuntimeWarning, match="SHA-256"):
        assert M.load_lpips("alex") is None
    with pytest.raises(RuntimeError, match="SHA-256"):
        M.load_lpips("alex", require=True)

    model = M.load_lpips("alex", check_hash=False)
    assert model is not None
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.vivat_trunk_file == str(path)

    # the lpips trunk computes exactly what the torchvision trunk with the file's weights computes
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        outs = model.net(x)
        assert torch.allclose(outs.relu1, features[:2](x), atol=1e-5)
        assert torch.allclose(outs.relu5, features[:12](x), atol=1e-5)

    # linear layers come from the package's file
    lin_sd = torch.load(M.lpips_linear_path("alex"), map_location="cpu", weights_only=True)
    for k, v in lin_sd.items():
        assert torch.equal(model.state_dict()[k], v), k

    a = torch.rand(2, 3, 64, 64)
    b = M.quantize(a + 0.1 * torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        d_same = M.lpips_distance(model, a, a)
        d_diff = M.lpips_distance(model, a, b)
    assert d_same.shape == (2,) and torch.allclose(d_same, torch.zeros(2), atol=1e-6)
    assert torch.all(d_diff > 0)

    r = M.evaluate_pairs(a, b, lpips_model=model)
    assert len(r["lpips"]) == 2 and r["lpips_mean"] > 0
    assert "plumbing only" in r["settings"]["lpips"]  # never passes for a real LPIPS


# ---------------------------------------------------------------------------- evaluate_pairs


def test_evaluate_pairs_reports_settings_and_quantises():
    x = M.quantize(torch.rand(2, 3, 24, 24))
    y = x + 0.3 / 255  # rounds back to x after quantisation
    r = M.evaluate_pairs(x, y)
    assert r["n"] == 2
    assert r["psnr"] == pytest.approx([100.0, 100.0])
    assert r["ssim"] == pytest.approx([1.0, 1.0])
    assert r["psnr_mean"] == pytest.approx(100.0)
    s = r["settings"]
    assert s["data_range"] == 1.0 and s["ssim_window"] == 11 and s["ssim_sigma"] == 1.5
    assert s["quantised"] is True
    assert s["lpips"].startswith("unavailable")
    r2 = M.evaluate_pairs(x, y, quantise=False)
    assert r2["psnr_mean"] < 60


def test_evaluate_pairs_lists_of_different_sizes_and_range_check():
    xs = [torch.rand(3, 16, 24), torch.rand(3, 32, 16)]
    ys = [M.quantize(xs[0] + 0.1), xs[1]]
    r = M.evaluate_pairs(xs, ys)
    assert len(r["psnr"]) == 2 and len(r["ssim"]) == 2
    assert r["psnr_mean"] == pytest.approx(sum(r["psnr"]) / 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.evaluate_pairs(torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16))


# ---------------------------------------------------------------------------- eval sizing


def test_prepare_eval_image_crop_and_pad():
    img = torch.rand(3, 37, 50)
    c, info = M.prepare_eval_image(img, "crop")
    assert c.shape == (3, 32, 48)
    assert info.mode == "crop" and info.orig_size == (37, 50) and info.size == (32, 48)
    top, left = info.offset
    assert torch.equal(c, img[:, top : top + 32, left : left + 48])
    assert "crop" in info.describe()

    p, info = M.prepare_eval_image(img, "pad")
    assert p.shape == (3, 40, 56) and info.mode == "pad"
    assert torch.equal(M.unpad(p, info), img)
    # reflection: the first padded row mirrors the row above the last one
    assert torch.equal(p[:, 37, :50], img[:, 35])
    assert torch.equal(p[:, :37, 50], img[:, :, 48])
    assert "pad" in info.as_dict()["description"]

    same, info = M.prepare_eval_image(torch.rand(2, 3, 16, 8), "pad")
    assert info.mode == "none" and same.shape == (2, 3, 16, 8)

    tiny, info = M.prepare_eval_image(torch.rand(3, 3, 1), "pad")
    assert tiny.shape == (3, 8, 8)
    with pytest.raises(ValueError):
        M.prepare_eval_image(torch.rand(3, 5, 5), "crop")
    with pytest.raises(ValueError):
        M.prepare_eval_image(img, "stretch")
