"""The ``vivat ablate`` outputs: ``ablation.md`` (the tables), ``ablation.png`` (every variant's
scores relative to the baseline) and ``ablation_crops.png`` (one held-out corner per variant).

They render the summary :func:`vivat.ablate.run_ablation` computed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from ..artifacts import ARTIFACT_SCORES, HIGHER_IS_BETTER, REPORT_COLUMNS
from ..data import save_grid

__all__ = ["markdown", "markdown_table", "write_crops", "write_figure"]


def _fmt(v: float | None, score: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if score == "psnr":
        return f"{v:.2f}"
    if score in ("ssim", "lpips"):
        return f"{v:.4f}"
    return f"{v:.3f}"


def markdown_table(summary: dict[str, Any]) -> str:
    """The variants' mean scores as a markdown table, the best value of each column in bold."""
    cols = REPORT_COLUMNS
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
    """``ablation.md``: the settings, the table, and whether each fix lowers its own artifact."""
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
    cols = [c for c in ("psnr", "ssim", *ARTIFACT_SCORES) if base.get(c)]
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


def write_crops(crops: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, side: int) -> Path | None:
    """One row: the original's top-left corner, then the same corner reconstructed by each variant
    in the order of ``crops``; the corner is where padding artifacts show."""
    if not crops:
        return None
    first = next(iter(crops.values()))[0]
    cells = [first[:, :side, :side]] + [y[:, :side, :side] for _, y in crops.values()]
    return save_grid([cells], path, padding=4)
