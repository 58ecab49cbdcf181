"""``vivat demo``: train, evaluate and show a tiny VIVAT VAE beside its baseline on a fresh machine, with no data to fetch.

1. the colour photos bundled with scikit-image are written to ``OUT/data/{train,val}``;
2. ``vivat-tiny`` (into OUT) and the ``ldm-tiny`` baseline (into ``OUT/baseline``) train side by
   side, two processes of one thread each, with the same recipe and budget
   (:func:`vivat.train.train`; checkpoints, log and validation grids land in each folder as for any
   run);
3. both EMA models are scored on the two held-out photos, whole (center-cropped to a multiple of
   8): PSNR / SSIM / LPIPS and the five artifact scores -> ``OUT/metrics.json``; the ``diagnose``
   HTML report with the baseline column -> ``OUT/diagnose/report.html``;
4. ``OUT/reconstructions/*.png`` show original | reconstruction side by side,
   ``OUT/edge_crops.png`` the border and corner crops where the two models differ most, and
   ``OUT/summary.md`` says what was done, what came out, and which differences exceed the
   run-to-run noise.

A few minutes of CPU on six photos shows the pipeline end to end; it is not a measure of what the
architecture reaches with real training.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

from .config import VAEConfig
from .data import demo_images, load_image, save_image
from .diagnose import diagnose_model
from .errors import OutputError
from .evaluate import load_model, reconstruct, side_by_side
from .report.demo import comparison_table, edge_crops, write_crop_figure
from .report.diagnose import write_report
from .train import TrainConfig, train

DEFAULT_OUT = "vivat_out/demo"
PRESET = "vivat-tiny"
BASELINE = "ldm-tiny"
# The recipe was chosen on ../shared/data/photos train -> val (bench/results/recipe-2026-11-29-cpu.md),
# never on the demo's own held-out photos: at the same pixels per step, one 128-px crop reached the
# held-out PSNR of four 64-px crops (within the seed spread) at 70% of the CPU time per step, and
# sees whole objects, as the whole-photo evaluation does; a cosine decay from 2e-3 after a short
# warm-up was as good as a constant 1e-3 and ends on a small rate for the EMA. The discriminator
# starts at 60% of the run, so the adversarial term acts inside it. Six photos are few: each crop is
# zoomed out by a random factor in [0.25, 1] and its RGB channels put in a random order, so the run
# sees them at the scale of the held-out photos and cannot learn their palette (+1.9 dB and a third
# less colour shift on ../shared/data/photos/val in the same experiment).
# The perceptual term is off here: LPIPS(vgg) on CPU about doubles the step time; `vivat train`
# uses it when its weights are available.
DEMO_SETTINGS: dict[str, Any] = {
    "steps": 1600,
    "size": 128,
    "batch_size": 1,
    "lr": 2e-3,
    "lr_schedule": "cosine",
    "warmup_steps": 30,
    "disc_start_frac": 0.6,
    "scale_aug": (0.25, 1.0),
    "color_aug": "permute",
    "eval_max_side": None,
}
# Tens of seconds: exercises every stage (both trainings, the discriminator, the decoder-only
# switch, checkpoints, eval, the report). Evaluation then looks at 128-px center crops only.
QUICK_SETTINGS: dict[str, Any] = {
    "steps": 12,
    "size": 32,
    "batch_size": 2,
    "lr": 2e-3,
    "lr_schedule": "cosine",
    "warmup_steps": 2,
    "disc_start_frac": 0.5,
    "scale_aug": (0.25, 1.0),
    "color_aug": "permute",
    "eval_max_side": 128,
}
# Run-to-run noise of each mean score: the largest |seed 0 - seed 1| of four pairs of vivat-tiny runs
# in the demo's own regime (1000 steps of 128 px x 1 on the six demo photos, four augmentation
# settings, scored on the 9 photos of ../shared/data/photos/val;
# bench/results/recipe-demo-data-2026-11-29-cpu.json), or that of two ldm-tiny runs
# (bench/results/ablation-2026-11-26-cpu.json) where it is larger. A difference between the models
# inside it says nothing; on the demo's two photos the noise can only be larger.
RUN_TO_RUN: dict[str, float] = {
    "psnr": 0.359,
    "ssim": 0.038,
    "color_shift": 1.84,
    "grid": 0.121,
    "blur": 0.047,
    "border": 0.0202,
    "corner": 0.0763,
    "droplet": 2.18,
    "droplet_features": 323.0,
}
NOISE_SOURCE = (
    "the largest |seed 0 - seed 1| of four pairs of vivat-tiny runs of the demo's regime on 9 validation photos "
    "(bench/results/recipe-demo-data-2026-11-29-cpu.md) or of two ldm-tiny runs "
    "(bench/results/ablation-2026-11-26-cpu.md); on the demo's two photos the noise can only be larger"
)
COMPARED = (
    ("psnr", "PSNR (dB)", True),
    ("ssim", "SSIM", True),
    ("lpips", "LPIPS (alex)", False),
    ("color_shift", "colour shift (ΔE)", False),
    ("grid", "grid (8-px pattern)", False),
    ("blur", "blur", False),
    ("border", "border", False),
    ("corner", "corner", False),
    ("droplet", "droplet", False),
    ("droplet_features", "droplet (decoder features)", False),
)


def model_config(preset: str, settings: dict[str, Any]) -> VAEConfig:
    """The preset with the demo's schedule: discriminator inside the run, no perceptual term."""
    disc_start = round(settings["disc_start_frac"] * settings["steps"])
    return VAEConfig.from_preset(preset).replace(disc_start=disc_start, perceptual_weight=0.0)


