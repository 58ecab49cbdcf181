"""Reconstruct and score images with a trained VAE, by the conventions of :mod:`vivat.metrics`.

The model runs in eval mode, in float32, and decodes the posterior **mode** (no sampling), so a
reconstruction is deterministic. Any image size is accepted: it is center-cropped or
reflect-padded to a multiple of the latent stride (8), and padded reconstructions are cropped back
before scoring or saving (:func:`vivat.metrics.prepare_eval_image`). Images smaller than the
model can take (:func:`min_image_side`: 16 px for an f8 model) are reflect-padded to it as
training pads them, or skipped (``small="skip"``). Files that cannot be decoded are skipped with
one warning each and listed in the report.

Evaluation streams: :class:`Evaluation` yields one :class:`ImageResult` per image as it is
computed, writes it to a JSONL file if asked, reports progress, and holds no image once it has
been handed on, so memory does not grow with the folder.

    model = load_model("runs/tiny/model")
    report = evaluate_folder(model, "photos/val", jsonl="val.jsonl")  # PSNR / SSIM / LPIPS, per image + mean
    for result in Evaluation(model, "photos/val", artifacts=True):  # one ImageResult at a time
        print(result.path, result.metrics["psnr"], result.scores["grid"])
    write_reconstructions(model, ["cat.jpg"], "recon/")  # cat.png and cat_side_by_side.png
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from .artifacts import ARTIFACT_SCORES, METRICS, FeatureRecorder, diagnose
from .data import IMAGE_LOAD_ERRORS, center_crop, load_image, reflect_pad_to, save_image, scan_images
from .errors import InputError, OutputError
from .metrics import SSIM_WINDOW, evaluate_pairs, load_lpips, lpips_status, prepare_eval_image, quantize, unpad
from .model import AutoencoderKL

__all__ = [
    "SIZING_MODES",
    "SMALL_MODES",
    "Evaluation",
    "ImageResult",
    "Reconstructions",
    "SkippedImage",
    "evaluate_folder",
    "load_model",
    "min_image_side",
    "reconstruct",
    "side_by_side",
    "small_rule",
    "write_reconstructions",
]

SIZING_MODES = ("crop", "pad")
SMALL_MODES = ("pad", "skip")  # what happens to images under min_image_side, as ImageFolderDataset(small=...)
PROGRESS_EVERY = 10  # without a terminal, a progress line every this many images


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> AutoencoderKL:
    """A ``save_pretrained`` folder as an fp32 model in eval mode with gradients off."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model folder {directory} does not exist (expected a save_pretrained folder)")
    model = AutoencoderKL.from_pretrained(directory, device=device)
    return model.float().eval().requires_grad_(False)


def min_image_side(model: AutoencoderKL) -> int:
    """The smallest side an image may have to be evaluated: 16 px for an f8 model.

    The latent must be at least 2×2 (a reflect-padded 3×3 convolution cannot mirror a single
    pixel) and SSIM needs its 11-px window.
    """
    return max(2 * model.config.downsample_factor, SSIM_WINDOW)


def small_rule(model: AutoencoderKL, small: str) -> str:
    """One sentence: what happens to images smaller than :func:`min_image_side`."""
    side = min_image_side(model)
    if small == "skip":
        return f"images with a side under {side} px are skipped (small='skip')"
    return (
        f"images with a side under {side} px are reflect-padded (centered) to {side} px and scored as padded, "
        "as training pads images smaller than its crop (small='pad')"
    )


