"""Every GroupNorm-family kernel variant compiles for an H100/H200 (cuda:90), without a GPU.

The interpreter accepts programs that compiled Triton rejects (non-constexpr block shapes, ...),
so CI also lowers each variant to a cubin through a stand-in driver
(:mod:`vivat_kernels.triton._standin`): flag sets x layouts x fp32/bf16/fp16 x the per-group
(one tile and looped) and split forward designs, each with its backward. It runs in a
subprocess, since the stand-in must be installed before Triton decorates the kernels and with
``TRITON_INTERPRET`` unset. The quick test compiles a bf16 subset (both designs, both layouts, two
flag sets); the slow one, run by .ci/run, every variant.

    python tests/test_compile_sm90.py [--all]      # the same check by hand
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FLAG_SETS = [  # (weight, bias, gamma, beta, silu), as in test_group_norm.FLAGS
    (True, True, True, True, True),
    (False, False, False, False, False),
    (True, False, True, False, False),
    (False, True, False, True, True),
]
# (N, C, G, H, W, low-res size) and forward design: one-tile group, looped group, split.
SHAPES = [
    ((2, 12, 4, 5, 6, (2, 3)), "group"),
    ((1, 16, 2, 44, 13, (26, 5)), "group"),
    ((1, 16, 2, 44, 13, (26, 5)), "split"),
    ((1, 8, 2, 16, 16, (16, 16)), "split"),
]


def _main(all_dtypes: bool) -> int:
    """bf16 only: one-tile group and split designs, flag sets 0 and 3 (a quick subset); --all:
    every shape, design, flag set and dtype."""
    os.environ.pop("TRITON_INTERPRET", None)
    sys.path.insert(0, str(REPO))
    import torch

    from vivat_kernels.triton import _standin

    compiled = _standin.install(90)
    from vivat_kernels.triton import group_norm as gn

    gn._TUNE.update(tile_bytes=512, group_tile_elems=256)  # small tiles: tiny shapes take every path
    dtypes = [torch.float32, torch.bfloat16, torch.float16] if all_dtypes else [torch.bfloat16]
    failures = 0
    total = 0
    shapes = SHAPES if all_dtypes else [SHAPES[0], SHAPES[2]]
    flag_sets = list(enumerate(FLAG_SETS)) if all_dtypes else [(0, FLAG_SETS[0]), (3, FLAG_SETS[3])]
    for (n, c, g, h, w, low), design in shapes:
        gn._TUNE["design"] = design
        gn.clear_plans()
        for dtype in dtypes:
            for cl in (False, True):
                for i, (uw, ub, ug, ubt, silu) in flag_sets:
                    fmt = torch.channels_last if cl else torch.contiguous_format
                    x = torch.randn(n, c, h, w, dtype=dtype).contiguous(memory_format=fmt)
                    wt = torch.randn(c, dtype=dtype) if uw else None
                    bs = torch.randn(c) if ub else None  # fp32 params with low-precision x
                    gm = torch.randn(n, c, *low, dtype=dtype).contiguous(memory_format=fmt) if ug else None
                    bt = torch.randn(n, c, *low, dtype=dtype).contiguous(memory_format=fmt) if ubt else None
                    name = f"{design} {n}x{c}x{h}x{w} {str(dtype)[6:]} {'cl' if cl else 'nchw'} f{i}"
                    compiled.clear()
                    try:
                        gn.group_norm_fwd(x, wt, bs, gm, bt, g, 1e-5, silu)
                        acc = torch.float32
                        mean, rstd = torch.zeros(n, g, dtype=acc), torch.ones(n, g, dtype=acc)
                        mask = [True, uw, ub, ug, ubt]
                        gn.group_norm_bwd(torch.randn_like(x), x, wt, bs, gm, bt, mean, rstd, g, 1e-5, silu, mask)
                        total += len(compiled)
                        print(f"ok    {name}: {len(compiled)} launches compiled", flush=True)
                    except Exception as exc:  # noqa: BLE001 - any compile error is a failure to report
                        failures += 1
                        print(f"FAIL  {name}: {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
    print(f"{total} launches compiled for cuda:90, {failures} failures")
    return 1 if failures else 0


def _run(all_dtypes: bool, timeout: int) -> None:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve())] + (["--all"] if all_dtypes else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert " 0 failures" in out and "launches compiled for cuda:90" in out, out[-3000:]


def test_compiles_for_sm90_bf16():
    _run(False, timeout=600)


@pytest.mark.slow
def test_compiles_for_sm90_every_dtype():
    _run(True, timeout=1800)


if __name__ == "__main__":
    sys.exit(_main("--all" in sys.argv[1:]))
