"""``vivat train``: train a KL-VAE on a folder of images (every flag is a ``TrainConfig`` field)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from ..config import preset_names
from ..data import COLOR_AUGMENTATIONS, check_scale
from ..train import AMP_MODES, LR_SCHEDULES, TrainConfig, train
from .common import (
    UsageError,
    add_command,
    add_device_argument,
    add_image_folder_argument,
    add_no_download_argument,
    prepare_output_dir,
    require_at_least,
    require_dir,
    require_multiple_of_8,
    resolve_device,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    p = add_command(
        subparsers,
        "train",
        help="train a VAE on a folder of images",
        description=(
            "Train a KL-VAE (VIVAT or LDM preset) on any folder of images (searched recursively for\n"
            "png/jpg/jpeg/webp). Writes OUT/model (the EMA weights, save_pretrained format),\n"
            "OUT/checkpoints/ckpt-NNNNNNN.pt (+ 'latest'), OUT/log.jsonl and OUT/samples/val-*.png.\n"
            "Launch with torchrun for several GPUs or CPU processes (DDP; rank 0 logs and saves)."
        ),
    )
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--preset",
        choices=preset_names(),
        default=None,
        metavar="NAME",
        help=f"architecture and loss recipe: {', '.join(preset_names())} (needed unless --init or --resume)",
    )
    add_image_folder_argument(g, "--data", help="folder of training images (recursive)")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder of the run")
    add_image_folder_argument(
        g, "--val", required=False, help="folder of validation images (default: center crops of training images)"
    )
    g.add_argument(
        "--init",
        metavar="DIR",
        help="start from this save_pretrained model (its architecture; --preset then only sets the loss recipe)",
    )
    g.add_argument("--size", type=int, default=d["size"], metavar="PX", help="square crop size, a multiple of 8")
    g.add_argument(
        "--small",
        choices=("pad", "skip"),
        default=d["small"],
        help="images smaller than the crop: reflect-pad them, or skip them (counted)",
    )
    g.add_argument(
        "--scale-aug",
        type=_zoom_range,
        default=d["scale_aug"],
        metavar="LO,HI",
        help="zoom out each training crop by a random factor in [LO, HI] (e.g. 0.25,1: a crop covers up to "
        "4x its side of the photo, resized down); default: crops at the photos' own resolution",
    )
    g.add_argument(
        "--color-aug",
        choices=COLOR_AUGMENTATIONS,
        default=d["color_aug"],
        help="random colour change of each training crop: permute the RGB channels, or rotate the hue",
    )
    g.add_argument(
        "--cache-mb",
        type=float,
        default=d["cache_mb"],
        metavar="MB",
        help="keep up to MB megabytes of decoded training images in memory per process (0: decode every crop)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="data-loading processes per training process (default: 0 on CPU, up to 4 on GPU)",
    )

    g = p.add_argument_group("schedule and optimisation")
    g.add_argument("--steps", type=int, default=d["steps"], metavar="N", help="total optimiser steps")
    g.add_argument("--batch-size", type=int, default=d["batch_size"], metavar="B", help="images per step per process")
    g.add_argument("--lr", type=float, metavar="LR", default=d["lr"], help="AdamW learning rate of the VAE")
    g.add_argument(
        "--disc-lr", type=float, metavar="LR", default=None, help="learning rate of the discriminator (default: --lr)"
    )
    g.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=d["lr_schedule"],
        help="learning-rate schedule of both optimisers after the warm-up (cosine decays to --lr-floor)",
    )
    g.add_argument(
        "--warmup-steps", type=int, default=d["warmup_steps"], metavar="N", help="linear learning-rate warm-up steps"
    )
    g.add_argument(
        "--lr-floor",
        type=float,
        default=d["lr_floor"],
        metavar="FRAC",
        help="final learning rate of the cosine schedule, as a fraction of --lr",
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        metavar="WD",
        default=d["weight_decay"],
        help="AdamW weight decay (conv/linear weights only)",
    )
    g.add_argument(
        "--grad-clip",
        type=float,
        metavar="NORM",
        default=d["grad_clip"],
        help="max gradient norm (VAE and discriminator)",
    )
    g.add_argument(
        "--ema-decay", type=float, metavar="DECAY", default=d["ema_decay"], help="EMA decay of the saved weights"
    )
    g.add_argument(
        "--disc-start",
        type=int,
        default=None,
        metavar="STEP",
        help="first step of the adversarial loss (default: the preset's)",
    )
    g.add_argument(
        "--decoder-only",
        action="store_true",
        help="freeze the encoder for the whole run (e.g. fine-tuning after --init); otherwise the "
        "preset's decoder-only stage, if any, starts at its fraction of --steps",
    )
    g.add_argument(
        "--seed", type=int, default=d["seed"], metavar="S", help="seed of the initialisation, data order and noise"
    )

    g = p.add_argument_group("checkpoints, logging, hardware")
    g.add_argument("--ckpt-every", type=int, default=d["ckpt_every"], metavar="N", help="checkpoint every N steps")
    g.add_argument(
        "--keep-ckpts", type=int, default=d["keep_ckpts"], metavar="K", help="keep the last K checkpoints (0: keep all)"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint (exactly, when the other flags are unchanged)",
    )
    g.add_argument(
        "--resume-intact",
        action="store_true",
        help="like --resume, but if the latest checkpoint is damaged or missing, continue from the newest "
        "intact one (and say which were passed over) instead of stopping",
    )
    g.add_argument(
        "--overwrite", action="store_true", help="delete the checkpoints of an earlier run in --out and start anew"
    )
    g.add_argument(
        "--val-every",
        type=int,
        default=d["val_every"],
        metavar="N",
        help="reconstruct the validation images every N steps (0: only at the end)",
    )
    g.add_argument("--val-images", type=int, default=d["val_images"], metavar="N", help="validation images in the grid")
    g.add_argument(
        "--log-every",
        type=int,
        default=d["log_every"],
        metavar="N",
        help="write averaged losses to log.jsonl (and a line to stdout without a progress bar) every N steps",
    )
    g.add_argument(
        "--amp",
        choices=AMP_MODES,
        default=d["amp"],
        help="mixed precision; auto = bf16 on a GPU that supports it, off on CPU",
    )
    add_device_argument(g, what="where to train")
    g.add_argument("--compile", action="store_true", help="torch.compile the VAE")
    g.add_argument(
        "--channels-last",
        action="store_true",
        help="weights and activations in channels_last (NHWC): faster convs on CPU and with bf16 on GPU",
    )
    add_no_download_argument(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    return p


def _zoom_range(text: str) -> tuple[float, float]:
    try:
        return check_scale(text.split(","), "--scale-aug")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI with 0 < LO <= HI <= 1, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    require_dir("--data", args.data)
    require_dir("--val", args.val)
    require_dir("--init", args.init)
    args.resume = args.resume or args.resume_intact
    if args.preset is None and args.init is None and not args.resume:
        raise UsageError(f"give --preset NAME ({', '.join(preset_names())}), or --init DIR, or --resume")
    require_multiple_of_8("--size", args.size)
    for flag in ("steps", "batch_size", "ckpt_every", "log_every"):
        require_at_least(f"--{flag.replace('_', '-')}", getattr(args, flag), 1)
    resolve_device(args.device)  # checked here; train() picks the device itself (per rank under torchrun)
    if int(os.environ.get("RANK", "0")) == 0:
        prepare_output_dir(args.out, "--out")

    # every train flag is a TrainConfig field of the same name
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {name: value for name, value in vars(args).items() if name in fields}
    cfg = TrainConfig(**settings, progress=False if args.no_progress else None)
    try:
        summary = train(cfg)
    except KeyboardInterrupt:
        checkpoints = Path(args.out) / "checkpoints"
        print(
            f"\ninterrupted; continue with the same command plus --resume (checkpoints in {checkpoints})",
            file=sys.stderr,
        )
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        val = summary.get("val") or {}
        print(f"model (EMA weights): {summary['model']}")
        print(f"checkpoint:          {summary['checkpoint']}")
        print(f"log:                 {summary['log']}")
        if val:
            print(
                f"validation at step {val['step']}: PSNR {val['psnr']:.2f} dB"
                + (f", SSIM {val['ssim']:.4f}" if "ssim" in val else "")
                + f" ({val['grid']})"
            )
    return 0
