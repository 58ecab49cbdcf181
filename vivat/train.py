"""Train a VIVAT / LDM KL-VAE: one loop, read top to bottom.

    from vivat.train import TrainConfig, train
    summary = train(TrainConfig(preset="vivat-tiny", data="photos/train", out="runs/tiny", steps=2000))

What one step does (``step`` counts completed steps, starting at 0; :func:`train_step` is that
step as a function, which the loop and ``bench/bench_model.py`` call)::

    x            <- batch of crops; the stream is fixed by (seed, step, rank): see StepBatchSampler
    x_hat, q(z|x) = vae(x), z sampled with a generator seeded by (seed, rank, step)
    L_G          = l1*L1 + p*LPIPS + kl*KL + adv*w*G      (vivat.losses.VAELoss.generator_loss)
    AdamW step on the VAE (gradient norm clipped), then the EMA of its weights
    L_D          = hinge(D(x), D(x_hat))                  (from loss.disc_start on)
    AdamW step on the discriminator (clipped; gradients averaged over processes by hand)

* Learning rates: :func:`learning_rate` of the step (``lr_schedule`` constant or cosine, with
  ``warmup_steps``), set on both optimisers before each step.
* Schedule: the discriminator trains from ``loss.disc_start``; from
  ``loss.decoder_only_step(steps)`` on (VIVAT presets: the last 10%), or for the whole run with
  ``decoder_only=True``, the encoder and ``quant_conv`` are frozen so the latent space stays put
  while the decoder keeps training. At that switch the EMA's encoder is set to the frozen encoder,
  so the saved model's decoder is averaged against the latents it will actually be given.
* A non-finite loss or gradient norm (a NaN batch, an overflow) skips the optimiser and EMA
  updates of that step and is counted; the weights are never touched by it.
* The saved model (``OUT/model``, ``save_pretrained`` format) holds the **EMA** weights.
* Checkpoints (``OUT/checkpoints``, see :mod:`vivat.checkpoint`) hold model, EMA, discriminator,
  both optimisers, the grad scaler, the step and RNG states; the data stream and the latent noise
  are functions of (seed, step), so ``resume=True`` continues exactly as an uninterrupted run.
* Multi-GPU: launched by ``torchrun``, each process takes its share of every global batch; the
  VAE is wrapped in DDP (nccl on GPU, gloo on CPU), rank 0 alone logs, validates and saves.
* ``OUT/log.jsonl``: one JSON record per line, ``kind`` in start / train / val / stage / resume / end.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    capture_rng_state,
    list_checkpoints,
    remove_stale_temporaries,
    restore_rng_state,
    resume_checkpoint,
    save_checkpoint,
)
from .config import VAEConfig, preset_names
from .data import COLOR_AUGMENTATIONS, ImageFolderDataset, check_scale, save_grid
from .errors import OutputError
from .losses import VAELoss
from .metrics import psnr, quantize, ssim
from .model import AutoencoderKL, check_state_dict

__all__ = [
    "CheckpointError",
    "RunExistsError",
    "StepBatchSampler",
    "StepResult",
    "learning_rate",
    "TrainConfig",
    "train",
    "train_step",
]


class RunExistsError(OutputError, FileExistsError):
    """The output folder holds checkpoints of a run, and neither resume nor overwrite was asked for."""


AMP_MODES = ("auto", "bf16", "fp16", "off")
LR_SCHEDULES = ("constant", "cosine")


def learning_rate(
    step: int, base_lr: float, total_steps: int, schedule: str = "constant", warmup_steps: int = 0, floor: float = 0.05
) -> float:
    """The learning rate of optimiser step ``step`` (0-based) in a run of ``total_steps``.

    Warm-up (both schedules): linear from ``base_lr / warmup_steps`` at step 0 to ``base_lr`` at step
    ``warmup_steps - 1``. Then ``constant`` keeps ``base_lr``; ``cosine`` decays along half a cosine from
    ``base_lr`` to ``floor * base_lr``, reached at the last step. A pure function of its arguments, so
    a resumed run follows the uninterrupted run's sequence exactly.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if int(total_steps) < 1 or int(step) < 0 or int(warmup_steps) < 0:
        raise ValueError(
            f"need total_steps >= 1, step >= 0, warmup_steps >= 0; got {total_steps}, {step}, {warmup_steps}"
        )
    if not 0.0 <= float(floor) <= 1.0:
        raise ValueError(f"floor is a fraction of base_lr in [0, 1], got {floor}")
    step, total_steps, warmup_steps = int(step), int(total_steps), int(warmup_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    decay_steps = total_steps - warmup_steps
    progress = min(1.0, (step - warmup_steps) / (decay_steps - 1)) if decay_steps > 1 else 1.0
    return base_lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class TrainConfig:
    """Settings of one training run (the model comes from ``preset``, ``model_config`` or ``init``).

    ``batch_size`` is per process (the global batch is ``batch_size * world_size``). ``disc_lr``
    None means ``lr``. Both follow ``lr_schedule`` (see :func:`learning_rate`; ``lr_floor`` is the
    cosine's final fraction of the peak). ``disc_start`` None keeps the preset's. ``workers`` None: 0 on CPU (the
    main process' threads are busy with the model), up to 4 per process on GPU. ``progress`` None:
    a progress bar only when stderr is a terminal. ``resume`` refuses a damaged newest checkpoint
    (naming it and the previous intact one); with ``resume_intact`` as well, the run continues
    from the newest intact checkpoint and says which ones it passed over.
    """

    data: str
    out: str
    preset: str | None = None
    model_config: VAEConfig | None = None
    val: str | None = None
    init: str | None = None
    steps: int = 10_000
    size: int = 256
    batch_size: int = 4
    lr: float = 1e-4
    disc_lr: float | None = None
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    lr_floor: float = 0.05
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.5, 0.9)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    ckpt_every: int = 1000
    keep_ckpts: int = 3
    val_every: int = 1000
    val_images: int = 8
    log_every: int = 10
    resume: bool = False
    resume_intact: bool = False
    overwrite: bool = False
    decoder_only: bool = False
    disc_start: int | None = None
    compile: bool = False
    channels_last: bool = False
    amp: str = "auto"
    device: str = "auto"
    workers: int | None = None
    small: str = "pad"
    scale_aug: tuple[float, float] | None = None
    color_aug: str = "none"
    cache_mb: float = 512
    progress: bool | None = None

    def check(self) -> None:
        """Raise ValueError / FileNotFoundError naming the first bad setting."""
        positive = ("steps", "size", "batch_size", "ckpt_every", "log_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("val_every", "val_images", "warmup_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and (self.disc_lr is None or self.disc_lr > 0)):
            raise ValueError(f"learning rates must be > 0, got lr={self.lr}, disc_lr={self.disc_lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0.0 <= self.lr_floor <= 1.0:
            raise ValueError(f"lr_floor is a fraction of lr in [0, 1], got {self.lr_floor}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.color_aug not in COLOR_AUGMENTATIONS:
            raise ValueError(f"color_aug must be one of {COLOR_AUGMENTATIONS}, got {self.color_aug!r}")
        check_scale(self.scale_aug, "scale_aug")
        if not self.cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {self.cache_mb}")
        if self.small not in ("pad", "skip"):
            raise ValueError(f"small must be 'pad' or 'skip', got {self.small!r}")
        if self.preset is not None and self.preset not in preset_names():
            raise ValueError(f"unknown preset {self.preset!r}; valid presets: {', '.join(preset_names())}")
        if self.model_config is not None and not isinstance(self.model_config, VAEConfig):
            raise TypeError(f"model_config must be a VAEConfig, got {type(self.model_config).__name__}")
        if self.resume_intact and not self.resume:
            raise ValueError("resume_intact only applies with resume=True")
        if self.model_config is not None and (self.preset is not None or self.init is not None):
            raise ValueError("model_config replaces preset and init; give only one of them")
        if self.preset is None and self.init is None and self.model_config is None and not self.resume:
            raise ValueError(f"give a preset ({', '.join(preset_names())}) or an init model folder")
        for name in ("data", "val", "init"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_dir():
                what = "does not exist" if not Path(path).exists() else "is not a folder"
                raise FileNotFoundError(f"{name} folder {path} {what}")


# -------------------------------------------------------------------------------------------
# Distributed setup
# -------------------------------------------------------------------------------------------
@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.ddp:
            dist.barrier()


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        return DistEnv(dist.get_rank(), local_rank, dist.get_world_size(), dev)
    return DistEnv(0, 0, 1, dev)


def all_ranks_ok(ok: Tensor, env: DistEnv) -> bool:
    """True when ``ok`` holds on every process (one small all-reduce under DDP)."""
    bad = (~ok).to(torch.float32).reshape(1)
    if env.ddp:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bool(bad.item() == 0)


def average_gradients(module: nn.Module, env: DistEnv) -> None:
    """Mean of ``module``'s gradients over processes (the discriminator is not DDP-wrapped)."""
    if not env.ddp:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(env.world_size)


# -------------------------------------------------------------------------------------------
# Data order: a pure function of (seed, step, rank)
# -------------------------------------------------------------------------------------------
class StepBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(index, epoch)`` for steps ``start..stop-1`` of one process.

    The data is an endless stream of epochs, each a permutation of the dataset drawn from
    (seed, epoch). Step ``s`` of process ``r`` takes the stream positions
    ``(s * world + r) * batch .. + batch``: processes share each global batch without overlap, and
    a run resumed at step ``s`` reads exactly what the uninterrupted run would have. The epoch
    travels with each index, so the dataset's (seed, epoch, index) augmentation is right in any
    DataLoader worker.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            first = (step * self.world + self.rank) * self.batch_size
            batch = []
            for pos in range(first, first + self.batch_size):
                epoch, i = divmod(pos, self.n)
                batch.append((int(self._perm(epoch)[i]), epoch))
            yield batch

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def noise_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    """The generator for the posterior sample of (seed, rank, step): resume needs no RNG replay."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1))
    return g


# -------------------------------------------------------------------------------------------
# Pieces of the loop
# -------------------------------------------------------------------------------------------
def adamw(module: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on conv / linear weights only (not on biases and norm scales)."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, step: int, max_decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``; the decay ramps up as (1 + t) / (10 + t) so a
    short run's EMA is not dominated by the random initialisation."""
    decay = min(max_decay, (1.0 + step) / (10.0 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


@dataclass
class StepResult:
    """What one :func:`train_step` did. ``logs`` are detached device tensors (loss terms, and
    ``grad_norm``; the discriminator's too when it ran); ``ok`` False: a non-finite generator loss
    or gradient norm, nothing was updated; ``disc_ok`` None when the discriminator did not train."""

    ok: bool
    disc_ok: bool | None
    grad_norm: Tensor
    logs: dict[str, Tensor]
    x_hat: Tensor


def train_step(
    model: AutoencoderKL,
    loss_fn: VAELoss,
    ema: AutoencoderKL,
    opt_vae: torch.optim.Optimizer,
    opt_disc: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: Tensor,
    step: int,
    *,
    seed: int = 0,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float = 1.0,
    ema_decay: float = 0.999,
    env: DistEnv | None = None,
    fwd_model: nn.Module | None = None,
) -> StepResult:
    """One optimisation step of the VAE and (from ``loss.disc_start`` on) the discriminator.

    ``x`` is this process' batch on the model's device, in [-1, 1]; ``step`` the number of
    completed steps (it seeds the posterior noise with ``(seed, env.rank, step)`` and decides the
    discriminator's phase and the EMA decay). Under autocast to ``amp_dtype`` (None: float32):
    forward, ``generator_loss`` (with the adaptive weight at ``model.last_layer()``), scaled
    backward, gradient clipping to ``grad_clip``, the finite check over all processes, the AdamW
    step and the EMA update; then the discriminator's loss on the detached reconstruction, its
    backward, gradients averaged over processes, clipping and step; ``scaler.update()`` last.
    ``fwd_model`` is what runs the forward (the DDP wrapper; default ``model``). The learning
    rates are whatever the optimisers' ``param_groups`` hold: a schedule sets them before the call.
    """
    env = env if env is not None else DistEnv(device=x.device)
    fwd_model = model if fwd_model is None else fwd_model
    device_type = x.device.type

    def autocast() -> torch.autocast:
        return torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    with autocast():
        x_hat, posterior = fwd_model(x, generator=noise_generator(seed, env.rank, step, x.device))
        g_loss, logs = loss_fn.generator_loss(x, x_hat, posterior, step, last_layer=model.last_layer())
    opt_vae.zero_grad(set_to_none=True)
    scaler.scale(g_loss).backward()
    scaler.unscale_(opt_vae)
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], grad_clip)
    ok = all_ranks_ok(torch.isfinite(g_loss.detach()) & torch.isfinite(grad_norm), env)
    if ok:
        scaler.step(opt_vae)
        ema_update(ema, model, step, ema_decay)
        logs["grad_norm"] = grad_norm.detach()
    else:
        opt_vae.zero_grad(set_to_none=True)

    disc_ok = None
    if ok and loss_fn.disc_active(step):
        with autocast():
            d_loss, d_logs = loss_fn.discriminator_loss(x, x_hat.detach(), step)
        opt_disc.zero_grad(set_to_none=True)
        scaler.scale(d_loss).backward()
        average_gradients(loss_fn.discriminator, env)
        scaler.unscale_(opt_disc)
        d_norm = torch.nn.utils.clip_grad_norm_(loss_fn.discriminator.parameters(), grad_clip)
        disc_ok = all_ranks_ok(torch.isfinite(d_loss.detach()) & torch.isfinite(d_norm), env)
        if disc_ok:
            scaler.step(opt_disc)
        logs.update(d_logs)
    scaler.update()
    return StepResult(ok, disc_ok, grad_norm.detach(), logs, x_hat.detach())


@torch.no_grad()
def validate(model: AutoencoderKL, images: Tensor, device: torch.device) -> tuple[dict[str, float], Tensor, Tensor]:
    """Posterior-mode reconstructions of ``images`` (in [-1, 1]); L1 and PSNR / SSIM on [0, 1]."""
    x = images.to(device, torch.float32)
    x_hat = model(x, sample=False)[0].float()
    a, b = ((x + 1) / 2).clamp(0, 1).cpu(), quantize(((x_hat + 1) / 2).cpu())
    metrics = {"l1": float((x - x_hat).abs().mean()), "psnr": float(psnr(a, b).mean())}
    if min(a.shape[-2:]) >= 11:
        metrics["ssim"] = float(ssim(a, b).mean())
    return metrics, a, b


class RunLog:
    """Appends JSON records to ``log.jsonl`` (rank 0 only); non-finite floats become null."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def start_fresh(self) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def drop_after(self, step: int) -> None:
        """Forget records of steps after ``step`` (a resumed run writes them again) and the ``end``
        record of the run being continued (the resumed run writes its own)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
                if record.get("step", 0) <= step and record.get("kind") != "end":
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class LogWindow:
    """Sums of the step logs between two log records, kept on the device (one sync per record)."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.ok, self.steps, self.t0 = 0, 0, time.time()

    def add(self, result: StepResult) -> None:
        self.steps += 1
        if result.ok:
            self.ok += 1
            for k, v in result.logs.items():
                self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()

    def flush(
        self,
        step: int,
        global_batch: int,
        skipped: int,
        skipped_disc: int,
        decoder_only: bool,
        lr: float,
        time_s: float,
    ) -> dict[str, Any]:
        """The ``train`` record of this window (means over its finite steps; ``images``: how many
        the window saw, for the caller to pop), and a fresh window."""
        dt = time.time() - self.t0
        images = self.steps * global_batch
        record = {
            "kind": "train",
            "step": step,
            **{k: float(v) / self.ok for k, v in self.sums.items()},
            "skipped": skipped,
            "skipped_disc": skipped_disc,
            "stage": "decoder-only" if decoder_only else "full",
            "lr": lr,
            "images_per_s": images / max(dt, 1e-9),
            "time_s": time_s,
            "images": images,
        }
        if self.ok == 0:
            record["loss"] = None
        self.__init__()
        return record


def resolve_model(cfg: TrainConfig, resume_state: dict | None) -> tuple[AutoencoderKL, str]:
    """Build the VAE: from the checkpoint's config (resume), from ``init`` (weights + architecture;
    a preset, if given, supplies the loss recipe), from ``model_config`` or from the preset.
    Returns (model, how)."""
    if resume_state is not None:
        vae_cfg = VAEConfig.from_dict(resume_state["vae_config"])
        how = "model config from the checkpoint"
        if cfg.preset is not None and VAEConfig.from_preset(cfg.preset).replace(loss=vae_cfg.loss) != vae_cfg:
            how += f" (it differs from preset {cfg.preset}, which is ignored when resuming)"
        return AutoencoderKL(vae_cfg), how
    if cfg.init is not None:
        init = AutoencoderKL.from_pretrained(cfg.init)
        vae_cfg, how = init.config, f"weights and config from {cfg.init}"
        if cfg.preset is not None:
            vae_cfg = vae_cfg.replace(loss=VAEConfig.from_preset(cfg.preset).loss)
            how += f", loss recipe from preset {cfg.preset}"
        if cfg.disc_start is not None:
            vae_cfg = vae_cfg.replace(disc_start=cfg.disc_start)
        model = AutoencoderKL(vae_cfg)
        model.load_state_dict(init.state_dict(), strict=True)
        return model, how
    vae_cfg = cfg.model_config if cfg.model_config is not None else VAEConfig.from_preset(cfg.preset)
    what = "the given model config" if cfg.model_config is not None else f"preset {cfg.preset}"
    if cfg.disc_start is not None:
        vae_cfg = vae_cfg.replace(disc_start=cfg.disc_start)
    return AutoencoderKL(vae_cfg), f"{what}, random init (seed {cfg.seed})"


def load_state(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    check_state_dict(module.state_dict(), state, source=source)
    module.load_state_dict(state, strict=True)


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


# -------------------------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training as configured; returns a summary dict (rank 0's view under DDP)."""
    cfg.check()
    env = init_distributed(cfg.device)
    try:
        return _train(cfg, env)
    finally:
        if env.ddp and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
    t_start = time.time()
    device, master = env.device, env.master
    out = Path(cfg.out)
    ckpt_dir, model_dir, samples_dir = out / "checkpoints", out / "model", out / "samples"
    log = RunLog(out / "log.jsonl", enabled=master)

    bar = None  # the progress bar, once the loop starts

    def say(msg: str) -> None:
        if master:
            if bar is not None and not bar.disable:
                bar.write(msg)
            else:
                print(msg, flush=True)

    # ---- resume or start fresh ------------------------------------------------------------
    resume_state, resume_path, passed_over = None, None, []
    if cfg.resume:
        resume_path, resume_state, passed_over = resume_checkpoint(ckpt_dir, intact=cfg.resume_intact)
        for note in passed_over if master else []:
            print(f"warning: {note}", file=sys.stderr, flush=True)
    elif list_checkpoints(ckpt_dir):
        if not cfg.overwrite:
            raise RunExistsError(
                f"{ckpt_dir} already holds checkpoints of a run; continue it with --resume, "
                "choose another --out, or pass --overwrite to delete them"
            )
        env.barrier()
        if master:
            shutil.rmtree(ckpt_dir)
    env.barrier()
    if master:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(ckpt_dir)

    # ---- model, EMA, loss (owns the discriminator), optimisers -----------------------------
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model, model_source = resolve_model(cfg, resume_state)
    vae_cfg = model.config
    if cfg.size % vae_cfg.downsample_factor:
        raise ValueError(f"size must be a multiple of {vae_cfg.downsample_factor} (the latent stride), got {cfg.size}")
    model.to(device)
    if cfg.channels_last:  # NHWC convs end to end (oneDNN / cuDNN reorder NCHW around every call)
        model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    with warnings.catch_warnings(record=True) as caught:  # reported once below, in our own words
        warnings.simplefilter("always")
        loss_fn = VAELoss(vae_cfg.loss, in_channels=vae_cfg.in_channels).to(device)
        if cfg.channels_last:
            loss_fn.to(memory_format=torch.channels_last)
    for w in caught:
        if "LPIPS" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    disc = loss_fn.discriminator
    opt_vae = adamw(model, cfg.lr, cfg.betas, cfg.weight_decay)
    opt_disc = adamw(disc, cfg.disc_lr or cfg.lr, cfg.betas, cfg.weight_decay)

    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    step, skipped, skipped_disc = 0, 0, 0
    if resume_state is not None:
        src = str(resume_path)
        load_state(model, resume_state["model"], src)
        load_state(ema, resume_state["ema"], src)
        load_state(disc, resume_state["discriminator"], src)
        opt_vae.load_state_dict(resume_state["opt_vae"])
        opt_disc.load_state_dict(resume_state["opt_disc"])
        scaler.load_state_dict(resume_state["scaler"])
        step = int(resume_state["step"])
        skipped, skipped_disc = int(resume_state.get("skipped", 0)), int(resume_state.get("skipped_disc", 0))
        restore_rng_state(resume_state["rng"])
        was = resume_state.get("train_config", {})
        now = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as the checkpoint stored it
        for keys, effect in (
            (("lr", "disc_lr", "lr_schedule", "warmup_steps", "lr_floor", "steps"), "the learning rates"),
            (("size", "scale_aug", "color_aug", "small"), "the training crops"),
        ):
            changed = [k for k in keys if k in was and was[k] != now[k]]
            if changed:
                say(
                    "note: "
                    + ", ".join(f"{k} {was[k]} -> {now[k]}" for k in changed)
                    + f"; {effect} from here on follow the new settings, not the checkpointed run's"
                )
        old_world = int(resume_state.get("world_size", env.world_size))
        if old_world != env.world_size or int(resume_state.get("batch_size", cfg.batch_size)) != cfg.batch_size:
            say(
                f"note: the checkpoint was written with {old_world} process(es) x batch "
                f"{resume_state.get('batch_size')}; the data order from here on differs from that run's"
            )

    # ---- data -------------------------------------------------------------------------------
    train_set = ImageFolderDataset(
        cfg.data,
        cfg.size,
        train=True,
        small=cfg.small,
        seed=cfg.seed,
        scale=cfg.scale_aug,
        color=cfg.color_aug,
        cache_mb=cfg.cache_mb,
    )
    workers = cfg.workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(4, (os.cpu_count() or 1) // env.world_size)
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, cfg.seed, step, cfg.steps, env.rank, env.world_size)
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda"
    )
    val_images, val_source, val_set = None, None, None
    if master and cfg.val_images > 0:
        val_root = cfg.val if cfg.val is not None else cfg.data
        val_set = ImageFolderDataset(val_root, cfg.size, train=False, small="pad", seed=cfg.seed)
        val_images = torch.stack([val_set[i] for i in range(min(cfg.val_images, len(val_set)))])
        val_source = f"{val_root} ({'--val' if cfg.val else 'training images, no --val given'})"

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    # ---- schedule ---------------------------------------------------------------------------
    switch = 0 if cfg.decoder_only else vae_cfg.loss.decoder_only_step(cfg.steps)
    decoder_only = switch is not None and step >= switch
    if decoder_only:
        model.set_encoder_trainable(False)
    if cfg.compile:
        model.compile_for_training()  # in place; keeps the adaptive weight's gradients cheap
    fwd_model: nn.Module = model
    if env.ddp:
        # A mid-run switch to decoder-only leaves the encoder without gradients: DDP must look for
        # unused parameters (frozen before wrapping, they are simply not registered).
        fwd_model = DDP(
            fwd_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=switch is not None and not decoder_only,
        )

    # ---- report the setup ---------------------------------------------------------------------
    n_params = sum(p.numel() for p in model.parameters())
    stats = train_set.stats()
    perceptual = (
        f"LPIPS on (weight {loss_fn.perceptual_weight:g})"
        if loss_fn.lpips is not None
        else f"off -- {loss_fn.lpips_status}; training continues without the perceptual term"
    )
    say(f"vivat train: {model_source}; {n_params / 1e6:.2f} M parameters")
    say(
        f"  device {device} x {env.world_size} process(es), amp {amp}, batch {cfg.batch_size} per process, "
        f"{cfg.size}px crops, steps {step} -> {cfg.steps}"
    )
    say(
        f"  data {stats['root']}: {stats['used']} images used of {stats['found']} found "
        f"({stats['padded']} reflect-padded, {stats['skipped_small']} skipped as small, "
        f"{stats['skipped_unreadable']} unreadable skipped)"
    )
    say(f"  perceptual term: {perceptual}")
    say(
        f"  learning rate {cfg.lr:g}, {cfg.lr_schedule}"
        + (f" to {cfg.lr_floor:g} of it" if cfg.lr_schedule == "cosine" else "")
        + (f", {cfg.warmup_steps} warm-up steps" if cfg.warmup_steps else "")
    )
    say(
        f"  discriminator from step {vae_cfg.loss.disc_start}; decoder-only from step "
        f"{'never' if switch is None else switch}"
    )
    say(f"  the EMA weights (decay {cfg.ema_decay}) are what gets saved to {model_dir}")
    if resume_state is not None:
        say(f"  resumed from {resume_path} at step {step}" + (" (the newest intact checkpoint)" if passed_over else ""))
        log.drop_after(step)
        log.write({"kind": "resume", "step": step, "checkpoint": str(resume_path), "passed_over": passed_over})
    else:
        log.start_fresh()
    log.write(
        {
            "kind": "start",
            "step": step,
            "config": dataclasses.asdict(cfg),
            "vae_config": vae_cfg.to_dict(),
            "model_source": model_source,
            "parameters": n_params,
            "device": str(device),
            "world_size": env.world_size,
            "amp": amp,
            "data": stats,
            "validation": val_source,
            "perceptual": perceptual,
            "disc_start": vae_cfg.loss.disc_start,
            "decoder_only_from_step": switch,
            "saved_model": f"EMA weights (decay {cfg.ema_decay}) are written to {model_dir}",
        }
    )

    def run_validation() -> dict[str, Any] | None:
        if val_images is None:
            return None
        metrics, a, b = validate(ema, val_images, device)
        grid = save_grid([a, b], samples_dir / f"val-{step:07d}.png")
        record = {"kind": "val", "step": step, **metrics, "images": len(a), "grid": str(grid), "model": "ema"}
        log.write(record)
        return record

    def save(step: int) -> Path | None:
        env.barrier()
        path = None
        if master:
            state = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "step": step,
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "discriminator": disc.state_dict(),
                "opt_vae": opt_vae.state_dict(),
                "opt_disc": opt_disc.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": capture_rng_state(),
                "vae_config": vae_cfg.to_dict(),
                "train_config": json.loads(json.dumps(dataclasses.asdict(cfg))),
                "skipped": skipped,
                "skipped_disc": skipped_disc,
                "world_size": env.world_size,
                "batch_size": cfg.batch_size,
            }
            path = save_checkpoint(state, ckpt_dir, step, keep=cfg.keep_ckpts)
        env.barrier()
        return path

    def show_progress(record: dict[str, Any]) -> None:
        loss_txt = _fmt(record.get("loss"))
        if not bar.disable:
            bar.set_postfix_str(
                f"loss {loss_txt} l1 {_fmt(record.get('l1'))} {record['images_per_s']:.1f} img/s skipped {skipped}"
            )
        else:
            say(
                f"step {step}/{cfg.steps} | loss {loss_txt} l1 {_fmt(record.get('l1'))} "
                f"kl {_fmt(record.get('kl'), '.3g')} d {_fmt(record.get('d_loss'))} | "
                f"{record['images_per_s']:.1f} img/s | skipped {skipped}"
            )

    # ---- the loop ---------------------------------------------------------------------------
    show_bar = master and (cfg.progress if cfg.progress is not None else sys.stderr.isatty())
    bar = tqdm(total=cfg.steps, initial=step, desc="train", disable=not show_bar, dynamic_ncols=True)
    last_val = run_validation() if step == 0 and cfg.val_every else None
    last_ckpt = resume_path
    last_train: dict[str, Any] | None = None
    window = LogWindow()
    run_images, run_t0 = 0, time.time()
    model.train()
    loss_fn.train()

    def apply_learning_rates(step: int) -> float:
        """Set both optimisers' rates for ``step`` (a function of the step, so resume needs no state)."""
        rates = []
        for opt, base in ((opt_vae, cfg.lr), (opt_disc, cfg.disc_lr or cfg.lr)):
            rate = learning_rate(step, base, cfg.steps, cfg.lr_schedule, cfg.warmup_steps, cfg.lr_floor)
            for group in opt.param_groups:
                group["lr"] = rate
            rates.append(rate)
        return rates[0]

    for batch in loader:
        apply_learning_rates(step)
        if switch is not None and step >= switch and not decoder_only:
            decoder_only = True
            model.set_encoder_trainable(False)
            ema.encoder.load_state_dict(model.encoder.state_dict())
            ema.quant_conv.load_state_dict(model.quant_conv.state_dict())
            log.write({"kind": "stage", "step": step, "stage": "decoder-only"})
            say(f"step {step}: encoder frozen, decoder-only stage")

        result = train_step(
            model,
            loss_fn,
            ema,
            opt_vae,
            opt_disc,
            scaler,
            batch.to(device, non_blocking=True, memory_format=memory_format),
            step,
            seed=cfg.seed,
            amp_dtype=amp_dtype,
            grad_clip=cfg.grad_clip,
            ema_decay=cfg.ema_decay,
            env=env,
            fwd_model=fwd_model,
        )
        skipped += not result.ok
        skipped_disc += result.disc_ok is False
        step += 1
        bar.update(1)

        window.add(result)
        if step % cfg.log_every == 0 or step == cfg.steps:
            last_train = window.flush(
                step,
                cfg.batch_size * env.world_size,
                skipped,
                skipped_disc,
                decoder_only,
                opt_vae.param_groups[0]["lr"],
                time.time() - t_start,
            )
            run_images += last_train.pop("images")
            log.write(last_train)
            show_progress(last_train)
        if master and ((cfg.val_every and step % cfg.val_every == 0) or step == cfg.steps):
            last_val = run_validation()  # with val_every 0: only the last step's
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            last_ckpt = save(step) or last_ckpt
    bar.close()

    # ---- finish: the EMA weights are the model ------------------------------------------------
    wall = time.time() - t_start
    undecodable = sorted(set(train_set.failed_files()) | set(val_set.failed_files() if val_set is not None else []))
    summary = {
        "out": str(out),
        "model": str(model_dir),
        "log": str(log.path),
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "steps": step,
        "skipped_steps": skipped,
        "skipped_disc_steps": skipped_disc,
        "world_size": env.world_size,
        "wall_s": wall,
        "images_per_s": run_images / max(time.time() - run_t0, 1e-9),
        "last": last_train,
        "val": last_val,
        "perceptual": perceptual,
        "images_failed_at_load": undecodable,
    }
    if master:
        ema.save_pretrained(model_dir)
        log.write({"kind": "end", **summary, "saved_model": f"EMA weights written to {model_dir}"})
        if undecodable:
            say(
                f"{len(undecodable)} image(s) passed the scan but could not be decoded, and were replaced by "
                f"others: {', '.join(undecodable[:5])}{' ...' if len(undecodable) > 5 else ''}"
            )
        say(f"done: {step} steps in {wall:.0f} s ({skipped} skipped); EMA weights saved to {model_dir}")
    env.barrier()
    return summary