@torch.no_grad()
def reconstruct(
    model: AutoencoderKL,
    image: Tensor,
    sizing: str = "pad",
    max_side: int | None = None,
    recorder: FeatureRecorder | None = None,
    small: str = "pad",
) -> tuple[Tensor, Tensor, str]:
    """Reconstruct one image (3, H, W) in [0, 1].

    ``max_side`` first center-crops each side to at most that many pixels (quick looks at large
    photos). An image with a side under :func:`min_image_side` is then reflect-padded (centered)
    to it (``small="pad"``), or refused with a ``ValueError`` (``small="skip"``). Returns
    ``(original, reconstruction, how)``: both (3, h, w) in [0, 1] on the CPU, where ``original``
    is the region that was reconstructed (the full image with ``sizing="pad"``, the center crop
    with ``"crop"``) and ``how`` describes the sizing. The reconstruction is clamped, not
    quantised. With a ``recorder`` (an open :class:`vivat.artifacts.FeatureRecorder` on ``model``),
    the decoder's norm inputs of this image are left in ``recorder.features``.
    """
    if sizing not in SIZING_MODES:
        raise ValueError(f"sizing must be one of {SIZING_MODES}, got {sizing!r}")
    if small not in SMALL_MODES:
        raise ValueError(f"small must be one of {SMALL_MODES}, got {small!r}")
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor (3, H, W) in [0, 1], got {shape}")
    how = ""
    h, w = image.shape[-2:]
    if max_side is not None and max(h, w) > max_side:
        image = center_crop(image, max_side)
        h2, w2 = image.shape[-2:]
        how = f"center-cropped {h}x{w} -> {h2}x{w2} (max side {max_side}), then "
        h, w = h2, w2
    side = min_image_side(model)
    if min(h, w) < side:
        if small == "skip":
            raise ValueError(f"image {h}x{w} is smaller than {side} px (small='skip')")
        image = reflect_pad_to(image, side)
        h2, w2 = image.shape[-2:]
        how += f"reflect-padded {h}x{w} -> {h2}x{w2} (under {side} px), then "
    device = next(model.parameters()).device
    x, prep = prepare_eval_image(image.float(), mode=sizing, multiple=model.config.downsample_factor)
    z = model.encode(x[None].to(device) * 2 - 1).mode()
    if recorder is not None:
        recorder.clear()
    y = ((model.decode(z).float() + 1) / 2).clamp(0, 1)[0].cpu()
    return unpad(x, prep), unpad(y, prep), how + prep.describe()


# ------------------------------------------------------------------------------------------------
# records


@dataclass
class ImageResult:
    """One evaluated image.

    ``size`` is the file's (H, W), ``scored_size`` the (h, w) that was scored and ``sizing`` says
    how one became the other. ``metrics`` holds ``psnr``, ``ssim`` and ``lpips`` (None when LPIPS
    was not requested or its weights are not on disk); ``scores`` the artifact scores
    (:data:`vivat.artifacts.ARTIFACT_SCORES`) when they were asked for, else nothing. The tensors
    are there only when asked for (``tensors=True``): ``original`` and ``reconstruction`` (3, h, w)
    in [0, 1] as scored (the reconstruction clamped, not yet quantised), and ``features``, the
    decoder's norm inputs {name: (1, C, H', W')} when the artifact scores were computed.
    """

    path: Path
    size: tuple[int, int]
    scored_size: tuple[int, int]
    sizing: str
    metrics: dict[str, float | None]
    scores: dict[str, float] = field(default_factory=dict)
    original: Tensor | None = None
    reconstruction: Tensor | None = None
    features: dict[str, Tensor] | None = None

    def row(self) -> dict[str, Any]:
        """The JSON row of the report (and of the JSONL file): every number, no tensor."""
        return {
            "file": str(self.path),
            "size": list(self.size),
            "scored_size": list(self.scored_size),
            "sizing": self.sizing,
            **self.metrics,
            **self.scores,
        }


@dataclass(frozen=True)
class SkippedImage:
    """An image that was not evaluated, and why (one line)."""

    path: Path
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "reason": self.reason}


