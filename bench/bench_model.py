"""Model-level benchmark of the VIVAT KL-VAE: decode and one full training step, fused vs eager.

Two cases, each timed for every variant below:

* ``decode``: ``model.decode(z)`` under ``torch.no_grad`` for ``--batch`` latents of a SIZE x SIZE
  image, for each of ``--sizes``; the model's weights are in ``--dtype``. images/s = batch /
  median seconds. Peak memory (CUDA only) is ``torch.cuda.max_memory_allocated`` during one call
  minus what was live before it (weights, z): the decode's own activations.
* ``train``: one call of ``vivat.train.train_step`` (the step the trainer's loop runs), past ``disc_start``
  (discriminator active) in the full stage (encoder trained): forward with the posterior sample
  drawn from ``noise_generator``, ``VAELoss.generator_loss`` (L1 + KL + adversarial term, with the
  LDM adaptive weight computed from the gradients at ``model.last_layer()``), backward, gradient
  clipping, the finite check, AdamW step and EMA update of the VAE; then
  ``VAELoss.discriminator_loss`` on the detached reconstruction, backward, clipping, AdamW step
  of the discriminator. ``--train-batch`` crops of ``--train-size`` pixels; float32 weights, under
  autocast to ``--dtype`` when that is not float32 (as the trainer's ``--amp bf16``; bf16 and
  fp32 need no GradScaler, so it is disabled). Optimiser settings are ``TrainConfig``'s defaults. The
  perceptual term is off (``perceptual_weight=0``): LPIPS weights are not loaded, so no LPIPS
  forward/backward is in the step. Peak memory (CUDA only) is the step's whole footprint: the
  variant's persistent state (weights, gradients, AdamW moments, EMA, discriminator and its
  optimiser; measured as the allocation growth from building it through its first step) plus the
  peak of one step above everything live before it.

CPU memory is not measured ("–" in the tables): only CUDA's caching allocator reports tensor
peaks, and the process RSS is too coarse and too noisy to tell the variants apart.

Variants (one randomly initialised model, copied into each, so all start from the same weights;
the SCN 1x1 convs get small random weights so the conditional path is not the identity):

* ``eager``: plain PyTorch. The model's ``FusedGroupNorm`` / ``SpatialNorm`` / ``ReflectConv2d``
  layers compute with ``vivat_kernels.reference`` (``F.group_norm``, SiLU, nearest upsampling of
  the SCN scale and shift, ``F.pad(mode="reflect")`` + ``F.conv2d``) and autograd's own backward:
  the architecture written without this library. The baseline of every ratio and target.
* ``torch-backend``: the fused model under ``use_backend("torch")``: the same custom ops, each
  running the eager reference forward and its hand-written backward. Slower than ``eager`` (op
  overhead, a backward that is not autograd's), so it is not the baseline; ``x torch-backend``
  shows every variant against it too.
* ``fused``: the fused model, backend ``auto`` (cpp on CPU, triton on CUDA; the table says which).
* ``compile``: ``torch.compile(dynamic=False)`` (inductor) of the ``eager`` model: of
  ``model.decode`` for decode; for training, as the trainer's ``--compile`` does it,
  ``model.compile_for_training()``: every block in place except the decoder's last conv, so the
  adaptive GAN weight's two gradients at that conv do not run the whole compiled backward.
* ``fused+compile``: the same for the fused model; its ops are ``torch.library`` custom ops, one
  opaque node each. A compiled variant whose first call fails is dropped and the error is listed
  under the tables.
* ``eager-cl`` / ``fused-cl`` (``--channels-last``, on by default): ``eager`` and ``fused`` with
  every 4-D weight and the input in ``torch.channels_last`` (``model.to(memory_format=...)``), so
  the library convs run NHWC without reordering around each call and the fused norms read that
  layout directly. ``x eager`` of ``fused-cl`` is the fused model in its best layout against the
  plain model as written; ``eager-cl`` shows how much of that the layout alone gives.

Timing: the first call of each variant (the compile time, for compiled ones) runs before the
timed rounds and is reported as "first call s"; its output (the decoded image, or the training
step's reconstruction: same weights, batch and posterior noise) is compared with eager's ("max
abs diff"). Then ``--rounds`` rounds alternate the variants, each
timing ``--warmup`` untimed and ``--reps`` timed calls (median; CUDA events on GPU); the median
of the rounds is reported, so a change of machine load hits every variant alike. Ratios come
from this one process: ``x eager`` = eager ms / variant ms (higher is faster), ``x compile`` the
same against ``compile``, ``mem x eager`` = variant MiB / eager MiB (lower is better).

Targets (checked on the ``fused`` row, against ``eager``): GPU: training step >= 1.3x eager,
peak training memory <= 0.8x eager, decode >= 1.5x eager; CPU (the tiny preset): decode >= 1.3x
and training step >= 1.0x eager.

Results are written after every case, in the order of ``--only`` (a run cut short keeps the
cases it finished).

    python bench/bench_model.py                      # CPU: vivat-tiny, decode 256/512, train 2x256
    python bench/bench_model.py --device cuda        # vivat-f8c16, decode 256/512/1024, bf16
    python bench/bench_model.py --no-compile --only train
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, environment, markdown_table, peak_extra_mb, sync, time_ms, write_results
from vivat.config import VAEConfig, preset_names
from vivat.losses import VAELoss
from vivat.model import AutoencoderKL
from vivat.train import DistEnv, TrainConfig, adamw, train_step
from vivat_kernels import reference, use_backend
from vivat_kernels.nn import FusedGroupNorm, ReflectConv2d, SpatialNorm
from vivat_kernels.ops import reflect_conv as rc
from vivat_kernels.ops.group_norm import selected_backend

SEED = 0
CASES = ("decode", "train")
# (name, backend in effect while it runs, model it runs: "eager" or "fused", compiled)
VARIANTS = (
    ("eager", "torch", "eager", False),
    ("torch-backend", "torch", "fused", False),
    ("fused", "auto", "fused", False),
    ("compile", "torch", "eager", True),
    ("fused+compile", "auto", "fused", True),
    # the same two models with weights and activations in channels_last (--channels-last)
    ("eager-cl", "torch", "eager-cl", False),
    ("fused-cl", "auto", "fused-cl", False),
)
CL = torch.channels_last
# (device type, case) -> [(row key, ">=" or "<=", threshold, label)], checked on the fused row.
TARGETS: dict[tuple[str, str], list[tuple[str, str, float, str]]] = {
    ("cuda", "decode"): [("x_eager", ">=", 1.5, "time")],
    ("cuda", "train"): [("x_eager", ">=", 1.3, "time"), ("mem_x_eager", "<=", 0.8, "memory")],
    ("cpu", "decode"): [("x_eager", ">=", 1.3, "time")],
    ("cpu", "train"): [("x_eager", ">=", 1.0, "time")],
}
COLUMNS = [
    ("variant", "variant"),
    ("kernels", "kernels"),
    ("shape", "images"),
    ("ms", "ms"),
    ("images_per_s", "images/s"),
    ("x_eager", "x eager"),
    ("x_torch_backend", "x torch-backend"),
    ("x_compile", "x compile"),
    ("peak_mb", "peak MiB"),
    ("mem_x_eager", "mem x eager"),
    ("max_abs_diff", "max abs diff"),
    ("first_call_s", "first call s"),
    ("target", "target"),
]


# -------------------------------------------------------------------------------------------
# The eager (plain PyTorch) model: same parameters, reference math, autograd's backward
# -------------------------------------------------------------------------------------------
class _EagerGroupNorm(FusedGroupNorm):
    def forward(self, x: Tensor) -> Tensor:
        return reference.group_norm(x, self.num_groups, self.weight, self.bias, eps=self.eps, act=self.act)


class _EagerSpatialNorm(SpatialNorm):
    def forward(self, f: Tensor, zq: Tensor) -> Tensor:
        norm = self.norm_layer
        return reference.group_norm(
            f,
            norm.num_groups,
            norm.weight,
            norm.bias,
            gamma=self.conv_y(zq),
            beta=self.conv_b(zq),
            eps=norm.eps,
            act=self.act,
        )


class _EagerReflectConv2d(ReflectConv2d):
    def forward(self, x: Tensor) -> Tensor:
        return reference.reflect_conv2d(x, self.weight, self.bias, self.stride[0], self._pad4())


_EAGER_CLASS: dict[type, type] = {
    FusedGroupNorm: _EagerGroupNorm,
    SpatialNorm: _EagerSpatialNorm,
    ReflectConv2d: _EagerReflectConv2d,
}


def eager_copy(model: AutoencoderKL) -> AutoencoderKL:
    """A deep copy of ``model`` whose fused layers compute in plain PyTorch.

    Each fused layer's class is swapped for a subclass whose ``forward`` calls the reference, so
    parameters, state_dict keys and the model's ``isinstance`` dispatch stay as they are.
    """
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if type(m) in _EAGER_CLASS:
            m.__class__ = _EAGER_CLASS[type(m)]
    return plain


def build_model(preset: str, device: torch.device) -> AutoencoderKL:
    """The preset with the perceptual term off, seeded; SCN convs moved off their identity init."""
    cfg = VAEConfig.from_preset(preset).replace(perceptual_weight=0.0)
    torch.manual_seed(SEED)
    model = AutoencoderKL(cfg)
    for m in model.modules():
        if isinstance(m, SpatialNorm):
            nn.init.normal_(m.conv_y.weight, std=0.02)
            nn.init.normal_(m.conv_b.weight, std=0.02)
    return model.to(device)


# -------------------------------------------------------------------------------------------
# Runners: one decode call or one training step of one variant
# -------------------------------------------------------------------------------------------
class DecodeRunner:
    def __init__(self, model: AutoencoderKL, backend: str, compiled: bool, z: Tensor, channels_last: bool = False):
        if channels_last:
            model, z = copy.deepcopy(model).to(memory_format=CL), z.contiguous(memory_format=CL)
        self.backend, self.z = backend, z
        self.fn: Callable[[Tensor], Tensor] = torch.compile(model.decode, dynamic=False) if compiled else model.decode

    def __call__(self) -> Tensor:
        with torch.no_grad(), use_backend(self.backend):
            return self.fn(self.z)

    def peak_mb(self) -> float | None:
        return peak_extra_mb(self, self.z.device)


class TrainRunner:
    """Copies of ``base`` (in plain PyTorch when ``eager``) and ``base_loss`` (which owns the
    discriminator), the EMA and both AdamW optimisers, as ``vivat.train`` sets them up; each call
    runs one step of the trainer's loop on the fixed batch ``x``."""

    def __init__(
        self,
        base: AutoencoderKL,
        base_loss: VAELoss,
        eager: bool,
        backend: str,
        compiled: bool,
        x: Tensor,
        amp_dtype: torch.dtype | None,
        channels_last: bool = False,
    ):
        device = x.device
        self.alloc_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        self.state_bytes: int | None = None
        self.model = (eager_copy(base) if eager else copy.deepcopy(base)).train()
        if channels_last:
            self.model.to(memory_format=CL)
            x = x.contiguous(memory_format=CL)
        self.loss_fn = copy.deepcopy(base_loss).train()
        self.backend, self.x, self.amp_dtype = backend, x, amp_dtype
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        if compiled:  # as the trainer's --compile: every block but the decoder's last conv
            self.model.compile_for_training(dynamic=False)
        defaults = TrainConfig(data="-", out="-")
        self.grad_clip, self.ema_decay = defaults.grad_clip, defaults.ema_decay
        self.opt_vae = adamw(self.model, defaults.lr, defaults.betas, defaults.weight_decay)
        disc_lr = defaults.disc_lr or defaults.lr
        self.opt_disc = adamw(self.loss_fn.discriminator, disc_lr, defaults.betas, defaults.weight_decay)
        self.env = DistEnv(device=device)
        # As the trainer sets it up: a no-op unless the step runs under float16 autocast.
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.step = self.loss_fn.cfg.disc_start  # the discriminator is active from here on

    def __call__(self) -> Tensor:
        with use_backend(self.backend):
            result = train_step(
                self.model,
                self.loss_fn,
                self.ema,
                self.opt_vae,
                self.opt_disc,
                self.scaler,
                self.x,
                self.step,
                seed=SEED,
                amp_dtype=self.amp_dtype,
                grad_clip=self.grad_clip,
                ema_decay=self.ema_decay,
                env=self.env,
            )
        if not (result.ok and result.disc_ok):
            raise RuntimeError(
                f"non-finite loss or gradient at step {self.step} (generator ok {result.ok}, "
                f"discriminator ok {result.disc_ok})"
            )
        x_hat = result.x_hat
        self.step += 1
        if self.state_bytes is None and self.alloc_before is not None:
            # The state is complete after the first step: gradients and AdamW moments exist.
            sync(self.x.device)
            self.state_bytes = torch.cuda.memory_allocated(self.x.device) - self.alloc_before
        return x_hat

    def peak_mb(self) -> float | None:
        extra = peak_extra_mb(self, self.x.device)
        return None if extra is None or self.state_bytes is None else self.state_bytes / 2**20 + extra


