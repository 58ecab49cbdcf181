"""vivat.evaluate: artifact scores alongside the metrics, and the per-image callback."""

from __future__ import annotations

import math

import torch

from vivat.artifacts import SCORE_NAMES, diagnose
from vivat.config import VAEConfig
from vivat.data import save_image
from vivat.evaluate import evaluate_folder
from vivat.metrics import quantize
from vivat.model import AutoencoderKL


def test_evaluate_folder_with_artifacts(tmp_path):
    g = torch.Generator().manual_seed(3)
    for i, (h, w) in enumerate([(64, 72), (70, 64)]):  # the second is cropped to 64 x 64
        save_image(torch.rand(3, h, w, generator=g), tmp_path / "val" / f"{i}.png")
    torch.manual_seed(0)
    model = AutoencoderKL(VAEConfig.from_preset("vivat-tiny")).eval().requires_grad_(False)
    kept = {}
    report = evaluate_folder(
        model, tmp_path / "val", lpips=False, artifacts=True, keep=lambda p, x, y, f, s: kept.update({p.name: (x, y, f, s)})
    )
    assert set(kept) == {"0.png", "1.png"}
    names = (*SCORE_NAMES, "droplet_features")
    for row in report["images"]:
        x, y, features, passed = kept[row["file"].rsplit("/", 1)[-1]]
        assert list(x.shape[-2:]) == row["scored_size"] and x.shape == y.shape
        assert features and all(name.startswith("decoder.") for name in features)
        expected = diagnose(x[None], quantize(y[None]), features=features)
        for name in names:
            assert math.isclose(row[name], expected[name], rel_tol=1e-6, abs_tol=1e-9), name
            assert passed[name] == row[name]
    for name in names:
        assert math.isclose(report["mean"][name], sum(r[name] for r in report["images"]) / 2, rel_tol=1e-9)
    plain = evaluate_folder(model, tmp_path / "val", lpips=False)
    assert "grid" not in plain["mean"] and "grid" not in plain["images"][0]
    assert plain["mean"]["psnr"] == report["mean"]["psnr"]
