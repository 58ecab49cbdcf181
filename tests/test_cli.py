"""Tests for the vivat command line: help, errors that name the problem, eval, reconstruct, demo."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vivat.cli import build_parser, main
from vivat.config import VAEConfig
from vivat.data import load_image
from vivat.model import AutoencoderKL

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in this process; returns (exit code, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    AutoencoderKL(VAEConfig.from_preset("vivat-tiny")).save_pretrained(path)
    return path


@pytest.fixture
def odd_images(tmp_path) -> Path:
    """Images whose sides are not multiples of 8, one in a subfolder."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (24, 33, 3), dtype=np.uint8)).save(root / "sub" / "b.jpg", quality=95)
    return root


# ----------------------------------------------------------------------------- help
def test_every_command_and_flag_is_explained(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("demo", "train", "eval", "reconstruct"):
        assert command in out
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        code, out, _ = run_cli(capsys, name, "--help")
        assert code == 0 and out.startswith(f"usage: vivat {name}")
        for action in sub._actions:
            assert action.help, f"vivat {name} {action.option_strings or action.dest} has no help text"
    code, out, _ = run_cli(capsys, "train", "--help")
    for flag in (
        "--preset",
        "--data",
        "--out",
        "--val",
        "--steps",
        "--size",
        "--batch-size",
        "--seed",
        "--ckpt-every",
        "--resume",
        "--init",
        "--decoder-only",
        "--compile",
    ):
        assert flag in out
    assert "vivat-tiny" in out


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "vivat", "eval", "--help"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == 0 and "--model" in proc.stdout


# ----------------------------------------------------------------------------- errors
def test_bad_paths_and_flags_name_the_problem(capsys, tmp_path, model_dir, odd_images):
    missing = str(tmp_path / "nope")
    code, _, err = run_cli(capsys, "train", "--preset", "vivat-tiny", "--data", missing, "--out", str(tmp_path / "o"))
    assert code == 2 and f"--data {missing} does not exist" in err
    code, _, err = run_cli(capsys, "train", "--preset", "vivat-huge", "--data", str(odd_images), "--out", "o")
    assert code == 2 and "vivat-huge" in err and "vivat-tiny" in err
    code, _, err = run_cli(capsys, "train", "--data", str(odd_images), "--out", str(tmp_path / "o"))
    assert code == 2 and "--preset" in err
    code, _, err = run_cli(
        capsys, "train", "--preset", "vivat-tiny", "--data", str(odd_images), "--out", "o", "--size", "30"
    )
    assert code == 2 and "--size" in err and "multiple of 8" in err
    code, _, err = run_cli(
        capsys, "train", "--preset", "vivat-tiny", "--data", str(odd_images), "--out", str(tmp_path / "o"), "--resume"
    )
    assert code == 1 and "no checkpoint" in err
    code, _, err = run_cli(capsys, "eval", "--model", missing, "--data", str(odd_images))
    assert code == 2 and f"--model {missing} does not exist" in err
    code, _, err = run_cli(capsys, "eval", "--model", str(odd_images), "--data", str(odd_images))
    assert code == 1 and "config.json" in err  # a folder that is not a model
    code, _, err = run_cli(capsys, "reconstruct", "--model", str(model_dir), str(tmp_path / "x.png"), "--out", "o")
    assert code == 2 and "x.png" in err
    code, _, err = run_cli(capsys, "train", "--steps", "ten")
    assert code == 2 and "--steps" in err
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "ckpt-0000010.pt").write_bytes(b"someone's run")
    code, _, err = run_cli(capsys, "demo", "--quick", "--out", str(tmp_path / "run"))
    assert code == 1 and "not a demo" in err  # the demo never deletes another run's checkpoints


# ----------------------------------------------------------------------------- eval / reconstruct
def test_eval_reports_per_image_and_mean(capsys, tmp_path, model_dir, odd_images):
    out_json = tmp_path / "report" / "metrics.json"
    code, _, err = run_cli(
        capsys, "eval", "--model", str(model_dir), "--data", str(odd_images), "--out", str(out_json), "--sizing", "crop"
    )
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert report["n"] == 2 and len(report["images"]) == 2
    assert "center-cropped to a multiple of 8" in report["sizing"]
    assert report["images"][0]["scored_size"] == [32, 48]  # 37x50 center-cropped
    for key in ("psnr", "ssim"):
        values = [row[key] for row in report["images"]]
        assert report["mean"][key] == pytest.approx(sum(values) / len(values))
    assert report["settings"]["ssim_window"] == 11 and report["settings"]["quantised"] is True
    if report["mean"]["lpips"] is None:  # no LPIPS weights offline: said, not faked
        assert report["settings"]["lpips"].startswith("unavailable")
    assert "PSNR" in err

    code, out, _ = run_cli(capsys, "eval", "--model", str(model_dir), "--data", str(odd_images), "--no-lpips")
    report = json.loads(out)  # without --out the JSON goes to stdout; --sizing pad is the default
    assert report["images"][0]["scored_size"] == [37, 50] and "reflect-padded" in report["sizing"]


def test_reconstruct_any_size(capsys, tmp_path, model_dir, odd_images):
    files = [str(odd_images / "a.png"), str(odd_images / "sub" / "b.jpg")]
    code, out, err = run_cli(capsys, "reconstruct", "--model", str(model_dir), *files, "--out", str(tmp_path / "r"))
    assert code == 0, err
    recon, pair = load_image(tmp_path / "r" / "a.png"), load_image(tmp_path / "r" / "a_side_by_side.png")
    assert recon.shape == (3, 37, 50)  # padded to 40x56 for the model, cropped back
    assert pair.shape == (3, 37, 2 * 50 + 4)
    assert load_image(tmp_path / "r" / "b.png").shape == (3, 24, 33)
    assert "PSNR" in out


# ----------------------------------------------------------------------------- demo
def test_demo_quick_end_to_end(capsys, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--quick", "--out", str(out))
    assert code == 0, err
    for path in ("model/config.json", "model/model.safetensors", "metrics.json", "summary.md", "log.jsonl"):
        assert (out / path).is_file(), path
    pictures = sorted(p.name for p in (out / "reconstructions").glob("*.png"))
    assert pictures == ["chelsea.png", "rocket.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["n"] == 2 and 5.0 < metrics["eval"]["mean"]["psnr"] < 60.0
    # the baseline trained beside it, both scored for artifacts, the crops and the diagnose report
    for path in ("baseline/model/model.safetensors", "edge_crops.png", "diagnose/report.html"):
        assert (out / path).is_file(), path
    assert metrics["baseline_eval"]["n"] == 2 and "corner" in metrics["baseline_eval"]["mean"]
    assert "color_shift" in metrics["eval"]["mean"] and "run-to-run" in (out / "summary.md").read_text()
    assert str(out / "summary.md") in stdout and "PSNR" in stdout and "SSIM" in stdout
    assert "PSNR" in (out / "summary.md").read_text()
    # running it again replaces the earlier demo instead of refusing
    code, _, err = run_cli(capsys, "demo", "--quick", "--out", str(out), "--steps", "2")
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
