"""Benchmark the reflect-padded conv2d: eager pad + conv, torch.compile, vivat designs, zero padding.

Variants, each forward (no grad) and backward (``autograd.grad`` of a retained graph, so only
the backward runs in the timed region):

* ``eager``: ``F.conv2d(F.pad(x, pad4, mode="reflect"), w, b, stride)`` -- what a model does.
* ``compile``: ``torch.compile`` of the same function (inductor, default mode).
* ``vivat:<design>``: :func:`vivat_kernels.reflect_conv2d` with the design forced. On CPU the
  backend is ``cpp``: ``slab`` (oneDNN zero-padded conv + oneDNN convs over the reflected border
  slabs) and ``border`` (oneDNN + C++ border terms); on CUDA ``border`` (cuDNN + Triton border
  kernels), ``implicit_gemm`` (Triton) and ``slab`` (cuDNN only). ``vivat:auto`` is what the op
  does by default: the cached first-call timing of those designs and the plain ``eager`` path
  (F.pad + library conv); the design it picked for forward and backward is in "auto pick".
* ``zeropad``: ``F.conv2d(x, w, b, stride, padding=(top, left))``: the library conv without the
  reflection, the lower bound (for the asymmetric downsample its output is one row/column short
  for even sizes; it is still the cost floor).

Memory, "extra" = above what the inputs, the output and the gradients themselves need:

* CUDA: ``torch.cuda.max_memory_allocated`` during the call, minus memory live before it and
  minus the returned tensors. ``saved`` = memory still held after a forward with grad (tensors
  kept for backward) minus the output -- eager keeps the full-size padded copy of x there.
* CPU: the same quantities from ``torch.profiler`` allocation records (``profile_memory``):
  each aten op's own allocations and the free events, summed in start-time order, peak of the
  running sum. Scratch that a single library call allocates and frees inside itself (oneDNN
  workspaces) is not seen; every tensor any op returns is.

Ratios: ``x_eager`` = eager ms / variant ms (> 1 is faster), ``x_compile`` likewise,
``vs_zeropad`` = variant ms / zero-padded conv ms (1.0 = free reflection). Run
``python bench/bench_reflect_conv.py --help``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, environment, markdown_table, time_ms, write_results
from vivat_kernels import reflect_conv2d, use_backend
from vivat_kernels.ops import reflect_conv as rc

# name: (N, C_in, H, W, C_out, k, stride, pad4): VAE decoder at 256^2 / 512^2 output, the encoder
# downsample, and the RGB convs.
SHAPES = {
    "dec_128x512": (1, 128, 512, 512, 128, 3, 1, (1, 1, 1, 1)),
    "dec_256x256": (1, 256, 256, 256, 256, 3, 1, (1, 1, 1, 1)),
    "mid_512x64": (1, 512, 64, 64, 512, 3, 1, (1, 1, 1, 1)),
    "down_128x512": (1, 128, 512, 512, 128, 3, 2, (0, 1, 0, 1)),
    "conv_in_3x512": (1, 3, 512, 512, 128, 3, 1, (1, 1, 1, 1)),
    "conv_out_128x512": (1, 128, 512, 512, 3, 3, 1, (1, 1, 1, 1)),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def scaled(shape, div: int):
    """Spatial size divided by ``div`` (at least 32) for the CPU runs."""
    n, c, h, w, co, k, s, pad4 = shape
    return (n, c, max(32, h // div), max(32, w // div), co, k, s, pad4)


def gpu_time_ms(fn, device, *, warmup: int, reps: int) -> float:
    """Median GPU time of ``fn()`` in ms: CUDA events around each call, calls queued back to back
    (no host sync between them), so host-side launch overhead is hidden whenever the GPU is the
    bottleneck and shows when it is not (as in a training loop)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def timed_ms(fn, device, *, warmup: int, reps: int) -> float:
    if device.type == "cuda":
        return gpu_time_ms(fn, device, warmup=warmup, reps=reps)
    return time_ms(fn, device, warmup=warmup, reps=reps)


