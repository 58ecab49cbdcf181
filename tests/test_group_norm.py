"""The fused GroupNorm family against the eager reference, on every backend that runs here."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import poisoned_outputs, tol

import vivat_kernels as vk
from vivat_kernels import reference
from vivat_kernels.ops import group_norm as gn_op
from vivat_kernels.ops.group_norm import nearest_source_index

# (N, C, G, H, W, low-res size of gamma/beta or None): odd sizes, C/G in {1, 3, 5, 8, 12},
# h = H, h = H/8, and non-integer ratios (26 -> 44 is where integer index math goes wrong).
SHAPES = [
    (1, 8, 1, 7, 9, None),  # C/G = 8
    (3, 12, 4, 5, 6, (5, 6)),  # C/G = 3, full-resolution gamma
    (1, 10, 2, 16, 24, (2, 3)),  # C/G = 5, h = H/8
    (2, 15, 5, 44, 13, (26, 5)),  # C/G = 3, non-integer ratios
    (1, 3, 3, 9, 11, (3, 4)),  # C/G = 1
    (1, 24, 2, 8, 8, (1, 1)),  # C/G = 12, a single source pixel
]

# Flag combinations (weight, bias, gamma, beta, act): every flag on and off somewhere.
FLAGS = [
    (True, True, True, True, "silu"),
    (False, False, False, False, None),
    (True, False, True, False, None),
    (False, True, False, True, "silu"),
]


def make_inputs(shape, flags, dtype, device, channels_last, large_mean=False, seed=None):
    n, c, g, h, w, low = shape
    use_w, use_b, use_g, use_bt, act = flags
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    if large_mean:
        x = x + 1000.0
    args = dict(
        weight=torch.randn(c, generator=gen, dtype=torch.float64) if use_w else None,
        bias=torch.randn(c, generator=gen, dtype=torch.float64) if use_b else None,
    )
    size = low or (h, w)
    gamma = torch.randn(n, c, *size, generator=gen, dtype=torch.float64) if (use_g and low) else None
    beta = torch.randn(n, c, *size, generator=gen, dtype=torch.float64) if (use_bt and low) else None

    def cast(t):
        if t is None:
            return None
        t = t.to(device=device, dtype=dtype)
        return t.contiguous(memory_format=torch.channels_last) if (channels_last and t.dim() == 4) else t

    return cast(x), {k: cast(v) for k, v in args.items()}, dict(gamma=cast(gamma), beta=cast(beta), act=act), g


def run(x, g, params, extra, backend=None):
    if backend is None:
        return vk.fused_group_norm(x, g, params["weight"], params["bias"], eps=1e-6, **extra)
    with vk.use_backend(backend):
        return vk.fused_group_norm(x, g, params["weight"], params["bias"], eps=1e-6, **extra)


def reference_of(x, g, params, extra, dtype):
    """Reference in float64 on CPU, from the same (possibly rounded) inputs."""

    def up(t):
        return None if t is None else t.detach().cpu().double()

    return reference.group_norm(
        up(x),
        g,
        up(params["weight"]),
        up(params["bias"]),
        gamma=up(extra["gamma"]),
        beta=up(extra["beta"]),
        eps=1e-6,
        act=extra["act"],
    )


CASES = [
    pytest.param(shape, flags, id=f"{'x'.join(map(str, shape[:5]))}-low{shape[5]}-f{i}")
    for shape, (i, flags) in itertools.product(SHAPES, enumerate(FLAGS))
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape,flags", CASES)
def test_forward_backward_fp32(target, shape, flags, channels_last):
    _, device = target
    x, params, extra, g = make_inputs(shape, flags, torch.float32, device, channels_last)
    leaves = [t for t in (x, *params.values(), extra["gamma"], extra["beta"]) if t is not None]
    for t in leaves:
        t.requires_grad_(True)
    with poisoned_outputs():
        y = run(x, g, params, extra)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    ref_leaves = [t.detach().cpu().double().requires_grad_(True) for t in leaves]
    it = iter(ref_leaves)
    rx = next(it)
    rp = {k: (next(it) if v is not None else None) for k, v in params.items()}
    rg = next(it) if extra["gamma"] is not None else None
    rb = next(it) if extra["beta"] is not None else None
    ry = reference.group_norm(rx, g, rp["weight"], rp["bias"], gamma=rg, beta=rb, eps=1e-6, act=extra["act"])
    torch.testing.assert_close(y.detach().cpu().double(), ry.detach(), **tol(torch.float32))

    dy = torch.randn_like(y)
    with poisoned_outputs():
        grads = torch.autograd.grad(y, leaves, dy)
    rgrads = torch.autograd.grad(ry, ref_leaves, dy.detach().cpu().double())
    for got, want, leaf in zip(grads, rgrads, leaves):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype
        scale = want.abs().max().item() + 1.0
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3]], ids=["plain", "ratio"])
def test_bf16(target, shape, channels_last):
    _, device = target
    x, params, extra, g = make_inputs(shape, FLAGS[0], torch.bfloat16, device, channels_last)
    x.requires_grad_(True)
    y = run(x, g, params, extra)
    assert y.dtype == torch.bfloat16
    ry = reference_of(x, g, params, extra, torch.bfloat16)
    torch.testing.assert_close(y.detach().cpu().double(), ry, **tol(torch.bfloat16))
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    xr = x.detach().cpu().double().requires_grad_(True)
    ry = reference.group_norm(
        xr,
        g,
        *(None if t is None else t.cpu().double() for t in params.values()),
        gamma=None if extra["gamma"] is None else extra["gamma"].cpu().double(),
        beta=None if extra["beta"] is None else extra["beta"].cpu().double(),
        eps=1e-6,
        act=extra["act"],
    )
    (rdx,) = torch.autograd.grad(ry, xr, dy.cpu().double())
    scale = rdx.abs().max().item()
    torch.testing.assert_close(dx.cpu().double(), rdx, rtol=3e-2, atol=3e-2 * scale)


def test_fp32_params_with_bf16_activations(target):
    """Mixed precision training: fp32 weight/bias with bf16 x is accepted and matches."""
    _, device = target
    x = torch.randn(2, 8, 6, 7, device=device).bfloat16()
    w = torch.randn(8, device=device)
    b = torch.randn(8, device=device)
    y = vk.fused_group_norm(x, 4, w, b, act="silu")
    ref = reference.group_norm(x.double(), 4, w.double(), b.double(), act="silu")
    torch.testing.assert_close(y.double(), ref.to(y.device), **tol(torch.bfloat16))


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3]], ids=["full", "ratio"])
def test_gradcheck_fp64(target, shape):
    backend, device = target
    n, c, g, h, w, low = shape
    # keep it small: gradcheck is O(numel^2). The Triton interpreter runs each of the many
    # perturbed forwards program by program, so it gets a smaller image and the fast mode
    # (a random projection of the Jacobian instead of every column).
    interpreted = backend == "triton" and device == "cpu"
    n, h, w = 1, min(h, 5 if interpreted else 9), min(w, 4 if interpreted else 7)
    low = (min(low[0], h), min(low[1], w))
    x = torch.randn(n, c, h, w, dtype=torch.float64, device=device, requires_grad=True)
    wt = torch.randn(c, dtype=torch.float64, device=device, requires_grad=True)
    bs = torch.randn(c, dtype=torch.float64, device=device, requires_grad=True)
    gm = torch.randn(n, c, *low, dtype=torch.float64, device=device, requires_grad=True)
    bt = torch.randn(n, c, *low, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x, wt, bs, gm, bt):
        return vk.fused_group_norm(x, g, wt, bs, gamma=gm, beta=bt, act="silu")

    assert torch.autograd.gradcheck(fn, (x, wt, bs, gm, bt), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=interpreted)


def test_large_mean_and_constant_groups(target):
    _, device = target
    x = 1000.0 + torch.randn(2, 6, 9, 7, device=device)
    x[0, :3] = 3.25  # a constant group: variance 0, output must be finite (= bias)
    w, b = torch.randn(6, device=device), torch.randn(6, device=device)
    y = vk.fused_group_norm(x, 2, w, b)
    ref = reference.group_norm(x.double(), 2, w.double(), b.double())
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-3)
    mean, rstd = reference.group_stats(x, 2, 1e-6)
    from vivat_kernels.ops.group_norm import group_norm_fwd

    _, kmean, krstd = group_norm_fwd(x, w, b, None, None, 2, 1e-6, "none")
    torch.testing.assert_close(kmean, mean, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(krstd, rstd, rtol=1e-4, atol=1e-4)


def test_nan_stays_in_its_group(target):
    _, device = target
    x = torch.randn(2, 8, 5, 5, device=device)
    x[1, 5, 2, 3] = float("nan")  # sample 1, group 2 (channels 4..5) with G = 4
    y = vk.fused_group_norm(x, 4, act="silu")
    bad = torch.isnan(y)
    assert bad[1, 4:6].all()
    bad[1, 4:6] = False
    assert not bad.any()


def test_nearest_index_rule_matches_interpolate(target):
    """gamma encodes its own coordinates, so any index error shows as a wrong value."""
    _, device = target
    for (h, H), (w, W) in [((26, 44), (3, 5)), ((7, 16), (13, 17)), ((5, 40), (9, 72))]:
        rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(1, 2, h, w)
        cols = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(1, 2, h, w)
        beta = (rows * 1000 + cols).contiguous().to(device)
        x = torch.zeros(1, 2, H, W, device=device)
        x[:, :, 0, 0] = 1.0  # nonzero variance so the normalised value is finite
        y = vk.fused_group_norm(x, 1, gamma=torch.zeros_like(beta), beta=beta)
        want = F.interpolate(beta, size=(H, W), mode="nearest")
        torch.testing.assert_close(y, want)
    torch.testing.assert_close(
        nearest_source_index(26, 44), F.interpolate(torch.arange(26.0).view(1, 1, 26, 1), size=(44, 1)).view(-1).long()
    )


def test_empty_batch(target):
    _, device = target
    x = torch.randn(0, 8, 5, 5, device=device, requires_grad=True)
    y = vk.fused_group_norm(x, 4, act="silu")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_deterministic(target):
    _, device = target
    x = torch.randn(1, 32, 33, 31, device=device, requires_grad=True)
    gm = torch.randn(1, 32, 5, 4, device=device, requires_grad=True)
    dy = torch.randn_like(x)
    outs = []
    for _ in range(2):
        y = vk.fused_group_norm(x, 8, gamma=gm, beta=gm, act="silu")
        outs.append((y, *torch.autograd.grad(y, (x, gm), dy)))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# registration: opcheck and compile (torch backend logic is backend independent; run on each)
# ---------------------------------------------------------------------------------------------
def test_opcheck(target):
    _, device = target
    x = torch.randn(2, 6, 5, 7, device=device, requires_grad=True)
    w = torch.randn(6, device=device, requires_grad=True)
    gm = torch.randn(2, 6, 3, 4, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.vivat.group_norm_fwd.default, (x, w, None, gm, gm, 3, 1e-6, "silu"))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    gc = gm.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    torch.library.opcheck(torch.ops.vivat.group_norm_fwd.default, (xc, None, w, gc, None, 2, 1e-5, "none"))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
BAD = [
    (lambda: vk.fused_group_norm(torch.randn(8, 5, 5), 4), ValueError, "4-D"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 4), ValueError, "divide"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 0), ValueError, "num_groups"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 2.0), TypeError, "num_groups"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 2, gamma=torch.randn(2, 6, 2, 2)), ValueError, "gamma"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 2, gamma=torch.randn(1, 4, 2, 2)), ValueError, "gamma"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 2, beta=torch.randn(1, 6, 6, 2)), ValueError, "beta"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 2, beta=torch.randn(6, 2, 2)), ValueError, "beta"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 2, torch.randn(6).double()), TypeError, "weight"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 2, torch.randn(5)), ValueError, "weight"),
    (
        lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5).bfloat16(), 2, gamma=torch.randn(1, 6, 2, 2).half()),
        TypeError,
        "gamma",
    ),
    (lambda: vk.fused_group_norm(torch.randint(0, 5, (1, 6, 5, 5)), 2), TypeError, "x"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 2, eps=0.0), ValueError, "eps"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 2, eps=-1e-5), ValueError, "eps"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 2, act="relu"), ValueError, "act"),
    (lambda: vk.fused_group_norm([[1.0]], 2), TypeError, "x"),
    (lambda: vk.fused_group_norm(torch.randn(1, 6, 5, 5), 2, bias=torch.randn(6, device="meta")), ValueError, "device"),
    (lambda: vk.set_backend("cuda"), ValueError, "backend"),
]


@pytest.mark.parametrize("call,exc,word", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input(call, exc, word):
    with pytest.raises(exc, match=word):
        call()


def test_forced_backend_that_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gn_op.clear_caches()  # the resolution is cached per (forced backend, device, dtype)
    with vk.use_backend("triton"):
        if torch.cuda.is_available():
            pytest.skip("triton can run here")
        with pytest.raises(RuntimeError, match="triton"):
            vk.fused_group_norm(torch.randn(1, 4, 3, 3), 2)


def test_env_backend(monkeypatch):
    monkeypatch.setenv("VIVAT_BACKEND", "torch")
    assert vk.get_backend() == "torch"
    monkeypatch.setenv("VIVAT_BACKEND", "nope")
    with pytest.raises(ValueError, match="VIVAT_BACKEND|backend"):
        vk.get_backend()


# ---------------------------------------------------------------------------------------------
# GPU only: the big shape that needs chunked reductions to fill the chip (bench/gpu_check.sh)
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_gpu_large_bf16(channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(1, 128, 1024, 1024, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=fmt)
    w = torch.randn(128, device="cuda")
    b = torch.randn(128, device="cuda")
    gm = torch.randn(1, 128, 128, 128, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=fmt)
    bt = torch.randn_like(gm)
    x.requires_grad_(True)
    gm.requires_grad_(True)
    with vk.use_backend("triton"):
        y = vk.fused_group_norm(x, 32, w, b, gamma=gm, beta=bt, act="silu")
        dy = torch.randn_like(y)
        dx, dgm = torch.autograd.grad(y, (x, gm), dy)
    xr, gr = x.detach().float().requires_grad_(True), gm.detach().float().requires_grad_(True)
    ref = reference.group_norm(xr, 32, w, b, gamma=gr, beta=bt.float(), act="silu")
    rdx, rdg = torch.autograd.grad(ref, (xr, gr), dy.float())
    for got, want in ((y, ref), (dx, rdx), (dgm, rdg)):
        rel = ((got.float() - want).norm() / want.norm()).item()
        assert rel < 1e-2, rel


def test_full_resolution_beta_without_act(target):
    """dbeta at full resolution with no activation is dy itself: it must come back as a copy."""
    _, device = target
    x = torch.randn(2, 6, 5, 4, device=device, requires_grad=True)
    bt = torch.randn(2, 6, 5, 4, device=device, requires_grad=True)
    y = vk.fused_group_norm(x, 3, beta=bt)
    dy = torch.randn_like(y)
    dx, dbt = torch.autograd.grad(y, (x, bt), dy)
    torch.testing.assert_close(dbt, dy)
    assert dbt.data_ptr() != dy.data_ptr()


# ---------------------------------------------------------------------------------------------
# defaults, empty and degenerate inputs
# ---------------------------------------------------------------------------------------------
def test_default_eps_matches_torch(target):
    """eps defaults to 1e-5 like F.group_norm / nn.GroupNorm (a near-constant group shows it)."""
    _, device = target
    x = torch.randn(2, 6, 5, 5, device=device) * 1e-3
    w, b = torch.randn(6, device=device), torch.randn(6, device=device)
    torch.testing.assert_close(vk.fused_group_norm(x, 3, w, b), F.group_norm(x, 3, w, b), rtol=1e-4, atol=1e-4)
    from vivat_kernels.nn import FusedGroupNorm, SpatialNorm

    assert FusedGroupNorm(3, 6).eps == torch.nn.GroupNorm(3, 6).eps == 1e-5
    assert SpatialNorm(6, 2, num_groups=3).norm_layer.eps == 1e-6


@pytest.mark.parametrize("shape", [(1, 0, 4, 4), (1, 4, 0, 4), (2, 4, 4, 0)], ids=["C0", "H0", "W0"])
def test_empty_channels_or_image_raise(shape):
    with pytest.raises(ValueError, match="C, H, W >= 1"):
        vk.fused_group_norm(torch.randn(shape), 2 if shape[1] else 1)


def test_empty_batch_no_warning(target, recwarn):
    _, device = target
    x = torch.randn(0, 8, 5, 5, device=device)
    y = vk.fused_group_norm(x, 4, torch.randn(8, device=device), act="silu")
    assert y.shape == x.shape
    assert not [w for w in recwarn if "var_mean" in str(w.message)]
    mean, rstd = reference.group_stats(x, 4, 1e-5)
    assert mean.shape == rstd.shape == (0, 4)


def test_reference_bias_without_weight_matches_formula():
    """The reference adds a weightless bias outside F.group_norm (whose backward fails for it on
    torch <= 2.13); its value and gradients must equal the plain formula."""
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = reference.group_norm(x, 3, None, b, eps=1e-5)
    xs = x.reshape(2, 3, -1)
    want = (xs - xs.mean(-1, keepdim=True)) / torch.sqrt(xs.var(-1, unbiased=False, keepdim=True) + 1e-5)
    want = want.reshape(x.shape) + b.view(1, 6, 1, 1)
    torch.testing.assert_close(y, want)
    dy = torch.randn_like(y)
    for got, exp in zip(torch.autograd.grad(y, (x, b), dy), torch.autograd.grad(want, (x, b), dy)):
        torch.testing.assert_close(got, exp)


# ---------------------------------------------------------------------------------------------
# auto: the fused kernel or plain eager ATen, per call shape
# ---------------------------------------------------------------------------------------------
def test_auto_considers_eager_and_reports(monkeypatch):
    ok, why = vk._backend.cpp_usable(torch.device("cpu"))
    if not ok:
        pytest.skip(why)
    gn_op.clear_caches()
    vk.set_backend(None)
    monkeypatch.setattr(gn_op, "AUTO_EAGER_DEVICES", ("cuda", "cpu"))  # CPU keeps cpp by default
    x = torch.randn(1, 8, 4, 4)
    y = vk.fused_group_norm(x, 4, act="silu")
    backend, why = gn_op.last_selection()
    assert backend in ("eager", "cpp") and "auto" in why
    assert gn_op.selected_backend(x, 4, act="silu") == (backend, why)
    torch.testing.assert_close(y, F.silu(F.group_norm(x, 4, eps=1e-5)), rtol=1e-5, atol=1e-5)
    # a large tensor skips the timing and takes the fused kernel
    monkeypatch.setattr(gn_op, "AUTO_TIMED_NUMEL", 16)
    vk.fused_group_norm(torch.randn(1, 8, 5, 5), 4)
    assert gn_op.last_selection()[0] == "cpp" and "large tensor" in gn_op.last_selection()[1]
    # the timed choice is made once per shape, then reused
    calls = []
    monkeypatch.setattr(gn_op, "_auto_choice", lambda *a: calls.append(a) or ("eager", "stub"))
    monkeypatch.setattr(gn_op, "AUTO_TIMED_NUMEL", 1 << 22)
    for _ in range(3):
        vk.fused_group_norm(torch.randn(1, 8, 6, 6, requires_grad=True), 4)
    assert len(calls) == 1 and gn_op.last_selection() == ("eager", "stub")
    # a forced backend is used as named
    with vk.use_backend("cpp"):
        vk.fused_group_norm(torch.randn(1, 8, 6, 6), 4)
        assert gn_op.last_selection()[0] == "cpp"


def test_auto_keeps_cpp_on_cpu():
    ok, why = vk._backend.cpp_usable(torch.device("cpu"))
    if not ok:
        pytest.skip(why)
    gn_op.clear_caches()
    vk.set_backend(None)
    vk.fused_group_norm(torch.randn(1, 8, 4, 4), 4, act="silu")
    assert gn_op.last_selection()[0] == "cpp"


def test_eager_candidate_matches_reference():
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    gm = torch.randn(2, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    y = gn_op._eager(x, 3, None, b, gm, gm, 1e-5, "silu")
    r = reference.group_norm(x, 3, None, b, gamma=gm, beta=gm, eps=1e-5, act="silu")
    torch.testing.assert_close(y, r)
    dy = torch.randn_like(y)
    for got, exp in zip(torch.autograd.grad(y, (x, b, gm), dy), torch.autograd.grad(r, (x, b, gm), dy)):
        torch.testing.assert_close(got, exp)


# ---------------------------------------------------------------------------------------------
# triton designs: per-group (one tile, looped), split; tall low-res cells split into row pieces
# ---------------------------------------------------------------------------------------------
DESIGNS = {
    "group1": {"design": "group"},
    "grouploop": {"design": "group", "group_tile_elems": 16, "tile_bytes": 1024},
    "split": {"design": "split", "tile_bytes": 1024, "min_iters": 1},
    "pieces": {"design": "split", "tile_bytes": 1024, "program_elems": 32, "cl_rows": 1},
}


@pytest.fixture
def triton_tune(monkeypatch):
    if vk._backend.triton_import_error() is not None or not vk._backend.triton_interpret():
        pytest.skip("needs triton under TRITON_INTERPRET=1")
    from vivat_kernels.triton import group_norm as tgn

    def apply(overrides):
        for k, v in overrides.items():
            monkeypatch.setitem(tgn._TUNE, k, v)
        tgn.clear_plans()

    yield apply
    tgn.clear_plans()


@pytest.mark.parametrize("design", list(DESIGNS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize(
    "shape,flags",
    [(SHAPES[3], FLAGS[0]), (SHAPES[2], FLAGS[3]), (SHAPES[1], FLAGS[2])],
    ids=["ratio-f0", "h8-f3", "full-f2"],
)
def test_triton_designs(triton_tune, design, channels_last, shape, flags):
    triton_tune(DESIGNS[design])
    x, params, extra, g = make_inputs(shape, flags, torch.float32, "cpu", channels_last)
    leaves = [t for t in (x, *params.values(), extra["gamma"], extra["beta"]) if t is not None]
    for t in leaves:
        t.requires_grad_(True)
    with vk.use_backend("triton"), poisoned_outputs():
        y = run(x, g, params, extra)
        dy = torch.randn_like(y)
        grads = torch.autograd.grad(y, leaves, dy)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    it = iter(ref_leaves)
    rx = next(it)
    rp = {k: (next(it) if v is not None else None) for k, v in params.items()}
    rg = next(it) if extra["gamma"] is not None else None
    rb = next(it) if extra["beta"] is not None else None
    ry = reference.group_norm(rx, g, rp["weight"], rp["bias"], gamma=rg, beta=rb, eps=1e-6, act=extra["act"])
    torch.testing.assert_close(y.double(), ry.detach(), **tol(torch.float32))
    for got, want in zip(grads, torch.autograd.grad(ry, ref_leaves, dy.double())):
        scale = want.abs().max().item() + 1.0
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("design", ["group1", "grouploop", "split"])
def test_triton_designs_large_mean_and_stats(triton_tune, design):
    triton_tune(DESIGNS[design])
    from vivat_kernels.triton import group_norm as tgn

    x = 1000.0 + torch.randn(2, 6, 9, 7)
    x[0, :3] = 3.25  # a constant group
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        y, mean, rstd = tgn.group_norm_fwd(xx, None, None, None, None, 2, 1e-6, False)
        rmean, rrstd = reference.group_stats(x, 2, 1e-6)
        torch.testing.assert_close(mean, rmean, rtol=1e-6, atol=1e-4)
        torch.testing.assert_close(rstd, rrstd, rtol=1e-4, atol=1e-4)
        assert torch.isfinite(y).all()