# -------------------------------------------------------------------------------------------
# One case: all variants, alternating rounds
# -------------------------------------------------------------------------------------------
def kernels_label(name: str, fused_backend: str) -> str:
    return {
        "eager": "pytorch",
        "torch-backend": "vivat torch ref",
        "fused": fused_backend,
        "compile": "inductor",
        "fused+compile": "inductor (GN family as ATen) + vivat layers"
        if fused_backend == "cpp"
        else f"{fused_backend}+inductor",
        "eager-cl": "pytorch, channels_last",
        "fused-cl": f"{fused_backend}, channels_last",
    }[name]


def run_case(
    case: str,
    size: int,
    batch: int,
    make: Callable[[str, str, bool], DecodeRunner | TrainRunner],
    fused_backend: str,
    args: argparse.Namespace,
    device: torch.device,
    notes: list[str],
) -> list[dict]:
    """Time every variant of one case (``make(source, backend, compiled)`` builds a variant's
    runner); returns its rows, eager first."""
    runners: dict[str, DecodeRunner | TrainRunner] = {}
    first_s: dict[str, float] = {}
    rc.clear_design_decisions()  # so the note below lists this case's choices
    diffs: dict[str, float | None] = {}
    reference_out: Tensor | None = None
    for name, backend, source, compiled in VARIANTS:
        if (compiled and not args.compile) or (source.endswith("-cl") and not args.channels_last):
            continue
        try:
            runner = make(source, backend, compiled)
            t0 = time.perf_counter()
            out = runner()
            sync(device)
            first_s[name] = time.perf_counter() - t0
        except Exception as exc:  # a compiled variant may fail to compile; the others must run
            if not compiled:
                raise
            notes.append(f"{case} {size}px {name}: dropped, first call failed: {type(exc).__name__}: {exc}"[:600])
            print(notes[-1], flush=True)
            continue
        if reference_out is None:
            reference_out, diffs[name] = out.float(), None
        else:
            diffs[name] = (out.float() - reference_out).abs().max().item()
        del out
        runners[name] = runner
        print(f"  {case} {size}px {name:14s} first call {first_s[name]:7.1f} s", flush=True)
    notes.append(f"{case} {batch}x{size}²: {designs_note()}")
    if args.profile:
        for name, runner in runners.items():
            print(f"-- profile: {case} {batch}x{size}² {name}, one call, ops by self CPU time", flush=True)
            with torch.profiler.profile() as prof:
                runner()
                sync(device)
            print(
                prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50),
                flush=True,
            )
    peaks = {name: r.peak_mb() for name, r in runners.items()}
    rounds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            rounds[name].append(time_ms(runner, device, warmup=args.warmup, reps=args.reps))
    ms = {name: statistics.median(v) for name, v in rounds.items()}

    rows = []
    for name in runners:
        rows.append(
            {
                "case": case,
                "preset": args.preset,
                "dtype": args.dtype,
                "size": size,
                "batch": batch,
                "shape": f"{batch}x{size}²",
                "variant": name,
                "kernels": kernels_label(name, fused_backend),
                "ms": ms[name],
                "rounds_ms": rounds[name],
                "images_per_s": batch / (ms[name] / 1e3),
                "x_eager": ms["eager"] / ms[name] if name != "eager" else None,
                "x_torch_backend": ms["torch-backend"] / ms[name] if name != "torch-backend" else None,
                "x_compile": ms["compile"] / ms[name] if "compile" in ms and name != "compile" else None,
                "peak_mb": peaks[name],
                "mem_x_eager": (peaks[name] / peaks["eager"] if peaks[name] is not None and name != "eager" else None),
                "max_abs_diff": diffs[name],
                "first_call_s": first_s[name],
            }
        )
    for row in rows:
        row["target"] = target_text(row, device) if row["variant"] == "fused" else None
        print(
            f"{case:6s} {row['shape']:10s} {row['variant']:14s} {row['ms']:10.2f} ms  "
            f"{row['images_per_s']:8.2f} img/s  x eager {row['x_eager'] or 1.0:.2f}",
            flush=True,
        )
    return rows