def _image_paths(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a folder"
            raise InputError(f"image folder {root} {what}")
        paths = scan_images(root)
        if not paths:
            raise InputError(f"no images (.png/.jpg/.jpeg/.webp) found in {root}")
        return paths
    paths = [Path(p) for p in images]
    if not paths:
        raise InputError("no image files given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"image file(s) not found: {', '.join(missing)}")
    return paths


def _read(path: Path) -> tuple[Tensor | None, str | None]:
    """The image, or None and the reason it cannot be read."""
    try:
        return load_image(path), None
    except IMAGE_LOAD_ERRORS as err:
        # PIL's messages often repeat the path; the record names the file once, beside the reason
        detail = str(err).replace(f"'{path}'", "the file").replace(str(path), "the file")
        return None, f"unreadable: {type(err).__name__}: {detail}"


def _too_small(model: AutoencoderKL, image: Tensor, max_side: int | None, small: str) -> str | None:
    """Why ``image`` is skipped under ``small="skip"`` (None when it is evaluated)."""
    if small != "skip":
        return None
    h, w = center_crop(image, max_side).shape[-2:] if max_side else image.shape[-2:]
    side = min_image_side(model)
    return f"{h}x{w} is smaller than {side} px (small='skip')" if min(h, w) < side else None


def _skip(path: Path, reason: str) -> SkippedImage:
    warnings.warn(f"skipping {path}: {reason}", RuntimeWarning, stacklevel=3)
    return SkippedImage(path, reason)


def _artifact_scores(x: Tensor, y: Tensor, features: dict[str, Tensor]) -> dict[str, float]:
    """diagnose() of one pair (3, h, w), on the quantised reconstruction, cropped to a multiple of 8."""
    xc, yc = center_crop(x, multiple=8), quantize(center_crop(y, multiple=8))
    return diagnose(xc[None], yc[None], features=features or None)


class _Progress:
    """A tqdm bar on a terminal, else a line to stderr every ``every`` images (and after the last)."""

    def __init__(self, total: int, enabled: bool, label: str, every: int = PROGRESS_EVERY) -> None:
        self.total, self.label, self.every, self.done = total, label, every, 0
        self.enabled = enabled
        self.t0 = time.time()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="img", file=sys.stderr, leave=False)

    def step(self, note: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if note:
                self.bar.set_postfix_str(note, refresh=False)
        elif self.done % self.every == 0 or self.done == self.total:
            rate = (time.time() - self.t0) / self.done
            print(
                f"{self.label}: {self.done}/{self.total} images, {rate:.1f} s/image" + (f", {note}" if note else ""),
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Evaluation:
    """Reconstruct and score the images of a folder (recursive) or list, one at a time.

    Iterating yields one :class:`ImageResult` per image that could be evaluated, in file order;
    unreadable images (and, with ``small="skip"``, images under :func:`min_image_side`) are
    skipped with one warning each and collected in :attr:`skipped`. Nothing of an image is kept
    after it is yielded (only its row of numbers), so memory stays flat however large the folder.
    :meth:`report` (after iterating, or on its own: it then runs the evaluation) is the JSON-ready
    summary :func:`evaluate_folder` returns. An evaluation runs once.

    Args:
        sizing: ``"crop"`` (center crop to a multiple of 8) or ``"pad"`` (reflect-pad and crop back).
        lpips: compute LPIPS(alex) when its weights are on disk (else it is None, the settings say why).
        max_side: first center-crop each side to at most this many pixels.
        artifacts: add the artifact scores of :func:`vivat.artifacts.diagnose` (``color_shift``,
            ``grid``, ``blur``, ``border``, ``corner``, ``droplet``, and ``droplet_features`` from the
            decoder's norm inputs), on the quantised reconstruction as the metrics are. With
            ``sizing="pad"`` an image whose size is not a multiple of 8 is center-cropped to one for
            these scores only.
        tensors: hand each result's ``original``, ``reconstruction`` (and ``features``) on.
        small: ``"pad"`` or ``"skip"`` images smaller than :func:`min_image_side`.
        jsonl: write each image's row (and each skipped image) to this file as soon as it is known.
        progress: report progress on stderr: a bar on a terminal, else a line every
            ``progress_every`` images and after the last.
    """

    def __init__(
        self,
        model: AutoencoderKL,
        images: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        sizing: str = "crop",
        lpips: bool = True,
        max_side: int | None = None,
        artifacts: bool = False,
        tensors: bool = False,
        small: str = "pad",
        jsonl: str | os.PathLike | None = None,
        progress: bool = True,
        progress_every: int = PROGRESS_EVERY,
    ) -> None:
        if sizing not in SIZING_MODES:
            raise ValueError(f"sizing must be one of {SIZING_MODES}, got {sizing!r}")
        if small not in SMALL_MODES:
            raise ValueError(f"small must be one of {SMALL_MODES}, got {small!r}")
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be a positive number of pixels or None, got {max_side}")
        self.model = model
        self.paths = _image_paths(images)
        self.sizing, self.max_side, self.small = sizing, max_side, small
        self.artifacts, self.tensors, self.progress = artifacts, tensors, progress
        if progress_every < 1:
            raise ValueError(f"progress_every must be >= 1, got {progress_every}")
        self.progress_every = progress_every
        self.jsonl = None if jsonl is None else Path(jsonl)
        self.lpips = lpips
        self.rows: list[dict[str, Any]] = []
        self.skipped: list[SkippedImage] = []
        self.settings: dict[str, Any] | None = None
        self._started = self._finished = False

    def _open_jsonl(self) -> IO[str] | None:
        if self.jsonl is None:
            return None
        try:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)
            return open(self.jsonl, "w", encoding="utf-8")
        except OSError as err:
            raise OutputError(f"cannot write {self.jsonl}: {err.strerror or err}; choose another location") from err

    def __iter__(self) -> Iterator[ImageResult]:
        if self._started:
            raise RuntimeError("an Evaluation runs once; create a new one to evaluate again")
        self._started = True
        sink = self._open_jsonl()  # an unwritable location fails before any work
        bar = None
        try:
            lpips_model, reason = None, "not requested"
            if self.lpips:
                ok, reason = lpips_status("alex")
                lpips_model = load_lpips("alex") if ok else None
            recorder = FeatureRecorder(self.model, device="cpu") if self.artifacts else None
            bar = _Progress(len(self.paths), self.progress, "evaluating", self.progress_every)
            with recorder if recorder is not None else contextlib.nullcontext():
                for path in self.paths:
                    image, why = _read(path)
                    if image is not None:
                        why = _too_small(self.model, image, self.max_side, self.small)
                    if why is not None:
                        self.skipped.append(_skip(path, why))
                        if sink is not None:
                            sink.write(json.dumps({"file": str(path), "skipped": why}) + "\n")
                            sink.flush()
                        bar.step("skipped")
                        continue
                    result = self._evaluate(path, image, recorder, lpips_model, reason)
                    row = result.row()
                    self.rows.append(row)
                    if sink is not None:
                        sink.write(json.dumps(row) + "\n")
                        sink.flush()
                    bar.step(f"PSNR {result.metrics['psnr']:.2f} dB")
                    yield result
        finally:
            if bar is not None:
                bar.close()
            if sink is not None:
                sink.close()
        self._finished = True

    def _evaluate(
        self,
        path: Path,
        image: Tensor,
        recorder: FeatureRecorder | None,
        lpips_model: torch.nn.Module | None,
        reason: str,
    ) -> ImageResult:
        x, y, how = reconstruct(self.model, image, self.sizing, self.max_side, recorder=recorder, small=self.small)
        pair = evaluate_pairs([x], [y], lpips_model, lpips_unavailable_reason=reason)
        self.settings = pair["settings"]
        metrics = {name: None if pair[name] is None else pair[name][0] for name in METRICS}
        features = dict(recorder.features) if recorder is not None else {}
        scores = _artifact_scores(x, y, features) if self.artifacts else {}
        result = ImageResult(path, tuple(image.shape[-2:]), tuple(x.shape[-2:]), how, metrics, scores)
        if self.tensors:
            result.original, result.reconstruction = x, y
            result.features = features if self.artifacts else None
        return result

    def run(self) -> dict[str, Any]:
        """Evaluate every image (results are not kept) and return :meth:`report`."""
        for _ in self:
            pass
        return self.report()

    def report(self) -> dict[str, Any]:
        """The summary: ``n``, ``mean``, ``sizing``, ``small`` (the rule for small images), ``latent``,
        ``images`` (one row per image: file, size, scored_size, sizing, psnr, ssim, lpips and, with
        ``artifacts``, the artifact scores), ``skipped`` (``[{path, reason}]``) and ``settings``
        (every metric setting, from :func:`vivat.metrics.evaluate_pairs`)."""
        if not self._started:
            return self.run()
        if not self._finished:
            raise RuntimeError("the evaluation was not iterated to the end")
        if not self.rows:
            listed = "; ".join(f"{s.path}: {s.reason}" for s in self.skipped[:3])
            raise InputError(f"none of the {len(self.skipped)} image(s) could be evaluated ({listed})")
        names = [*METRICS, *(ARTIFACT_SCORES if self.artifacts else ())]
        mean: dict[str, float | None] = {}
        for name in names:
            values = [r[name] for r in self.rows]
            mean[name] = None if values[0] is None else float(sum(values) / len(values))
        sizing = (
            "center-cropped to a multiple of 8"
            if self.sizing == "crop"
            else "reflect-padded to a multiple of 8, reconstruction cropped back to the original size"
        )
        return {
            "n": len(self.rows),
            "mean": mean,
            "sizing": (f"center-cropped to at most {self.max_side} px per side, then " if self.max_side else "")
            + sizing,
            "small": small_rule(self.model, self.small),
            "latent": "posterior mode",
            "images": self.rows,
            "skipped": [s.as_dict() for s in self.skipped],
            "settings": self.settings,
        }


def evaluate_folder(
    model: AutoencoderKL,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    sizing: str = "crop",
    lpips: bool = True,
    max_side: int | None = None,
    artifacts: bool = False,
    *,
    small: str = "pad",
    jsonl: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """PSNR, SSIM and LPIPS (alex) of every image in a folder (recursive) or list, and their means.

    Runs an :class:`Evaluation` (see there for the arguments) and returns its JSON-ready
    :meth:`~Evaluation.report`. LPIPS is None, and the settings say why, when its weights are not
    available offline.
    """
    return Evaluation(
        model,
        images,
        sizing=sizing,
        lpips=lpips,
        max_side=max_side,
        artifacts=artifacts,
        small=small,
        jsonl=jsonl,
        progress=progress,
    ).run()


# ------------------------------------------------------------------------------------------------
# reconstructions to look at


def side_by_side(original: Tensor, reconstruction: Tensor, gap: int = 4) -> Tensor:
    """Original | white gap | reconstruction, as one (3, H, 2W + gap) image."""
    white = torch.ones(3, original.shape[1], gap)
    return torch.cat([original, white, reconstruction], dim=2)


@dataclass
class Reconstructions:
    """What :func:`write_reconstructions` wrote (``written``, one record per image) and ``skipped``.

    Iterating (and ``len``) goes over ``written``.
    """

    written: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.written)

    def __len__(self) -> int:
        return len(self.written)


def write_reconstructions(
    model: AutoencoderKL,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    sizing: str = "pad",
    max_side: int | None = None,
    small: str = "pad",
) -> Reconstructions:
    """For each image write ``NAME.png`` (the reconstruction) and ``NAME_side_by_side.png``.

    Names that repeat (same file name in different folders) get ``-2``, ``-3``... An image padded
    for being smaller than :func:`min_image_side` is scored padded and saved at its own size. Unreadable
    images (and, with ``small="skip"``, images under :func:`min_image_side`) are skipped with one
    warning each. Returns the records (file, the two paths, sizing, quantised PSNR / SSIM) and the
    skipped images; raises :class:`vivat.errors.InputError` when no image could be reconstructed.
    """
    paths = _image_paths(images)
    if small not in SMALL_MODES:
        raise ValueError(f"small must be one of {SMALL_MODES}, got {small!r}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the output folder {out}: {err.strerror or err}") from err
    result, used = Reconstructions(), set()
    for path in paths:
        image, why = _read(path)
        if image is not None:
            why = _too_small(model, image, max_side, small)
        if why is not None:
            result.skipped.append(_skip(path, why))
            continue
        x, y, how = reconstruct(model, image, sizing, max_side, small=small)
        name, k = path.stem, 1
        while name in used:
            k += 1
            name = f"{path.stem}-{k}"
        used.add(name)
        score = evaluate_pairs([x], [y])
        # an image padded for being small is saved at its own size (the padding is centered)
        x, y = center_crop(x, tuple(image.shape[-2:])), center_crop(y, tuple(image.shape[-2:]))
        result.written.append(
            {
                "file": str(path),
                "reconstruction": str(save_image(y, out / f"{name}.png")),
                "side_by_side": str(save_image(side_by_side(x, y), out / f"{name}_side_by_side.png")),
                "sizing": how,
                "psnr": score["psnr_mean"],
                "ssim": score["ssim_mean"],
            }
        )
    if not result.written:
        listed = "; ".join(f"{s.path}: {s.reason}" for s in result.skipped[:3])
        raise InputError(f"none of the {len(result.skipped)} image(s) could be reconstructed ({listed})")
    return result
