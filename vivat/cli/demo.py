"""``vivat demo``: train a tiny VAE on bundled photos, evaluate it and write a report."""

from __future__ import annotations

import argparse

from ..demo import DEFAULT_OUT, DEMO_SETTINGS, QUICK_SETTINGS, run_demo
from .common import add_command, add_no_download_argument, prepare_output_dir, require_at_least


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        "demo",
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
    add_no_download_argument(p)
    return p


def run(args: argparse.Namespace) -> int:
    require_at_least("--steps", args.steps, 1)
    prepare_output_dir(args.out, "--out")
    run_demo(args.out, quick=args.quick, steps=args.steps, seed=args.seed)
    return 0
