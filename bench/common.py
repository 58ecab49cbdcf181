"""Timing, memory and reporting helpers shared by the benchmark scripts.

Every number is a median over repeated runs after warm-up. On CUDA, time is measured with CUDA
events around each run; on CPU with ``time.perf_counter``. Ratios in a table always come from
one process on one machine.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, reps: int = 10,
            min_time_s: float = 0.0) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start_all) < min_time_s:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 10 * reps:
            break
    return statistics.median(times)


def peak_extra_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory allocated by ``fn()`` above what was live before it (CUDA only), in MiB."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return (peak - before) / 2**20


def copy_bandwidth_gbps(device: torch.device, numel: int = 1 << 28, dtype=torch.bfloat16) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), the roofline reference."""
    a = torch.empty(numel, dtype=dtype, device=device).normal_()
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a), device, warmup=3, reps=20)
    return 2 * a.numel() * a.element_size() / (ms * 1e-3) / 1e9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def result_path(out_dir: Path, stem: str, device: torch.device, suffix: str) -> Path:
    date = _dt.date.today().isoformat()
    name = "cpu" if device.type == "cpu" else slug(device_name(device))
    return Path(out_dir) / f"{stem}-{date}-{name}{suffix}"


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``columns`` is a list of (key, header); floats are printed with 3 significant digits."""
    def fmt(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_results(out_dir: Path, stem: str, device: torch.device, payload: dict, markdown: str) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = result_path(out_dir, stem, device, ".json")
    mpath = result_path(out_dir, stem, device, ".md")
    jpath.write_text(json.dumps(payload, indent=2) + "\n")
    mpath.write_text(markdown + "\n")
    return jpath, mpath
