"""Benchmark ``vivat_kernels.patch`` on a diffusers ``AutoencoderKL``: decode, patched vs unpatched.

Both models are built from a config (random weights, nothing downloaded), the second is a deep
copy passed through ``patch`` (GroupNorm -> fused GN / GN+SiLU, no reflect padding, so the output
is the same up to float rounding; the table shows the max difference). Each row times
``vae.decode(z)`` of one latent for each ``--sizes`` side (a square image) under ``torch.no_grad``:
median over ``--reps`` runs after ``--warmup``, in ``--rounds`` that alternate the two models (the
median of the rounds is reported, so a change of machine load hits both alike). ``--compile`` adds
rows with both models under ``torch.compile(fullgraph=True)`` (inductor). ``speedup`` =
unpatched ms / patched ms (higher is better).

Configs: ``tiny`` (block_out_channels 32, 64, 128, 128; one ResNet block per level; the CPU
default) and ``sd`` (the Stable Diffusion VAE: 128, 256, 512, 512; two blocks; the GPU default).

    python bench/bench_patch.py                                   # CPU, tiny, float32
    python bench/bench_patch.py --device cuda --configs sd --sizes 512,1024 --dtype bfloat16 --compile
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, environment, markdown_table, time_ms, write_results
from vivat_kernels import patch
from vivat_kernels.ops.group_norm import selected_backend

CONFIGS = {
    "tiny": {"block_out_channels": (32, 64, 128, 128), "layers_per_block": 1},
    "sd": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2},
}
COLUMNS = [
    ("config", "config"),
    ("dtype", "dtype"),
    ("mode", "mode"),
    ("patch", "patched by"),
    ("size", "image"),
    ("unpatched_ms", "unpatched ms"),
    ("patched_ms", "patched ms"),
    ("speedup", "speedup"),
    ("max_abs_diff", "max abs diff"),
    ("backend", "GN backend"),
]


def build(name: str, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    levels = len(CONFIGS[name]["block_out_channels"])
    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        norm_num_groups=32,
        **CONFIGS[name],
    )
    return vae.to(device=device, dtype=dtype).eval()


def run_case(name: str, dtype: torch.dtype, device: torch.device, args) -> list[dict]:
    plain = build(name, device, dtype)
    rows = []
    for call in ("patch()", "patch(channels_last=True)") if args.channels_last else ("patch()",):
        fused = copy.deepcopy(plain)
        report = patch(fused, channels_last=call != "patch()")
        for size in args.sizes:
            for row in run_size(name, size, plain, fused, report, dtype, device, args):
                rows.append({**row, "patch": call})
    return rows


def run_size(name: str, size: int, plain, fused, report, dtype: torch.dtype, device: torch.device, args) -> list[dict]:
    latent = size // 8
    z = torch.randn(args.batch, 4, latent, latent, device=device, dtype=dtype)
    modes = [("eager", lambda m: m.decode)]
    if args.compile:
        modes.append(("compiled", lambda m: torch.compile(m.decode, fullgraph=True)))
    rows = []
    for mode, wrap in modes:
        dec_plain, dec_fused = wrap(plain), wrap(fused)
        with torch.no_grad():
            diff = (dec_plain(z).sample.float() - dec_fused(z).sample.float()).abs().max().item()
            # Alternate the two in rounds so that a change of machine load hits both alike.
            plain_ms, fused_ms = [], []
            for _ in range(args.rounds):
                plain_ms.append(time_ms(functools.partial(dec_plain, z), device, warmup=args.warmup, reps=args.reps))
                fused_ms.append(time_ms(functools.partial(dec_fused, z), device, warmup=args.warmup, reps=args.reps))
            ms_plain, ms_fused = statistics.median(plain_ms), statistics.median(fused_ms)
        rows.append(
            {
                "config": name,
                "dtype": str(dtype).replace("torch.", ""),
                "mode": mode,
                "size": f"{args.batch}x{size}²",
                "unpatched_ms": ms_plain,
                "patched_ms": ms_fused,
                "speedup": ms_plain / ms_fused,
                "max_abs_diff": diff,
                "backend": selected_backend(z)[0],
                "replaced": report.counts(),
            }
        )
        r = rows[-1]
        print(
            f"{name:5s} {r['dtype']:9s} {mode:8s} {r['size']:8s} unpatched {ms_plain:9.2f} ms  patched {ms_fused:9.2f} ms  "
            f"speedup {r['speedup']:.2f}x  max|diff| {diff:.2e}",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--configs", default=None, help="comma list of tiny, sd (default: cpu tiny; cuda tiny,sd)")
    ap.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: cpu float32; cuda bfloat16)")
    ap.add_argument("--sizes", default="256", help="decoded image sides in pixels, comma list (default: 256)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    ap.add_argument(
        "--channels-last",
        action="store_true",
        help="also time patch(model, channels_last=True) (conv weights and activations NHWC) against the same baseline",
    )
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both models (median of rounds)")
    ap.add_argument("--out", type=Path, default=RESULTS / "local", help="folder for the JSON + markdown results")
    ap.add_argument("--tag", default="", help="added to the results' file names (patch-TAG-DATE-DEVICE.md)")
    args = ap.parse_args(argv)

    args.sizes = [int(v) for v in args.sizes.split(",")]
    if any(v % 8 for v in args.sizes):
        ap.error(f"--sizes must be multiples of 8, got {args.sizes}")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("bench_patch: diffusers is not installed (pip install diffusers): skipped, nothing measured")
        return 0
    device = torch.device(args.device)
    names = (args.configs or ("tiny" if device.type == "cpu" else "tiny,sd")).split(",")
    dtype = getattr(torch, args.dtype or ("float32" if device.type == "cpu" else "bfloat16"))
    rows = [row for name in names for row in run_case(name, dtype, device, args)]

    env = environment(device)
    md = [
        f"# patch(): diffusers AutoencoderKL decode — {env['device']}, {env['date']}",
        "",
        (
            f"torch {env['torch']}, triton {env['triton']}, threads {env['threads']}. Random weights; "
            "medians after warm-up; speedup = unpatched / patched."
        ),
        "",
        markdown_table(rows, COLUMNS),
    ]
    markdown = "\n".join(md)
    print()
    print(markdown)
    stem = "patch" + (f"-{args.tag}" if args.tag else "")
    jpath, mpath = write_results(args.out, stem, device, {"env": env, "rows": rows}, markdown)
    print(f"\nwrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
