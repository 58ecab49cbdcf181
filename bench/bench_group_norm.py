"""Benchmark the fused GroupNorm family against eager PyTorch and torch.compile.

Two workloads, each forward (no grad) and forward+backward:

* ``scn``: spatially conditional norm + SiLU as a decoder uses it. Eager and compiled run the
  diffusers / MoVQ formulation (nearest-upsample zq to full resolution, two full-resolution 1x1
  convs, GroupNorm, mul, add, SiLU); vivat runs ``vivat_kernels.nn.SpatialNorm(act="silu")``
  (1x1 convs at latent resolution, one fused kernel). zq has 16 channels at 1/8 resolution (f8).
* ``gn_silu``: ``F.silu(F.group_norm(x, 32, w, b))`` vs ``fused_group_norm(..., act="silu")``.

Effective bandwidth uses the floor of the byte model in docs/KERNELS.md: forward reads x and writes y
(2 bytes-per-element x s), forward+backward adds reading x and dy and writing dx (5 s in all).
"design GB/s" counts what the split design moves (3 s forward, 8 s forward+backward); the
per-group design moves the floor when the group stays on chip or in L2. On CUDA the times are
kernel times (an L2 flush before each repetition, repetitions queued back to back), with the
CUDA-graph replay and host-inclusive times in a second table. ``--host`` prints the per-call host
cost at a tiny shape instead (CPU). ``pytest bench --benchmark-only`` runs the same cases through
pytest-benchmark. Run ``python bench/bench_group_norm.py --help``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    RESULTS,
    copy_bandwidth_gbps,
    environment,
    gbps,
    gpu_times,
    markdown_table,
    peak_extra_mb,
    time_ms,
    write_results,
)
from vivat_kernels import fused_group_norm  # noqa: E402
from vivat_kernels.nn import SpatialNorm  # noqa: E402
from vivat_kernels.ops.group_norm import last_selection, selected_backend  # noqa: E402

CPU_SHAPES = [(1, 128, 256, 256), (1, 256, 128, 128), (4, 512, 64, 64)]
GPU_EXTRA = [(1, 128, 1024, 1024), (1, 512, 256, 256)]
Z_CHANNELS = 16
GROUPS = 32


class EagerSCN(nn.Module):
    """diffusers' SpatialNorm followed by SiLU: everything at full resolution."""

    def __init__(self, f_channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(GROUPS, f_channels, eps=1e-6)
        self.conv_y = nn.Conv2d(zq_channels, f_channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, f_channels, 1)

    def forward(self, f, zq):
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return F.silu(self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq))


class EagerGNSiLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, channels, eps=1e-6)

    def forward(self, x):
        return F.silu(self.norm(x))


class FusedGNSiLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, channels, eps=1e-6)

    def forward(self, x):
        return fused_group_norm(x, GROUPS, self.norm.weight, self.norm.bias, eps=1e-6, act="silu")