def designs_note() -> str:
    """Which reflect-conv design ``auto`` picked in the fused variants, per distinct conv call."""
    counts: dict[str, dict[str, int]] = {"fwd": {}, "bwd": {}}
    for key, design in rc.design_decisions().items():
        counts[key[0]][design] = counts[key[0]].get(design, 0) + 1
    if not any(counts.values()):
        design = rc.get_design()
        if design == "auto":  # CUDA's auto times and records; the cpp backend's auto is a rule
            return (
                "reflect conv: auto on the cpp backend is the plain F.pad + F.conv2d by rule, called outside "
                "the custom op (eager autograd and Inductor see both calls; nothing timed)"
            )
        return f"reflect conv design {design} (nothing timed: forced, or no fused conv ran)"
    parts = [f"{phase} " + ", ".join(f"{d} x{n}" for d, n in sorted(c.items())) for phase, c in counts.items() if c]
    return "reflect conv designs picked by auto (per distinct conv shape): " + "; ".join(parts)


def target_text(row: dict, device: torch.device) -> str:
    parts = []
    for key, op, threshold, label in TARGETS[(device.type, row["case"])]:
        value = row[key]
        if value is None:
            parts.append(f"{label} {op}{threshold}x eager: n/a")
            continue
        met = value >= threshold if op == ">=" else value <= threshold
        parts.append(f"{label} {op}{threshold}x eager: {'yes' if met else 'no'}")
    return "; ".join(parts)


