"""The ``vivat`` command line: train, eval, reconstruct, demo.

    vivat demo                                   # train a tiny VAE on bundled photos, evaluate, report
    vivat train --preset vivat-tiny --data photos/train --val photos/val --out runs/tiny --steps 2000
    torchrun --nproc_per_node 4 -m vivat train ...   # the same on 4 GPUs (or CPU processes)
    vivat eval --model runs/tiny/model --data photos/val --out metrics.json
    vivat reconstruct --model runs/tiny/model cat.jpg dog.png --out recon/
    vivat convert --from sd-v1-5.ckpt --to runs/sd-vivat --scn --reflect   # VIVAT-ize a pretrained VAE
    vivat diagnose --model runs/tiny/model --data photos/val --out diag/   # artifact report (HTML + JSON)
    vivat ablate --data photos/train --val photos/val --steps 600 --out runs/ablation   # each fix alone

Also available as ``python -m vivat ...``. Every command explains its flags with ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .config import preset_names


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's line breaks; show a flag's default when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


NO_DOWNLOAD_HELP = (
    "never download LPIPS weights (default: fetch a missing ImageNet trunk once into torch.hub's cache, "
    "hash-checked); the same as VIVAT_NO_DOWNLOAD=1"
)


def _train_defaults() -> dict:
    from .train import TrainConfig

    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _add_train(sub: argparse._SubParsersAction) -> None:
    d = _train_defaults()
    p = sub.add_parser(
        "train",
        formatter_class=_Formatter,
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
    g.add_argument("--data", required=True, metavar="DIR", help="folder of training images (recursive)")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder of the run")
    g.add_argument(
        "--val", metavar="DIR", help="folder of validation images (default: center crops of training images)"
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
        choices=("constant", "cosine"),
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
        choices=("auto", "bf16", "fp16", "off"),
        default=d["amp"],
        help="mixed precision; auto = bf16 on a GPU that supports it, off on CPU",
    )
    g.add_argument("--device", default=d["device"], metavar="DEV", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--compile", action="store_true", help="torch.compile the VAE")
    g.add_argument("--no-download", action="store_true", help=NO_DOWNLOAD_HELP)
    g.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.set_defaults(func=cmd_train, parser=p)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        formatter_class=_Formatter,
        help="PSNR / SSIM / LPIPS of a model on a folder of images",
        description=(
            "Reconstruct every image in a folder (recursive) with the posterior mode, in fp32, and score\n"
            "it by the project's conventions (vivat.metrics): reconstruction quantised to uint8, PSNR and SSIM (Gaussian 11, sigma 1.5,\n"
            "data range 1) per image then mean, LPIPS(alex) when its weights are on disk. Prints JSON."
        ),
    )
    p.add_argument(
        "--model", required=True, metavar="DIR", help="model folder (save_pretrained format, e.g. OUT/model)"
    )
    p.add_argument("--data", required=True, metavar="DIR", help="folder of images to evaluate on")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON report here")
    p.add_argument(
        "--sizing",
        choices=("crop", "pad"),
        default="crop",
        help="make sizes multiples of 8 by center-cropping, or by reflect-padding (scored on the original)",
    )
    p.add_argument(
        "--max-side", type=int, default=None, metavar="PX", help="first center-crop large images to at most PX per side"
    )
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--no-download", action="store_true", help=NO_DOWNLOAD_HELP)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_eval, parser=p)


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
        formatter_class=_Formatter,
        help="write reconstructions and side-by-side PNGs of images",
        description=(
            "Reconstruct images of any size (padded to a multiple of 8, cropped back) and write\n"
            "OUT/NAME.png and OUT/NAME_side_by_side.png (original | reconstruction)."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder (save_pretrained format)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--sizing",
        choices=("pad", "crop"),
        default="pad",
        help="reflect-pad to a multiple of 8 and crop back (keeps the size), or center-crop",
    )
    p.add_argument(
        "--max-side", type=int, default=None, metavar="PX", help="first center-crop large images to at most PX per side"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_reconstruct, parser=p)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from .demo import DEFAULT_OUT, DEMO_SETTINGS, QUICK_SETTINGS

    p = sub.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="train a tiny VAE on bundled photos, evaluate it, write a report",
        description=(
            "No data needed: writes scikit-image's bundled photos to OUT/data, trains the vivat-tiny\n"
            f"preset on CPU ({DEMO_SETTINGS['steps']} steps of {DEMO_SETTINGS['size']}px crops, a few minutes on "
            "two cores),\nevaluates it on the held-out photos and writes OUT/model, OUT/metrics.json,\n"
            "OUT/reconstructions/*.png (original | reconstruction) and OUT/summary.md."
        ),
    )
    p.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help="output folder (an earlier demo there is replaced)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a {QUICK_SETTINGS['steps']}-step run of {QUICK_SETTINGS['size']}px crops (tens of seconds; "
        "for CI, not for looking at)",
    )
    p.add_argument("--steps", type=int, default=None, metavar="N", help="override the number of training steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the run")
    p.add_argument("--no-download", action="store_true", help=NO_DOWNLOAD_HELP)
    p.set_defaults(func=cmd_demo, parser=p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vivat",
        formatter_class=_Formatter,
        description=__doc__.split("\n\n", 1)[1].rsplit("\n\nAlso", 1)[0],
        epilog="Run 'vivat COMMAND --help' for the flags of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_reconstruct(sub)
    from .convert import add_convert_parser

    add_convert_parser(sub)
    from .diagnose import add_diagnose_parser

    add_diagnose_parser(sub)
    from .ablate import add_ablate_parser

    add_ablate_parser(sub)
    return parser


# -------------------------------------------------------------------------------------------
# Commands
# -------------------------------------------------------------------------------------------
def _need_dir(parser: argparse.ArgumentParser, flag: str, path: str | None) -> None:
    if path is not None and not Path(path).is_dir():
        what = "does not exist" if not Path(path).exists() else "is not a folder"
        parser.error(f"{flag} {path} {what}")


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _need_dir(parser, "--data", args.data)
    _need_dir(parser, "--val", args.val)
    _need_dir(parser, "--init", args.init)
    if args.preset is None and args.init is None and not args.resume:
        parser.error(f"give --preset NAME ({', '.join(preset_names())}), or --init DIR, or --resume")
    if args.size < 8 or args.size % 8:
        parser.error(f"--size must be a positive multiple of 8, got {args.size}")
    for flag in ("steps", "batch_size", "ckpt_every", "log_every"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")

    from .train import TrainConfig, train

    # every train flag is a TrainConfig field of the same name
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {name: value for name, value in vars(args).items() if name in fields}
    cfg = TrainConfig(**settings, progress=False if args.no_progress else None)
    try:
        summary = train(cfg)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; continue with the same command plus --resume (checkpoints in {Path(args.out) / 'checkpoints'})",
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


def _print_eval(report: dict) -> None:
    m = report["mean"]
    lp = "n/a" if m["lpips"] is None else f"{m['lpips']:.4f}"
    print(
        f"{report['n']} images, {report['sizing']}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, LPIPS(alex) {lp}",
        file=sys.stderr,
    )
    if m["lpips"] is None:
        print(f"LPIPS: {report['settings']['lpips']}", file=sys.stderr)


def cmd_eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _need_dir(parser, "--model", args.model)
    _need_dir(parser, "--data", args.data)
    if args.out is not None and Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a folder; give a file name such as {Path(args.out) / 'metrics.json'}")
    from .evaluate import evaluate_folder, load_model

    model = load_model(args.model, device=args.device)
    report = {
        "model": str(args.model),
        "data": str(args.data),
        **evaluate_folder(model, args.data, args.sizing, lpips=not args.no_lpips, max_side=args.max_side),
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}", file=sys.stderr)
    else:
        print(text)
    _print_eval(report)
    return 0


def cmd_reconstruct(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _need_dir(parser, "--model", args.model)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        parser.error(f"image file(s) not found: {', '.join(missing)}")
    from .evaluate import load_model, write_reconstructions

    model = load_model(args.model, device=args.device)
    for r in write_reconstructions(model, args.images, args.out, sizing=args.sizing, max_side=args.max_side):
        print(f"{r['file']}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f} -> {r['side_by_side']}")
    return 0


def cmd_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, steps=args.steps, seed=args.seed)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "no_download", False):
        os.environ["VIVAT_NO_DOWNLOAD"] = "1"  # read by vivat.metrics, inherited by worker processes
    from .checkpoint import CheckpointError

    try:
        return args.func(args, args.parser)
    except (FileNotFoundError, FileExistsError, ValueError, CheckpointError) as err:
        # Known failure modes (bad folders, corrupt checkpoints, bad settings): one clear line.
        print(f"vivat {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
