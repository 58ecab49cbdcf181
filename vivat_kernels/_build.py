"""Just-in-time build of the C++ extension in ``csrc/`` with a loud, one-time fallback.

The extension is compiled with ninja through :func:`torch.utils.cpp_extension.load` on first use
and cached under ``$VIVAT_CACHE`` (default ``~/.cache/vivat_kernels``), keyed by a hash of the
sources, the flags, the torch version and the CPU, so a rebuild only happens when one of them
changes. The sources are copied into that cache folder and compiled from there, so two checkouts
of the same sources share one build instead of rebuilding it in turn. The first build says on
stderr that it is building, where, and roughly how long it takes.
``python -m vivat_kernels build`` builds it ahead of time and shows the compiler's output. If the
build fails (no compiler, no ninja, a compile error), one warning names the reason (the missing
compiler, or the compiler's first ``error:`` line) and the ops fall back to the torch backend;
``import`` never fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

_EXT_NAME = "vivat_kernels_cpp"
_lock = threading.Lock()
_ext: ModuleType | None = None
_error: str | None = None
_tried = False

# What a first build costs: 86 s of compiler CPU time (3 files in parallel); 157 s wall on 2 shared cores.
BUILD_TIME_HINT = "about 1.5 minutes of CPU time: under a minute with 4 free cores, 1-3 minutes on 2 busy ones"


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


def _copy_sources(sources: list[Path], build_dir: Path) -> Path:
    """Copy ``sources`` into ``build_dir/src`` (atomically, once) and return that folder.

    The build folder is keyed by the sources' content, so a file already there is the same file;
    leaving it untouched keeps its time stamp, and ninja sees nothing to rebuild.
    """
    dst = build_dir / "src"
    dst.mkdir(parents=True, exist_ok=True)
    for src in sources:
        target = dst / src.name
        if target.is_file() and target.read_bytes() == src.read_bytes():
            continue
        tmp = dst / f".{src.name}.{os.getpid()}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    return dst


def _is_built(build_dir: Path) -> bool:
    return any(build_dir.glob(f"{_EXT_NAME}*.so")) or any(build_dir.glob(f"{_EXT_NAME}*.pyd"))


def compiler() -> str:
    """The C++ compiler torch's extension builder runs: ``$CXX``, else ``c++`` (``cl`` on Windows)."""
    return os.environ.get("CXX") or ("cl" if sys.platform == "win32" else "c++")


def _missing_tool() -> str | None:
    """Why the build cannot start (a missing compiler or ninja), or None."""
    cxx = compiler()
    if shutil.which(cxx.split()[0] if cxx.strip() else cxx) is None:
        return (
            f"no C++ compiler: {cxx!r} is not on PATH (install g++ or clang++, e.g. apt install g++, "
            "or point $CXX at one)"
        )
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


@contextlib.contextmanager
def _quiet_cpp_extension_logger() -> Iterator[None]:
    """Silence torch.utils.cpp_extension's log while it is imported and used.

    Importing it logs "No CUDA runtime is found, using CUDA_HOME=..." on every machine without a
    GPU; a CPU build needs no CUDA toolkit, so the notice is noise.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_extension(verbose: bool = False) -> ModuleType | None:
    """Build (once) and return the extension module, or None after one warning.

    ``verbose`` prints ninja's and the compiler's output (``python -m vivat_kernels build``).
    """
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
                _ext = _build(verbose)
            except Exception as exc:  # noqa: BLE001 - any build failure means "fall back"
                _error = _describe_failure(exc)
                _ext = None
                hint = "" if isinstance(exc, _BuildToolMissing) else " (`python -m vivat_kernels build` shows why)"
                warnings.warn(
                    f"vivat_kernels: the C++ extension could not be built ({_error}); "
                    f"CPU ops fall back to the torch backend{hint}.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        _tried = True
    return _ext


class _BuildToolMissing(RuntimeError):
    pass


def _build(verbose: bool) -> ModuleType:
    with _quiet_cpp_extension_logger():
        from torch.utils import cpp_extension

        missing = _missing_tool()
        if missing is not None:
            raise _BuildToolMissing(missing)
        src = source_dir()
        cpp = sorted(src.glob("*.cpp"))
        build_dir = build_directory(cpp + sorted(src.glob("*.h")))
        copied = _copy_sources(sorted(src.glob("*.cpp")) + sorted(src.glob("*.h")), build_dir)
        fresh = not _is_built(build_dir)
        if fresh:
            print(
                f"vivat_kernels: building the C++ CPU kernels in {build_dir} ({BUILD_TIME_HINT}; "
                "once per change of sources, flags or torch)...",
                file=sys.stderr,
                flush=True,
            )
        t0 = time.perf_counter()
        cflags, ldflags = _flags()
        ext = cpp_extension.load(
            name=_EXT_NAME,
            sources=[str(copied / s.name) for s in cpp],
            extra_cflags=cflags,
            extra_ldflags=ldflags,
            extra_include_paths=[str(copied)],
            build_directory=str(build_dir),
            verbose=verbose,
        )
        if fresh:
            print(f"vivat_kernels: built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        return ext


def _describe_failure(exc: Exception) -> str:
    if isinstance(exc, _BuildToolMissing):
        return str(exc)
    return f"{type(exc).__name__}: {_first_error_line(str(exc))}"


def _first_error_line(text: str) -> str:
    """The line that says what went wrong: a compiler or tool that is not found, else the
    compiler's first ``error:`` line, which says more than ninja's closing line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if "not found" in ln or ("No such file or directory" in ln and "fatal error" not in ln):
            return ln[:300]
    for ln in lines:
        if ("error:" in ln or "Error:" in ln) and not ln.startswith("ninja: build stopped"):
            return ln[:300]
    return lines[-1][:300] if lines else "unknown error"


def build_error() -> str | None:
    """Why the extension is unavailable (None if it loaded or was never tried)."""
    return _error
