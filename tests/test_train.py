"""Tests for vivat.train and vivat.checkpoint: data order, checkpoints, resume, NaN batches, DDP."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vivat import checkpoint as C
from vivat.config import VAEConfig
from vivat.data import ImageFolderDataset
from vivat.model import AutoencoderKL
from vivat.train import StepBatchSampler, TrainConfig, train, train_step

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared/data/photos"


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like uint8 image: low-frequency colour fields plus a little noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((4, 4, 3)).astype(np.float32)
    img = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(smooth_image(48, 56, i)).save(root / ("sub" if i % 2 else "") / f"img{i}.png")
    return root


def read_log(out: Path, kind: str = "train") -> list[dict]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == kind]


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = {
        "preset": "vivat-tiny",
        "data": str(data),
        "out": str(out),
        "steps": 4,
        "size": 32,
        "batch_size": 2,
        "lr": 5e-4,
        "ckpt_every": 100,
        "log_every": 1,
        "val_every": 0,
        "val_images": 2,
        "workers": 0,
        "progress": False,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


# ----------------------------------------------------------------------------- data order
def test_step_sampler_shards_global_batches_and_resumes_mid_stream():
    full = list(StepBatchSampler(n=7, batch_size=3, seed=5, start=0, stop=6))
    # every epoch is a permutation: the first 7 stream positions hold each index once
    stream = [item for batch in full for item in batch]
    assert sorted(i for i, e in stream[:7]) == list(range(7)) and {e for _, e in stream[:7]} == {0}
    # resuming at step 4 reads exactly what the uninterrupted run read from step 4 on
    assert list(StepBatchSampler(n=7, batch_size=3, seed=5, start=4, stop=6)) == full[4:]
    # two processes split each global batch of 2 x 3 without overlap
    r0 = list(StepBatchSampler(n=7, batch_size=3, seed=5, start=0, stop=3, rank=0, world=2))
    r1 = list(StepBatchSampler(n=7, batch_size=3, seed=5, start=0, stop=3, rank=1, world=2))
    single = [item for batch in StepBatchSampler(n=7, batch_size=6, seed=5, start=0, stop=3) for item in batch]
    assert [item for a, b in zip(r0, r1) for item in a + b] == single


# ----------------------------------------------------------------------------- checkpoint I/O
def small_state(step: int) -> dict:
    return {
        "format": C.CHECKPOINT_FORMAT,
        "version": C.CHECKPOINT_VERSION,
        "step": step,
        "model": {"w": torch.full((3,), float(step))},
        "ema": {},
        "discriminator": {},
        "opt_vae": {},
        "opt_disc": {},
        "scaler": {},
        "rng": C.capture_rng_state(),
    }


def test_checkpoints_are_atomic_pointed_to_and_pruned(tmp_path):
    d = tmp_path / "ckpt"
    for step in (10, 20, 30):
        path = C.save_checkpoint(small_state(step), d, step, keep=2)
    assert path.name == "ckpt-0000030.pt"
    assert [p.name for _, p in C.list_checkpoints(d)] == ["ckpt-0000020.pt", "ckpt-0000030.pt"]
    assert (d / "latest").read_text().strip() == "ckpt-0000030.pt"
    assert not list(d.glob(".*"))  # no temporary files left behind
    assert C.latest_checkpoint(d) == path
    state = C.load_checkpoint(path)  # weights_only=True: RNG states are tensors and plain values
    assert state["step"] == 30 and torch.equal(state["model"]["w"], torch.full((3,), 30.0))
    # a checkpoint renamed into place after the pointer was last written still wins
    C._atomic_write(d / "ckpt-0000040.pt", lambda f: torch.save(small_state(40), f))
    assert C.latest_checkpoint(d).name == "ckpt-0000040.pt"
    # a stale temporary from a killed writer is not a checkpoint and gets cleaned up
    (d / ".ckpt-0000050.pt.123.tmp").write_bytes(b"partial")
    assert C.latest_checkpoint(d).name == "ckpt-0000040.pt"
    assert C.remove_stale_temporaries(d) == 1


def test_rng_state_roundtrip():
    torch.manual_seed(3)
    np.random.seed(3)
    state = C.capture_rng_state()
    a = (torch.rand(4), np.random.rand(4), random.random())
    C.restore_rng_state(state)
    b = (torch.rand(4), np.random.rand(4), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not_a_checkpoint"])
def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, damage):
    d = tmp_path / "ckpt"
    path = C.save_checkpoint(small_state(5), d, 5)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(2048))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(C.CheckpointError) as err:
        C.load_checkpoint(path)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------- training runs
def test_resume_continues_exactly(images, tmp_path, monkeypatch):
    # 6 steps cover every phase: discriminator from step 2, decoder-only from round(0.9 * 6) = 5.
    common = {"steps": 6, "disc_start": 2, "ckpt_every": 3, "val_every": 3}
    ref = train(tiny_config(images, tmp_path / "ref", **common))
    assert ref["steps"] == 6

    # the second run is "killed" right after its step-3 checkpoint is on disk
    import vivat.train as T

    real_save = T.save_checkpoint

    def save_then_die(state, directory, step, keep=3):
        path = real_save(state, directory, step, keep)
        if step == 3:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(T, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(images, tmp_path / "run", **common))
    monkeypatch.setattr(T, "save_checkpoint", real_save)

    # a fresh start over an existing run is refused; resume picks it up
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(images, tmp_path / "run", **common))
    resumed = train(tiny_config(images, tmp_path / "run", resume=True, **common))
    assert resumed["steps"] == 6

    keys = ("loss", "l1", "kl", "g_loss", "adaptive_weight", "d_loss", "grad_norm")
    ref_log = [{k: r.get(k) for k in ("step", *keys)} for r in read_log(tmp_path / "ref")]
    run_log = [{k: r.get(k) for k in ("step", *keys)} for r in read_log(tmp_path / "run")]
    assert [r["step"] for r in run_log] == [1, 2, 3, 4, 5, 6]  # the resumed log has no duplicates
    assert run_log == ref_log
    assert ref_log[-1]["d_loss"] is not None  # the discriminator did train
    assert read_log(tmp_path / "run", "stage")[0]["step"] == 5
    a = load_file(str(tmp_path / "ref" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_step_is_one_step_of_the_loop(images, tmp_path):
    """One train_step call, set up as ``vivat train`` sets up, updates the VAE, its EMA and the
    discriminator to exactly the weights the trainer saves after its first step."""
    import copy
    import warnings

    from vivat.losses import VAELoss
    from vivat.train import adamw, resolve_model

    cfg = tiny_config(images, tmp_path / "run", steps=1, disc_start=0, ckpt_every=1, val_images=0)
    train(cfg)
    saved = C.load_checkpoint(C.latest_checkpoint(tmp_path / "run" / "checkpoints"), map_location="cpu")
    assert saved["step"] == 1

    torch.manual_seed(cfg.seed)
    model, _ = resolve_model(cfg, None)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no LPIPS weights on disk: the trainer drops the term too
        loss_fn = VAELoss(model.config.loss, in_channels=model.config.in_channels)
    opt_vae = adamw(model, cfg.lr, cfg.betas, cfg.weight_decay)
    opt_disc = adamw(loss_fn.discriminator, cfg.lr, cfg.betas, cfg.weight_decay)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    data = ImageFolderDataset(cfg.data, cfg.size, train=True, small=cfg.small, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=StepBatchSampler(len(data), cfg.batch_size, cfg.seed, 0, 1)
    )
    model.train()
    loss_fn.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = train_step(
        model,
        loss_fn,
        ema,
        opt_vae,
        opt_disc,
        scaler,
        next(iter(loader)),
        0,
        seed=cfg.seed,
        grad_clip=cfg.grad_clip,
        ema_decay=cfg.ema_decay,
    )

    assert result.ok and result.disc_ok
    assert {"loss", "l1", "kl", "grad_norm", "d_loss"} <= result.logs.keys()
    after = model.state_dict()
    assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2  # the step moved weights
    for name, module in (("model", model), ("ema", ema), ("discriminator", loss_fn.discriminator)):
        state = module.state_dict()
        assert state.keys() == saved[name].keys()
        different = [k for k in state if not torch.equal(state[k], saved[name][k])]
        assert not different, f"{name}: {different[:5]}"


def test_resume_errors_name_the_problem(images, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_config(images, out, resume=True))
    ckpt = C.save_checkpoint(small_state(2), out / "checkpoints", 2)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(C.CheckpointError, match="ckpt-0000002.pt.*corrupt or truncated"):
        train(tiny_config(images, out, resume=True))


def test_nan_batch_is_skipped_and_bad_files_are_survived(images, tmp_path, monkeypatch):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # unreadable: skipped with a warning
    Image.fromarray(smooth_image(20, 24, 9)).save(images / "small.png")  # smaller than the crop: padded
    calls = {"n": 0}
    real_get = ImageFolderDataset.get

    def get(self, index, epoch=None):
        x = real_get(self, index, epoch)
        calls["n"] += 1
        return torch.full_like(x, float("nan")) if calls["n"] == 3 else x  # first item of step 1

    monkeypatch.setattr(ImageFolderDataset, "get", get)
    with pytest.warns(RuntimeWarning, match="broken.png"):
        summary = train(tiny_config(images, tmp_path / "run", steps=3, val_images=0))
    assert summary["skipped_steps"] == 1
    log = read_log(tmp_path / "run")
    assert [r["skipped"] for r in log] == [0, 1, 1]
    assert log[1]["loss"] is None and log[2]["loss"] is not None
    start = read_log(tmp_path / "run", "start")[0]
    assert start["data"]["skipped_unreadable"] == 1 and start["data"]["padded"] == 1
    weights = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    ckpt = C.load_checkpoint(C.latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_init_with_decoder_only_keeps_the_encoder(images, tmp_path):
    torch.manual_seed(1)
    init = AutoencoderKL(VAEConfig.from_preset("vivat-tiny"))
    init.save_pretrained(tmp_path / "init")
    summary = train(tiny_config(images, tmp_path / "run", init=str(tmp_path / "init"), decoder_only=True, steps=2))
    assert summary["last"]["stage"] == "decoder-only"
    before, after = init.state_dict(), load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    for name, t in before.items():
        if name.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(after[name], t), name
    assert not torch.equal(after["decoder.conv_out.weight"], before["decoder.conv_out.weight"])


def test_channels_last_and_augmented_training_resumes_exactly(images, tmp_path):
    """channels_last weights and activations, zoom and colour augmentation: the loss follows the
    NCHW run up to float rounding, and a run and its resume are bit-identical."""
    common = {
        "steps": 4,
        "disc_start": 2,
        "ckpt_every": 2,
        "val_every": 0,
        "scale_aug": (0.5, 1.0),
        "color_aug": "permute",
        "cache_mb": 64,
    }
    nchw = train(tiny_config(images, tmp_path / "nchw", **common))
    full = train(tiny_config(images, tmp_path / "cl", channels_last=True, **common))
    assert nchw["steps"] == full["steps"] == 4
    a, b = read_log(tmp_path / "nchw"), read_log(tmp_path / "cl")
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-3, abs=1e-5)
    train(tiny_config(images, tmp_path / "half", channels_last=True, **{**common, "steps": 2}))
    half = train(tiny_config(images, tmp_path / "half", channels_last=True, resume=True, **common))
    assert half["steps"] == 4
    keys = ("loss", "l1", "d_loss", "grad_norm")
    assert [{k: r.get(k) for k in keys} for r in read_log(tmp_path / "half")] == [
        {k: r.get(k) for k in keys} for r in b
    ]
    x = load_file(str(tmp_path / "cl" / "model" / "model.safetensors"))
    y = load_file(str(tmp_path / "half" / "model" / "model.safetensors"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_val_every_zero_validates_once_at_the_end(images, tmp_path):
    summary = train(tiny_config(images, tmp_path / "run", steps=3, val_every=0))
    vals = read_log(tmp_path / "run", "val")
    assert [r["step"] for r in vals] == [3]
    assert summary["val"]["step"] == 3


def test_model_config_trains_a_custom_architecture(images, tmp_path):
    custom = VAEConfig.from_preset("ldm-tiny").replace(scn=True, kl_weight=3e-7)
    train(tiny_config(images, tmp_path / "run", preset=None, model_config=custom, steps=2, disc_start=1))
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert VAEConfig.from_dict(saved) == custom.replace(disc_start=1)
    start = read_log(tmp_path / "run", "start")[0]
    assert start["model_source"].startswith("the given model config")
    with pytest.raises(ValueError, match="only one"):
        tiny_config(images, tmp_path / "x", model_config=custom).check()
    with pytest.raises(TypeError, match="VAEConfig"):
        tiny_config(images, tmp_path / "x", preset=None, model_config={"ch": 32}).check()


@pytest.mark.skipif(not (SHARED_PHOTOS / "train").is_dir(), reason="shared photos not present")
def test_training_on_real_photos_lowers_the_reconstruction_loss(tmp_path):
    # 40 steps of 32-px crops, batch 2: the held-out L1 roughly halves (0.49 -> 0.25 here). Single
    # small batches of photo crops are noisy, so compare validation at start and end, and means
    # of the training loss over the first and last ten steps.
    cfg = tiny_config(
        SHARED_PHOTOS / "train",
        tmp_path / "run",
        val=str(SHARED_PHOTOS / "val"),
        steps=40,
        lr=1e-3,
        val_every=40,
        val_images=4,
    )
    summary = train(cfg)
    val = read_log(tmp_path / "run", "val")
    assert [v["step"] for v in val] == [0, 40]
    assert val[1]["l1"] < 0.75 * val[0]["l1"], val
    assert val[1]["psnr"] > val[0]["psnr"] + 2.0, val
    losses = [r["l1"] for r in read_log(tmp_path / "run")]
    assert len(losses) == 40 and np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10])
    assert Path(val[1]["grid"]).is_file() and summary["skipped_steps"] == 0


def test_two_processes_with_torchrun(images, tmp_path):
    out = tmp_path / "ddp"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "vivat",
        "train",
        "--preset",
        "vivat-tiny",
        "--data",
        str(images),
        "--out",
        str(out),
        "--steps",
        "3",
        "--size",
        "32",
        "--batch-size",
        "1",
        "--log-every",
        "1",
        "--val-images",
        "1",
    ]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "model" / "model.safetensors").is_file()
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    assert read_log(out, "start")[0]["world_size"] == 2
    assert log[-1]["images_per_s"] > 0
    assert proc.stdout.count("vivat train:") == 1  # rank 0 alone reports


@pytest.mark.slow
def test_compile_trains(images, tmp_path):
    summary = train(tiny_config(images, tmp_path / "run", steps=2, compile=True))
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0


# ----------------------------------------------------------------------------- integrity on resume
def _flip_tensor_bits(path: Path) -> None:
    """Change one byte inside the largest tensor entry of a checkpoint archive (the file stays a valid zip)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2 + 3] ^= 0x40  # an exponent bit
    path.write_bytes(bytes(raw))


