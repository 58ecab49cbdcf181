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
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import VAEConfig
from .errors import InputError
from .train import TrainConfig

SCALES = {"tiny": ("ldm-tiny", "vivat-tiny"), "full": ("ldm-f8c16", "vivat-f8c16")}
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
def _train_variant(cfg: TrainConfig, threads: int) -> dict[str, Any]:
    """Train one variant; stdout/stderr go to ``<out>/train.log``. Runs in a worker process."""
    from .train import train

    torch.set_num_threads(threads)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(run_dir / "train.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        summary = train(cfg)
    return {"wall_s": time.time() - t0, "steps": summary["steps"], "skipped": summary.get("skipped")}


def _done_marker(run_dir: Path) -> Path:
    return run_dir / "ablation-settings.json"


def variant_config(base: TrainConfig, name: str, model_config: VAEConfig, seed_offset: int = 0) -> TrainConfig:
    """The training run of one variant: ``base`` with the variant's model, its own folder under
    ``base.out``, the seed offset, and the ablation's bookkeeping (10 checkpoints, one kept;
    validation at the end; about 50 log lines; resume when a checkpoint is there)."""
    from .checkpoint import latest_checkpoint

    run_dir = Path(base.out) / name
    steps = base.steps
    return dataclasses.replace(
        base,
        model_config=model_config,
        preset=None,
        init=None,
        out=str(run_dir),
        seed=base.seed + seed_offset,
        disc_start=steps // 2 if base.disc_start is None else int(base.disc_start),
        ckpt_every=max(1, steps // 10),
        keep_ckpts=1,
        val_every=steps,
        val_images=4,
        log_every=max(1, steps // 50),
        resume=latest_checkpoint(run_dir / "checkpoints") is not None,
        overwrite=True,
        workers=0,
        progress=False,
    )


# -------------------------------------------------------------------------------------------
# the whole ablation
# -------------------------------------------------------------------------------------------
def run_ablation(
    base: TrainConfig,
    *,
    scale: str = "tiny",
    jobs: int = 2,
    noise_run: bool = True,
    only: Sequence[str] | None = None,
    max_side: int | None = 512,
    lpips: bool = True,
) -> dict[str, Any]:
    """Train and evaluate every variant (see the module doc); returns what ``ablation.json`` holds.

    ``base`` holds what every variant shares: ``data``, ``val`` (the held-out images, required),
    ``out`` (the ablation's folder), ``steps``, ``size``, ``batch_size``, ``lr``, ``seed``,
    ``disc_start`` (None: half of ``steps``, so the GAN-related fixes act) and ``device`` ("auto":
    CUDA when available), and any other :class:`vivat.train.TrainConfig` field; its model fields are
    replaced by each variant's (:func:`variant_config`). ``jobs`` variants train side by side on
    CPU (threads split); on CUDA one at a time. ``max_side``: the held-out images are scored on
    center crops of at most this side (None: whole images).
    """
    from .evaluate import Evaluation, load_model
    from .report.ablate import markdown, markdown_table, write_crops, write_figure

    t_start = time.time()
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base must be a TrainConfig, got {type(base).__name__}")
    out = Path(base.out)
    table = variants(scale, noise_run)
    if only:
        unknown = sorted(set(only) - set(table))
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; valid: {list(table)}")
        table = {k: v for k, v in table.items() if k in only}
    if base.val is None:
        raise ValueError("base.val must name the held-out images every variant is scored on")
    for name in ("data", "val"):
        path = Path(getattr(base, name))
        if not path.is_dir():
            raise InputError(f"{name} folder {path} {'is not a folder' if path.exists() else 'does not exist'}")
    if base.steps < 1 or base.batch_size < 1 or jobs < 1:
        raise ValueError("steps, batch_size and jobs must be >= 1")
    if base.size < 8 or base.size % 8:
        raise ValueError(f"size must be a positive multiple of 8, got {base.size}")
    device = str(base.device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    base = dataclasses.replace(base, device=device)
    if device.startswith("cuda"):
        jobs = 1  # one GPU: variants run one after the other
    threads = max(1, (os.cpu_count() or 1) // jobs) if device == "cpu" else torch.get_num_threads()
    disc_start = base.steps // 2 if base.disc_start is None else int(base.disc_start)
    settings = {
        "scale": scale,
        "steps": base.steps,
        "size": base.size,
        "batch_size": base.batch_size,
        "lr": base.lr,
        "seed": base.seed,
        "disc_start": disc_start,
        "data": str(base.data),
        "val": str(base.val),
        "device": device,
    }
    out.mkdir(parents=True, exist_ok=True)

    # ---- train what is not trained yet --------------------------------------------------------
    pending: list[tuple[str, TrainConfig, dict[str, Any]]] = []
    train_info: dict[str, Any] = {}
    for name, (cfg, seed_offset, _) in table.items():
        run_dir = out / name
        wanted = {**settings, "seed": base.seed + seed_offset, "config": cfg.to_dict()}
        marker = _done_marker(run_dir)
        if marker.is_file() and (run_dir / "model").is_dir():
            done = json.loads(marker.read_text())
            if done.get("settings") == wanted:
                train_info[name] = done["train"]
                print(f"vivat ablate: {name}: already trained in {run_dir}, reused", flush=True)
                continue
        pending.append((name, variant_config(base, name, cfg, seed_offset), wanted))
    if pending:
        print(
            f"vivat ablate: training {len(pending)} variant(s), {base.steps} steps each, {jobs} at a time "
            f"({threads} thread(s) each); logs in {out}/<variant>/train.log",
            flush=True,
        )

    def finished(name: str, run: TrainConfig, wanted: dict[str, Any], info: dict[str, Any]) -> None:
        train_info[name] = info
        _done_marker(Path(run.out)).write_text(json.dumps({"settings": wanted, "train": info}, indent=2))
        print(f"vivat ablate: {name}: trained in {info['wall_s']:.0f} s", flush=True)

    if jobs == 1:
        for name, run, wanted in pending:
            print(f"vivat ablate: {name}: training", flush=True)
            finished(name, run, wanted, _train_variant(run, threads))
    elif pending:
        ctx = torch.multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_train_variant, run, threads): (name, run, wanted) for name, run, wanted in pending}
            for fut in as_completed(futures):
                name, run, wanted = futures[fut]
                try:
                    info = fut.result()
                except Exception as err:  # keep the other variants; name the log to read
                    raise RuntimeError(f"variant {name} failed: {err} (see {Path(run.out) / 'train.log'})") from err
                finished(name, run, wanted, info)

    # ---- evaluate every variant on the held-out images ------------------------------------------
    results: dict[str, Any] = {}
    crops: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    first_image: Path | None = None
    for name, (cfg, seed_offset, what) in table.items():
        print(f"vivat ablate: {name}: evaluating on {base.val}", flush=True)
        model = load_model(out / name / "model", device=device)
        evaluation = Evaluation(
            model,
            base.val,
            sizing="crop",
            lpips=lpips,
            max_side=max_side,
            artifacts=True,
            tensors=True,
            jsonl=out / name / "eval.jsonl",
        )
        for result in evaluation:
            if first_image is None:
                first_image = result.path
            if result.path == first_image:  # only the corner is kept
                corner = (slice(None), slice(0, CROP_SIDE), slice(0, CROP_SIDE))
                crops[name] = (result.original[corner].clone(), result.reconstruction[corner].clone())
        report = evaluation.report()
        results[name] = {
            "what": what,
            "seed": base.seed + seed_offset,
            "config": cfg.to_dict(),
            "train": train_info.get(name),
            "mean": report["mean"],
            "images": report["images"],
            "skipped": report["skipped"],
        }
        eval_settings = {key: report[key] for key in ("sizing", "small", "n")} | {"metrics": report["settings"]}

    summary = {
        "settings": settings,
        "evaluation": eval_settings,
        "fixes": [dataclasses.asdict(f) for f in FIXES],
        "variants": results,
        "own_artifact": own_artifact_changes(results),
        "crops": {
            "image": None if first_image is None else str(first_image),
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
# comparison
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
