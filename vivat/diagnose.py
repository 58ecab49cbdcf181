"""Artifact diagnosis of a model's reconstructions: which images show which artifact, and how much.

:func:`diagnose_model` reconstructs every image of a folder, scores it (PSNR, SSIM, LPIPS and the
artifact scores of :mod:`vivat.artifacts`) through a streaming :class:`vivat.evaluate.Evaluation`,
and keeps, for the few worst images only, what a report shows of them
(:class:`vivat.report.figures.Pictures`: original, reconstruction, residual heat map, residual
spectrum, spikiest decoder map, all at display size). :class:`WorstImages` is the bounded
structure that decides which images those are while the folder streams by, so memory does not
grow with the folder. :func:`vivat.report.diagnose.write_report` renders the result.

    model = load_model("runs/tiny/model")
    result = diagnose_model(model, "photos/val", max_side=256, name="runs/tiny/model")
    write_report("diag/", result)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .artifacts import ARTIFACT_SCORES, REFERENCE_LEVELS
from .evaluate import SIZING_MODES, Evaluation, ImageResult
from .model import AutoencoderKL
from .report.figures import Pictures, make_pictures

__all__ = [
    "WORST_RULE",
    "WorstImages",
    "diagnose_model",
]

WORST_RULE = (
    "For each artifact score, the image with the highest value (images scoring 0 are clean and never "
    "picked); these picks are ranked by the value divided by the score's reference level, one image "
    "that tops several scores is shown once, and the first {n} are shown. If fewer than {n} images top a "
    "score, the runners-up (2nd highest of each score, then 3rd...) fill in, ranked the same way."
)


class WorstImages:
    """The ``k`` highest-scoring images of every artifact score, and the pictures of those (and of
    the ``include`` files) only: at most ``k`` × 7 + len(include) pictures are held at any time."""

    def __init__(self, k: int, include: Sequence[str] = ()) -> None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = k
        self.include = {str(p) for p in include}
        self.top: dict[str, list[tuple[float, str]]] = {name: [] for name in ARTIFACT_SCORES}
        self.pictures: dict[str, Pictures] = {}

    def add(self, result: ImageResult) -> None:
        """Take one image's scores; make its pictures if it is among the worst (or included)."""
        key = str(result.path)
        if self.k:
            for name, value in result.scores.items():
                top = self.top[name]
                if value > 0 and (len(top) < self.k or value > top[-1][0]):
                    top.append((value, key))
                    top.sort(key=lambda t: -t[0])  # stable: on a tie the earlier image stays first
                    del top[self.k :]
        wanted = self.include | {key for top in self.top.values() for _, key in top}
        if key in wanted:
            if result.original is None or result.reconstruction is None:
                raise ValueError(f"the result of {key} holds no images; evaluate with tensors=True")
            self.pictures[key] = make_pictures(result.original, result.reconstruction, result.features or {})
        for stale in set(self.pictures) - wanted:
            del self.pictures[stale]

    def worst(self, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` images by :data:`WORST_RULE`: ``[{"file", "why": [...]}]``."""
        picks = sorted(
            (rank, -value / REFERENCE_LEVELS[name], ARTIFACT_SCORES.index(name), key, name)
            for name, top in self.top.items()
            for rank, (value, key) in enumerate(top)
        )
        chosen: dict[str, list[str]] = {}
        for rank, _, _, key, name in picks:
            if key not in chosen and len(chosen) < n:
                chosen[key] = []
            if key in chosen and (rank == 0 or not chosen[key]):
                chosen[key].append(f"{_ordinal(rank)}highest {name}")
        return [{"file": key, "why": why} for key, why in chosen.items()]


def _ordinal(rank: int) -> str:
    if rank == 0:
        return ""
    n = rank + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix} "


@torch.no_grad()
def diagnose_model(
    model: AutoencoderKL,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    sizing: str = "crop",
    max_side: int | None = None,
    lpips: bool = True,
    worst: int = 4,
    include: Sequence[str | os.PathLike] = (),
    name: str | None = None,
    small: str = "pad",
    jsonl: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every image of a folder (recursive) or list with ``model`` and keep the worst ones' pictures.

    Returns :meth:`vivat.evaluate.Evaluation.report` with the artifact scores (per image and
    ``mean``), plus ``model`` (``name``), ``data``, ``max_side``, ``sizing_mode``, ``worst`` (up to
    ``worst`` images chosen by :data:`WORST_RULE`, each ``{"file", "name", "why"}``),
    ``worst_rule`` (that rule, in words) and ``pictures`` ({file: :class:`Pictures`} for the worst
    images and for ``include``, e.g. a baseline's pictures of the images another model did worst
    on). Every row gets ``name``, the file relative to the folder. ``small``, ``jsonl`` and
    ``progress`` are passed to :class:`vivat.evaluate.Evaluation`.
    """
    if sizing not in SIZING_MODES:
        raise ValueError(f"sizing must be one of {SIZING_MODES}, got {sizing!r}")
    if worst < 0:
        raise ValueError(f"worst must be >= 0, got {worst}")
    keeper = WorstImages(worst, [str(p) for p in include])
    evaluation = Evaluation(
        model,
        images,
        sizing=sizing,
        lpips=lpips,
        max_side=max_side,
        artifacts=True,
        tensors=True,
        small=small,
        jsonl=jsonl,
        progress=progress,
    )
    for result in evaluation:
        keeper.add(result)
    report = evaluation.report()
    root = Path(images) if isinstance(images, (str, os.PathLike)) else None
    names = {}
    for row in report["images"]:
        p = Path(row["file"])
        row["name"] = p.relative_to(root).as_posix() if root is not None else p.name
        names[row["file"]] = row["name"]
    chosen = keeper.worst(worst)
    for item in chosen:
        item["name"] = names[item["file"]]
    return {
        "model": name,
        "data": str(images) if root is not None else [str(p) for p in images],
        "max_side": max_side,
        "sizing_mode": sizing,
        **report,
        "worst": chosen,
        "worst_rule": WORST_RULE.format(n=worst),
        "pictures": keeper.pictures,
    }


# ------------------------------------------------------------------------------------------------
