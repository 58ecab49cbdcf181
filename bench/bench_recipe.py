"""Short-run training recipes of the tiny presets on CPU: held-out PSNR per CPU-minute.

Every variant trains one process on one thread (two variants side by side), then its EMA model is
scored on the validation folder (center crops of at most ``--eval-side`` px, cropped to a multiple
of 8): PSNR / SSIM and the artifact scores. Each variant runs with every seed of ``--seeds`` so the
table shows the spread next to the mean.

    PYTHONPATH=$PWD python -m bench.bench_recipe --data ../shared/data/photos/train \\
        --val ../shared/data/photos/val --work /tmp/recipe --variants const-64,cos-64 --seeds 0,1

Results: one JSON per run in ``--work`` (a rerun skips finished runs), and the table in
``--out`` (``.md`` and ``.json``, paths relative to the repository root). The variant grid is
:data:`VARIANTS`; add a row there to try another recipe.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

# name -> (what it is, settings). Every setting is a vivat.train.TrainConfig field (plus "preset").
COMMON: dict[str, Any] = {"preset": "vivat-tiny", "steps": 400, "size": 64, "batch_size": 4, "lr": 1e-3}
_DEMO: dict[str, Any] = {
    "steps": 1000,
    "size": 128,
    "batch_size": 1,
    "lr": 2e-3,
    "lr_schedule": "cosine",
    "warmup_steps": 30,
    "disc_start": 600,
    "changes": {},
}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "const-64": ("today's demo: constant lr 1e-3, 64 px x 4", {}),
    "cos-64": ("cosine 2e-3 -> 5%, 30 warm-up, 64 px x 4", {"lr": 2e-3, "lr_schedule": "cosine", "warmup_steps": 30}),
    "cos4e3-64": ("cosine 4e-3, 64 px x 4", {"lr": 4e-3, "lr_schedule": "cosine", "warmup_steps": 30}),
    "cos-128": (
        "cosine 2e-3, 128 px x 1 (same pixels per step)",
        {"lr": 2e-3, "lr_schedule": "cosine", "warmup_steps": 30, "size": 128, "batch_size": 1},
    ),
    "cos-96": (
        "cosine 2e-3, 96 px x 2",
        {"lr": 2e-3, "lr_schedule": "cosine", "warmup_steps": 30, "size": 96, "batch_size": 2},
    ),
    "cos-64-disc": (
        "cosine 2e-3, 64 px x 4, discriminator from 60% of the run",
        {"lr": 2e-3, "lr_schedule": "cosine", "warmup_steps": 30, "disc_start": 240},
    ),
    "cos-64-long": (
        "cosine 2e-3, 64 px x 4, 800 steps",
        {"lr": 2e-3, "lr_schedule": "cosine", "warmup_steps": 30, "steps": 800},
    ),
    # the demo's own recipe and data regime (six photos; run with --data on the demo's train
    # folder, see the results file), then augmentations that let six photos stand for more
    "demo": (
        "the demo recipe: 1000 steps of 128 px x 1, cosine 2e-3, disc from 600",
        {**_DEMO},
    ),
    "demo-zoom": (
        "demo + zoom-out crops (factor 0.25-1, antialiased)",
        {**_DEMO, "scale_aug": (0.25, 1.0)},
    ),
    "demo-zoom-permute": (
        "demo + zoom-out + random RGB channel order",
        {**_DEMO, "scale_aug": (0.25, 1.0), "color_aug": "permute"},
    ),
    "demo-zoom-hue": (
        "demo + zoom-out + random hue rotation",
        {**_DEMO, "scale_aug": (0.25, 1.0), "color_aug": "hue"},
    ),
    "demo-zoom-permute-b9": (
        "demo + zoom-out + RGB order, AdamW betas (0.9, 0.99) instead of the GAN-style (0.5, 0.9)",
        {**_DEMO, "scale_aug": (0.25, 1.0), "color_aug": "permute", "betas": (0.9, 0.99)},
    ),
    "demo-zoom-permute-b9-lr4": (
        "as demo-zoom-permute-b9 with a peak learning rate of 4e-3",
        {**_DEMO, "scale_aug": (0.25, 1.0), "color_aug": "permute", "betas": (0.9, 0.99), "lr": 4e-3},
    ),
    "demo-zoom-permute-3k": (
        "demo + zoom-out + RGB order, three times the steps (3000, disc from 1800)",
        {**_DEMO, "scale_aug": (0.25, 1.0), "color_aug": "permute", "steps": 3000, "disc_start": 1800},
    ),
    # the interaction of the fixes at the corners: which fix undoes reflect padding's border gain?
    "reflect-only-disc": (
        "ldm-tiny + reflect padding only, cosine 2e-3, disc from 60%",
        {
            "preset": "ldm-tiny",
            "changes": {"padding_mode": "reflect"},
            "lr": 2e-3,
            "lr_schedule": "cosine",
            "warmup_steps": 30,
            "disc_start": 240,
        },
    ),
    "no-scn-disc": (
        "vivat-tiny without SCN (plain GroupNorm decoder), cosine 2e-3, disc from 60%",
        {"changes": {"scn": False}, "lr": 2e-3, "lr_schedule": "cosine", "warmup_steps": 30, "disc_start": 240},
    ),
    "scn3-disc": (
        "vivat-tiny with SCN scale/shift from reflect-padded 3x3 convs, cosine 2e-3, disc from 60%",
        {"changes": {"scn_kernel": 3}, "lr": 2e-3, "lr_schedule": "cosine", "warmup_steps": 30, "disc_start": 240},
    ),
    "ldm-cos-64-disc": (
        "ldm-tiny, cosine 2e-3, 64 px x 4, discriminator from 60%",
        {"preset": "ldm-tiny", "lr": 2e-3, "lr_schedule": "cosine", "warmup_steps": 30, "disc_start": 240},
    ),
}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train and score one (variant, seed); runs in a worker process on one thread."""
    import contextlib

    import torch

    torch.set_num_threads(1)
    from vivat.config import VAEConfig
    from vivat.evaluate import evaluate_folder, load_model
    from vivat.train import TrainConfig, train

    run_dir = Path(job["work"]) / f"{job['name']}-s{job['seed']}"
    settings = {**COMMON, **VARIANTS[job["name"]][1]}
    train_settings = {k: v for k, v in settings.items() if k not in ("preset", "changes")}
    if "changes" in settings:
        train_settings["model_config"] = VAEConfig.from_preset(settings["preset"]).replace(**settings["changes"])
        if "disc_start" in train_settings:
            train_settings["model_config"] = train_settings["model_config"].replace(disc_start=settings["disc_start"])
    else:
        train_settings["preset"] = settings["preset"]
    cfg = TrainConfig(
        data=job["data"],
        val=job["val"],
        out=str(run_dir),
        seed=job["seed"],
        ckpt_every=settings["steps"],
        keep_ckpts=1,
        val_every=0,
        log_every=max(1, settings["steps"] // 20),
        overwrite=True,
        device="cpu",
        workers=0,
        progress=False,
        **train_settings,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.time(), time.process_time()
    with open(run_dir / "train.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        summary = train(cfg)
    train_s, train_cpu_s = time.time() - t0, time.process_time() - c0
    model = load_model(run_dir / "model")
    t1 = time.time()
    report = evaluate_folder(model, job["val"], sizing="crop", lpips=False, max_side=job["eval_side"], artifacts=True)
    result = {
        "variant": job["name"],
        "seed": job["seed"],
        "settings": settings,
        "train_s": train_s,
        "s_per_step": train_s / max(1, summary["steps"]),
        "train_cpu_s": train_cpu_s,
        "cpu_s_per_step": train_cpu_s / max(1, summary["steps"]),
        "eval_s": time.time() - t1,
        "mean": report["mean"],
        "per_image_psnr": [r["psnr"] for r in report["images"]],
        "sizing": report["sizing"],
        "load": os.getloadavg(),
    }
    (run_dir.parent / f"{run_dir.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


SCORES = ("psnr", "ssim", "color_shift", "grid", "border", "corner")


def table(results: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    for name in VARIANTS:
        runs = [r for r in results if r["variant"] == name]
        if not runs:
            continue
        row: dict[str, Any] = {"variant": name, "what": VARIANTS[name][0], "seeds": [r["seed"] for r in runs]}
        for s in SCORES:
            vals = [r["mean"][s] for r in runs]
            row[s] = statistics.fmean(vals)
            row[s + "_spread"] = (max(vals) - min(vals)) if len(vals) > 1 else None
            row[s + "_runs"] = vals
        row["s_per_step"] = statistics.fmean(r["s_per_step"] for r in runs)
        row["cpu_s_per_step"] = statistics.fmean(r["cpu_s_per_step"] for r in runs)
        row["train_s"] = statistics.fmean(r["train_s"] for r in runs)
        row["steps"] = runs[0]["settings"]["steps"]
        rows.append(row)
    lines = [
        "| variant | what | steps | CPU s/step | PSNR (dB) | seeds | spread | SSIM | color_shift | grid | border | corner |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = "n/a" if r["psnr_spread"] is None else f"{r['psnr_spread']:.2f}"
        lines.append(
            f"| {r['variant']} | {r['what']} | {r['steps']} | {r['cpu_s_per_step']:.2f} | {r['psnr']:.2f} | "
            f"{len(r['seeds'])} | {spread} | "
            f"{r['ssim']:.3f} | {r['color_shift']:.2f} | {r['grid']:.3f} | {r['border']:.3f} | {r['corner']:.3f} |"
        )
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--work", required=True, help="folder of the runs (kept; finished runs are skipped)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--eval-side", type=int, default=384)
    p.add_argument("--parallel", type=int, default=2, help="runs side by side (one thread each)")
    p.add_argument("--out", default=None, help="write the table to OUT.md and OUT.json")
    args = p.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    jobs, results = [], []
    for seed in (int(s) for s in args.seeds.split(",")):  # every variant's first seed first
        for name in names:
            done = work / f"{name}-s{seed}.json"
            if done.is_file():
                results.append(json.loads(done.read_text()))
                continue
            jobs.append(
                {
                    "name": name,
                    "seed": seed,
                    "work": str(work),
                    "data": args.data,
                    "val": args.val,
                    "eval_side": args.eval_side,
                }
            )
    with cf.ProcessPoolExecutor(args.parallel, mp_context=mp.get_context("spawn")) as pool:
        for fut in cf.as_completed([pool.submit(run_one, j) for j in jobs]):
            r = fut.result()
            results.append(r)
            print(
                f"{r['variant']} seed {r['seed']}: PSNR {r['mean']['psnr']:.2f} dB, {r['s_per_step']:.2f} s/step",
                flush=True,
            )
    text, rows = table(results)
    print(text)
    if args.out:
        out = Path(args.out)
        meta = {
            "machine": platform.machine(),
            "threads_per_run": 1,
            "parallel": args.parallel,
            "data": args.data,
            "val": args.val,
            "eval_side": args.eval_side,
        }
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": results}, indent=2) + "\n")
        out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
