"""``vivat ablate``: train the LDM baseline, the baseline plus each VIVAT fix alone, and all fixes.

Every variant trains at the same budget (steps, crop size, batch, learning rate) and seed on the
same data, then is scored on the held-out images with PSNR / SSIM / LPIPS and the five artifact
scores of :mod:`vivat.artifacts`. The fixes are the differences between the VIVAT and the LDM
preset of one scale (``tiny``: ``vivat-tiny`` vs ``ldm-tiny``; ``full``: ``vivat-f8c16`` vs
``ldm-f8c16``), one switch each:

=============  =====================  ===============================================
artifact       variant                switch (from the VIVAT preset)
=============  =====================  ===============================================
colour shift   ``+decoder-only``      ``decoder_only_from`` (the last steps train the decoder only)
grid           ``+adaptive-cap``      ``adaptive_weight_max`` (tighter cap on the GAN weight)
blur           ``+low-kl``            ``kl_weight`` (ten times lower)
corner         ``+reflect-pad``       ``padding_mode="reflect"``
droplet        ``+scn``               ``scn=True`` (spatially conditional decoder norms)
=============  =====================  ===============================================

``all-fixes`` is the VIVAT preset itself (checked), ``baseline`` the LDM one. ``baseline-seed+1``
trains the baseline again with the next seed: the spread between the two baselines is the
run-to-run noise that any single-fix difference has to exceed before it means anything.

Outputs in OUT: one folder per variant (a normal ``vivat train`` run: ``model``, ``checkpoints``,
``log.jsonl``, ``train.log``), ``ablation.json`` (every number, per image and mean, with the
settings), ``ablation.md`` (the table), ``ablation.png`` (the scores of every variant relative to
the baseline) and ``ablation_crops.png`` (the same held-out corner reconstructed by each
variant). A variant whose ``model`` folder holds a finished run of the same settings is not
trained again; an interrupted one resumes from its last checkpoint.

    vivat ablate --data photos/train --val photos/val --steps 600 --out runs/ablation
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .artifacts import SCORE_NAMES
from .config import VAEConfig

SCALES = {"tiny": ("ldm-tiny", "vivat-tiny"), "full": ("ldm-f8c16", "vivat-f8c16")}
METRICS = ("psnr", "ssim", "lpips")
SCORES = (*SCORE_NAMES, "droplet_features")
# lower is better for every score but PSNR and SSIM
HIGHER_IS_BETTER = {"psnr", "ssim"}
CROP_SIDE = 96  # side of the corner shown in ablation_crops.png


@dataclass(frozen=True)
class Fix:
    """One VIVAT fix: the variant name, the artifact(s) it targets and the config fields it sets."""

    name: str
    artifact: str
    targets: tuple[str, ...]
    fields: tuple[str, ...]


FIXES = (
    Fix("+decoder-only", "colour shift", ("color_shift",), ("decoder_only_from",)),
    Fix("+adaptive-cap", "grid", ("grid",), ("adaptive_weight_max",)),
    Fix("+low-kl", "blur", ("blur",), ("kl_weight",)),
    Fix("+reflect-pad", "corner", ("border", "corner"), ("padding_mode",)),
    Fix("+scn", "droplet", ("droplet", "droplet_features"), ("scn",)),
)


def _field(cfg: VAEConfig, name: str) -> Any:
    return getattr(cfg.loss, name) if hasattr(cfg.loss, name) else getattr(cfg, name)


def variants(scale: str = "tiny", noise_run: bool = True) -> dict[str, tuple[VAEConfig, int, str]]:
    """``{name: (config, seed offset, what it is)}`` in table order.

    Raises if the fixes do not add up to the VIVAT preset (a preset changed without this table).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    base_name, vivat_name = SCALES[scale]
    base, full = VAEConfig.from_preset(base_name), VAEConfig.from_preset(vivat_name)
    out: dict[str, tuple[VAEConfig, int, str]] = {"baseline": (base, 0, f"{base_name} (no fix)")}
    if noise_run:
        out["baseline-seed+1"] = (base, 1, f"{base_name} again with the next seed (run-to-run noise)")
    every: dict[str, Any] = {}
    for fix in FIXES:
        changes = {name: _field(full, name) for name in fix.fields}
        every.update(changes)
        desc = ", ".join(f"{k}={v}" for k, v in changes.items())
        out[fix.name] = (base.replace(**changes), 0, f"{fix.artifact} fix: {desc}")
    combined = base.replace(**every)
    if combined != full:
        raise AssertionError(f"the fixes {[f.name for f in FIXES]} applied to {base_name} do not give {vivat_name}")
    out["all-fixes"] = (combined, 0, f"{vivat_name} (all five fixes)")
    return out


