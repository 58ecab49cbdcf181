"""``vivat eval``: PSNR / SSIM / LPIPS (and nothing else) of a model on a folder of images."""

from __future__ import annotations

import argparse
import json
import sys

from ..evaluate import evaluate_folder, load_model
from .common import (
    add_command,
    add_device_argument,
    add_image_folder_argument,
    add_max_side_argument,
    add_model_argument,
    add_no_download_argument,
    add_sizing_argument,
    prepare_output_file,
    require_at_least,
    require_dir,
    resolve_device,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        "eval",
        help="PSNR / SSIM / LPIPS of a model on a folder of images",
        description=(
            "Reconstruct every image in a folder (recursive) with the posterior mode, in fp32, and score\n"
            "it by the project's conventions (vivat.metrics): reconstruction quantised to uint8, PSNR and\n"
            "SSIM (Gaussian 11, sigma 1.5, data range 1) per image then mean, LPIPS(alex) when its weights\n"
            "are on disk. Prints JSON."
        ),
    )
    add_model_argument(p)
    add_image_folder_argument(p, help="folder of images to evaluate on (searched recursively)")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON report here")
    add_sizing_argument(p)
    add_max_side_argument(p)
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    add_device_argument(p)
    add_no_download_argument(p)
    return p


def run(args: argparse.Namespace) -> int:
    require_dir("--model", args.model)
    require_dir("--data", args.data)
    require_at_least("--max-side", args.max_side, 8)
    device = resolve_device(args.device)
    out = None if args.out is None else prepare_output_file(args.out, "--out")

    model = load_model(args.model, device=device)
    report = {
        "model": str(args.model),
        "data": str(args.data),
        **evaluate_folder(
            model,
            args.data,
            args.sizing,
            lpips=not args.no_lpips,
            max_side=args.max_side,
            jsonl=None if out is None else out.with_suffix(".jsonl"),
        ),
    }
    text = json.dumps(report, indent=2)
    if out is not None:
        out.write_text(text + "\n")
        print(f"wrote {out} (per-image lines in {out.with_suffix('.jsonl')})", file=sys.stderr)
    else:
        print(text)
    mean = report["mean"]
    lp = "n/a" if mean["lpips"] is None else f"{mean['lpips']:.4f}"
    print(
        f"{report['n']} images, {report['sizing']}: PSNR {mean['psnr']:.2f} dB, SSIM {mean['ssim']:.4f}, "
        f"LPIPS(alex) {lp}",
        file=sys.stderr,
    )
    if report.get("skipped"):
        print(
            f"skipped {len(report['skipped'])} file(s) that could not be evaluated (listed in the report)",
            file=sys.stderr,
        )
    if mean["lpips"] is None:
        print(f"LPIPS: {report['settings']['lpips']}", file=sys.stderr)
    return 0