def _train_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model on one thread; its console output goes to ``<out>/train.log``. Runs in a worker."""
    import contextlib

    import torch

    torch.set_num_threads(1)
    cfg = TrainConfig(**job["config"], model_config=VAEConfig.from_dict(job["model_config"]))
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    t0, c0 = time.time(), time.process_time()
    with (
        open(Path(cfg.out) / "train.log", "w") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        summary = train(cfg)
    return {**summary, "wall_s": time.time() - t0, "cpu_s": time.process_time() - c0}


def _last_step(out: Path) -> int:
    try:
        lines = (out / "log.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            record = json.loads(line)
            return int(record.get("step", record.get("steps", 0)))  # the "end" record counts "steps"
        except (json.JSONDecodeError, ValueError):
            continue
    return 0


def train_side_by_side(jobs: list[dict[str, Any]], report_every: float = 30.0) -> list[dict[str, Any]]:
    """Run the training ``jobs`` in parallel processes (one thread each); results in job order."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(len(jobs)) as pool:
        pending = [pool.apply_async(_train_job, (job,)) for job in jobs]
        t0 = time.time()
        while not all(p.ready() for p in pending):
            time.sleep(0.5)
            if time.time() - t0 >= report_every:
                t0 = time.time()
                steps = ", ".join(
                    f"{job['name']} {_last_step(Path(job['config']['out']))}/{job['config']['steps']}" for job in jobs
                )
                print(f"  steps: {steps}", flush=True)
        return [p.get() for p in pending]


