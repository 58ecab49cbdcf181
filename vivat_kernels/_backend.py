"""Backend selection shared by every op.

Three backends implement each op behind one name:

* ``triton`` -- the GPU path (also runs on CPU tensors when ``TRITON_INTERPRET=1``),
* ``cpp``    -- the C++ extension in ``csrc/``, the CPU path,
* ``torch``  -- the eager reference (ground truth, never called "fused").

``auto`` picks triton for CUDA tensors, cpp for CPU tensors, and torch otherwise. The choice can
be forced with :func:`set_backend`, the :func:`use_backend` context manager, or the environment
variable ``VIVAT_BACKEND``. A forced backend that cannot run on the given tensor raises a clear
``RuntimeError`` rather than silently running something else.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "cpp", "torch")

_forced: str | None = None


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name.lower()


def set_backend(name: str | None) -> None:
    """Force a backend for every op (``None`` or ``"auto"`` restores automatic selection)."""
    global _forced
    _forced = None if name is None else _check_name(name)


def get_backend() -> str:
    """The requested backend: :func:`set_backend`, else ``$VIVAT_BACKEND``, else ``"auto"``."""
    if _forced is not None:
        return _forced
    env = os.environ.get("VIVAT_BACKEND", "").strip()
    return _check_name(env) if env else "auto"


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Temporarily force a backend: ``with use_backend("torch"): ...``."""
    global _forced
    previous = _forced
    set_backend(name)
    try:
        yield
    finally:
        _forced = previous


def triton_interpret() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_import_error() -> str | None:
    """None when triton imports, else the reason it does not."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - any failure to import means "unavailable"
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_usable(device: torch.device) -> tuple[bool, str]:
    err = triton_import_error()
    if err is not None:
        return False, f"triton does not import ({err})"
    if device.type == "cuda":
        return True, "CUDA tensor and triton imports"
    if device.type == "cpu" and triton_interpret():
        return True, "CPU tensor under TRITON_INTERPRET=1"
    return False, f"triton needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU), got {device.type}"


def cpp_usable(device: torch.device) -> tuple[bool, str]:
    if device.type != "cpu":
        return False, f"the C++ extension runs on CPU tensors, got {device.type}"
    from . import _build

    ext = _build.load_extension()
    if ext is None:
        return False, f"C++ extension unavailable ({_build.build_error()})"
    return True, "CPU tensor and the C++ extension is built"


def resolve(device: torch.device) -> tuple[str, str]:
    """Pick the backend for a tensor on ``device``; returns ``(backend, reason)``."""
    requested = get_backend()
    if requested == "torch":
        return "torch", "forced"
    if requested == "triton":
        ok, why = triton_usable(device)
        if not ok:
            raise RuntimeError(f"backend 'triton' was forced but cannot run: {why}")
        return "triton", "forced"
    if requested == "cpp":
        ok, why = cpp_usable(device)
        if not ok:
            raise RuntimeError(f"backend 'cpp' was forced but cannot run: {why}")
        return "cpp", "forced"
    # auto
    if device.type == "cuda":
        ok, why = triton_usable(device)
        return ("triton", why) if ok else ("torch", why)
    if device.type == "cpu":
        ok, why = cpp_usable(device)
        return ("cpp", why) if ok else ("torch", why)
    return "torch", f"no fused kernel for device type {device.type}"
