"""pytest-benchmark entry point: ``pytest bench --benchmark-only`` (JSON with ``--benchmark-json``,
comparisons with ``--benchmark-compare``). CUDA figures (kernel / CUDA-graph / host-inclusive times,
GB/s on both byte models) go into each benchmark's ``extra_info``. The scripts in this folder still
write the markdown tables; this file only makes their cases collectable.

Options: ``--bench-device`` (cpu or cuda; default cuda when available), ``--bench-shapes``
(e.g. ``1x128x256x256,4x512x64x64``), ``--bench-paths`` (subset of eager,compile,vivat).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pytest_addoption(parser):
    group = parser.getgroup("vivat bench")
    group.addoption("--bench-device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.addoption("--bench-shapes", default=None, help="comma list of NxCxHxW (default: the scripts' sets)")
    group.addoption("--bench-paths", default="eager,compile,vivat", help="subset of eager,compile,vivat")


@pytest.fixture(scope="session")
def bench_device(request) -> torch.device:
    dev = torch.device(request.config.getoption("--bench-device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return dev


def pytest_generate_tests(metafunc):
    if "gn_shape" in metafunc.fixturenames:
        from bench.bench_group_norm import CPU_SHAPES, GPU_EXTRA

        opt = metafunc.config.getoption("--bench-shapes")
        if opt:
            shapes = [tuple(int(v) for v in s.split("x")) for s in opt.split(",")]
        else:
            cuda = metafunc.config.getoption("--bench-device") == "cuda"
            shapes = CPU_SHAPES + (GPU_EXTRA if cuda else [])
        metafunc.parametrize("gn_shape", shapes, ids=["x".join(map(str, s)) for s in shapes])
    if "bench_path" in metafunc.fixturenames:
        paths = metafunc.config.getoption("--bench-paths").split(",")
        metafunc.parametrize("bench_path", paths)