def build(workload: str, shape, dtype, device, channels_last: bool):
    n, c, h, w = shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
    if workload == "scn":
        eager = EagerSCN(c, Z_CHANNELS)
        fused = SpatialNorm(c, Z_CHANNELS, num_groups=GROUPS, act="silu")
        zq = torch.randn(n, Z_CHANNELS, max(h // 8, 1), max(w // 8, 1), device=device, dtype=dtype)
        zq = zq.contiguous(memory_format=fmt)
        inputs = (x, zq)
    else:
        eager = EagerGNSiLU(c)
        fused = FusedGNSiLU(c)
        inputs = (x,)
    for m in (eager, fused):
        m.to(device=device, dtype=dtype)
        for p in m.parameters():
            with torch.no_grad():
                p.normal_(0.0, 0.5)  # random, never zeros
    fused.load_state_dict(eager.state_dict())
    return eager, fused, inputs


def run_case(workload, shape, dtype, device, channels_last, args, copy_gbps):
    eager, fused, inputs = build(workload, shape, dtype, device, channels_last)
    torch._dynamo.reset()
    compiled = torch.compile(eager, fullgraph=True)
    numel = torch.Size(shape).numel()
    s = torch.empty((), dtype=dtype).element_size()
    paths = {"eager": eager, "compile": compiled, "vivat": fused}

    # correctness check of the fused path against eager before timing it
    with torch.no_grad():
        ref = eager(*inputs).float()
        got = fused(*inputs).float()
    err = ((got - ref).norm() / ref.norm()).item()

    row = {
        "workload": workload,
        "shape": "x".join(map(str, shape)),
        "dtype": str(dtype).replace("torch.", ""),
        "layout": "cl" if channels_last else "nchw",
        "backend": selected_backend(inputs[0])[0],
        "rel_err": err,
    }
    grad_inputs = [t.detach().requires_grad_(True) for t in inputs]
    dy = torch.randn_like(inputs[0])

    def fwd(m):
        def f():
            with torch.no_grad():
                return m(*inputs)

        return f

    def fwd_bwd(m):
        def f():
            y = m(*grad_inputs)
            y.backward(dy)
            return y

        return f

    for name, m in paths.items():
        for kind, fn in (("fwd", fwd(m)), ("fb", fwd_bwd(m))):
            if device.type == "cuda":
                # kernel time (L2 flushed, queued reps), CUDA-graph replay, host-inclusive eager calls
                t = gpu_times(fn, device, warmup=args.warmup, reps=max(args.reps, 20))
                row[f"{kind}_ms_{name}"] = t["kernel_ms"]
                row[f"{kind}_graph_ms_{name}"] = t["graph_ms"]
                row[f"{kind}_host_ms_{name}"] = t["host_ms"]
            else:
                row[f"{kind}_ms_{name}"] = time_ms(fn, device, warmup=args.warmup, reps=args.reps)
        if name == "vivat":
            row["backend"] = last_selection()[0] or row["backend"]
        if device.type == "cuda":
            row[f"fb_peak_mb_{name}"] = peak_extra_mb(fwd_bwd(m), device)
    for kind in ("fwd", "fb"):
        row[f"{kind}_x_eager"] = row[f"{kind}_ms_eager"] / row[f"{kind}_ms_vivat"]
        row[f"{kind}_x_compile"] = row[f"{kind}_ms_compile"] / row[f"{kind}_ms_vivat"]
        if device.type == "cuda":
            row[f"{kind}_host_x_eager"] = row[f"{kind}_host_ms_eager"] / row[f"{kind}_host_ms_vivat"]
    # GB/s on both byte models (KERNELS.md): the floor (2s forward, 5s forward+backward) and the
    # bytes the split design moves (x read twice forward: 3s; backward reads x and dy twice: 8s)
    row["fwd_eff_gbps"] = gbps(2 * s * numel, row["fwd_ms_vivat"])
    row["fwd_model_gbps"] = gbps(3 * s * numel, row["fwd_ms_vivat"])
    row["fb_eff_gbps"] = gbps(5 * s * numel, row["fb_ms_vivat"])
    row["fb_model_gbps"] = gbps(8 * s * numel, row["fb_ms_vivat"])
    if copy_gbps:
        row["fwd_eff_of_copy"] = row["fwd_eff_gbps"] / copy_gbps
    return row


COLUMNS = [
    ("workload", "op"),
    ("shape", "shape"),
    ("dtype", "dtype"),
    ("layout", "layout"),
    ("backend", "backend"),
    ("fwd_ms_eager", "fwd eager ms"),
    ("fwd_ms_compile", "fwd compile ms"),
    ("fwd_ms_vivat", "fwd vivat ms"),
    ("fwd_x_eager", "fwd ×eager"),
    ("fwd_x_compile", "fwd ×compile"),
    ("fb_ms_eager", "f+b eager ms"),
    ("fb_ms_compile", "f+b compile ms"),
    ("fb_ms_vivat", "f+b vivat ms"),
    ("fb_x_eager", "f+b ×eager"),
    ("fb_x_compile", "f+b ×compile"),
    ("fwd_eff_gbps", "fwd eff GB/s"),
    ("fwd_eff_of_copy", "fwd eff / copy"),
    ("fb_eff_gbps", "f+b eff GB/s"),
    ("rel_err", "rel err"),
]
# CUDA only: CUDA-graph replay (kernel-only) and host-inclusive back-to-back times
GPU_COLUMNS = [
    ("workload", "op"),
    ("shape", "shape"),
    ("layout", "layout"),
    ("fwd_graph_ms_eager", "fwd graph eager ms"),
    ("fwd_graph_ms_vivat", "fwd graph vivat ms"),
    ("fb_graph_ms_eager", "f+b graph eager ms"),
    ("fb_graph_ms_vivat", "f+b graph vivat ms"),
    ("fwd_host_ms_eager", "fwd host eager ms"),
    ("fwd_host_ms_vivat", "fwd host vivat ms"),
    ("fwd_host_x_eager", "fwd host ×eager"),
    ("fb_host_x_eager", "f+b host ×eager"),
    ("fwd_model_gbps", "fwd design GB/s (3s)"),
    ("fb_model_gbps", "f+b design GB/s (8s)"),
]


# ---------------------------------------------------------------------------------------------
# host cost per call (CPU): what a call costs before any kernel work, at a tiny shape
# ---------------------------------------------------------------------------------------------
HOST_SHAPE = (1, 32, 8, 8)


def _host_inputs(grad: bool):
    gen = torch.Generator().manual_seed(0)
    c = HOST_SHAPE[1]
    x = torch.randn(HOST_SHAPE, generator=gen)
    wt = torch.randn(c, generator=gen)
    bs = torch.randn(c, generator=gen)
    if grad:
        for t in (x, wt, bs):
            t.requires_grad_(True)
    return x, wt, bs, torch.randn(HOST_SHAPE, generator=gen)


def _host_calls(kind: str):
    """{"fwd": callable, "fb": callable} for one variant at HOST_SHAPE (GN + SiLU, 32 groups)."""
    import vivat_kernels as vk

    x0, w0, b0, _ = _host_inputs(False)
    x1, w1, b1, dy = _host_inputs(True)
    leaves = (x1, w1, b1)
    if kind == "eager":

        def fwd():
            return F.silu(F.group_norm(x0, 32, w0, b0, 1e-5))

        def fb():
            y = F.silu(F.group_norm(x1, 32, w1, b1, 1e-5))
            return torch.autograd.grad(y, leaves, dy)
    else:
        backend = "cpp" if kind == "cpp" else "triton"

        def fwd():
            with vk.use_backend(backend):
                return vk.fused_group_norm(x0, 32, w0, b0, eps=1e-5, act="silu")

        def fb():
            with vk.use_backend(backend):
                y = vk.fused_group_norm(x1, 32, w1, b1, eps=1e-5, act="silu")
            return torch.autograd.grad(y, leaves, dy)

    return {"fwd": fwd, "fb": fb}


def _per_call_us(fn, calls: int) -> float:
    import time

    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def host_worker(kind: str, rounds: int, calls: int) -> dict:
    """Per-call host µs of one variant (run in its own process for the stubbed Triton launches).

    triton-interp: TRITON_INTERPRET=1 with the interpreter's launch stubbed (returns at once);
    triton-compiled: a stand-in cuda:90 driver, every launch a warm-up -- Triton's binder, cache
    lookup and argument handling run, only the final driver call is left out."""
    import json

    torch.set_num_threads(1)
    if kind == "triton-interp":
        from triton.runtime.interpreter import InterpretedFunction

        InterpretedFunction.run = lambda self, *a, grid, warmup, **k: None
    elif kind == "triton-compiled":
        import importlib.util

        path = Path(__file__).resolve().parents[1] / "vivat_kernels" / "triton" / "_standin.py"
        spec = importlib.util.spec_from_file_location("_vivat_standin", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.install(90)
        from vivat_kernels import _backend

        _backend.triton_usable = lambda device: (True, "stand-in cuda:90 driver (launches compile only)")
    fns = _host_calls("triton" if kind.startswith("triton") else kind)
    out = {}
    for name, fn in fns.items():
        for _ in range(20):
            fn()  # plans, compiles, caches
        out[name] = min(_per_call_us(fn, calls) for _ in range(rounds))
    print(json.dumps(out))
    return out


def host_cost(out_dir: Path | None, rounds: int = 7, calls: int = 300) -> str:
    """Table of per-call host time at HOST_SHAPE: eager, cpp, Triton with the launch stubbed.
    Each variant runs in its own process, one thread; variants alternate round by round."""
    import json
    import os
    import subprocess

    kinds = ["eager", "cpp", "triton-interp", "triton-compiled"]
    results = {k: {"fwd": [], "fb": []} for k in kinds}
    for _ in range(2):  # alternate the variants twice; keep each one's best
        for kind in kinds:
            env = dict(os.environ)
            env.pop("TRITON_INTERPRET", None)
            if kind == "triton-interp":
                env["TRITON_INTERPRET"] = "1"
            proc = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--host-worker",
                    kind,
                    "--host-rounds",
                    str(rounds),
                    "--host-calls",
                    str(calls),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"host worker {kind} failed: {proc.stderr[-2000:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            for k in ("fwd", "fb"):
                results[kind][k].append(got[k])
    rows = []
    eager = {k: min(results["eager"][k]) for k in ("fwd", "fb")}
    for kind in kinds:
        fwd, fb = min(results[kind]["fwd"]), min(results[kind]["fb"])
        rows.append(
            {"variant": kind, "fwd_us": fwd, "fb_us": fb, "fwd_x": fwd / eager["fwd"], "fb_x": fb / eager["fb"]}
        )
    env = environment(torch.device("cpu"))
    md = "\n".join(
        [
            f"# GroupNorm + SiLU host cost per call — {env['device']}, {env['date']}",
            "",
            (
                f"torch {env['torch']}, triton {env['triton']}; shape {'x'.join(map(str, HOST_SHAPE))} fp32, 32 groups, "
                "one thread, each variant in its own process, best of alternating rounds. Triton: the launch is "
                "stubbed (interp: the interpreter's run returns at once; compiled: a stand-in cuda:90 driver, "
                "the launcher runs as a warm-up without the final driver call). Target: fused within 2x of eager."
            ),
            "",
            markdown_table(
                rows,
                [
                    ("variant", "variant"),
                    ("fwd_us", "fwd µs"),
                    ("fwd_x", "fwd / eager"),
                    ("fb_us", "fwd+bwd µs"),
                    ("fb_x", "fwd+bwd / eager"),
                ],
            ),
        ]
    )
    if out_dir is not None:
        write_results(out_dir, "group_norm_host", torch.device("cpu"), {"env": env, "rows": rows}, md)
    return md


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--dtypes", default=None, help="comma list (default: cpu float32,bfloat16; cuda bfloat16,float32)")
    ap.add_argument("--layouts", default="nchw", help="comma list of nchw, cl")
    ap.add_argument("--workloads", default="scn,gn_silu")
    ap.add_argument(
        "--shapes", default=None, help="e.g. 1x128x256x256,4x512x64x64 (default: CPU_SHAPES, plus GPU_EXTRA on CUDA)"
    )
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="one small shape, fp32, few reps (a smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS / "local", help="folder for the JSON + markdown results")
    ap.add_argument("--host", action="store_true", help="only the per-call host-cost table (CPU, tiny shape)")
    ap.add_argument("--host-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--host-rounds", type=int, default=7, help=argparse.SUPPRESS)
    ap.add_argument("--host-calls", type=int, default=300, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.host_worker:
        host_worker(args.host_worker, args.host_rounds, args.host_calls)
        return 0
    if args.host:
        print(host_cost(args.out, args.host_rounds, args.host_calls))
        return 0

    device = torch.device(args.device)
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    else:
        shapes = CPU_SHAPES + (GPU_EXTRA if device.type == "cuda" else [])
    default_dtypes = "float32,bfloat16" if device.type == "cpu" else "bfloat16,float32"
    dtypes = [getattr(torch, d) for d in (args.dtypes or default_dtypes).split(",")]
    if args.quick:
        shapes, dtypes, args.warmup, args.reps = [(1, 64, 64, 64)], [torch.float32], 1, 3
    layouts = [lay == "cl" for lay in args.layouts.split(",")]
    copy_gbps = copy_bandwidth_gbps(device) if device.type == "cuda" else None

    rows = []
    for workload in args.workloads.split(","):
        for shape in shapes:
            for dtype in dtypes:
                if device.type == "cuda" and dtype == torch.float32 and shape in GPU_EXTRA:
                    continue  # the large GPU shapes are a bf16 target
                for cl in layouts:
                    row = run_case(workload, shape, dtype, device, cl, args, copy_gbps)
                    rows.append(row)
                    print(
                        f"{workload:8s} {row['shape']:>16s} {row['dtype']:9s} {row['layout']:4s} "
                        f"fwd {row['fwd_x_eager']:.2f}x eager {row['fwd_x_compile']:.2f}x compile | "
                        f"f+b {row['fb_x_eager']:.2f}x eager {row['fb_x_compile']:.2f}x compile",
                        flush=True,
                    )
                    if not args.quick:  # rewrite after every row: a run cut short keeps what it measured
                        report(rows, device, copy_gbps, args.out, quiet=True)
    markdown = report(rows, device, copy_gbps, None if args.quick else args.out)
    print()
    print(markdown)
    return 0


def report(rows, device, copy_gbps, out_dir, quiet=False) -> str:
    env = environment(device)
    env["copy_gbps"] = copy_gbps
    md = [
        f"# GroupNorm family benchmark — {env['device']}, {env['date']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}, threads {env['threads']}"
        + (f", device-to-device copy {copy_gbps:.0f} GB/s" if copy_gbps else ""),
        "Medians after warm-up; ratios = other path's time / vivat's time (higher is better), one run."
        + (
            " GPU ms: kernel time (L2 flushed before each repetition, repetitions queued back to back)."
            if device.type == "cuda"
            else ""
        ),
        "",
        markdown_table(rows, COLUMNS),
    ]
    if device.type == "cuda":
        md += [
            "",
            "CUDA-graph replay (kernel only) and host-inclusive (back-to-back eager calls) times:",
            "",
            markdown_table(rows, GPU_COLUMNS),
        ]
    markdown = "\n".join(md)
    if out_dir is not None:
        jpath, mpath = write_results(out_dir, "group_norm", device, {"env": env, "rows": rows}, markdown)
        if not quiet:
            print(f"wrote {jpath} and {mpath}")
    return markdown


if __name__ == "__main__":
    sys.exit(main())