def test_resume_refuses_a_damaged_checkpoint_and_resume_intact_continues_exactly(images, tmp_path):
    out = tmp_path / "run"
    common = {"steps": 6, "ckpt_every": 2, "keep_ckpts": 0, "val_images": 0}
    first = train(tiny_config(images, out, **common))
    reference = load_file(str(out / "model" / "model.safetensors"))
    ckpt_dir = out / "checkpoints"
    _flip_tensor_bits(ckpt_dir / "ckpt-0000006.pt")

    with pytest.raises(C.CheckpointError) as err:
        train(tiny_config(images, out, resume=True, **common))
    msg = str(err.value)
    assert "ckpt-0000006.pt" in msg and "CRC-32" in msg
    assert "ckpt-0000004.pt is intact" in msg and "--resume-intact" in msg
    with pytest.raises(ValueError, match="resume_intact"):
        train(tiny_config(images, out, resume_intact=True, **common))

    resumed = train(tiny_config(images, out, resume=True, resume_intact=True, **common))
    assert resumed["steps"] == first["steps"] == 6
    again = load_file(str(out / "model" / "model.safetensors"))
    assert again.keys() == reference.keys() and all(torch.equal(again[k], reference[k]) for k in again)
    resume = read_log(out, "resume")
    assert [r["step"] for r in resume] == [4] and "ckpt-0000006.pt" in resume[0]["passed_over"][0]
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4, 5, 6]
    assert len(read_log(out, "end")) == 1  # the first run's end record is dropped on resume


