"""Source layout rules of the kernel package: no Triton kernel module over 600 lines.

Kernel bodies, shared ``@triton.jit`` helpers and host-side launch planning live in separate
modules (``vivat_kernels/triton/``); a file that outgrows the limit is split by responsibility.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TRITON_DIR = Path(__file__).resolve().parents[1] / "vivat_kernels" / "triton"
MAX_LINES = 600


@pytest.mark.parametrize("path", sorted(TRITON_DIR.glob("*.py")), ids=lambda p: p.name)
def test_kernel_module_is_at_most_600_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (limit {MAX_LINES}): split it by responsibility"
