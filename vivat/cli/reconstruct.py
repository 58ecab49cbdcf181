"""``vivat reconstruct``: reconstructions and side-by-side pictures of single images."""

from __future__ import annotations

import argparse
import sys

from ..evaluate import load_model, write_reconstructions
from .common import (
    add_command,
    add_device_argument,
    add_max_side_argument,
    add_model_argument,
    add_sizing_argument,
    prepare_output_dir,
    require_at_least,
    require_dir,
    require_files,
    resolve_device,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        "reconstruct",
        help="write reconstructions and side-by-side PNGs of images",
        description=(
            "Reconstruct images of any size and write OUT/NAME.png and OUT/NAME_side_by_side.png\n"
            "(original | reconstruction). With --sizing pad (the default) the image is reflect-padded\n"
            "to a multiple of 8 and the reconstruction cropped back to the original size."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_model_argument(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_sizing_argument(p)
    add_max_side_argument(p)
    add_device_argument(p)
    return p


def run(args: argparse.Namespace) -> int:
    require_dir("--model", args.model)
    require_files(args.images)
    require_at_least("--max-side", args.max_side, 8)
    device = resolve_device(args.device)
    out = prepare_output_dir(args.out, "--out")

    model = load_model(args.model, device=device)
    result = write_reconstructions(model, args.images, out, sizing=args.sizing, max_side=args.max_side)
    for r in result:
        print(f"{r['file']}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f} -> {r['side_by_side']}")
    if result.skipped:
        print(
            f"skipped {len(result.skipped)} of {len(args.images)} image(s) (named in the warnings above)",
            file=sys.stderr,
        )
    return 0