def test_latest_pointing_at_a_missing_checkpoint_is_an_error(images, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(images, out, steps=2, ckpt_every=1, val_images=0))
    (out / "checkpoints" / "ckpt-0000002.pt").unlink()
    with pytest.raises(C.CheckpointError, match="ckpt-0000002.pt', which does not exist"):
        train(tiny_config(images, out, steps=2, ckpt_every=1, val_images=0, resume=True))


def test_an_image_that_fails_to_decode_is_warned_once_and_counted(images, tmp_path):
    import warnings

    buf = tmp_path / "whole.png"
    Image.fromarray(smooth_image(48, 56, 7)).save(buf)
    data = buf.read_bytes()
    (images / "cut.png").write_bytes(data[: len(data) // 2])  # the header scan accepts it; decoding fails
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # only the dataset's own bookkeeping may deduplicate
        # 6 images, 3 steps of 2: every image is read for training, and the validation crops read them too
        summary = train(tiny_config(images, tmp_path / "run", steps=3, val_images=6))
    about_cut = [w for w in caught if "cut.png" in str(w.message)]
    assert len(about_cut) == 1, [str(w.message) for w in about_cut]
    assert [Path(p).name for p in summary["images_failed_at_load"]] == ["cut.png"]
    end = read_log(tmp_path / "run", "end")[0]
    assert [Path(p).name for p in end["images_failed_at_load"]] == ["cut.png"]
