"""Reflect-padded conv2d against ``F.conv2d(F.pad(x, mode="reflect"))`` on every backend here.

Targets: torch (reference backend), cpp in its designs ("border": oneDNN zero-padded conv + C++
border terms; "slab": the library conv plus library convs over thin reflected border slabs;
"eager": F.pad + the library conv, the plain path ``auto`` also times), and triton
("border" with Triton list kernels, "implicit_gemm"; on CUDA also "slab" and "eager") --
compiled on CUDA, or interpreted on CPU tensors under TRITON_INTERPRET=1 (small shapes only).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import kernel_targets, poisoned_outputs
from torch import nn

import vivat_kernels as vk
from vivat_kernels import _backend, reference
from vivat_kernels.nn import ReflectConv2d
from vivat_kernels.ops import reflect_conv as rc


def impl_targets() -> list[tuple[str, str, str | None]]:
    out = []
    for backend, device in kernel_targets():
        if backend == "triton":
            # "slab" and "eager" are library calls only: interpreted Triton adds nothing to cpp's run.
            designs = rc.BACKEND_DESIGNS["triton"] if device == "cuda" else ("border", "implicit_gemm")
            out += [(backend, device, d) for d in designs]
        elif backend == "cpp":
            out += [(backend, device, d) for d in rc.BACKEND_DESIGNS["cpp"]]
        else:
            out.append((backend, device, None))
    return out


@pytest.fixture(params=impl_targets(), ids=lambda t: "-".join(p for p in t if p))
def impl(request):
    """(backend, device, design) with backend and design forced; fp32 cuDNN without TF32."""
    backend, device, design = request.param
    if backend == "cpp":
        ok, why = _backend.cpp_usable(torch.device("cpu"))
        if not ok:
            pytest.skip(why)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with vk.use_backend(backend), rc.use_design(design):
            yield backend, device, design
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def interpreted(impl) -> bool:
    return impl[0] == "triton" and impl[1] == "cpu"


def reduced(impl) -> bool:
    """Triton runs a covering subset of the matrix: slow when interpreted, and every new shape
    costs a compilation on GPU (the GPU-only tests below add the VAE shapes)."""
    return impl[0] == "triton"


# (N, C_in, C_out, H, W, k, stride, padding)
CASES = {
    "odd_even_b2": (2, 4, 4, 7, 6, 3, 1, 1),
    "dot16": (1, 16, 16, 8, 9, 3, 1, 1),
    "rgb_in": (1, 3, 16, 6, 5, 3, 1, 1),
    "rgb_out": (2, 16, 3, 5, 7, 3, 1, 1),
    "down_even": (1, 4, 16, 8, 8, 3, 2, (0, 1, 0, 1)),
    "down_odd": (2, 16, 4, 7, 9, 3, 2, (0, 1, 0, 1)),
    "c64": (1, 64, 64, 4, 5, 3, 1, 1),
    "smallest": (1, 4, 3, 2, 2, 3, 1, 1),
    "smallest_down": (1, 3, 4, 2, 3, 3, 2, (0, 1, 0, 1)),
    "k1": (2, 4, 16, 5, 6, 1, 1, 0),
    "k1_s2": (1, 16, 4, 5, 6, 1, 2, 0),
    "s2_sym": (1, 16, 64, 6, 7, 3, 2, 1),
    "k5_p2": (1, 4, 4, 5, 7, 5, 1, 2),
    "asym": (1, 4, 3, 6, 5, 3, 1, (2, 0, 1, 2)),
    "pair": (1, 3, 4, 3, 3, 3, 1, (0, 1)),
    "crop": (1, 4, 4, 6, 6, 3, 1, (1, 0, 1, 0)),
}
# The interpreter is slow: it runs a covering subset (every kernel path, mask and mode).
INTERP_CASES = {"odd_even_b2", "rgb_in", "rgb_out", "down_even", "smallest", "asym", "crop", "s2_sym"}


def make(case, dtype, device, channels_last, seed, bias=True):
    n, ci, co, h, w, k, s, pad = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, ci, h, w, generator=gen, dtype=torch.float64)
    wt = torch.randn(co, ci, k, k, generator=gen, dtype=torch.float64) / (ci * k * k) ** 0.5
    b = torch.randn(co, generator=gen, dtype=torch.float64) if bias else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(True)
    wt = wt.to(device=device, dtype=dtype).requires_grad_(True)
    b = b.to(device=device, dtype=dtype).requires_grad_(True) if bias else None
    return x, wt, b, s, pad


def reference_grads(x, w, b, s, pad, dy):
    """float64 CPU reference from the same (possibly rounded) inputs."""
    xr, wr = x.detach().cpu().double().requires_grad_(True), w.detach().cpu().double().requires_grad_(True)
    br = b.detach().cpu().double().requires_grad_(True) if b is not None else None
    y = reference.reflect_conv2d(xr, wr, br, s, pad)
    grads = torch.autograd.grad(y, [t for t in (xr, wr, br) if t is not None], dy.detach().cpu().double())
    return y, grads


REL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def assert_close(got, want, dtype, what):
    """Max error relative to the largest reference magnitude."""
    got = got.detach().cpu().double()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    scale = max(want.abs().max().item(), 1e-6)
    err = (got - want).abs().max().item() / scale
    assert err <= REL[dtype], f"{what}: relative error {err:.3g} > {REL[dtype]}"


def check_case(case, dtype, device, channels_last, seed, bias=True):
    x, w, b, s, pad = make(case, dtype, device, channels_last, seed, bias)
    y = vk.reflect_conv2d(x, w, b, s, pad)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1:
        assert y.is_contiguous(memory_format=fmt), "output must keep x's memory format"
    dy = torch.randn(y.shape, dtype=torch.float64).to(device=device, dtype=dtype)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], dy)
    want_y, want_grads = reference_grads(x, w, b, s, pad, dy)
    assert_close(y, want_y, dtype, "y")
    for name, g, r in zip(("dx", "dweight", "dbias"), grads, want_grads):
        assert_close(g, r, dtype, name)
    assert grads[0].is_contiguous(memory_format=fmt) or min(x.shape[1], x.shape[2] * x.shape[3]) == 1


# ---------------------------------------------------------------------------------------------
# forward + backward against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_backward_fp32(impl, name, channels_last):
    if reduced(impl) and (name not in INTERP_CASES or (list(CASES).index(name) % 2 == 0) == channels_last):
        # each case of the subset in one layout (both layouts occur over the subset)
        pytest.skip("triton runs a covering subset")
    check_case(CASES[name], torch.float32, impl[1], channels_last, seed=len(name), bias=name != "crop")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("name", ["dot16", "rgb_in", "rgb_out", "down_even", "s2_sym"])
def test_forward_backward_bf16(impl, name, channels_last):
    if reduced(impl) and name not in ("rgb_out", "down_even"):
        pytest.skip("triton runs a covering subset")
    check_case(CASES[name], torch.bfloat16, impl[1], channels_last, seed=7)


def test_forward_backward_fp16(impl):
    check_case(CASES["odd_even_b2"], torch.float16, impl[1], True, seed=3)


@pytest.mark.parametrize("name", ["odd_even_b2", "down_even"])
def test_gradcheck_fp64(impl, name):
    if impl[1] == "cuda":
        pytest.skip("float64 gradcheck runs on CPU (cpp and interpreted Triton share the kernels' math)")
    _, _, _, h, w, k, s, pad = CASES[name]
    case = (1, 2, 2, min(h, 4), min(w, 4), k, s, pad)
    x, wt, b, s, pad = make(case, torch.float64, impl[1], False, seed=11)
    # Full gradcheck is O(numel) calls: kept for cpp and compiled Triton; the reference backend
    # and the interpreter use the random-projection check.
    fast = interpreted(impl) or impl[0] == "torch"
    assert torch.autograd.gradcheck(
        lambda a, b_, c: vk.reflect_conv2d(a, b_, c, s, pad), (x, wt, b), eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=fast
    )


def test_deterministic_backward(impl):
    """Backward twice on the same inputs: bitwise-identical gradients (and outputs)."""
    case = (2, 16, 16, 9, 8, 3, 1, 1) if not interpreted(impl) else (1, 4, 16, 5, 6, 3, 1, 1)
    x, w, b, s, pad = make(case, torch.float32, impl[1], True, seed=5)
    dy = None
    runs = []
    for _ in range(2):
        y = vk.reflect_conv2d(x, w, b, s, pad)
        dy = torch.randn_like(y) if dy is None else dy
        runs.append((y, *torch.autograd.grad(y, (x, w, b), dy)))
    for a, c in zip(*runs):
        assert torch.equal(a, c)


def test_no_unwritten_elements(impl):
    """Fresh allocations start as NaN: every element of y, dx, dw must be written."""
    for name in ("down_even", "rgb_out"):
        x, w, b, s, pad = make(CASES[name], torch.float32, impl[1], name == "rgb_out", seed=2)
        with poisoned_outputs():
            y = vk.reflect_conv2d(x, w, b, s, pad)
            grads = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
        for t in (y, *grads):
            assert torch.isfinite(t).all()


def test_partial_grads(impl):
    """Only the gradients asked for are computed (weight frozen, or x without grad)."""
    x, w, b, s, pad = make(CASES["odd_even_b2"], torch.float32, impl[1], False, seed=4)
    y = vk.reflect_conv2d(x, w.detach(), None, s, pad)
    (dx,) = torch.autograd.grad(y, (x,), torch.ones_like(y))
    y = vk.reflect_conv2d(x.detach(), w, b, s, pad)
    dw, db = torch.autograd.grad(y, (w, b), torch.ones_like(y))
    _, (rdx, rdw, rdb) = reference_grads(x, w, b, s, pad, torch.ones_like(y))
    assert_close(dx, rdx, torch.float32, "dx")
    assert_close(dw, rdw, torch.float32, "dweight")
    assert_close(db, rdb, torch.float32, "dbias")


def test_empty_batch(impl):
    x = torch.randn(0, 3, 5, 5, device=impl[1], requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=impl[1], requires_grad=True)
    y = vk.reflect_conv2d(x, w, None, 1, 1)
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


# ---------------------------------------------------------------------------------------------
# registration: opcheck, compile, autocast
# ---------------------------------------------------------------------------------------------
def test_opcheck(impl):
    x, w, b, _, _ = make((1, 3, 4, 5, 4, 3, 1, 1), torch.float32, impl[1], False, seed=8)
    torch.library.opcheck(torch.ops.vivat.reflect_conv2d_fwd.default, (x, w, b, 1, [1, 1, 1, 1]))
    if interpreted(impl):
        return  # slow there; the registration itself is backend independent
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    torch.library.opcheck(torch.ops.vivat.reflect_conv2d_fwd.default, (xc, w, None, 2, [0, 1, 0, 1]))
    dy = torch.randn(1, 4, 5, 4, device=impl[1])
    torch.library.opcheck(
        torch.ops.vivat.reflect_conv2d_bwd.default, (dy, x.detach(), w.detach(), 1, [1, 1, 1, 1], [True, True, False])
    )


def test_compile_fullgraph():
    """No graph break: one opaque node forward and backward (aot_eager checks fake + autograd)."""
    torch._dynamo.reset()
    conv = ReflectConv2d(4, 6, 3, padding=1)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 7, 6, requires_grad=True)
    y_c, y_e = compiled(x), conv(x)
    torch.testing.assert_close(y_c, y_e)
    g_c = torch.autograd.grad(y_c.square().sum(), (x, conv.weight, conv.bias))
    g_e = torch.autograd.grad(y_e.square().sum(), (x, conv.weight, conv.bias))
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_compile_inductor():
    torch._dynamo.reset()
    conv = ReflectConv2d(4, 6, 3, stride=2, pad4=(0, 1, 0, 1))
    compiled = torch.compile(conv, fullgraph=True)
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(compiled(x), conv(x))


def test_autocast_cpu_bf16():
    x = torch.randn(1, 4, 6, 5)
    w = torch.randn(8, 4, 3, 3)
    b = torch.randn(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = vk.reflect_conv2d(x, w, b, 1, 1)
        want = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, b)
    assert y.dtype == want.dtype == torch.bfloat16
    assert_close(
        y,
        reference.reflect_conv2d(x.bfloat16().double(), w.bfloat16().double(), b.bfloat16().double(), 1, 1),
        torch.bfloat16,
        "y",
    )
    xg = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = vk.reflect_conv2d(xg, w, b, 1, 1)
    y.float().sum().backward()
    assert xg.grad.dtype == torch.float32 and torch.isfinite(xg.grad).all()


def test_meta_tensors_give_shapes_and_argument_errors():
    """No autocast on the meta device: shapes come out and bad arguments are named, as on CPU."""
    x, w = torch.empty(2, 4, 8, 7, device="meta"), torch.empty(6, 4, 3, 3, device="meta")
    y = vk.reflect_conv2d(x, w, torch.empty(6, device="meta"), 2, (0, 1, 0, 1))
    assert y.device.type == "meta" and y.shape == (2, 6, 4, 3)
    with pytest.raises(ValueError, match="C_in=5"):
        vk.reflect_conv2d(x, torch.empty(6, 5, 3, 3, device="meta"))
    with pytest.raises(ValueError, match="x must be 4-D"):
        vk.reflect_conv2d(torch.empty(4, 8, 7, device="meta"), w)
    with pytest.raises(TypeError, match="dtype"):
        vk.reflect_conv2d(x, w.half())


# ---------------------------------------------------------------------------------------------
# the border position lists: exactly the outputs whose window reads padding (or are uncovered)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_position_lists(name):
    n, ci, co, h, w, k, s, pad = CASES[name]
    pad4 = reference.reflect_pad4(pad)
    g = rc.ConvGeometry(n, ci, h, w, co, k, k, s, pad4)
    out_pos, src_pos = rc._position_lists(h, w, k, k, s, pad4, g.cover, "cpu")
    left, _, top, _ = pad4
    ho, wo = g.out_size
    hc, wc = g.cover

    def rows_of(oy):
        return [oy * s - top + ky for ky in range(k)]

    def cols_of(ox):
        return [ox * s - left + kx for kx in range(k)]

    want_out, want_src = set(), set()
    for oy, ox in itertools.product(range(ho), range(wo)):
        uncovered = oy >= hc or ox >= wc
        for iy, ix in itertools.product(rows_of(oy), cols_of(ox)):
            padded = not (0 <= iy < h and 0 <= ix < w)
            if padded or uncovered:
                want_out.add((oy, ox))
                want_src.add((h - 1 - abs(h - 1 - abs(iy)), w - 1 - abs(w - 1 - abs(ix))))
    got_out = [tuple(p) for p in out_pos.tolist()]
    got_src = [tuple(p) for p in src_pos.tolist()]
    assert len(got_out) == len(set(got_out)) and set(got_out) == want_out
    assert len(got_src) == len(set(got_src)) and want_src <= set(got_src)


# ---------------------------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------------------------
def test_module_matches_nn_conv_reflect():
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")
    ours = ReflectConv2d(4, 6, 3, padding=1)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 9, 7)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_module_from_conv_shares_parameters():
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)  # zero padding: converted to reflect
    new = ReflectConv2d.from_conv(conv)
    assert new.weight is conv.weight and new.bias is None
    assert list(new.state_dict()) == list(conv.state_dict()) and new.padding_mode == "reflect"
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(new(x), reference.reflect_conv2d(x, conv.weight, None, 1, 1), rtol=1e-5, atol=1e-5)
    down = ReflectConv2d.from_conv(nn.Conv2d(3, 3, 3, stride=2), pad4=(0, 1, 0, 1))
    torch.testing.assert_close(
        down(x), reference.reflect_conv2d(x, down.weight, down.bias, 2, (0, 1, 0, 1)), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(TypeError, match="Conv2d"):
        ReflectConv2d.from_conv(nn.Linear(2, 2))


def test_module_downsample_and_fallbacks():
    down = ReflectConv2d(4, 4, 3, stride=2, pad4=(0, 1, 0, 1))
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(
        down(x), reference.reflect_conv2d(x, down.weight, down.bias, 2, (0, 1, 0, 1)), rtol=1e-5, atol=1e-5
    )
    grouped = ReflectConv2d(4, 4, 3, padding=1, groups=2)  # not covered by the op: eager path
    ref = nn.Conv2d(4, 4, 3, padding=1, groups=2, padding_mode="reflect")
    ref.load_state_dict(grouped.state_dict())
    torch.testing.assert_close(grouped(x), ref(x))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def _x(*shape, **kw):
    return torch.randn(*shape, **kw)


BAD = [
    (lambda: vk.reflect_conv2d(_x(1, 2, 3, 3), _x(4, 2, 3, 3), padding=3), ValueError, r"<= W-1 = 2"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 3), _x(4, 2, 3, 3), padding=(0, 1, 0, 5)), ValueError, r"H-1 = 4"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 3)), ValueError, "weight must be 4-D"),
    (lambda: vk.reflect_conv2d(_x(2, 5, 5), _x(4, 2, 3, 3)), ValueError, "x must be 4-D"),
    (lambda: vk.reflect_conv2d(_x(1, 3, 5, 5), _x(4, 2, 3, 3)), ValueError, "C_in=2"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 2, 2)), ValueError, "odd"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 3, 3), stride=0), ValueError, "stride"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 3, 3), stride=1.5), TypeError, "stride"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 3, 3), stride=(1, 2)), ValueError, "stride"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 3, 3).double()), TypeError, "dtype"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 3, 3), _x(4).half()), TypeError, "dtype"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 3, 3, device="meta")), ValueError, "device"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 3, 3), _x(3)), ValueError, "bias"),
    (lambda: vk.reflect_conv2d(torch.ones(1, 2, 5, 5, dtype=torch.int32), _x(4, 2, 3, 3)), TypeError, "x"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 3, 3), padding=-1), ValueError, "padding"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 3, 3), padding=(1, 1, 1)), ValueError, "padding"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 5, 5), _x(4, 2, 3, 3), padding=1.0), TypeError, "padding"),
    (lambda: vk.reflect_conv2d(_x(1, 2, 1, 1), _x(4, 2, 3, 3), padding=0), ValueError, "smaller than the kernel"),
    (lambda: vk.reflect_conv2d(_x(1, 0, 5, 5), _x(4, 0, 3, 3)), ValueError, "channel"),
    (lambda: rc.set_design("fastest"), ValueError, "design"),
]


@pytest.mark.parametrize("call,exc,word", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input(call, exc, word):
    with pytest.raises(exc, match=word):
        call()


def test_cpu_auto_runs_the_eager_design_without_timing():
    """auto on cpp follows a fixed rule (the plain path), so runs and resumes stay bit-identical."""
    if not _backend.cpp_usable(torch.device("cpu"))[0]:
        pytest.skip("C++ extension unavailable")
    rc.clear_design_decisions()
    with vk.use_backend("cpp"), rc.use_design("auto"):
        x, w, b, s, pad = make(CASES["down_odd"], torch.float32, "cpu", False, seed=6)
        y = vk.reflect_conv2d(x, w, b, s, pad)
        with rc.use_design("eager"):
            y_eager = vk.reflect_conv2d(x, w, b, s, pad)
    assert rc.design_decisions() == {} and rc.design_timings() == {}
    assert torch.equal(y, y_eager)


def test_cpu_auto_is_the_plain_composite_outside_the_custom_op():
    """auto on cpp: reflect_conv2d is F.pad + F.conv2d itself, so eager autograd is eager's bit for
    bit, and torch.compile sees the two calls (no vivat op in its graph)."""
    if not _backend.cpp_usable(torch.device("cpu"))[0]:
        pytest.skip("C++ extension unavailable")
    for channels_last in (False, True):
        x, w, b, s, pad = make(CASES["down_odd"], torch.float32, "cpu", channels_last, seed=7)
        x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
        with vk.use_backend("cpp"), rc.use_design("auto"):
            y = vk.reflect_conv2d(x, w, b, s, pad)
        assert "vivat" not in y.grad_fn.name().lower()
        pad4 = reference.reflect_pad4(pad if isinstance(pad, int) else tuple(pad))
        y_ref = F.conv2d(F.pad(x, pad4, mode="reflect"), w, b, s)
        assert torch.equal(y, y_ref)
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        dy = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, w, b), dy)
        want = torch.autograd.grad(y_ref, (x, w, b), dy)
        assert all(torch.equal(g, r) for g, r in zip(got, want))

    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    x, w, b, s, pad = make(CASES["down_odd"], torch.float32, "cpu", False, seed=8)
    with vk.use_backend("cpp"), rc.use_design("auto"):
        fn = torch.compile(lambda a: vk.reflect_conv2d(a, w, b, s, pad), fullgraph=True, backend=counter)
        torch.testing.assert_close(fn(x), F.conv2d(F.pad(x, reference.reflect_pad4(pad), mode="reflect"), w, b, s))
    assert counter.frame_count == 1
    graph_ops = {str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert not any("vivat" in t for t in graph_ops)


def test_cpu_timed_times_every_design_once_and_caches_the_fastest():
    """timed on cpp: the first call per (phase, shape) times eager, slab and border on the real
    inputs and keeps the fastest (forward and backward apart); later calls reuse the choice."""
    if not _backend.cpp_usable(torch.device("cpu"))[0]:
        pytest.skip("C++ extension unavailable")
    rc.clear_design_decisions()
    with vk.use_backend("cpp"), rc.use_design("timed"):
        x, w, b, s, pad = make(CASES["down_odd"], torch.float32, "cpu", False, seed=5)
        y = vk.reflect_conv2d(x, w, b, s, pad)
        dy = torch.randn_like(y)
        grads = torch.autograd.grad(y, (x, w, b), dy)
        decisions = rc.design_decisions()
        again = torch.autograd.grad(vk.reflect_conv2d(x, w, b, s, pad), (x, w, b), dy)
        assert rc.design_decisions() == decisions  # cached: nothing timed again
        assert rc.last_design("fwd", x, w, s, pad) == decisions[next(k for k in decisions if k[0] == "fwd")]
    assert sorted(k[0] for k in decisions) == ["bwd", "fwd"]
    assert set(decisions.values()) <= set(rc.BACKEND_DESIGNS["cpp"])
    for timings in rc.design_timings().values():
        assert set(timings) == set(rc.BACKEND_DESIGNS["cpp"]) and all(t > 0 for t in timings.values())
    _, rgrads = reference_grads(x, w, b, s, pad, dy)
    for got, want, rep, what in zip(grads, rgrads, again, ("dx", "dw", "db")):
        assert_close(got, want, torch.float32, what)
        assert torch.equal(got, rep), f"{what} is not bitwise reproducible"
    with vk.use_backend("cpp"), rc.use_design("implicit_gemm"), pytest.raises(RuntimeError, match="cannot run"):
        vk.reflect_conv2d(x, w, b, s, pad)


def test_design_env(monkeypatch):
    monkeypatch.setenv("VIVAT_REFLECT_CONV_DESIGN", "implicit_gemm")
    assert rc.get_design() == "implicit_gemm"
    with rc.use_design("border"):
        assert rc.get_design() == "border"
    monkeypatch.setenv("VIVAT_REFLECT_CONV_DESIGN", "nope")
    with pytest.raises(ValueError, match="DESIGN"):
        rc.get_design()


# ---------------------------------------------------------------------------------------------
# GPU only (bench/gpu_check.sh): VAE-like shapes, bf16, both designs and the timed choice
# ---------------------------------------------------------------------------------------------
GPU_CASES = {
    "c128": (1, 128, 128, 64, 48, 3, 1, 1),
    "rgb_in": (1, 3, 128, 64, 64, 3, 1, 1),
    "rgb_out": (2, 128, 3, 33, 64, 3, 1, 1),
    "down": (1, 128, 128, 64, 64, 3, 2, (0, 1, 0, 1)),
    "c512": (1, 512, 512, 16, 16, 3, 1, 1),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("design", ["border", "implicit_gemm", "slab", "eager"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gpu_vae_shapes_bf16(name, channels_last, design):
    with vk.use_backend("triton"), rc.use_design(design):
        x, w, b, s, pad = make(GPU_CASES[name], torch.bfloat16, "cuda", channels_last, seed=1)
        y = vk.reflect_conv2d(x, w, b, s, pad)
        dy = torch.randn_like(y)
        grads = torch.autograd.grad(y, (x, w, b), dy)
        again = torch.autograd.grad(vk.reflect_conv2d(x, w, b, s, pad), (x, w, b), dy)
    for a, c in zip(grads, again):
        assert torch.equal(a, c), "backward is not bitwise reproducible"
    xr, wr, br = (t.detach().float().requires_grad_(True) for t in (x, w, b))
    ref = reference.reflect_conv2d(xr, wr, br, s, pad)
    rgrads = torch.autograd.grad(ref, (xr, wr, br), dy.float())
    for got, want, what in ((y, ref, "y"), *zip(grads, rgrads, ("dx", "dw", "db"))):
        rel = ((got.float() - want).norm() / want.norm()).item()
        assert rel < 1e-2, (what, rel)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_auto_design_is_timed_and_cached():
    rc.clear_design_decisions()
    with vk.use_backend("triton"), rc.use_design("auto"):
        x, w, b, s, pad = make(GPU_CASES["c128"], torch.bfloat16, "cuda", True, seed=2)
        y = vk.reflect_conv2d(x, w, b, s, pad)
        torch.autograd.grad(y, (x, w, b), torch.randn_like(y))
    phases = sorted(k[0] for k in rc.design_decisions())
    assert phases == ["bwd", "fwd"]
    assert set(rc.design_decisions().values()) <= set(rc.BACKEND_DESIGNS["triton"])
