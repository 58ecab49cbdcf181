"""``vivat convert``: import a pretrained VAE, export it to diffusers, or VIVAT-ize it."""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

from ..config import VAEConfig, preset_names
from ..convert import LATENT_FACTORS, conversion_psnr, load, to_diffusers, vivat_recipe_preset, vivatize
from ..errors import InputError
from .common import UsageError, add_command, add_device_argument, prepare_output_dir, require_dir, resolve_device


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(
        subparsers,
        "convert",
        help="import a pretrained VAE (LDM, FLUX, diffusers), export it, or VIVAT-ize it",
        description=(
            "Read a KL-VAE (LDM/CompVis .ckpt, FLUX ae.safetensors, a diffusers folder or weights, or a\n"
            "vivat folder) and write it to DIR as a vivat model folder (for vivat train --init) or a\n"
            "diffusers folder. --scn / --reflect build the VIVAT variant: SCN decoder norms initialised\n"
            "to the identity and/or reflect padding, with the loss recipe of the VIVAT preset of the\n"
            "model's scale; the PSNR between the original and the converted model is printed (SCN alone\n"
            "reproduces the original exactly: 100 dB).\n\n"
            "  vivat convert --from sd-v1-5.ckpt --to runs/sd-vivat --scn --reflect\n"
            "  vivat train --init runs/sd-vivat --decoder-only ..."
        ),
    )
    p.add_argument("--from", dest="source", required=True, metavar="PATH", help="file or folder to read")
    p.add_argument("--to", dest="out", required=True, metavar="DIR", help="folder to write")
    p.add_argument(
        "--format",
        choices=("vivat", "diffusers"),
        default="vivat",
        help="what to write: vivat (the save_pretrained folder) or diffusers",
    )
    p.add_argument("--scn", action="store_true", help="add identity-initialised SCN to every decoder norm")
    p.add_argument("--reflect", action="store_true", help="switch every 3x3 conv and the downsample pad to reflect")
    p.add_argument(
        "--family",
        choices=sorted(LATENT_FACTORS),
        help="latent scaling/shift factors to record (default: from the source when it says)",
    )
    p.add_argument(
        "--config",
        metavar="PRESET|JSON",
        help="architecture instead of inferring it: a preset name or a vivat config.json",
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        help="images for the PSNR check (default: the bundled scikit-image photos)",
    )
    p.add_argument("--size", type=int, default=256, metavar="PX", help="center crop of the PSNR check images")
    add_device_argument(p, what="where the PSNR check runs")
    return p


def config_from_flag(text: str | None) -> VAEConfig | None:
    """The architecture ``--config`` names: a vivat ``config.json`` file or a preset name."""
    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        return VAEConfig.from_json_file(path)
    if text not in preset_names():
        raise UsageError(f"--config {text}: no such file, nor a preset ({', '.join(preset_names())})")
    return VAEConfig.from_preset(text)


def check_images(folder: str | None, size: int) -> torch.Tensor:
    """Up to four center crops (a multiple of 8, at most ``size``) in [-1, 1] for the PSNR check."""
    from ..data import center_crop, demo_images, load_image, scan_images

    with tempfile.TemporaryDirectory() as tmp:
        paths = scan_images(folder) if folder else demo_images(tmp).all
        if not paths:
            raise InputError(f"--images {folder}: no images in the folder (png/jpg/jpeg/webp)")
        crops = []
        for path in paths[:4]:
            img = load_image(path)
            crops.append(center_crop(img, min(size, *img.shape[-2:]) // 8 * 8))
    s = min(c.shape[-1] for c in crops)
    return torch.stack([c[:, :s, :s] for c in crops]) * 2 - 1


def run(args: argparse.Namespace) -> int:
    if not Path(args.source).exists():
        raise UsageError(f"--from {args.source} does not exist")
    require_dir("--images", args.images)
    if args.size < 8:
        raise UsageError(f"--size must be >= 8, got {args.size}")
    device = torch.device(resolve_device(args.device))
    config = config_from_flag(args.config)
    prepare_output_dir(args.out, "--to")

    notes: list[str] = []
    original = load(args.source, config, family=args.family, notes=notes)
    model = original
    if args.scn or args.reflect:
        model = vivatize(original, scn=args.scn, reflect=args.reflect)
        notes.append(f"loss recipe of {vivat_recipe_preset(original.config)} (the VIVAT preset of this scale)")
    cfg = model.config
    print(
        f"read {args.source}: ch {cfg.ch}, ch_mult {cfg.ch_mult}, {cfg.num_res_blocks} blocks/level, "
        f"z {cfg.z_channels}, groups {cfg.norm_groups}, scaling {cfg.scaling_factor}, shift {cfg.shift_factor}"
    )
    for note in notes:
        print(f"  note: {note}")
    if model is not original:
        changes = [c for c, on in (("SCN (identity init)", args.scn), ("reflect padding", args.reflect)) if on]
        result = conversion_psnr(original.to(device), model.to(device), check_images(args.images, args.size).to(device))
        print(
            f"VIVAT-ized ({', '.join(changes)}): decoder PSNR vs original {result['decode_psnr_db']:.2f} dB, "
            f"end-to-end {result['reconstruction_psnr_db']:.2f} dB, latent max |diff| "
            f"{result['latent_max_abs_diff']:.3g}" + ("  (100 dB = identical)" if not args.reflect else "")
        )
    if args.format == "diffusers":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = to_diffusers(model.to("cpu"), args.out)
        for w in caught:
            print(f"  warning: {w.message}")
    else:
        out = model.to("cpu").save_pretrained(args.out)
    print(f"wrote {out} ({args.format} format)")
    return 0
