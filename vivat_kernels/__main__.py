"""``python -m vivat_kernels {info,build}``: what runs where, and an ahead-of-time build."""

from __future__ import annotations

import argparse
import platform
import sys
import warnings

import torch

from . import __version__, _backend, _build


def _ops() -> dict:
    from .ops import group_norm, reflect_conv

    return {"fused_group_norm": group_norm.selected_backend, "reflect_conv2d": reflect_conv.selected_backend}


def info() -> int:
    print(f"vivat_kernels {__version__}")
    print(f"python        {platform.python_version()} ({platform.machine()})")
    print(f"torch         {torch.__version__} (threads: {torch.get_num_threads()})")
    err = _backend.triton_import_error()
    if err is None:
        import triton

        print(
            f"triton        {triton.__version__}"
            + ("  [TRITON_INTERPRET=1: kernels run on CPU]" if _backend.triton_interpret() else "")
        )
    else:
        print(f"triton        unavailable: {err}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}        {torch.cuda.get_device_name(i)}")
    else:
        print("cuda          no CUDA device")
    ext = _build.load_extension()
    if ext is not None:
        print(f"C++ extension built ({_build.source_dir()})")
    else:
        print(f"C++ extension NOT available: {_build.build_error()}")
    print(f"requested     {_backend.get_backend()} (set_backend / $VIVAT_BACKEND)")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for name, select in _ops().items():
        for dev in devices:
            probe = torch.empty(1, 4, 2, 2, device=dev)
            try:
                backend, why = select(probe)
            except RuntimeError as exc:
                backend, why = "error", str(exc)
            print(f"  {name:18s} {dev.type:5s} -> {backend:7s} ({why})")
    from .ops import reflect_conv

    design = reflect_conv.get_design()
    print(f"reflect_conv2d design: {design} (use_design / $VIVAT_REFLECT_CONV_DESIGN)")
    for backend, designs in reflect_conv.BACKEND_DESIGNS.items():
        timed = f"the fastest of {', '.join(designs)}, timed on the first call of each shape and cached"
        if design == "auto" and backend == "cpp":
            how = (
                "auto = plain F.pad + F.conv2d outside the custom op (a fixed rule on CPU keeps runs "
                "bit-reproducible; 'timed' times them all)"
            )
        elif design == "auto":
            how = f"auto = {timed} (interpreted on CPU: border)"
        elif design == "timed":
            how = f"timed = {timed}"
        else:
            how = f"{design} forced" + ("" if design in designs else " (cannot run here)")
        print(f"  {backend:7s} {how}")
    for key, chosen in reflect_conv.design_decisions().items():
        print(f"  chosen: {chosen:13s} {key}")
    return 0


def build() -> int:
    with warnings.catch_warnings():  # the failure is reported below, after the compiler's own output
        warnings.simplefilter("ignore", RuntimeWarning)
        ext = _build.load_extension(verbose=True)
    if ext is None:
        print(f"build failed: {_build.build_error()}", file=sys.stderr)
        return 1
    print(f"built {ext.__file__}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vivat_kernels", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, devices, extension status, and which backend each op uses and why")
    sub.add_parser("build", help="build the C++ extension now (otherwise it is built on first use)")
    args = parser.parse_args(argv)
    return {"info": info, "build": build}[args.cmd]()


if __name__ == "__main__":
    sys.exit(main())
