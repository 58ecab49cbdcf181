"""Reconstruct and score images with a trained VAE, by the conventions of :mod:`vivat.metrics`.

The model runs in eval mode, in float32, and decodes the posterior **mode** (no sampling), so a
reconstruction is deterministic. Any image size is accepted: it is center-cropped or
reflect-padded to a multiple of the latent stride (8), and padded reconstructions are cropped back
before scoring or saving (:func:`vivat.metrics.prepare_eval_image`).

    model = load_model("runs/tiny/model")
    report = evaluate_folder(model, "photos/val")          # PSNR / SSIM / LPIPS(alex), per image + mean
    write_reconstructions(model, ["cat.jpg"], "recon/")     # cat.png and cat_side_by_side.png
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .artifacts import SCORE_NAMES, FeatureRecorder, diagnose
from .data import load_image, save_image, scan_images
from .metrics import evaluate_pairs, load_lpips, lpips_status, prepare_eval_image, quantize, unpad
from .model import AutoencoderKL

SIZING_MODES = ("crop", "pad")


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> AutoencoderKL:
    """A ``save_pretrained`` folder as an fp32 model in eval mode with gradients off."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model folder {directory} does not exist (expected a save_pretrained folder)")
    model = AutoencoderKL.from_pretrained(directory, device=device)
    return model.float().eval().requires_grad_(False)


@torch.no_grad()
def reconstruct(
    model: AutoencoderKL,
    image: Tensor,
    sizing: str = "pad",
    max_side: int | None = None,
    recorder: FeatureRecorder | None = None,
) -> tuple[Tensor, Tensor, str]:
    """Reconstruct one image (3, H, W) in [0, 1].

    ``max_side`` first center-crops each side to at most that many pixels (quick looks at large
    photos). Returns ``(original, reconstruction, how)``: both (3, h, w) in [0, 1] on the CPU,
    where ``original`` is the region that was reconstructed (the full image with ``sizing="pad"``,
    the center crop with ``"crop"``) and ``how`` describes the sizing. The reconstruction is
    clamped, not quantised. With a ``recorder`` (an open :class:`vivat.artifacts.FeatureRecorder`
    on ``model``), the decoder's norm inputs of this image are left in ``recorder.features``.
    """
    if sizing not in SIZING_MODES:
        raise ValueError(f"sizing must be one of {SIZING_MODES}, got {sizing!r}")
    how = ""
    if max_side is not None and max(image.shape[-2:]) > max_side:
        h, w = image.shape[-2:]
        h2, w2 = min(h, max_side), min(w, max_side)
        top, left = (h - h2) // 2, (w - w2) // 2
        image = image[..., top : top + h2, left : left + w2]
        how = f"center-cropped {h}x{w} -> {h2}x{w2} (max side {max_side}), then "
    device = next(model.parameters()).device
    x, prep = prepare_eval_image(image.float(), mode=sizing, multiple=model.config.downsample_factor)
    z = model.encode(x[None].to(device) * 2 - 1).mode()
    if recorder is not None:
        recorder.clear()
    y = ((model.decode(z).float() + 1) / 2).clamp(0, 1)[0].cpu()
    return unpad(x, prep), unpad(y, prep), how + prep.describe()


