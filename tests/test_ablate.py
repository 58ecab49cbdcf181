"""`vivat ablate`: the variant table, an end-to-end run on tiny data, reuse, and its errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from vivat.ablate import FIXES, own_artifact_changes, run_ablation, variant_config, variants
from vivat.cli import main
from vivat.config import VAEConfig
from vivat.data import save_image
from vivat.train import TrainConfig


def test_fixes_add_up_to_the_vivat_preset():
    table = variants("tiny")
    assert list(table) == ["baseline", "baseline-seed+1", *[f.name for f in FIXES], "all-fixes"]
    base = VAEConfig.from_preset("ldm-tiny")
    assert table["baseline"][0] == base
    assert table["all-fixes"][0] == VAEConfig.from_preset("vivat-tiny")
    assert table["baseline-seed+1"][1] == 1
    for fix in FIXES:
        cfg = table[fix.name][0]
        # exactly the fix's fields differ from the baseline
        changed = {k for k in ("padding_mode", "scn") if getattr(cfg, k) != getattr(base, k)}
        changed |= {k for k in dataclass_names(cfg.loss) if getattr(cfg.loss, k) != getattr(base.loss, k)}
        assert changed == set(fix.fields), fix.name
    full = variants("full", noise_run=False)
    assert "baseline-seed+1" not in full
    assert full["all-fixes"][0] == VAEConfig.from_preset("vivat-f8c16")
    with pytest.raises(ValueError, match="scale"):
        variants("huge")


def dataclass_names(obj) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(obj)]


def test_own_artifact_verdicts():
    def mean(**kw):
        m = {k: 1.0 for k in ("color_shift", "grid", "blur", "border", "corner", "droplet", "droplet_features")}
        m.update(kw)
        return {"mean": m}

    results = {
        "baseline": mean(),
        "baseline-seed+1": mean(grid=1.1, corner=1.5),
        "+adaptive-cap": mean(grid=0.5),  # 0.5 lower, noise 0.1: better
        "+reflect-pad": mean(border=1.2, corner=0.8),  # corner change 0.2 < noise 0.5
    }
    rows = {(r["variant"], r["score"]): r for r in own_artifact_changes(results)}
    assert rows[("+adaptive-cap", "grid")]["verdict"] == "better"
    assert math.isclose(rows[("+adaptive-cap", "grid")]["relative"], -0.5)
    assert rows[("+reflect-pad", "border")]["verdict"] == "worse"
    assert rows[("+reflect-pad", "corner")]["verdict"] == "within run-to-run noise"
    assert ("+scn", "droplet") not in rows


def test_variants_are_the_base_config_with_the_variant_model(tmp_path):
    base = TrainConfig(data="d", val="v", out=str(tmp_path), steps=40, size=32, batch_size=2, lr=3e-4, seed=5)
    base = dataclasses.replace(base, amp="off")
    cfg = VAEConfig.from_preset("ldm-tiny")
    run = variant_config(base, "baseline-seed+1", cfg, seed_offset=1)
    assert run.model_config == cfg and run.preset is None and run.init is None
    assert run.out == str(tmp_path / "baseline-seed+1") and run.seed == 6
    shared = (run.steps, run.size, run.batch_size, run.lr, run.amp, run.data, run.val)
    assert shared == (40, 32, 2, 3e-4, "off", "d", "v")
    assert run.disc_start == 20 and run.ckpt_every == 4 and run.keep_ckpts == 1 and run.val_every == 40
    assert not run.resume and run.overwrite and run.progress is False
    assert variant_config(TrainConfig(data="d", out=str(tmp_path), steps=40, disc_start=7), "x", cfg).disc_start == 7
    with pytest.raises(TypeError, match="TrainConfig"):
        run_ablation({"data": "d"})
    with pytest.raises(ValueError, match="val"):
        run_ablation(TrainConfig(data=str(tmp_path), out=str(tmp_path / "o")))


@pytest.fixture()
def tiny_photos(tmp_path):
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            # smooth random colour fields: something a few steps can start to learn
            low = torch.rand(3, 6, 6, generator=g)
            img = torch.nn.functional.interpolate(low[None], size=(72, 72), mode="bilinear", align_corners=False)[0]
            save_image(img.clamp(0, 1), tmp_path / split / f"{i}.png")
    return tmp_path


def test_ablate_end_to_end_and_reuse(tiny_photos, tmp_path, capsys):
    out = tmp_path / "abl"
    args = [
        "ablate", "--data", str(tiny_photos / "train"), "--val", str(tiny_photos / "val"), "--out", str(out),
        "--steps", "3", "--size", "32", "--batch-size", "2", "--jobs", "1", "--max-side", "64", "--no-lpips",
        "--only", "baseline,baseline-seed+1,+reflect-pad,all-fixes",
    ]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "ablation.json").read_text())
    assert list(summary["variants"]) == ["baseline", "baseline-seed+1", "+reflect-pad", "all-fixes"]
    assert summary["settings"]["disc_start"] == 1  # half of --steps
    for name, r in summary["variants"].items():
        assert (out / name / "model" / "model.safetensors").is_file()
        assert len(r["images"]) == 2
        for key in ("psnr", "ssim", "color_shift", "grid", "blur", "border", "corner", "droplet", "droplet_features"):
            values = [img[key] for img in r["images"]]
            assert all(math.isfinite(v) for v in values), (name, key)
            assert math.isclose(r["mean"][key], sum(values) / len(values), rel_tol=1e-9, abs_tol=1e-12)
        assert r["mean"]["lpips"] is None
    # the all-fixes run really is the VIVAT architecture
    cfg = json.loads((out / "all-fixes" / "model" / "config.json").read_text())
    assert cfg["padding_mode"] == "reflect" and cfg["scn"] is True
    own = {(r["variant"], r["score"]) for r in summary["own_artifact"]}
    assert own == {("+reflect-pad", "border"), ("+reflect-pad", "corner")}
    md = (out / "ablation.md").read_text()
    for name in summary["variants"]:
        assert f"| {name} |" in md
    assert "run-to-run noise" in md
    assert (out / "ablation_crops.png").is_file()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert (out / "ablation.png").is_file()
    capsys.readouterr()

    # a second call with the same settings trains nothing again
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("already trained") == 4
    assert "training" not in printed.split("evaluating")[0].replace("already trained", "")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--size", "30"], "--size must be a positive multiple of 8"),
        (["--max-side", "10"], "--max-side"),
        (["--only", "baseline,+nonsense"], "unknown variant"),
    ],
)
def test_ablate_bad_input(tiny_photos, tmp_path, capsys, extra, message):
    args = [
        "ablate",
        "--data",
        str(tiny_photos / "train"),
        "--val",
        str(tiny_photos / "val"),
        "--out",
        str(tmp_path / "o"),
    ]
    try:
        code = main(args + extra)
    except SystemExit as exc:
        code = exc.code
    assert code in (1, 2)
    assert message in capsys.readouterr().err


def test_ablate_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ablate", "--data", str(tmp_path / "nope"), "--val", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "--data" in capsys.readouterr().err
