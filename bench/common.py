"""Timing, memory and reporting helpers shared by the benchmark scripts.

Every number is a median over repeated runs after warm-up; ratios in a table always come from one
process on one machine.

* :func:`time_ms` -- one call per repetition, synchronised: wall time per call as a user sees it
  (CUDA events on GPU, ``time.perf_counter`` on CPU). On a GPU this includes host latency and, for
  small shapes, warm caches; use it for end-to-end numbers.
* :func:`gpu_times` -- the honest GPU figures: ``kernel_ms`` (do_bench method: an L2 flush before
  every repetition, repetitions queued back to back between event pairs, no host sync in
  between), ``graph_ms`` (the call captured once in a CUDA graph and replayed: kernel time with
  no host work at all), and ``host_ms`` (many back-to-back eager calls between one event pair
  divided by their number: what a host-bound loop achieves).
* :func:`gbps` -- bandwidth from a byte count; report it on both byte models of KERNELS.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(
    fn: Callable[[], object], device: torch.device, *, warmup: int = 3, reps: int = 10, min_time_s: float = 0.0
) -> float:
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


_L2_FLUSH: dict = {}


def flush_l2(device: torch.device) -> None:
    """Evict the GPU's L2 by writing a buffer larger than any current L2 (256 MiB)."""
    buf = _L2_FLUSH.get(device)
    if buf is None:
        buf = _L2_FLUSH[device] = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=device)
    buf.zero_()


def gpu_times(
    fn: Callable[[], object],
    device: torch.device,
    *,
    reps: int = 50,
    warmup: int = 5,
    back_to_back: int = 20,
    graph: bool = True,
) -> dict:
    """Kernel, CUDA-graph and host-inclusive times of ``fn()`` in ms (see the module docstring).

    On CPU only ``host_ms`` (= :func:`time_ms`) is filled. ``graph_ms`` is None when ``fn`` cannot
    be captured (it synchronises, allocates on the host, ...); the reason goes to ``graph_error``.
    """
    if device.type != "cuda":
        return {"kernel_ms": None, "graph_ms": None, "host_ms": time_ms(fn, device, warmup=warmup, reps=reps)}
    for _ in range(warmup):
        fn()
    sync(device)
    # kernel: flush, event, call, event -- queued for every repetition, one sync at the end
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for st, en in zip(starts, ends):
        flush_l2(device)
        st.record()
        fn()
        en.record()
    sync(device)
    kernel = statistics.median(st.elapsed_time(en) for st, en in zip(starts, ends))
    # host-inclusive: many eager calls back to back between one event pair
    host = []
    for _ in range(max(3, reps // back_to_back)):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        for _ in range(back_to_back):
            fn()
        en.record()
        en.synchronize()
        host.append(st.elapsed_time(en) / back_to_back)
    out = {"kernel_ms": kernel, "graph_ms": None, "host_ms": statistics.median(host)}
    if graph:
        try:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
                fn()
            torch.cuda.current_stream(device).wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            g.replay()
            sync(device)
            times = []
            for _ in range(reps):
                flush_l2(device)
                st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                st.record()
                g.replay()
                en.record()
                times.append((st, en))
            sync(device)
            out["graph_ms"] = statistics.median(st.elapsed_time(en) for st, en in times)
        except Exception as exc:  # noqa: BLE001 - capture limits are reported, not fatal
            out["graph_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            sync(device)
    return out


def gbps(nbytes: float, ms: float | None) -> float | None:
    """GB/s for moving ``nbytes`` in ``ms`` milliseconds (None when there is no time)."""
    return None if not ms else nbytes / (ms * 1e-3) / 1e9


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