# -------------------------------------------------------------------------------------------
# The two cases
# -------------------------------------------------------------------------------------------
def decode_cases(
    base: AutoencoderKL,
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    fused_backend: str,
    notes: list[str],
) -> Iterator[list[dict]]:
    """The rows of ``model.decode`` for each of ``args.sizes``, one size at a time."""
    cfg = base.config
    fused = copy.deepcopy(base).to(dtype).eval()
    models = {"eager": eager_copy(fused), "fused": fused}
    for size in args.sizes:
        latent = size // cfg.downsample_factor
        z = torch.randn(
            args.batch,
            cfg.z_channels,
            latent,
            latent,
            device=device,
            generator=torch.Generator(device).manual_seed(SEED),
        ).to(dtype)

        def make(source: str, backend: str, compiled: bool, z: Tensor = z) -> DecodeRunner:
            return DecodeRunner(models[source.removesuffix("-cl")], backend, compiled, z, source.endswith("-cl"))

        yield run_case("decode", size, args.batch, make, fused_backend, args, device, notes)


def train_cases(
    base: AutoencoderKL,
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    fused_backend: str,
    notes: list[str],
) -> Iterator[list[dict]]:
    """The rows of one training step on ``args.train_batch`` crops of ``args.train_size``."""
    cfg, size = base.config, args.train_size
    x = (
        torch.rand(
            args.train_batch,
            cfg.in_channels,
            size,
            size,
            device=device,
            generator=torch.Generator(device).manual_seed(SEED),
        )
        * 2
        - 1
    )
    torch.manual_seed(SEED)
    base_loss = VAELoss(cfg.loss, in_channels=cfg.in_channels).to(device)
    amp_dtype = None if dtype == torch.float32 else dtype

    def make(source: str, backend: str, compiled: bool) -> TrainRunner:
        eager, cl = source.startswith("eager"), source.endswith("-cl")
        return TrainRunner(base, base_loss, eager, backend, compiled, x, amp_dtype, channels_last=cl)

    yield run_case("train", size, args.train_batch, make, fused_backend, args, device, notes)


