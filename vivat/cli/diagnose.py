"""``vivat diagnose``: an artifact-diagnosis report (HTML + JSON) of a model, optionally against a baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..diagnose import diagnose_model
from ..evaluate import load_model
from ..report.diagnose import summary_line, write_report
from .common import (
    add_command,
    add_device_argument,
    add_image_folder_argument,
    add_max_side_argument,
    add_model_argument,
    add_no_download_argument,
    add_sizing_argument,
    prepare_output_dir,
    require_at_least,
    require_dir,
    resolve_device,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        "diagnose",
        help="artifact-diagnosis report (HTML + JSON) of a model, optionally against a baseline",
        description=(
            "Reconstruct every image in a folder (recursive; posterior mode, fp32), score it (PSNR, SSIM,\n"
            "LPIPS and the artifact scores color_shift, grid, blur, border, corner, droplet,\n"
            "droplet_features: docs/ARTIFACTS.md) and write OUT/report.html (self-contained, opens\n"
            "offline), OUT/report.json (every number) and OUT/figures/*.png. For the worst images the\n"
            "report shows original, reconstruction, residual heat map, residual spectrum with the 8-px\n"
            "lattice marked, and the spikiest decoder feature map.\n\n"
            "  vivat diagnose --model runs/tiny/model --data photos/val --out diag/ --max-side 256\n"
            "  vivat diagnose --model runs/vivat/model --baseline runs/ldm/model --data photos/val --out diag/"
        ),
    )
    add_model_argument(p, help="model to diagnose (save_pretrained folder)")
    add_image_folder_argument(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.html, report.json, figures/")
    add_model_argument(
        p,
        "--baseline",
        required=False,
        help="a second model (save_pretrained folder) shown side by side, on the model's worst images",
    )
    add_max_side_argument(
        p, help="first center-crop large photos to at most PX per side, for speed (the scores need >= 48 px)"
    )
    p.add_argument(
        "--worst",
        type=int,
        default=4,
        metavar="N",
        help="images shown with figures: the highest of each artifact score, up to N (0: table only)",
    )
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (it is n/a anyway without its weights)")
    add_device_argument(p, what="where the models run")
    add_no_download_argument(p)
    add_sizing_argument(
        p,
        help="make sizes multiples of 8 by reflect-padding (the artifact scores then read a center crop) or "
        "by center-cropping",
    )
    return p


def run(args: argparse.Namespace) -> int:
    require_dir("--model", args.model)
    require_dir("--data", args.data)
    require_dir("--baseline", args.baseline)
    require_at_least("--max-side", args.max_side, 8)
    require_at_least("--worst", args.worst, 0)
    device = resolve_device(args.device)
    out = prepare_output_dir(args.out, "--out")

    settings = {"sizing": args.sizing, "max_side": args.max_side, "lpips": not args.no_lpips}
    print(f"scoring {args.data} with {args.model} ...", file=sys.stderr)
    result = diagnose_model(
        load_model(args.model, device),
        args.data,
        worst=args.worst,
        name=args.model,
        jsonl=Path(out) / "report.jsonl",
        **settings,
    )
    baseline = None
    if args.baseline is not None:
        print(f"scoring {args.data} with the baseline {args.baseline} ...", file=sys.stderr)
        baseline = diagnose_model(
            load_model(args.baseline, device),
            args.data,
            worst=0,
            include=[w["file"] for w in result["worst"]],
            name=args.baseline,
            **settings,
        )
    paths = write_report(out, result, baseline)
    print(f"report:  {paths['html']}")
    print(f"numbers: {paths['json']} ({len(paths['figures'])} figures in {Path(out) / 'figures'})")
    print(f"{result['n']} images, {result['sizing']}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} file(s) that could not be scored (listed in {paths['json']})")
    if baseline is not None:
        print(summary_line("baseline", baseline))
    print(summary_line("model", result))
    if result["mean"]["lpips"] is None:
        print(f"LPIPS: {result['settings']['lpips']}")
    return 0
