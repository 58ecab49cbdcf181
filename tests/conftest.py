"""Shared test helpers: which kernel backends can run here, poisoned allocations, tolerances."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

import vivat_kernels as vk
from vivat_kernels import _backend

# Tests use tiny tensors: one intra-op thread avoids OpenMP spin-waits fighting over the cores
# (the kernels' parallel paths are exercised by the benchmarks, which use every core).
torch.set_num_threads(1)
# The suite never downloads weights (LPIPS trunks): tests that exercise fetching mock it.
os.environ.setdefault("VIVAT_NO_DOWNLOAD", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = REPO.parent / "shared" / "data" / "photos"


def kernel_targets() -> list[tuple[str, str]]:
    """(backend, device) pairs whose kernels can run on this machine.

    torch is the eager backend (its backward is hand-written, so it is tested too); cpp runs on
    CPU tensors when the extension builds; triton runs compiled on CUDA tensors, or on CPU tensors
    under TRITON_INTERPRET=1 (how CI exercises it).
    """
    targets = [("torch", "cpu"), ("cpp", "cpu")]
    if _backend.triton_import_error() is None:
        if torch.cuda.is_available() and not _backend.triton_interpret():
            targets.append(("triton", "cuda"))
        elif _backend.triton_interpret():
            targets.append(("triton", "cpu"))
    return targets


def target_id(t: tuple[str, str]) -> str:
    return f"{t[0]}-{t[1]}"


@pytest.fixture(params=kernel_targets(), ids=target_id)
def target(request):
    """Yield (backend, device) with that backend forced; skip cpp when the extension cannot build."""
    backend, device = request.param
    if backend == "cpp":
        ok, why = _backend.cpp_usable(torch.device("cpu"))
        if not ok:
            pytest.skip(why)
    with vk.use_backend(backend):
        yield backend, device


@contextlib.contextmanager
def poisoned_outputs():
    """Make fresh allocations start as NaN so an element a kernel forgets to write shows up.

    Python-side allocations (the Triton launchers) go through the patched ``torch.empty*``;
    for C++ allocations the heap is pre-filled with NaN blocks that the allocator hands back.
    """
    originals = {name: getattr(torch, name) for name in ("empty", "empty_like", "empty_strided")}

    def wrap(fn):
        def poisoned(*args, **kwargs):
            t = fn(*args, **kwargs)
            if t.is_floating_point() and t.numel():
                t.fill_(float("nan"))
            return t

        return poisoned

    junk = [torch.full((n,), float("nan")) for n in (64, 256, 1024, 4096, 16384)]
    del junk
    try:
        for name, fn in originals.items():
            setattr(torch, name, wrap(fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)


def tol(dtype: torch.dtype) -> dict:
    return {
        torch.float64: dict(rtol=1e-9, atol=1e-9),
        torch.float32: dict(rtol=1e-5, atol=2e-5),
        torch.bfloat16: dict(rtol=2e-2, atol=3e-2),
        torch.float16: dict(rtol=5e-3, atol=5e-3),
    }[dtype]


@pytest.fixture(autouse=True)
def _reset_backend():
    yield
    vk.set_backend(None)


def pytest_report_header(config):
    return (
        f"torch {torch.__version__}; cuda={torch.cuda.is_available()}; "
        f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}; kernel targets: "
        + ", ".join(target_id(t) for t in kernel_targets())
    )
