"""``vivat ablate``: train the baseline, each VIVAT fix alone and all fixes; compare their artifacts."""

from __future__ import annotations

import argparse

from ..ablate import FIXES, SCALES, run_ablation, variants
from ..train import TrainConfig
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
    p = add_command(
        subparsers,
        "ablate",
        help="train the baseline, each VIVAT fix alone and all fixes; compare artifacts",
        description=(
            "Train, at equal budget and seed, the LDM baseline, the baseline plus each VIVAT fix alone\n"
            "and all fixes together, then score each on the held-out images (PSNR, SSIM, LPIPS and the\n"
            "five artifact scores). Variants and the switch each one turns on:\n\n"
            + "\n".join(f"  {f.name:<15} {f.artifact:<13} {', '.join(f.fields)}" for f in FIXES)
            + "\n  all-fixes       all five (the VIVAT preset)\n"
            "  baseline-seed+1 the baseline with the next seed: run-to-run noise\n\n"
            "Writes OUT/<variant>/ (a normal training run each), OUT/ablation.md, ablation.json,\n"
            "ablation.png (scores relative to the baseline) and ablation_crops.png. Finished variants\n"
            "with the same settings are reused; an interrupted one resumes from its last checkpoint."
        ),
    )
    add_image_folder_argument(p, "--data", help="training images (searched recursively)")
    add_image_folder_argument(p, "--val", help="held-out images to score every variant on")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (finished variants there are reused)")
    p.add_argument("--steps", type=int, default=600, metavar="N", help="training steps of every variant")
    p.add_argument(
        "--scale", choices=sorted(SCALES), default="tiny", help="tiny presets (CPU) or the full f8c16 ones (GPU)"
    )
    p.add_argument("--size", type=int, default=64, metavar="PX", help="training crop size (multiple of 8)")
    p.add_argument("--batch-size", type=int, default=4, metavar="B", help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the VAE and the discriminator")
    p.add_argument("--seed", type=int, default=0, help="seed of every variant (the noise run uses seed + 1)")
    p.add_argument(
        "--disc-start",
        type=int,
        default=None,
        metavar="STEP",
        help="first step of the adversarial term (default: half of --steps, so the GAN-related fixes act)",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=512,
        metavar="PX",
        help="score center crops of at most this side (0: whole images)",
    )
    p.add_argument(
        "--jobs", type=int, default=2, metavar="J", help="variants trained side by side on CPU (threads split)"
    )
    add_device_argument(p, what="where to train and evaluate")
    add_no_download_argument(p)
    p.add_argument("--no-noise-run", action="store_true", help="skip the second baseline run (no noise estimate)")
    p.add_argument("--only", default=None, metavar="A,B", help="comma-separated subset of the variants")
    p.add_argument("--no-lpips", action="store_true", help="do not compute LPIPS")
    return p


def run(args: argparse.Namespace) -> int:
    require_dir("--data", args.data)
    require_dir("--val", args.val)
    require_at_least("--steps", args.steps, 1)
    require_multiple_of_8("--size", args.size)
    require_at_least("--jobs", args.jobs, 1)
    require_at_least("--batch-size", args.batch_size, 1)
    if args.max_side < 0 or (args.max_side and args.max_side < 64):
        raise UsageError(f"--max-side must be 0 (whole images) or at least 64, got {args.max_side}")
    only = [v.strip() for v in args.only.split(",") if v.strip()] if args.only else None
    if only:
        known = list(variants(args.scale, not args.no_noise_run))
        unknown = [v for v in only if v not in known]
        if unknown:
            raise UsageError(f"--only: unknown variant(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    device = resolve_device(args.device)
    prepare_output_dir(args.out, "--out")

    base = TrainConfig(
        data=args.data,
        val=args.val,
        out=args.out,
        steps=args.steps,
        size=args.size,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        disc_start=args.disc_start,
        device=str(device),
    )
    run_ablation(
        base,
        scale=args.scale,
        jobs=args.jobs,
        noise_run=not args.no_noise_run,
        only=only,
        max_side=args.max_side or None,
        lpips=not args.no_lpips,
    )
    return 0