def _fmt_lpips(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _markdown_summary(
    out: Path,
    settings: dict,
    summaries: dict[str, dict],
    reports: dict[str, dict],
    logs: dict[str, list[dict]],
    files: dict[str, Any],
    wall: float,
    cpu: dict[str, float],
) -> str:
    report, base = reports[PRESET], reports[BASELINE]
    m, b = report["mean"], base["mean"]
    start = next(r for r in logs[PRESET] if r["kind"] == "start")
    disc_start, switch = start["disc_start"], start["decoder_only_from_step"]
    steps = summaries[PRESET]["steps"]
    lines = [
        "# vivat demo",
        "",
        (
            f"Trained the `{PRESET}` preset (reflect padding, spatially conditional norms in the decoder, "
            f"VIVAT loss weights) and its baseline `{BASELINE}` (zero padding, plain GroupNorm, LDM loss weights) "
            f"from scratch on CPU, side by side (one thread each) with the same recipe: {steps} steps of "
            f"{settings['size']} px random crops, batch {settings['batch_size']}, AdamW, learning rate "
            f"{settings['lr']:g} ({settings['lr_schedule']}, {settings['warmup_steps']} warm-up steps), on six "
            f"colour photos bundled with scikit-image (`{out / 'data' / 'train'}`), each crop zoomed out by a random "
            f"factor in [{settings['scale_aug'][0]:g}, {settings['scale_aug'][1]:g}] and its colour channels "
            f"in a random order ({settings['color_aug']}). Total time {wall:.0f} s "
            f"(training CPU time {cpu[PRESET]:.0f} s and {cpu[BASELINE]:.0f} s)."
        ),
        "",
        (
            "- perceptual term: off in the demo (LPIPS(vgg) on CPU about doubles the step time); "
            "`vivat train` uses it when its weights are available"
        ),
        f"- adversarial term: from step {disc_start}"
        + ("" if steps > disc_start else ", not reached in this short run"),
        f"- decoder-only stage (encoder frozen; `{PRESET}` only): from step {switch}",
        "- the saved models hold the EMA of the weights; latents are the posterior mode.",
        "",
        f"## Held-out photos ({report['n']}), {report['sizing']}",
        "",
        (
            f"| image | size | PSNR {PRESET} | PSNR {BASELINE} | SSIM {PRESET} | SSIM {BASELINE} | "
            f"colour shift {PRESET} | colour shift {BASELINE} |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, brow in zip(report["images"], base["images"]):
        size = "x".join(str(v) for v in row["scored_size"])
        lines.append(
            f"| {Path(row['file']).name} | {size} | {row['psnr']:.2f} | {brow['psnr']:.2f} | {row['ssim']:.4f} | "
            f"{brow['ssim']:.4f} | {row['color_shift']:.2f} | {brow['color_shift']:.2f} |"
        )
    lines.append(
        f"| **mean** | | **{m['psnr']:.2f}** | **{b['psnr']:.2f}** | **{m['ssim']:.4f}** | **{b['ssim']:.4f}** | "
        f"**{m['color_shift']:.2f}** | **{b['color_shift']:.2f}** |"
    )
    lines += ["", f"LPIPS: {report['settings']['lpips']}.", ""]
    val = summaries[PRESET].get("val")
    val0 = next((r for r in logs[PRESET] if r["kind"] == "val" and r["step"] == 0), None)
    if val0 is not None and val:
        lines += [
            (
                f"On {val['images']} center crops of {settings['size']} px of the held-out photos, the PSNR of "
                f"`{PRESET}` went from {val0['psnr']:.2f} dB (step 0) to {val['psnr']:.2f} dB (step {val['step']})."
            ),
            "",
        ]
    lines += [
        f"## What the fixes change here: `{PRESET}` against `{BASELINE}`",
        "",
        (
            "Artifact scores are 0 for a perfect reconstruction and larger when worse (`OUT/diagnose/report.html` "
            "defines each); PSNR and SSIM are better higher."
        ),
        "",
        *comparison_table(COMPARED, m, b, RUN_TO_RUN, labels=(PRESET, BASELINE)),
        "",
    ]
    lines += _plain_words(m, b)
    lines += [
        "",
        (
            "Run-to-run caveat: two runs of the same recipe with different seeds differ by about the "
            f"'run-to-run noise' column ({NOISE_SOURCE}). A difference inside it is not evidence for or against "
            "a fix, and one beyond it on two photos is a hint, not a measurement."
        ),
        "",
        "## Files",
        "",
        f"- `{out / 'model'}`, `{out / 'baseline' / 'model'}`: the trained models (`AutoencoderKL.from_pretrained`)",
        f"- `{out / 'metrics.json'}`: per-image and mean metrics and artifact scores of both, with every setting",
        (
            f"- `{out / 'reconstructions'}/`: original | reconstruction by `{PRESET}` "
            f"({', '.join(p.name for p in files['recon'])})"
        ),
        (
            f"- `{files['crops']}`: border and corner crops where the two models differ most: original | "
            f"`{PRESET}` | `{BASELINE}` | their errors (x4), enlarged 3x"
        ),
        f"- `{files['html']}`: the `vivat diagnose` report of `{PRESET}` with the `{BASELINE}` column",
        (
            f"- `{out / 'log.jsonl'}`, `{out / 'baseline' / 'log.jsonl'}`: training logs; `samples/`: validation "
            "grids; `checkpoints/`: checkpoints"
        ),
        "",
        (
            "Six photos and minutes of CPU show the pipeline end to end; they do not show what VIVAT reaches "
            "with real data and training (`vivat train --preset vivat-f8c16 ...`)."
        ),
        "",
    ]
    return "\n".join(lines)


def _plain_words(m: dict, b: dict) -> list[str]:
    """One sentence each for the differences beyond the noise and those within it."""
    beyond, within = [], []
    for key, label, higher_better in COMPARED:
        if m.get(key) is None or b.get(key) is None:
            continue
        noise = RUN_TO_RUN.get(key)
        diff = m[key] - b[key]
        better = diff > 0 if higher_better else diff < 0
        if noise is not None and abs(diff) > noise:
            beyond.append(f"{label} ({'better' if better else 'worse'} with the fixes)")
        else:
            within.append(label)
    if not RUN_TO_RUN:
        return ["No run-to-run noise estimate is recorded, so no difference above can be called real."]
    return [
        "In plain words: "
        + (f"beyond the run-to-run noise: {', '.join(beyond)}. " if beyond else "no difference exceeds the noise. ")
        + (f"Within the noise (not evidence either way): {', '.join(within)}." if within else "")
    ]


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json_report(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "pictures"}


def run_demo(
    out: str | os.PathLike = DEFAULT_OUT, quick: bool = False, steps: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Run the demo into ``out`` (an earlier demo there is replaced); returns the metrics dict."""
    t0, c0 = time.time(), time.process_time()
    out = Path(out)
    settings = dict(QUICK_SETTINGS if quick else DEMO_SETTINGS)
    if steps is not None:
        settings["steps"] = int(steps)
    # Re-running the demo replaces its earlier output, but never another run's checkpoints.
    marker = out / ".vivat-demo"
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()) and not marker.is_file():
        raise OutputError(f"{out} holds checkpoints of a training run that is not a demo; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by vivat demo; a later demo may replace this folder's outputs\n")
    print(f"vivat demo: writing the photos bundled with scikit-image to {out / 'data'}", flush=True)
    photos = demo_images(out / "data")

    outs = {PRESET: out, BASELINE: out / "baseline"}
    jobs = []
    for name, run_out in outs.items():
        config = {
            "data": str(photos.train_dir),
            "val": str(photos.val_dir),
            "out": str(run_out),
            "steps": settings["steps"],
            "size": settings["size"],
            "batch_size": settings["batch_size"],
            "lr": settings["lr"],
            "lr_schedule": settings["lr_schedule"],
            "warmup_steps": settings["warmup_steps"],
            "scale_aug": settings["scale_aug"],
            "color_aug": settings["color_aug"],
            "seed": seed,
            "ckpt_every": settings["steps"],
            "keep_ckpts": 1,
            "val_every": max(1, settings["steps"] // 4),
            "log_every": max(1, settings["steps"] // 20),
            "overwrite": True,
            "device": "cpu",
            "workers": 0,
            "progress": False,
        }
        jobs.append({"name": name, "config": config, "model_config": model_config(name, settings).to_dict()})
    print(
        f"vivat demo: training {PRESET} and {BASELINE} side by side ({settings['steps']} steps each, one thread each; "
        f"logs in {out / 'train.log'} and {out / 'baseline' / 'train.log'})",
        flush=True,
    )
    results = train_side_by_side(jobs)
    summaries = dict(zip(outs, results))
    cpu = {name: r["cpu_s"] for name, r in summaries.items()}

    print("vivat demo: evaluating both models on the held-out photos", flush=True)
    max_side = settings["eval_max_side"]
    model, baseline = load_model(out / "model"), load_model(out / "baseline" / "model")
    result = diagnose_model(model, photos.val_dir, max_side=max_side, worst=len(photos.val), name=PRESET)
    base_result = diagnose_model(
        baseline,
        photos.val_dir,
        max_side=max_side,
        worst=0,
        include=[w["file"] for w in result["worst"]],
        name=BASELINE,
    )
    html = write_report(out / "diagnose", result, base_result)["html"]
    reports = {PRESET: _json_report(result), BASELINE: _json_report(base_result)}

    recon_dir = out / "reconstructions"
    if recon_dir.is_dir():  # an earlier demo's pictures
        for old in recon_dir.glob("*.png"):
            old.unlink()
    recon_files, crops = [], []
    for path in photos.val:
        image = load_image(path)
        x, y, _ = reconstruct(model, image, sizing="pad", max_side=max_side)
        recon_files.append(save_image(side_by_side(x, y), recon_dir / f"{path.stem}.png"))
        xc, yc, _ = reconstruct(model, image, sizing="crop", max_side=max_side)
        _, bc, _ = reconstruct(baseline, image, sizing="crop", max_side=max_side)
        crops += edge_crops(path.stem, xc, yc, bc, side=min(48, settings["size"]))
    crops.sort(key=lambda c: abs(c.model_error - c.baseline_error), reverse=True)
    crop_file = write_crop_figure(crops[:4], out / "edge_crops.png", labels=(PRESET, BASELINE))
    wall = time.time() - t0

    metrics = {
        "preset": PRESET,
        "baseline": BASELINE,
        "steps": summaries[PRESET]["steps"],
        "settings": settings,
        "seed": seed,
        "wall_s": wall,
        "train_cpu_s": cpu,
        # on two idle cores the wall time is about the slower training's CPU time plus this
        "main_cpu_s": time.process_time() - c0,
        "train_images": [str(p) for p in photos.train],
        "eval": reports[PRESET],
        "baseline_eval": reports[BASELINE],
        "run_to_run_noise": RUN_TO_RUN,
        "edge_crops": [
            {
                "image": c.image,
                "where": c.where,
                "top": c.top,
                "left": c.left,
                "model_error": c.model_error,
                "baseline_error": c.baseline_error,
            }
            for c in crops[:4]
        ],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logs = {name: _read_log(Path(o) / "log.jsonl") for name, o in outs.items()}
    files = {"recon": recon_files, "crops": crop_file, "html": html}
    summary_md = _markdown_summary(out, settings, summaries, reports, logs, files, wall, cpu)
    (out / "summary.md").write_text(summary_md)

    m, b = reports[PRESET]["mean"], reports[BASELINE]["mean"]
    print(f"\nvivat demo finished in {wall:.0f} s: {summaries[PRESET]['steps']} training steps per model on CPU")
    for name, mm in ((PRESET, m), (BASELINE, b)):
        print(
            f"  {name:<10} held-out photos ({reports[name]['n']}): PSNR {mm['psnr']:.2f} dB, SSIM {mm['ssim']:.4f}, "
            f"colour shift {mm['color_shift']:.2f}, grid {mm['grid']:.3f}, LPIPS(alex) {_fmt_lpips(mm['lpips'])}"
        )
    if m["lpips"] is None:
        print(f"  LPIPS: {reports[PRESET]['settings']['lpips']}")
    print(f"  models:           {out / 'model'}, {out / 'baseline' / 'model'}")
    print(f"  metrics:          {out / 'metrics.json'}")
    print(f"  reconstructions:  {recon_dir}/ (original | reconstruction)")
    print(f"  edge crops:       {crop_file}")
    print(f"  diagnose report:  {html}")
    print(f"  summary:          {out / 'summary.md'}")
    print(f"  training logs:    {out / 'log.jsonl'}, {out / 'baseline' / 'log.jsonl'}", flush=True)
    return metrics