# -------------------------------------------------------------------------------------------
# Memory headline: the largest training batch and decode that fit in a budget
# -------------------------------------------------------------------------------------------
FIT_SIZES = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
FIT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)


def _variant(name: str) -> tuple[str, str, bool]:
    for vname, backend, source, compiled in VARIANTS:
        if vname == name:
            return backend, source, compiled
    raise ValueError(f"unknown variant {name!r}; valid: {', '.join(v[0] for v in VARIANTS)}")


def _probe_call(kind: str, variant: str, size: int, batch: int, base: AutoencoderKL, args, device, dtype):
    """A zero-argument callable running one decode / training step of ``variant``, built now."""
    backend, source, compiled = _variant(variant)
    cfg = base.config
    if kind == "decode":
        model = copy.deepcopy(base).to(dtype).eval()
        model = eager_copy(model) if source.startswith("eager") else model
        z = torch.randn(
            batch, cfg.z_channels, size // cfg.downsample_factor, size // cfg.downsample_factor, device=device
        ).to(dtype)
        return DecodeRunner(model, backend, compiled, z, source.endswith("-cl"))
    x = torch.rand(batch, cfg.in_channels, size, size, device=device) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = VAELoss(cfg.loss, in_channels=cfg.in_channels).to(device)
    amp_dtype = None if dtype == torch.float32 else dtype
    eager, cl = source.startswith("eager"), source.endswith("-cl")
    return TrainRunner(base, loss, eager, backend, compiled, x, amp_dtype, channels_last=cl)