def eager(x, w, b, s, pad4):
    return F.conv2d(F.pad(x, pad4, mode="reflect"), w, b, s)


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------
def _nbytes(out) -> int:
    ts = out if isinstance(out, (tuple, list)) else (out,)
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def _cuda_extra(fn, device):
    """(peak extra, retained extra) in bytes of one call, minus the returned tensors."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    kept = torch.cuda.memory_allocated(device) - before
    return peak - _nbytes(out), kept - _nbytes(out), out


def _cpu_extra(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = []
    for e in prof.events():
        delta = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if delta:
            events.append((e.time_range.start, delta))
    cur = peak = 0
    for _, delta in sorted(events):
        cur += delta
        peak = max(peak, cur)
    return peak - _nbytes(out), cur - _nbytes(out), out


def memory_mb(fwd, device):
    """Peak extra MiB of the forward (no grad), of the forward with grad and what it keeps, and of
    the backward."""
    measure = _cpu_extra if device.type == "cpu" else (lambda f: _cuda_extra(f, device))
    with torch.no_grad():
        peak_nograd, _, out = measure(fwd)
    del out
    peak_fwd, saved, y = measure(fwd)
    dy = torch.ones_like(y)
    inputs = [t for t in fwd.inputs if t.requires_grad]
    peak_bwd, _, grads = measure(lambda y=y, dy=dy: torch.autograd.grad(y, inputs, dy))
    del grads, y
    # Clamped at 0: a backward that frees what its forward saved (eager frees the padded copy) is
    # not credited for it.
    mb = 2.0**20
    return {
        "fwd_extra_mb": max(peak_nograd, 0) / mb,
        "fwd_grad_extra_mb": max(peak_fwd, 0) / mb,
        "saved_extra_mb": max(saved, 0) / mb,
        "bwd_extra_mb": max(peak_bwd, 0) / mb,
    }


# ------------------------------------------------------------------------------------------------
# one shape
# ------------------------------------------------------------------------------------------------
class Call:
    """A forward closure over fixed inputs (``inputs`` lists the tensors that get gradients)."""

    def __init__(self, fn, inputs):
        self.fn, self.inputs = fn, inputs

    def __call__(self):
        return self.fn()


def bench_shape(name, shape, dtype, channels_last, device, args, compiled_cache):
    n, c, h, w, co, k, s, pad4 = shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(True)
    wt = (torch.randn(co, c, k, k, device=device, dtype=dtype) / (c * k * k) ** 0.5).requires_grad_(True)
    b = torch.randn(co, device=device, dtype=dtype).requires_grad_(True)
    inputs = (x, wt, b)
    left, _, top, _ = pad4

    variants = {"eager": lambda: eager(x, wt, b, s, pad4)}
    if args.compile:
        key = (s, pad4)
        if key not in compiled_cache:
            compiled_cache[key] = torch.compile(eager, dynamic=False)
        fn = compiled_cache[key]
        variants["compile"] = lambda: fn(x, wt, b, s, pad4)
    backend = "triton" if device.type == "cuda" else "cpp"
    designs = ["border", "implicit_gemm", "slab", "auto"] if device.type == "cuda" else ["slab", "border", "auto"]
    for design in designs:

        def run(design=design):
            with use_backend(backend), rc.use_design(design):
                return reflect_conv2d(x, wt, b, s, pad4)

        variants[f"vivat:{design}"] = run
    variants["zeropad"] = lambda: F.conv2d(x, wt, b, s, (top, left))

    rows = []
    base = {
        "shape": name,
        "size": f"{n}x{c}x{h}x{w}->{co} k{k} s{s} pad{pad4}",
        "dtype": str(dtype).replace("torch.", ""),
        "layout": "cl" if channels_last else "nchw",
    }
    # Alternating rounds: every variant once per round, the median of the rounds reported, so a
    # change of machine load hits every variant alike (variants that run the same calls, as
    # vivat:auto and eager on the cpp backend, then read ~1.0x instead of the load's drift).
    times: dict[str, dict[str, list[float]]] = {v: {"fwd": [], "bwd": []} for v in variants}
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        for vname, fwd in variants.items():
            with torch.no_grad():
                times[vname]["fwd"].append(timed_ms(fwd, device, warmup=args.warmup, reps=args.reps))
            y = fwd()
            dy = torch.randn_like(y)
            times[vname]["bwd"].append(
                timed_ms(
                    lambda y=y, dy=dy: torch.autograd.grad(y, inputs, dy, retain_graph=True),
                    device,
                    warmup=args.warmup,
                    reps=args.reps,
                )
            )
            del y
    for vname, fwd in variants.items():
        mem = memory_mb(Call(fwd, inputs), device)
        fwd_ms, bwd_ms = (statistics.median(times[vname][phase]) for phase in ("fwd", "bwd"))
        rows.append(dict(base, variant=vname, fwd_ms=fwd_ms, bwd_ms=bwd_ms, **mem, wall_s=time.perf_counter() - t0))
    if args.profile and device.type == "cuda":
        profile_designs(x, wt, b, s, pad4, inputs)
    by = {r["variant"]: r for r in rows}
    for r in rows:
        for phase in ("fwd", "bwd"):
            r[f"{phase}_x_eager"] = by["eager"][f"{phase}_ms"] / r[f"{phase}_ms"]
            r[f"{phase}_x_compile"] = by["compile"][f"{phase}_ms"] / r[f"{phase}_ms"] if "compile" in by else None
            r[f"{phase}_vs_zeropad"] = r[f"{phase}_ms"] / by["zeropad"][f"{phase}_ms"]
    layout = "cl" if channels_last else "nchw"
    picks = {
        key[0]: d
        for key, d in rc.design_decisions().items()
        if key[1] == backend and key[3:10] == (n, c, h, w, co, k, k) and key[10:] == (s, pad4, str(dtype), layout)
    }
    if not picks and backend == "cpp" and rc.get_design() == "auto":
        # the cpp backend's auto is a rule, not a timing: F.pad + F.conv2d outside the custom op
        by["vivat:auto"]["auto_pick"] = "plain F.pad + conv (cpp rule)"
    else:
        by["vivat:auto"]["auto_pick"] = f"fwd={picks.get('fwd')}, bwd={picks.get('bwd')}"
    return rows


def profile_designs(x, wt, b, s, pad4, inputs) -> None:
    """Per-kernel CUDA time of 3 forward + backward calls of each design."""
    from torch.profiler import ProfilerActivity, profile

    for design in ("border", "implicit_gemm"):
        with use_backend("triton"), rc.use_design(design):
            y = reflect_conv2d(x, wt, b, s, pad4)
            torch.autograd.grad(y, inputs, torch.ones_like(y))
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    y = reflect_conv2d(x, wt, b, s, pad4)
                    torch.autograd.grad(y, inputs, torch.ones_like(y))
                torch.cuda.synchronize()
        print(f"-- {design}: CUDA kernels over 3 forward + backward calls")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=60))


COLUMNS = [
    ("shape", "shape"),
    ("dtype", "dtype"),
    ("layout", "layout"),
    ("variant", "variant"),
    ("fwd_ms", "fwd ms"),
    ("bwd_ms", "bwd ms"),
    ("fwd_x_eager", "fwd x eager"),
    ("bwd_x_eager", "bwd x eager"),
    ("fwd_x_compile", "fwd x compile"),
    ("bwd_x_compile", "bwd x compile"),
    ("fwd_vs_zeropad", "fwd / zeropad"),
    ("bwd_vs_zeropad", "bwd / zeropad"),
    ("fwd_extra_mb", "fwd extra MiB"),
    ("saved_extra_mb", "saved extra MiB"),
    ("bwd_extra_mb", "bwd extra MiB"),
    ("auto_pick", "auto pick"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--dtypes", default=None, help="comma list (default: cuda bfloat16, cpu float32)")
    ap.add_argument("--layouts", default=None, help="comma list of nchw, cl (default: cuda cl, cpu nchw)")
    ap.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)} (default: all)")
    ap.add_argument(
        "--cpu-div",
        type=int,
        default=None,
        help="divide H, W by this on CPU (default 2; 4 with --quick); 1 = the full VAE sizes",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of all variants (median of rounds; default 3)"
    )
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile variant")
    ap.add_argument("--quick", action="store_true", help="fewer reps; on CPU H, W / 4")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop starting new shapes after this many seconds, the rest listed as skipped "
        "(default: 120 on CUDA, to fit the GPU check; none on CPU)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (torch.set_num_threads); 1 gives stable numbers on a shared machine",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="CUDA: print the per-kernel GPU times of each vivat design (forward + backward) per shape",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "local", help="folder for the JSON + markdown results")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:
        # Two graphs (grad / no grad) per shape: raise dynamo's limit so no shape falls back to eager.
        torch._dynamo.config.recompile_limit = 64
    budget_s = args.budget_s if args.budget_s is not None else (120.0 if cuda else float("inf"))
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else (1 if args.quick else 2))
    args.reps = args.reps if args.reps is not None else (20 if cuda else (3 if args.quick else 5))
    dtypes = [DTYPES[d] for d in (args.dtypes or ("bfloat16" if cuda else "float32")).split(",")]
    layouts = (args.layouts or ("cl" if cuda else "nchw")).split(",")
    names = args.shapes.split(",") if args.shapes else list(SHAPES)
    div = 1 if cuda else (args.cpu_div or (4 if args.quick else 2))

    env = environment(device)
    env.update(cpu_div=div, warmup=args.warmup, reps=args.reps, rounds=args.rounds)
    print(
        f"# reflect conv benchmark on {env['device']} (torch {env['torch']}, triton {env['triton']})"
        + (f"; CPU shapes have H, W / {div}" if div > 1 else "")
    )
    start = time.perf_counter()
    rows, skipped, compiled_cache = [], [], {}
    for name, dtype, layout in [(nm, d, lo) for nm in names for d in dtypes for lo in layouts]:
        if time.perf_counter() - start > budget_s:
            skipped.append(f"{name}/{dtype}/{layout}")
            continue
        shape = SHAPES[name] if div == 1 else scaled(SHAPES[name], div)
        new = bench_shape(name, shape, dtype, layout == "cl", device, args, compiled_cache)
        for r in new:
            print(
                f"{r['shape']:18s} {r['dtype']:8s} {r['layout']:4s} {r['variant']:19s} fwd {r['fwd_ms']:9.3f} ms"
                f" ({r['fwd_x_eager']:.2f}x eager, {r['fwd_vs_zeropad']:.2f} of zeropad)  bwd {r['bwd_ms']:9.3f} ms"
                f" ({r['bwd_x_eager']:.2f}x eager, {r['bwd_vs_zeropad']:.2f} of zeropad)  extra MiB fwd"
                f" {r['fwd_extra_mb']:.1f} saved {r['saved_extra_mb']:.1f} bwd {r['bwd_extra_mb']:.1f}"
                + (f"  [{r['auto_pick']}]" if r.get("auto_pick") else ""),
                flush=True,
            )
        rows += new
        # Written after every shape, so a run cut short by a timeout still leaves its results.
        write_results(
            args.out,
            "reflect_conv",
            device,
            {"env": env, "rows": rows, "partial": True},
            f"Reflect conv2d on {env['device']} (partial: the run is still going or was cut short)\n\n"
            + markdown_table(rows, COLUMNS),
        )
    if skipped:
        print(f"# time budget ({budget_s:.0f} s) reached; skipped: {', '.join(skipped)}")
    autos = [r for r in rows if r["variant"] == "vivat:auto"]
    target = ["", "Target: vivat:auto >= 1.0x eager (forward and backward) at every shape:", ""] + [
        f"- {r['shape']} {r['dtype']} {r['layout']}: fwd {r['fwd_x_eager']:.2f}x, bwd {r['bwd_x_eager']:.2f}x "
        f"({r['auto_pick']}) -- {'yes' if min(r['fwd_x_eager'], r['bwd_x_eager']) >= 1.0 else 'no'}"
        for r in autos
    ]
    markdown = (
        f"Reflect conv2d on {env['device']}, torch {env['torch']}"
        + (f", CPU shapes with H, W / {div}" if div > 1 else "")
        + "\n"
        + "\n".join(target)
        + "\n\n"
        + markdown_table(rows, COLUMNS)
    )
    print()
    print(markdown)
    payload = {
        "env": env,
        "rows": rows,
        "skipped": skipped,
        "decisions": {"|".join(map(str, k)): v for k, v in rc.design_decisions().items()},
    }
    jpath, mpath = write_results(args.out, "reflect_conv", device, payload, markdown)
    print(f"\nwrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
