"""Just-in-time build of the C++ extension in ``csrc/`` with a loud, one-time fallback.

The extension is compiled with ninja through :func:`torch.utils.cpp_extension.load` on first use
and cached under ``$VIVAT_CACHE`` (default ``~/.cache/vivat_kernels``), keyed by a hash of the
sources, the flags and the torch version, so a rebuild only happens when one of them changes.
``python -m vivat_kernels build`` builds it ahead of time. If the build fails (no compiler, no
ninja), one warning is issued and the ops fall back to the torch backend; ``import`` never fails.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

_EXT_NAME = "vivat_kernels_cpp"
_lock = threading.Lock()
_ext: ModuleType | None = None
_error: str | None = None
_tried = False


def source_dir() -> Path:
    """Where the C++ sources are: the package copy when installed, else the repository's csrc/."""
    here = Path(__file__).resolve().parent
    for cand in (here / "_csrc", here.parent / "csrc"):
        if cand.is_dir() and any(cand.glob("*.cpp")):
            return cand
    raise FileNotFoundError(f"no C++ sources found in {here / '_csrc'} or {here.parent / 'csrc'}")


def _flags() -> tuple[list[str], list[str]]:
    # No -std flag: torch's cpp_extension adds the standard its headers need (C++17 or C++20).
    cflags = ["-O3", "-fopenmp", "-ffp-contract=fast"]
    if platform.machine() in ("x86_64", "AMD64"):
        # Built on the machine that runs it (the cache key includes the CPU), so native is safe.
        cflags.append("-march=native")
    return cflags, ["-fopenmp"]


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_directory(sources: list[Path]) -> Path:
    h = hashlib.sha256()
    for src in sources:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    cflags, ldflags = _flags()
    h.update(" ".join(cflags + ldflags).encode())
    h.update(torch.__version__.encode())
    h.update(_cpu_id().encode())
    root = Path(os.environ.get("VIVAT_CACHE", Path.home() / ".cache" / "vivat_kernels"))
    path = root / f"{_EXT_NAME}_{h.hexdigest()[:16]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_extension(verbose: bool = False) -> ModuleType | None:
    """Build (once) and return the extension module, or None after one warning."""
    global _ext, _error, _tried
    if _tried:
        return _ext
    with _lock:
        if _tried:
            return _ext
        if os.environ.get("VIVAT_NO_CPP", "0") not in ("", "0"):
            _error = "disabled by VIVAT_NO_CPP"
        else:
            try:
                import logging

                from torch.utils import cpp_extension

                # A CPU-only build needs no CUDA toolkit; silence torch's notice about it.
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

                src = source_dir()
                sources = sorted(src.glob("*.cpp"))
                cflags, ldflags = _flags()
                _ext = cpp_extension.load(
                    name=_EXT_NAME,
                    sources=[str(s) for s in sources],
                    extra_cflags=cflags,
                    extra_ldflags=ldflags,
                    extra_include_paths=[str(src)],
                    build_directory=str(build_directory(sorted(src.glob("*.cpp")) + sorted(src.glob("*.h")))),
                    verbose=verbose,
                )
            except Exception as exc:  # noqa: BLE001 - any build failure means "fall back"
                _error = f"{type(exc).__name__}: {_first_error_line(str(exc))}"
                _ext = None
                warnings.warn(
                    f"vivat_kernels: the C++ extension could not be built ({_error}); "
                    "CPU ops fall back to the torch backend.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        _tried = True
    return _ext


def _first_error_line(text: str) -> str:
    """The compiler's first ``error:`` line, which says more than ninja's closing line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln or "Error:" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "unknown error"


def build_error() -> str | None:
    """Why the extension is unavailable (None if it loaded or was never tried)."""
    return _error


def is_built() -> bool:
    return _ext is not None
