"""Tests for the demo's recipe and its comparison pictures and words (vivat.demo, vivat.report.demo).

The end-to-end ``vivat demo --quick`` run is in tests/test_cli.py.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vivat import demo as D
from vivat.config import VAEConfig
from vivat.report.demo import comparison_table, edge_crops, verdict, write_crop_figure


@pytest.mark.parametrize("settings", [D.DEMO_SETTINGS, D.QUICK_SETTINGS], ids=["default", "quick"])
def test_demo_recipe_starts_the_discriminator_and_the_decoder_stage_inside_the_run(settings):
    for preset in (D.PRESET, D.BASELINE):
        cfg = D.model_config(preset, settings)
        assert 0 < cfg.loss.disc_start < settings["steps"]
        assert cfg.loss.perceptual_weight == 0.0
        # everything else is the preset's
        assert cfg.replace(disc_start=0, perceptual_weight=1.0) == VAEConfig.from_preset(preset).replace(disc_start=0)
    switch = D.model_config(D.PRESET, settings).loss.decoder_only_step(settings["steps"])
    assert switch is not None and D.model_config(D.PRESET, settings).loss.disc_start < switch < settings["steps"]
    assert settings["lr_schedule"] == "cosine" and 0 < settings["warmup_steps"] < settings["steps"]


def test_edge_crops_cut_corners_and_borders_and_measure_each_model():
    x = torch.rand(3, 96, 128)
    model = x.clone()
    baseline = x.clone()
    baseline[:, :16, :16] += 0.2  # the baseline is wrong in its top-left corner only
    crops = edge_crops("photo", x, model, baseline.clamp(0, 1), side=32)
    assert [c.where for c in crops][:4] == [
        "top-left corner",
        "top-right corner",
        "bottom-left corner",
        "bottom-right corner",
    ]
    assert len(crops) == 8 and all(c.original.shape == (3, 32, 32) for c in crops)
    worst = max(crops, key=lambda c: c.baseline_error - c.model_error)
    assert worst.where == "top-left corner" and worst.model_error == 0.0 and worst.baseline_error > 0.03
    br = next(c for c in crops if c.where == "bottom-right corner")
    assert (br.top, br.left) == (64, 96) and torch.equal(br.original, x[:, 64:, 96:])
    assert next(c for c in crops if c.where == "right border").left == 96
    with pytest.raises(ValueError, match="one shape"):
        edge_crops("photo", x, model[:, :50], baseline)


def test_crop_figure_has_one_row_per_crop_enlarged(tmp_path):
    x = torch.rand(3, 64, 64)
    crops = edge_crops("photo", x, (x + 0.05).clamp(0, 1), (x - 0.1).clamp(0, 1), side=24)[:3]
    path = write_crop_figure(crops, tmp_path / "crops.png", labels=("vivat-tiny", "ldm-tiny"), scale=3)
    with Image.open(path) as im:
        w, h = im.size
    assert w >= 5 * 24 * 3 and h >= 3 * 24 * 3
    with pytest.raises(ValueError, match="no crops"):
        write_crop_figure([], tmp_path / "none.png")


def test_verdicts_compare_the_difference_with_the_noise():
    assert verdict(0.10, 0.20, 0.05) == "lower (better) beyond the noise"
    assert verdict(0.20, 0.10, 0.05) == "higher (worse) beyond the noise"
    assert verdict(0.12, 0.10, 0.05) == "within run-to-run noise"
    assert verdict(0.12, 0.10, None) == "no noise estimate"
    assert verdict(None, 0.10, 0.05) == "n/a"
    rows = [("psnr", "PSNR", True), ("grid", "grid", False), ("lpips", "LPIPS", False)]
    lines = comparison_table(
        rows,
        {"psnr": 23.0, "grid": 0.05, "lpips": None},
        {"psnr": 22.0, "grid": 0.06, "lpips": None},
        {"psnr": 0.3, "grid": 0.02},
    )
    assert "higher (better) beyond the noise" in lines[2]  # PSNR: higher is better
    assert "within run-to-run noise" in lines[3]
    assert lines[4].endswith("n/a |")


def test_plain_words_name_what_exceeds_the_noise(monkeypatch):
    monkeypatch.setattr(D, "RUN_TO_RUN", {"psnr": 0.2, "corner": 0.01})
    words = D._plain_words({"psnr": 23.0, "corner": 0.05}, {"psnr": 22.0, "corner": 0.055})
    assert len(words) == 1
    assert "beyond the run-to-run noise: PSNR (dB) (better with the fixes)" in words[0]
    assert "Within the noise (not evidence either way): corner" in words[0]
    monkeypatch.setattr(D, "RUN_TO_RUN", {})
    assert "no difference above can be called real" in D._plain_words({"psnr": 1.0}, {"psnr": 0.0})[0]
