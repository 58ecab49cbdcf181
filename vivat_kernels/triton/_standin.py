"""Compile Triton kernels for a GPU on a machine without one.

:func:`install` puts a stand-in driver in place that reports a CUDA target (``cuda:90`` by
default) and turns every ``kernel[grid](...)`` launch into a compile-only warm-up
(``JITFunction.run(..., warmup=True)``): the launchers run their host code on CPU tensors, Triton
lowers each kernel variant to TTIR, TTGIR, LLIR, PTX and a cubin (with its bundled ptxas), and
nothing executes. Used by the sm_90 compile test and by the host-cost benchmark (where a warm-up
call is a launch with only the final driver call left out).

Must run before any kernel module is imported, with ``TRITON_INTERPRET`` unset (the interpreter
would be chosen at decoration time otherwise); it is meant for a dedicated process.
"""

from __future__ import annotations

import os

COMPILED: list = []  # (kernel name, compiled kernel) per launch since the last clear()


class StandInDriver:
    """Just enough of Triton's driver interface for compilation: target, device, stream."""

    def __init__(self, arch: int = 90, warp_size: int = 32) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, warp_size)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


def install(arch: int = 90) -> list:
    """Activate the stand-in driver and compile-only launches; returns the list launches go to."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("unset TRITON_INTERPRET before installing the stand-in driver")
    from triton.runtime import jit as tjit
    from triton.runtime.driver import driver

    driver.set_active(StandInDriver(arch))

    def compile_only(self, grid):
        def call(*args, **kwargs):
            kernel = self.run(*args, grid=grid, warmup=True, **kwargs)
            COMPILED.append((self.fn.__name__, kernel))
            return kernel

        return call

    tjit.JITFunction.__getitem__ = compile_only
    return COMPILED
