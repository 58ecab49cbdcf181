"""Tests for the learning-rate schedule of vivat.train: the pure function, the loop, resume, --val-every 0."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vivat.train import TrainConfig, learning_rate, train


# ----------------------------------------------------------------------------- the function
def test_constant_is_constant_after_warmup():
    assert [learning_rate(s, 1e-3, 10) for s in range(10)] == [1e-3] * 10
    rates = [learning_rate(s, 1e-3, 10, "constant", warmup_steps=4) for s in range(10)]
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert rates[4:] == [1e-3] * 6


def test_cosine_warms_up_peaks_and_decays_to_the_floor():
    total, warm, base, floor = 100, 10, 2e-3, 0.05
    rates = [learning_rate(s, base, total, "cosine", warm, floor) for s in range(total)]
    assert rates[0] == pytest.approx(base / warm)
    assert rates[warm - 1] == pytest.approx(base)
    assert rates[warm] == pytest.approx(base)  # the decay starts at the peak
    assert rates[-1] == pytest.approx(floor * base)  # and ends exactly on the floor
    assert all(a >= b for a, b in zip(rates[warm:], rates[warm + 1 :]))  # monotone decay
    mid = warm + (total - warm - 1) / 2  # half way through the decay: the mean of peak and floor
    assert learning_rate(int(mid), base, total, "cosine", warm, floor) == pytest.approx(
        base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * int(mid - warm) / (total - warm - 1))))
    )
    # steps beyond the run (an extended resume) stay on the floor instead of rising again
    assert learning_rate(total + 50, base, total, "cosine", warm, floor) == pytest.approx(floor * base)


def test_degenerate_runs():
    assert learning_rate(0, 1e-3, 1, "cosine") == pytest.approx(0.05e-3)  # a one-step run is all "end"
    assert learning_rate(0, 1e-3, 5, "cosine", warmup_steps=5) == pytest.approx(2e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"schedule": "linear"}, "schedule"),
        ({"floor": 1.5}, "floor"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"total_steps": 0}, "total_steps"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    args = {"step": 0, "base_lr": 1e-3, "total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        learning_rate(**args)


@pytest.mark.parametrize("field, value", [("lr_schedule", "step"), ("warmup_steps", -2), ("lr_floor", 2.0)])
def test_train_config_checks_schedule_fields(tmp_path, field, value):
    cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "o"), preset="vivat-tiny", **{field: value})
    with pytest.raises(ValueError, match=field):
        cfg.check()


# ----------------------------------------------------------------------------- the loop
@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        coarse = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
        Image.fromarray(coarse).resize((48, 48), Image.BICUBIC).save(root / f"img{i}.png")
    return root


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = {
        "preset": "vivat-tiny",
        "data": str(data),
        "out": str(out),
        "steps": 6,
        "size": 32,
        "batch_size": 2,
        "lr": 1e-3,
        "lr_schedule": "cosine",
        "warmup_steps": 2,
        "lr_floor": 0.1,
        "disc_start": 2,
        "ckpt_every": 3,
        "log_every": 1,
        "val_every": 0,
        "val_images": 2,
        "workers": 0,
        "progress": False,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def records(out: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_resume_follows_the_same_schedule_bit_for_bit(images, tmp_path, monkeypatch):
    ref = train(config(images, tmp_path / "ref"))
    assert ref["steps"] == 6
    expected = [learning_rate(s, 1e-3, 6, "cosine", 2, 0.1) for s in range(6)]
    assert [r["lr"] for r in records(tmp_path / "ref", "train")] == pytest.approx(expected)

    import vivat.train as T

    real_save = T.save_checkpoint

    def save_then_die(state, directory, step, keep=3):
        path = real_save(state, directory, step, keep)
        if step == 3:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(T, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config(images, tmp_path / "run"))
    monkeypatch.setattr(T, "save_checkpoint", real_save)
    ckpt = torch.load(next((tmp_path / "run" / "checkpoints").glob("*.pt")), map_location="cpu", weights_only=False)
    assert ckpt["train_config"]["lr_schedule"] == "cosine" and ckpt["train_config"]["warmup_steps"] == 2

    train(config(images, tmp_path / "run", resume=True))
    assert [r["lr"] for r in records(tmp_path / "run", "train")] == [
        r["lr"] for r in records(tmp_path / "ref", "train")
    ]
    keys = ("step", "loss", "l1", "d_loss", "grad_norm")
    assert [{k: r.get(k) for k in keys} for r in records(tmp_path / "run", "train")] == [
        {k: r.get(k) for k in keys} for r in records(tmp_path / "ref", "train")
    ]
    a = load_file(str(tmp_path / "ref" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_changes_the_weights(images, tmp_path):
    """The rate reaches the optimiser: a constant schedule trains to different weights."""
    train(config(images, tmp_path / "cos", steps=3, ckpt_every=3))
    train(config(images, tmp_path / "const", steps=3, ckpt_every=3, lr_schedule="constant", warmup_steps=0))
    a = load_file(str(tmp_path / "cos" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "const" / "model" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert {r["lr"] for r in records(tmp_path / "const", "train")} == {1e-3}


def test_val_every_zero_validates_only_at_the_end(images, tmp_path):
    summary = train(config(images, tmp_path / "noval", steps=2, ckpt_every=2))
    assert [r["step"] for r in records(tmp_path / "noval", "val")] == [2]  # never the step-0 one
    assert summary["val"]["step"] == 2
    summary = train(config(images, tmp_path / "val", steps=2, ckpt_every=2, val_every=2))
    assert [r["step"] for r in records(tmp_path / "val", "val")] == [0, 2]
    assert summary["val"]["step"] == 2


def test_cli_flags_reach_the_train_config(tmp_path):
    from vivat.cli import build_parser

    args = build_parser().parse_args(
        [
            "train",
            "--preset",
            "vivat-tiny",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--lr-schedule",
            "cosine",
            "--warmup-steps",
            "7",
            "--lr-floor",
            "0.1",
        ]
    )
    assert (args.lr_schedule, args.warmup_steps, args.lr_floor) == ("cosine", 7, 0.1)
    defaults = build_parser().parse_args(["train", "--preset", "vivat-tiny", "--data", "d", "--out", "o"])
    assert (defaults.lr_schedule, defaults.warmup_steps) == ("constant", 0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["train", "--preset", "vivat-tiny", "--data", "d", "--out", "o", "--lr-schedule", "linear"]
        )


def test_resume_names_changed_schedule_and_crop_settings(images, tmp_path, capsys):
    train(config(images, tmp_path / "run", steps=2, ckpt_every=2))
    capsys.readouterr()
    train(config(images, tmp_path / "run", steps=3, ckpt_every=3, resume=True, lr=2e-3, color_aug="permute"))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "steps 2 -> 3" in text and "lr 0.001 -> 0.002" in text and "the learning rates from here on" in text
    assert "color_aug none -> permute" in text and "the training crops from here on" in text
    assert "scale_aug" not in text  # unchanged settings are not named
