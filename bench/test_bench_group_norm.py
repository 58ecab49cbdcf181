"""GroupNorm family benchmarks for pytest-benchmark (``pytest bench --benchmark-only``).

The same cases as ``bench/bench_group_norm.py`` (SCN + SiLU and GN + SiLU; eager, torch.compile,
vivat; forward and forward + backward), one benchmark each. pytest-benchmark times host-inclusive
calls (synchronised on CUDA); on CUDA ``extra_info`` adds the honest figures from
:func:`bench.common.gpu_times` -- kernel time with an L2 flush per repetition, CUDA-graph replay
time, host-inclusive time -- and GB/s on the 2-byte floor and on the bytes the design moves.
"""

from __future__ import annotations

import pytest
import torch

from bench.bench_group_norm import build
from bench.common import gbps, gpu_times, sync
from vivat_kernels.ops.group_norm import last_selection

# bytes per element of x: floor (forward x in + y out; backward + x, dy in, dx out) and what the
# fused design moves when groups do not fit one program (x read twice forward)
FLOOR = {"fwd": 2, "fb": 5}
DESIGN = {"fwd": 3, "fb": 8}


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("mode", ["fwd", "fb"])
@pytest.mark.parametrize("workload", ["scn", "gn_silu"])
def test_group_norm(benchmark, bench_device, gn_shape, bench_path, workload, mode, layout):
    device = bench_device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    eager, fused, inputs = build(workload, gn_shape, dtype, device, layout == "cl")
    module = {"eager": eager, "vivat": fused}.get(bench_path)
    if bench_path == "compile":
        torch._dynamo.reset()
        module = torch.compile(eager, fullgraph=True)
    grad_inputs = [t.detach().requires_grad_(True) for t in inputs]
    dy = torch.randn_like(inputs[0])

    if mode == "fwd":

        def fn():
            with torch.no_grad():
                return module(*inputs)
    else:

        def fn():
            y = module(*grad_inputs)
            y.backward(dy)
            return y

    def timed():
        fn()
        sync(device)

    for _ in range(3):
        timed()  # compile, plans, auto's choice
    numel = torch.Size(gn_shape).numel()
    s = torch.empty((), dtype=dtype).element_size()
    benchmark.group = f"{workload} {'x'.join(map(str, gn_shape))} {layout} {mode}"
    benchmark.extra_info.update(dtype=str(dtype)[6:], layout=layout, mode=mode, path=bench_path)
    if bench_path == "vivat":
        benchmark.extra_info["backend"] = last_selection()[0]
    if device.type == "cuda":
        t = gpu_times(fn, device, reps=30)
        benchmark.extra_info.update(t)
        for name in ("kernel_ms", "graph_ms", "host_ms"):
            benchmark.extra_info[f"{name[:-3]}_floor_gbps"] = gbps(FLOOR[mode] * s * numel, t.get(name))
            benchmark.extra_info[f"{name[:-3]}_design_gbps"] = gbps(DESIGN[mode] * s * numel, t.get(name))
    benchmark.pedantic(timed, rounds=10 if device.type == "cuda" else 5, warmup_rounds=1, iterations=1)