def _image_paths(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        paths = scan_images(root)
        if not paths:
            raise ValueError(f"no images (.png/.jpg/.jpeg/.webp) found in {root}")
        return paths
    paths = [Path(p) for p in images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
    return paths


def evaluate_folder(
    model: AutoencoderKL,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    sizing: str = "crop",
    lpips: bool = True,
    max_side: int | None = None,
    artifacts: bool = False,
    keep: Callable[[Path, Tensor, Tensor, dict[str, Tensor], dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """PSNR, SSIM and LPIPS (alex) of every image in a folder (recursive) or list, and their means.

    Returns a JSON-ready dict: ``images`` (per image: file, size, sizing, psnr, ssim, lpips),
    ``mean``, ``n``, ``sizing`` (what was done to make sizes multiples of 8) and ``settings``
    (every metric setting, from :func:`vivat.metrics.evaluate_pairs`). LPIPS is None, and the
    settings say why, when its weights are not available offline.

    ``artifacts=True`` adds the five artifact scores of :func:`vivat.artifacts.diagnose` to every
    image row and to ``mean`` (``color_shift``, ``grid``, ``blur``, ``border``, ``corner``,
    ``droplet``, and ``droplet_features`` from the decoder's norm inputs), computed on the
    quantised reconstruction as the metrics are. With ``sizing="pad"`` an image whose size is not
    a multiple of 8 is center-cropped to one for these scores only. ``keep(path, x, x_hat,
    features, scores)``, if given, is called for every image with the scored original and
    reconstruction (3, h, w) and, with ``artifacts=True``, the decoder feature maps and the
    image's artifact scores (empty dicts otherwise), so a caller can keep what it wants to show
    without holding every image in memory or scoring it again.
    """
    paths = _image_paths(images)
    lpips_model, reason = None, "not requested"
    if lpips:
        ok, reason = lpips_status("alex")
        lpips_model = load_lpips("alex") if ok else None
    originals, recons, rows = [], [], []
    recorder = FeatureRecorder(model, device="cpu") if artifacts else None
    with recorder if recorder is not None else contextlib.nullcontext():
        for path in paths:
            image = load_image(path)
            x, y, how = reconstruct(model, image, sizing, max_side, recorder=recorder)
            originals.append(x)
            recons.append(y)
            row = {"file": str(path), "size": list(image.shape[-2:]), "scored_size": list(x.shape[-2:]), "sizing": how}
            features = dict(recorder.features) if recorder is not None else {}
            artifact_scores = _artifact_scores(x, y, features) if artifacts else {}
            row.update(artifact_scores)
            if keep is not None:
                keep(path, x, y, features, artifact_scores)
            rows.append(row)
    scores = evaluate_pairs(originals, recons, lpips_model, lpips_unavailable_reason=reason)
    for i, row in enumerate(rows):
        row["psnr"] = scores["psnr"][i]
        row["ssim"] = scores["ssim"][i]
        row["lpips"] = None if scores["lpips"] is None else scores["lpips"][i]
    mean = {"psnr": scores["psnr_mean"], "ssim": scores["ssim_mean"], "lpips": scores["lpips_mean"]}
    if artifacts:
        for name in (*SCORE_NAMES, "droplet_features"):
            mean[name] = float(sum(r[name] for r in rows) / len(rows))
    return {
        "n": scores["n"],
        "mean": mean,
        "sizing": (f"center-cropped to at most {max_side} px per side, then " if max_side else "")
        + (
            "center-cropped to a multiple of 8"
            if sizing == "crop"
            else "reflect-padded to a multiple of 8, reconstruction cropped back to the original size"
        ),
        "latent": "posterior mode",
        "images": rows,
        "settings": scores["settings"],
    }


def _artifact_scores(x: Tensor, y: Tensor, features: dict[str, Tensor]) -> dict[str, float]:
    """diagnose() of one pair (3, h, w), on the quantised reconstruction, cropped to a multiple of 8."""
    h, w = (s - s % 8 for s in x.shape[-2:])
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    xc = x[None, :, top : top + h, left : left + w]
    yc = quantize(y[None, :, top : top + h, left : left + w])
    return diagnose(xc, yc, features=features or None)


def side_by_side(original: Tensor, reconstruction: Tensor, gap: int = 4) -> Tensor:
    """Original | white gap | reconstruction, as one (3, H, 2W + gap) image."""
    white = torch.ones(3, original.shape[1], gap)
    return torch.cat([original, white, reconstruction], dim=2)


def write_reconstructions(
    model: AutoencoderKL,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    sizing: str = "pad",
    max_side: int | None = None,
) -> list[dict[str, Any]]:
    """For each image write ``NAME.png`` (the reconstruction) and ``NAME_side_by_side.png``.

    Names that repeat (same file name in different folders) get ``-2``, ``-3``... Returns one
    record per image with the two paths and the quantised PSNR / SSIM.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, used = [], set()
    for path in _image_paths(images):
        x, y, how = reconstruct(model, load_image(path), sizing, max_side)
        name, k = path.stem, 1
        while name in used:
            k += 1
            name = f"{path.stem}-{k}"
        used.add(name)
        score = evaluate_pairs([x], [y])
        records.append(
            {
                "file": str(path),
                "reconstruction": str(save_image(y, out / f"{name}.png")),
                "side_by_side": str(save_image(side_by_side(x, y), out / f"{name}_side_by_side.png")),
                "sizing": how,
                "psnr": score["psnr_mean"],
                "ssim": score["ssim_mean"],
            }
        )
    return records
