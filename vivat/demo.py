"""``vivat demo``: train, evaluate and show a tiny VIVAT VAE on a fresh machine, with no data to fetch.

1. the colour photos bundled with scikit-image are written to ``OUT/data/{train,val}``;
2. the ``vivat-tiny`` preset trains on CPU on random crops of the six training photos
   (:func:`vivat.train.train`; checkpoints, log and validation grids land in OUT as for any run);
3. the EMA model is evaluated on the two held-out photos, whole (center-cropped to a multiple
   of 8), by the conventions of :mod:`vivat.metrics` -> ``OUT/metrics.json``;
4. ``OUT/reconstructions/*.png`` show original | reconstruction side by side, and
   ``OUT/summary.md`` says what was done and what came out.

A few minutes of CPU on six photos shows the pipeline end to end; it is not a measure of what the
architecture reaches with real training.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .data import demo_images, load_image, save_image
from .evaluate import evaluate_folder, load_model, reconstruct, side_by_side
from .train import TrainConfig, train

DEFAULT_OUT = "vivat_out/demo"
PRESET = "vivat-tiny"
# lr 1e-3: in 40-step runs on the shared train/val photos it lowered the held-out L1 faster than 5e-4.
# About 6 minutes on two idle CPU cores (356 s measured: training, then the evaluation of the two
# held-out photos at full size); other jobs on the same cores slow it several-fold.
DEMO_SETTINGS: dict[str, Any] = {"steps": 700, "size": 64, "batch_size": 4, "lr": 1e-3, "eval_max_side": None}
# Tens of seconds: exercises every stage (training, the decoder-only switch, checkpoint, eval).
# Evaluation then looks at 128-px center crops only.
QUICK_SETTINGS: dict[str, Any] = {"steps": 20, "size": 32, "batch_size": 2, "lr": 1e-3, "eval_max_side": 128}


def _markdown_summary(
    out: Path, settings: dict, summary: dict, report: dict, log: list[dict], recon_files: list[Path], wall: float
) -> str:
    m = report["mean"]
    start = next(r for r in log if r["kind"] == "start")
    val_start = next((r for r in log if r["kind"] == "val"), None)
    disc_start, switch = start["disc_start"], start["decoder_only_from_step"]
    lpips_txt = "n/a" if m["lpips"] is None else f"{m['lpips']:.4f}"
    lines = [
        "# vivat demo",
        "",
        (
            f"Trained the `{PRESET}` preset (reflect padding, spatially conditional norms in the decoder, "
            f"VIVAT loss weights) from scratch on CPU: {summary['steps']} steps of {settings['size']} px random crops, "
            f"batch {settings['batch_size']}, AdamW lr {settings['lr']:g}, on six colour photos bundled with "
            f"scikit-image (`{out / 'data' / 'train'}`). Total time {wall:.0f} s."
        ),
        "",
        f"- perceptual term: {summary['perceptual']}",
        f"- decoder-only stage (encoder frozen): from step {switch}",
        (
            f"- adversarial term: from step {disc_start}"
            + ("" if summary["steps"] > disc_start else ", not reached in this short run")
        ),
        "- the saved model holds the EMA of the weights; latents are the posterior mode.",
        "",
        f"## Held-out photos ({report['n']}), {report['sizing']}",
        "",
        "| image | size | PSNR (dB) | SSIM | LPIPS (alex) |",
        "|---|---|---|---|---|",
    ]
    for row in report["images"]:
        lp = "n/a" if row["lpips"] is None else f"{row['lpips']:.4f}"
        size = "x".join(str(v) for v in row["scored_size"])
        lines.append(f"| {Path(row['file']).name} | {size} | {row['psnr']:.2f} | {row['ssim']:.4f} | {lp} |")
    lines.append(f"| **mean** | | **{m['psnr']:.2f}** | **{m['ssim']:.4f}** | **{lpips_txt}** |")
    lines += ["", f"LPIPS: {report['settings']['lpips']}.", ""]
    if val_start is not None and summary.get("val"):
        v0, v1 = val_start, summary["val"]
        lines += [
            (
                f"On {v1['images']} center crops of {settings['size']} px of the held-out photos, PSNR went from "
                f"{v0['psnr']:.2f} dB (step 0) to {v1['psnr']:.2f} dB (step {v1['step']})."
            ),
            "",
        ]
    lines += [
        "## Files",
        "",
        f"- `{out / 'model'}`: the trained model (`AutoencoderKL.from_pretrained`)",
        f"- `{out / 'metrics.json'}`: per-image and mean metrics with every setting",
        f"- `{out / 'reconstructions'}/`: original | reconstruction ({', '.join(p.name for p in recon_files)})",
        (
            f"- `{out / 'log.jsonl'}`: training log; `{out / 'samples'}/`: validation grids; "
            f"`{out / 'checkpoints'}/`: checkpoint"
        ),
        "",
        (
            "Six photos and minutes of CPU show the pipeline end to end; they do not show what VIVAT reaches "
            "with real data and training (`vivat train --preset vivat-f8c16 ...`)."
        ),
        "",
    ]
    return "\n".join(lines)


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_demo(
    out: str | os.PathLike = DEFAULT_OUT, quick: bool = False, steps: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Run the demo into ``out`` (an earlier demo there is replaced); returns the metrics dict."""
    t0 = time.time()
    out = Path(out)
    settings = dict(QUICK_SETTINGS if quick else DEMO_SETTINGS)
    if steps is not None:
        settings["steps"] = int(steps)
    # Re-running the demo replaces its earlier output, but never another run's checkpoints.
    marker = out / ".vivat-demo"
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()) and not marker.is_file():
        raise FileExistsError(f"{out} holds checkpoints of a training run that is not a demo; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by vivat demo; a later demo may replace this folder's outputs\n")
    print(f"vivat demo: writing the photos bundled with scikit-image to {out / 'data'}", flush=True)
    photos = demo_images(out / "data")

    cfg = TrainConfig(
        preset=PRESET,
        data=str(photos.train_dir),
        val=str(photos.val_dir),
        out=str(out),
        steps=settings["steps"],
        size=settings["size"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        seed=seed,
        ckpt_every=settings["steps"],
        keep_ckpts=1,
        val_every=max(1, settings["steps"] // 4),
        log_every=max(1, settings["steps"] // 20),
        overwrite=True,
        device="cpu",
        workers=0,
    )
    summary = train(cfg)

    print("vivat demo: evaluating on the held-out photos", flush=True)
    model = load_model(out / "model")
    report = evaluate_folder(model, photos.val_dir, sizing="crop", max_side=settings["eval_max_side"])
    recon_dir = out / "reconstructions"
    if recon_dir.is_dir():  # an earlier demo's pictures
        for old in recon_dir.glob("*.png"):
            old.unlink()
    recon_files = []
    for path in photos.val:
        x, y, _ = reconstruct(model, load_image(path), sizing="pad", max_side=settings["eval_max_side"])
        recon_files.append(save_image(side_by_side(x, y), recon_dir / f"{path.stem}.png"))
    wall = time.time() - t0

    metrics = {
        "preset": PRESET,
        "steps": summary["steps"],
        "settings": settings,
        "seed": seed,
        "wall_s": wall,
        "train_images": [str(p) for p in photos.train],
        "eval": report,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    summary_md = _markdown_summary(out, settings, summary, report, _read_log(out / "log.jsonl"), recon_files, wall)
    (out / "summary.md").write_text(summary_md)

    m = report["mean"]
    lp = "n/a (no LPIPS weights on disk)" if m["lpips"] is None else f"{m['lpips']:.4f}"
    print(f"\nvivat demo finished in {wall:.0f} s: {summary['steps']} training steps on CPU")
    print(f"  held-out photos ({report['n']}): PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, LPIPS(alex) {lp}")
    print(f"  model:            {out / 'model'}")
    print(f"  metrics:          {out / 'metrics.json'}")
    print(f"  reconstructions:  {recon_dir}/ (original | reconstruction)")
    print(f"  summary:          {out / 'summary.md'}")
    print(f"  training log:     {out / 'log.jsonl'} (validation grids in {out / 'samples'})", flush=True)
    return metrics