# -------------------------------------------------------------------------------------------
# training (one process per variant, so that variants can run side by side)
# -------------------------------------------------------------------------------------------
def _train_variant(job: dict[str, Any]) -> dict[str, Any]:
    """Train one variant; stdout/stderr go to ``<dir>/train.log``. Runs in a worker process."""
    from .checkpoint import latest_checkpoint
    from .train import TrainConfig, train

    torch.set_num_threads(job["threads"])
    run_dir = Path(job["dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        model_config=VAEConfig.from_dict(job["config"]),
        data=job["data"],
        val=job["val"],
        out=str(run_dir),
        steps=job["steps"],
        size=job["size"],
        batch_size=job["batch_size"],
        lr=job["lr"],
        seed=job["seed"],
        disc_start=job["disc_start"],
        ckpt_every=job["ckpt_every"],
        keep_ckpts=1,
        val_every=job["steps"],
        val_images=4,
        log_every=max(1, job["steps"] // 50),
        resume=latest_checkpoint(run_dir / "checkpoints") is not None,
        overwrite=True,
        device=job["device"],
        workers=0,
        progress=False,
    )
    t0 = time.time()
    with open(run_dir / "train.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        summary = train(cfg)
    return {"name": job["name"], "wall_s": time.time() - t0, "steps": summary["steps"], "skipped": summary.get("skipped")}


def _done_marker(run_dir: Path) -> Path:
    return run_dir / "ablation-settings.json"


# -------------------------------------------------------------------------------------------
# the whole ablation
# -------------------------------------------------------------------------------------------
def run_ablation(
    data: str | os.PathLike,
    val: str | os.PathLike,
    out: str | os.PathLike,
    *,
    steps: int = 600,
    scale: str = "tiny",
    size: int = 64,
    batch_size: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    disc_start: int | None = None,
    max_side: int | None = 512,
    jobs: int = 2,
    device: str = "cpu",
    noise_run: bool = True,
    only: list[str] | None = None,
    lpips: bool = True,
) -> dict[str, Any]:
    """Train and evaluate every variant (see the module doc); returns what ``ablation.json`` holds."""
    from .evaluate import evaluate_folder, load_model

    t_start = time.time()
    out = Path(out)
    table = variants(scale, noise_run)
    if only:
        unknown = sorted(set(only) - set(table))
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; valid: {list(table)}")
        table = {k: v for k, v in table.items() if k in only}
    for name, path in (("data", data), ("val", val)):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{name} folder {path} does not exist")
    if steps < 1 or batch_size < 1 or jobs < 1:
        raise ValueError("steps, batch_size and jobs must be >= 1")
    if size < 8 or size % 8:
        raise ValueError(f"size must be a positive multiple of 8, got {size}")
    disc_start = steps // 2 if disc_start is None else int(disc_start)
    if device == "cuda":
        jobs = 1  # one GPU: variants run one after the other
    threads = max(1, (os.cpu_count() or 1) // jobs) if device == "cpu" else torch.get_num_threads()
    settings = {
        "scale": scale,
        "steps": steps,
        "size": size,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "disc_start": disc_start,
        "data": str(data),
        "val": str(val),
        "device": device,
    }
    out.mkdir(parents=True, exist_ok=True)

    # ---- train what is not trained yet --------------------------------------------------------
    pending, train_info = [], {}
    for name, (cfg, seed_offset, _) in table.items():
        run_dir = out / name
        wanted = {**settings, "seed": seed + seed_offset, "config": cfg.to_dict()}
        marker = _done_marker(run_dir)
        if marker.is_file() and (run_dir / "model").is_dir():
            done = json.loads(marker.read_text())
            if done.get("settings") == wanted:
                train_info[name] = done["train"]
                print(f"vivat ablate: {name}: already trained in {run_dir}, reused", flush=True)
                continue
        pending.append(
            {
                "name": name,
                "dir": str(run_dir),
                "config": cfg.to_dict(),
                "data": str(data),
                "val": str(val),
                "steps": steps,
                "size": size,
                "batch_size": batch_size,
                "lr": lr,
                "seed": seed + seed_offset,
                "disc_start": disc_start,
                "ckpt_every": max(1, steps // 10),
                "device": device,
                "threads": threads,
                "wanted": wanted,
            }
        )
    if pending:
        print(
            f"vivat ablate: training {len(pending)} variant(s), {steps} steps each, {jobs} at a time "
            f"({threads} thread(s) each); logs in {out}/<variant>/train.log",
            flush=True,
        )

    def finished(job: dict[str, Any], info: dict[str, Any]) -> None:
        train_info[job["name"]] = info
        _done_marker(Path(job["dir"])).write_text(json.dumps({"settings": job["wanted"], "train": info}, indent=2))
        print(f"vivat ablate: {job['name']}: trained in {info['wall_s']:.0f} s", flush=True)

    if jobs == 1:
        for job in pending:
            print(f"vivat ablate: {job['name']}: training", flush=True)
            finished(job, _train_variant(job))
    elif pending:
        ctx = torch.multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_train_variant, job): job for job in pending}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    info = fut.result()
                except Exception as err:  # keep the other variants; name the log to read
                    raise RuntimeError(
                        f"variant {job['name']} failed: {err} (see {Path(job['dir']) / 'train.log'})"
                    ) from err
                finished(job, info)

    # ---- evaluate every variant on the held-out images ------------------------------------------
    results: dict[str, Any] = {}
    crops: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    first_image: list[Path] = []

    for name, (cfg, seed_offset, what) in table.items():
        print(f"vivat ablate: {name}: evaluating on {val}", flush=True)
        model = load_model(out / name / "model", device=device)

        def keep(path: Path, x: torch.Tensor, y: torch.Tensor, _f: dict, _s: dict, name: str = name) -> None:
            if not first_image:
                first_image.append(path)
            if path == first_image[0]:
                crops[name] = (x, y)

        report = evaluate_folder(model, val, sizing="crop", lpips=lpips, max_side=max_side, artifacts=True, keep=keep)
        results[name] = {
            "what": what,
            "seed": seed + seed_offset,
            "config": cfg.to_dict(),
            "train": train_info.get(name),
            "mean": report["mean"],
            "images": report["images"],
        }
        eval_settings = {"sizing": report["sizing"], "metrics": report["settings"], "n": report["n"]}

    summary = {
        "settings": settings,
        "evaluation": eval_settings,
        "fixes": [dataclasses.asdict(f) for f in FIXES],
        "variants": results,
        "own_artifact": own_artifact_changes(results),
        "crops": {
            "image": str(first_image[0]) if first_image else None,
            "region": f"top-left {CROP_SIDE}x{CROP_SIDE} px of the scored image",
            "order": ["original", *crops],
        },
        "wall_s": time.time() - t_start,
    }
    (out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown(summary))
    figure = write_figure(summary, out / "ablation.png")
    write_crops(crops, out / "ablation_crops.png", CROP_SIDE)
    print(markdown_table(summary))
    print(f"\nvivat ablate: {out / 'ablation.md'}, {out / 'ablation.json'}, {out / 'ablation_crops.png'}", end="")
    print(f", {figure}" if figure else " (no bar chart: matplotlib is not installed)", flush=True)
    return summary


# -------------------------------------------------------------------------------------------
# reporting
# -------------------------------------------------------------------------------------------
def own_artifact_changes(results: dict[str, Any]) -> list[dict[str, Any]]:
    """For each single-fix variant: its targeted scores vs the baseline's, and the noise between
    the two baseline runs (when both were trained)."""
    if "baseline" not in results:
        return []
    base = results["baseline"]["mean"]
    noise = results.get("baseline-seed+1", {}).get("mean")
    rows = []
    for fix in FIXES:
        if fix.name not in results:
            continue
        mean = results[fix.name]["mean"]
        for score in fix.targets:
            b, v = base[score], mean[score]
            row = {
                "variant": fix.name,
                "artifact": fix.artifact,
                "score": score,
                "baseline": b,
                "with_fix": v,
                "change": v - b,
                "relative": (v - b) / abs(b) if b else math.nan,
                "noise": None if noise is None else abs(noise[score] - b),
            }
            row["verdict"] = _verdict(row)
            rows.append(row)
    return rows


def _verdict(row: dict[str, Any]) -> str:
    better = row["change"] < 0
    if row["noise"] is not None and abs(row["change"]) <= row["noise"]:
        return "within run-to-run noise"
    return "better" if better else "worse"


def _fmt(v: float | None, score: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if score == "psnr":
        return f"{v:.2f}"
    if score in ("ssim", "lpips"):
        return f"{v:.4f}"
    return f"{v:.3f}"


def markdown_table(summary: dict[str, Any]) -> str:
    cols = (*METRICS, *SCORES)
    head = "| variant | " + " | ".join(cols) + " | train s |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    results = summary["variants"]
    best = {}
    for c in cols:
        vals = [r["mean"][c] for r in results.values() if r["mean"].get(c) is not None]
        if vals:
            best[c] = max(vals) if c in HIGHER_IS_BETTER else min(vals)
    for name, r in results.items():
        cells = []
        for c in cols:
            v = r["mean"].get(c)
            text = _fmt(v, c)
            cells.append(f"**{text}**" if v is not None and best.get(c) == v else text)
        wall = r["train"]["wall_s"] if r.get("train") else None
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'n/a' if wall is None else f'{wall:.0f}'} |")
    return "\n".join(lines)


def markdown(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    ev = summary["evaluation"]
    lines = [
        "# VIVAT ablation",
        "",
        (
            f"Every variant trained {s['steps']} steps of {s['size']} px random crops, batch {s['batch_size']}, "
            f"AdamW lr {s['lr']:g}, seed {s['seed']}, discriminator from step {s['disc_start']}, on "
            f"`{s['data']}` ({s['device']}); scored on the {ev['n']} images of `{s['val']}` ({ev['sizing']})."
        ),
        f"Metrics: PSNR/SSIM on uint8-quantised reconstructions; LPIPS: {ev['metrics']['lpips']}.",
        "Artifact scores (docs/ARTIFACTS.md): 0 is clean, higher is worse. Best value per column in bold.",
        "",
        markdown_table(summary),
        "",
        "## Does each fix lower its own artifact?",
        "",
        "| variant | artifact | score | baseline | with the fix | change | run-to-run noise | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["own_artifact"]:
        noise = "n/a" if r["noise"] is None else f"{r['noise']:.3f}"
        lines.append(
            f"| {r['variant']} | {r['artifact']} | {r['score']} | {r['baseline']:.3f} | {r['with_fix']:.3f} | "
            f"{r['change']:+.3f} ({100 * r['relative']:+.0f}%) | {noise} | {r['verdict']} |"
        )
    crops = summary["crops"]
    lines += [
        "",
        "Run-to-run noise: |baseline(seed+1) - baseline| of the same score. A change inside it says nothing.",
        "",
        f"`ablation_crops.png`: the {crops['region']} `{crops['image']}`, left to right: "
        + ", ".join(crops["order"])
        + ". `ablation.png`: every mean score relative to the baseline (negative is better).",
        "",
        "Variants:",
        "",
    ]
    for name, r in summary["variants"].items():
        lines.append(f"- `{name}`: {r['what']}")
    lines.append("")
    return "\n".join(lines)


def write_figure(summary: dict[str, Any], path: Path) -> Path | None:
    """Bar chart: each variant's mean scores relative to the baseline (matplotlib; None without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    results = summary["variants"]
    if "baseline" not in results:
        return None
    base = results["baseline"]["mean"]
    cols = [c for c in ("psnr", "ssim", *SCORES) if base.get(c)]
    names = [n for n in results if n != "baseline"]
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=110)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        mean = results[name]["mean"]
        rel = []
        for c in cols:
            change = (mean[c] - base[c]) / abs(base[c])
            rel.append(100 * (-change if c in HIGHER_IS_BETTER else change))
        ax.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(cols))], rel, width, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_ylabel("% vs baseline (negative = better)")
    ax.set_title(f"VIVAT ablation, {summary['settings']['steps']} steps ({summary['settings']['scale']} scale)")
    ax.legend(fontsize=8, ncol=min(4, len(names)))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_crops(crops: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, side: int = CROP_SIDE) -> Path | None:
    """One row: the original's top-left corner, then the same corner reconstructed by each variant
    in the order of ``crops``; the corner is where padding artifacts show."""
    from .data import save_grid

    if not crops:
        return None
    first = next(iter(crops.values()))[0]
    cells = [first[:, :side, :side]] + [y[:, :side, :side] for _, y in crops.values()]
    return save_grid([cells], path, padding=4)