def _footprint_mib(kind: str, variant: str, size: int, batch: int, base, args, device, dtype) -> float | None:
    """Peak memory of building ``variant`` and running one call: CUDA, in this process (allocator
    peak above what was live before); CPU, in a fresh process (peak resident set size). None
    when it runs out of memory."""
    if device.type == "cuda":
        runner = None
        try:
            sync(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            runner = _probe_call(kind, variant, size, batch, base, args, device, dtype)
            runner()
            sync(device)
            return (torch.cuda.max_memory_allocated(device) - before) / 2**20
        except torch.cuda.OutOfMemoryError:
            return None
        finally:
            del runner
            torch.cuda.empty_cache()
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--probe",
        f"{kind}:{variant}:{size}:{batch}",
        "--preset",
        args.preset,
        "--dtype",
        args.dtype,
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_RSS_KIB "):
            return int(line.split()[1]) / 1024
    return None  # killed (out of memory) or failed


def fit_rows(base: AutoencoderKL, args, device: torch.device, dtype: torch.dtype) -> tuple[list[dict], str]:
    """Per variant, the largest training batch (at ``--train-size``) and the largest square decode
    (batch 1) whose footprint stays within the budget; powers of two / ``FIT_SIZES`` steps."""
    if device.type == "cuda":
        budget = args.fit_budget_gib * 1024
        what = f"{args.fit_budget_gib:g} GiB of CUDA memory (allocator peak, weights and optimiser state included)"
    else:
        budget = _footprint_mib("decode", "eager", args.fit_ref_size, 1, base, args, device, dtype)
        if budget is None:
            raise RuntimeError(
                f"the reference eager decode at {args.fit_ref_size}² failed (out of memory?); "
                "choose a smaller --fit-ref-size"
            )
        what = (
            f"{budget:.0f} MiB resident, the peak RSS of the eager decode at {args.fit_ref_size}² (each trial "
            "a fresh process; RSS includes the interpreter and torch)"
        )
    rows = []
    for variant in args.fit_variants.split(","):
        row = {"variant": variant, "budget_mib": budget}
        for kind, steps, size_of, batch_of in (
            ("train", [b for b in FIT_BATCHES if b <= args.fit_max_batch], lambda v: args.train_size, lambda v: v),
            ("decode", [v for v in FIT_SIZES if v <= args.fit_max_size], lambda v: v, lambda v: 1),
        ):
            if kind not in args.fit_kinds.split(","):
                continue
            best = best_mib = None
            for v in steps:
                mib = _footprint_mib(kind, variant, size_of(v), batch_of(v), base, args, device, dtype)
                print(
                    f"  fit {kind} {variant} {batch_of(v)}x{size_of(v)}²: "
                    + ("out of memory" if mib is None else f"{mib:.0f} MiB"),
                    flush=True,
                )
                if mib is None or mib > budget:
                    break
                best, best_mib = v, mib
            row[f"{kind}_max"], row[f"{kind}_mib"] = best, best_mib
        rows.append(row)
    return rows, what


FIT_COLUMNS = [
    ("variant", "variant"),
    ("train_max", "largest training batch"),
    ("train_mib", "its peak MiB"),
    ("decode_max", "largest decode side"),
    ("decode_mib", "its peak MiB"),
]


def probe(spec: str, args, device: torch.device, dtype: torch.dtype) -> int:
    """``--probe KIND:VARIANT:SIZE:BATCH``: one call in this fresh process, then its peak RSS."""
    import resource

    kind, variant, size, batch = spec.split(":")
    base = build_model(args.preset, device)
    _probe_call(kind, variant, int(size), int(batch), base, args, device, dtype)()
    print(f"PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True)
    return 0


# -------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------
def render(
    rows: list[dict],
    notes: list[str],
    env: dict,
    args: argparse.Namespace,
    device: torch.device,
    fused_backend: str,
    train_note: str,
) -> str:
    md = [
        f"# Model benchmark: {args.preset} decode and training step — {env['device']}, {env['date']}",
        "",
        (
            f"torch {env['torch']}, triton {env['triton']}, threads {env['threads']}, {args.dtype}; fused backend "
            f"{fused_backend}. Random weights, the same in every variant. Median of {args.rounds} alternating "
            f"rounds of median-of-{args.reps} after {args.warmup} warm-up calls. x eager / x torch-backend / "
            "x compile = that variant's ms / this row's ms (higher is faster); mem x eager = MiB / eager MiB. "
            "eager = the same model in plain PyTorch (reference math, autograd backward); torch-backend = the "
            "fused model's custom ops on vivat's torch backend; compile = torch.compile of eager."
        ),
        "",
        "Targets (fused vs eager): "
        + (
            "training step >= 1.3x, peak training memory <= 0.8x, decode >= 1.5x."
            if device.type == "cuda"
            else "decode >= 1.3x, training step >= 1.0x (CPU, tiny preset)."
        ),
        "",
    ]
    md += [
        f"- {r['case']} {r['shape']}: {r['x_eager']:.2f}x eager"
        + (f", memory {r['mem_x_eager']:.2f}x" if r["mem_x_eager"] is not None else "")
        + f" — {r['target']}"
        for r in rows
        if r["variant"] == "fused"
    ]
    for case, title, what in (
        ("decode", "Decode", "peak MiB = above weights and z (CUDA only)."),
        ("train", "Training step", f"{train_note} peak MiB = the step's whole footprint (CUDA only)."),
    ):
        case_rows = [r for r in rows if r["case"] == case]
        if case_rows:
            md += ["", f"## {title}", "", what, "", markdown_table(case_rows, COLUMNS)]
    if notes:
        md += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--preset",
        default=None,
        choices=preset_names(),
        help="model preset (default: cpu vivat-tiny; cuda vivat-f8c16)",
    )
    ap.add_argument("--sizes", default=None, help="decode image sides, comma list (default: cpu 256,512; cuda +1024)")
    ap.add_argument("--batch", type=int, default=1, help="decode batch (default: 1)")
    ap.add_argument("--train-size", type=int, default=256, help="training crop side (default: 256)")
    ap.add_argument("--train-batch", type=int, default=None, help="training batch (default: cpu 2; cuda 8)")
    ap.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16"),
        help="decode weights / training autocast dtype (default: cpu float32; cuda bfloat16)",
    )
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the torch.compile variants (default: on; slow to warm up on CPU)",
    )
    ap.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run eager and fused with weights and activations in channels_last (default: on)",
    )
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per round (default: cpu 1; cuda 3)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per round (default: cpu 3; cuda 10)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of all variants (median of rounds)")
    ap.add_argument(
        "--only", default=",".join(CASES), help="comma list of decode, train, run in that order (default: decode,train)"
    )
    ap.add_argument(
        "--fit",
        action="store_true",
        help="memory headline: per variant the largest training batch and decode that fit the budget",
    )
    ap.add_argument("--fit-budget-gib", type=float, default=16.0, help="CUDA budget for --fit (default: 16 GiB)")
    ap.add_argument(
        "--fit-ref-size",
        type=int,
        default=1024,
        help="CPU: the budget is the peak RSS of the eager decode at this side (default: 1024; the eager "
        "tiny model's 2048² decode needs more than 24 GiB, its mid-block attention over 65536 latent tokens)",
    )
    ap.add_argument("--fit-variants", default="eager,fused", help="comma list of variants for --fit")
    ap.add_argument("--fit-kinds", default="train,decode", help="what --fit searches: train, decode or both")
    ap.add_argument("--fit-max-batch", type=int, default=64, help="largest training batch tried by --fit")
    ap.add_argument("--fit-max-size", type=int, default=8192, help="largest decode side tried by --fit")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="print each variant's top ops (torch.profiler, one call) after its first call",
    )
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "local", help="folder for the JSON + markdown results")
    ap.add_argument("--tag", default="", help="added to the results' file names (model-TAG-DATE-DEVICE.md)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.preset = args.preset or ("vivat-f8c16" if cuda else "vivat-tiny")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.sizes = [int(s) for s in (args.sizes or ("256,512,1024" if cuda else "256,512")).split(",")]
    args.train_batch = args.train_batch or (8 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.reps = args.reps or (10 if cuda else 3)
    cases = [c for c in args.only.split(",") if c]
    if args.probe:
        cases = []
    if set(cases) - set(CASES):
        ap.error(f"--only takes {', '.join(CASES)}, got {args.only!r}")
    factor = VAEConfig.from_preset(args.preset).downsample_factor
    if any(s % factor for s in [*args.sizes, args.train_size]):
        ap.error(f"image sizes must be multiples of {factor}")
    if args.compile:
        # One graph per (variant, size): keep dynamo from falling back to eager after a few shapes.
        torch._dynamo.config.recompile_limit = 64

    dtype = getattr(torch, args.dtype)
    if args.probe:
        return probe(args.probe, args, device, dtype)
    base = build_model(args.preset, device)
    fused_backend = selected_backend(torch.empty(1, device=device, dtype=dtype))[0]
    if fused_backend == "torch":
        print("warning: no fused kernel can run here; 'fused' runs the torch backend", file=sys.stderr)
    env = environment(device)
    n_params = sum(p.numel() for p in base.parameters())
    train_note = (
        f"{args.train_batch} crops of {args.train_size}², float32 weights"
        + (f" under {args.dtype} autocast" if args.dtype != "float32" else "")
        + "; L1 + KL + adversarial (adaptive weight) + discriminator step + EMA; perceptual term off "
        "(perceptual_weight=0, LPIPS not loaded)."
    )
    print(f"{args.preset}: {n_params / 1e6:.2f} M parameters, {args.dtype}, fused backend {fused_backend}", flush=True)

    rows: list[dict] = []
    notes: list[str] = []
    fit: dict = {}
    markdown = ""

    def report() -> str:
        markdown = render(rows, notes, env, args, device, fused_backend, train_note)
        if fit:
            markdown += (
                f"\n\n## Memory headline\n\nBudget: {fit['what']}. Training at {args.train_size}² "
                f"(batches {', '.join(map(str, FIT_BATCHES))}), decode batch 1 (sides "
                f"{', '.join(map(str, FIT_SIZES))}); each the largest step that fits.\n\n"
                + markdown_table(fit["rows"], FIT_COLUMNS)
            )
        payload = {
            "fit": fit,
            "env": env,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "parameters": n_params,
            "fused_backend": fused_backend,
            "train": train_note,
            "targets": {f"{d}/{c}": t for (d, c), t in TARGETS.items() if d == device.type},
            "notes": notes,
            "rows": rows,
        }
        stem = "model" + (f"-{args.tag}" if args.tag else "")
        jpath, mpath = write_results(args.out, stem, device, payload, markdown)
        print(f"wrote {jpath} and {mpath}", flush=True)
        return markdown

    cases_of = {"decode": decode_cases, "train": train_cases}
    for case in cases:
        for case_rows in cases_of[case](base, args, device, dtype, fused_backend, notes):
            rows += case_rows
            markdown = report()
    if args.fit:
        fit["rows"], fit["what"] = fit_rows(base, args, device, dtype)
        markdown = report()
    print()
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
