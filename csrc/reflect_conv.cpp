// Border terms of the reflect-padded convolution, CPU.
//
// The "border" design computes conv2d(pad_reflect(x), w) as a zero-padded library conv (oneDNN)
// plus these terms, which touch only the output positions whose window reaches into the padding
// and the input positions that the padding mirrors. Contract (see vivat_kernels/ops/reflect_conv.py):
//
//   x (N, C, H, W), weight (CO, C, KH, KW), y/dy (N, CO, HO, WO): any strides (NCHW and
//   channels_last both run without copies); float32, float64, bfloat16 or float16, one dtype;
//   accumulation in float32 (float64 for float64).
//   pad = (left, right, top, bottom); an output position (oy, ox) reads padded row
//   oy*S - top + ky, mirrored into [0, H) by r(i) = (H-1) - |(H-1) - |i||.
//   "covered" outputs (oy < ho_cov and ox < wo_cov) already hold the zero-padded library result;
//   uncovered ones hold 0 and get every tap plus the bias.
//   out_pos / src_pos: int32 (P, 2) lists of distinct (row, col) positions.
//
// Work is grouped per tap: the listed positions that use a tap are gathered into a (rows x C)
// matrix and multiplied by that tap's weight with at::mm, so the weights are read once per tap
// rather than once per position (a per-position matrix-vector product is bound by reading the
// weights). Bytes: the gathered rows (N * border positions * C) plus the weights, once per tap.
// Every scatter writes distinct rows and the taps run in a fixed order, so results are bitwise
// reproducible for a given thread count.
#include "vivat_ops.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

inline int64_t reflect_index(int64_t i, int64_t L) {
  const int64_t a = i < 0 ? -i : i;
  const int64_t d = (L - 1) - a;
  return (L - 1) - (d < 0 ? -d : d);
}

struct Geometry {
  int64_t N, C, H, W, CO, KH, KW, HO, WO, S, PL, PR, PT, PB, HO_COV, WO_COV, P;
};

Geometry make_geometry(const at::Tensor& x, int64_t co, int64_t kh, int64_t kw, int64_t ho, int64_t wo,
                       int64_t stride, const std::vector<int64_t>& pad4, int64_t ho_cov, int64_t wo_cov,
                       const at::Tensor& pos, int64_t pos_rows, int64_t pos_cols) {
  TORCH_CHECK(x.dim() == 4, "x must be 4-D");
  TORCH_CHECK(pad4.size() == 4, "pad4 must have 4 entries (left, right, top, bottom)");
  TORCH_CHECK(stride >= 1, "stride must be >= 1");
  TORCH_CHECK(x.device().is_cpu() && pos.device().is_cpu(), "CPU tensors expected");
  TORCH_CHECK(pos.scalar_type() == at::kInt && pos.dim() == 2 && pos.size(1) == 2 && pos.is_contiguous(),
              "position list must be a contiguous int32 (P, 2) tensor");
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), co, kh, kw, ho, wo, stride,
             pad4[0], pad4[1], pad4[2], pad4[3], ho_cov, wo_cov, pos.size(0)};
  TORCH_CHECK(g.HO == (g.H + g.PT + g.PB - g.KH) / g.S + 1 && g.WO == (g.W + g.PL + g.PR - g.KW) / g.S + 1,
              "output size does not match x, the kernel, the stride and the padding");
  TORCH_CHECK(g.PT < g.H && g.PB < g.H && g.PL < g.W && g.PR < g.W, "reflect padding must be < the input size");
  const int32_t* p = pos.data_ptr<int32_t>();
  for (int64_t i = 0; i < g.P; ++i) {
    TORCH_CHECK(p[2 * i] >= 0 && p[2 * i] < pos_rows && p[2 * i + 1] >= 0 && p[2 * i + 1] < pos_cols,
                "position out of range");
  }
  return g;
}

// Tasks of at least ~32k element operations: small border terms run inline, without waking threads.
inline int64_t grain(int64_t inner) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(inner, 1)); }

// Rows of a border matrix: r = n * L + i is sample i of image n, with K features (channels).
// The matrix is stored feature-major ((K, rows), "cm") when the source tensor is NCHW, so the
// gather reads along image rows, and row-major ((rows, K)) when it is channels_last; either way
// it is returned as the logical (rows, K) view that at::mm takes without a copy.
inline bool channel_major(const at::Tensor& t) { return t.stride(1) != 1; }

// out(r, k) = src[n, k, at offset off[i]], as float32 / float64.
template <typename scalar_t, typename acc_t>
at::Tensor gather_rows(const at::Tensor& srct, int64_t N, const std::vector<int64_t>& off,
                       const at::TensorOptions& opts) {
  const scalar_t* src = srct.data_ptr<scalar_t>();
  const int64_t K = srct.size(1), L = static_cast<int64_t>(off.size()), R = N * L;
  const int64_t sn = srct.stride(0), sk = srct.stride(1);
  if (channel_major(srct)) {
    at::Tensor buf = at::empty({K, R}, opts);
    acc_t* out = buf.data_ptr<acc_t>();
    at::parallel_for(0, K, grain(R), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        for (int64_t r = 0; r < R; ++r) out[k * R + r] = static_cast<acc_t>(src[(r / L) * sn + k * sk + off[r % L]]);
      }
    });
    return buf.t();
  }
  at::Tensor buf = at::empty({R, K}, opts);
  acc_t* out = buf.data_ptr<acc_t>();
  at::parallel_for(0, R, grain(K), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* s = src + (r / L) * sn + off[r % L];
      for (int64_t k = 0; k < K; ++k) out[r * K + k] = static_cast<acc_t>(s[k * sk]);
    }
  });
  return buf;
}

// (rows, K) x (K, W) in the layout of `like_cm`: the product of a feature-major gather is
// computed transposed so that it comes out feature-major too.
inline at::Tensor product(const at::Tensor& lhs, const at::Tensor& rhs, bool cm) {
  return cm ? at::mm(rhs.t(), lhs.t()).t() : at::mm(lhs, rhs);
}

// acc(n * P + rows[i], :) += prod(n * L + i, :) for a logical (rows, W) prod and (N * P, W) acc
// of the same orientation; rows distinct, so no two tasks write one element.
template <typename acc_t>
void add_rows(const at::Tensor& prod, const std::vector<int64_t>& rows, int64_t N, int64_t P, at::Tensor& acc,
              bool cm) {
  const int64_t L = static_cast<int64_t>(rows.size()), R = N * L, W = acc.size(1);
  const acc_t* g = prod.data_ptr<acc_t>();
  acc_t* d = acc.data_ptr<acc_t>();
  if (cm) {  // both stored (W, rows)
    at::parallel_for(0, W, grain(R), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        for (int64_t r = 0; r < R; ++r) d[k * N * P + (r / L) * P + rows[r % L]] += g[k * R + r];
      }
    });
    return;
  }
  at::parallel_for(0, R, grain(W), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t* s = g + r * W;
      acc_t* o = d + ((r / L) * P + rows[r % L]) * W;
      for (int64_t k = 0; k < W; ++k) o[k] += s[k];
    }
  });
}

// An (N * P, W) accumulator, stored (W, N * P) when cm.
inline at::Tensor zeros_rows(int64_t R, int64_t W, const at::TensorOptions& opts, bool cm) {
  return cm ? at::zeros({W, R}, opts).t() : at::zeros({R, W}, opts);
}

// t[n, k, at pos p] += acc(n * P + p, k) (+ extra(p, k)), over the listed positions.
template <typename scalar_t, typename acc_t, typename Extra>
void add_to_tensor(at::Tensor& t, const at::Tensor& acc, const int32_t* pos, int64_t N, int64_t P, bool cm,
                   const Extra& extra) {
  const int64_t K = t.size(1);
  const auto ts = t.strides();
  scalar_t* tp = t.data_ptr<scalar_t>();
  const acc_t* ap = acc.data_ptr<acc_t>();
  if (cm) {
    at::parallel_for(0, N * K, grain(P), [&](int64_t begin, int64_t end) {
      for (int64_t nk = begin; nk < end; ++nk) {
        const int64_t n = nk / K, k = nk % K;
        for (int64_t p = 0; p < P; ++p) {
          scalar_t* e = tp + n * ts[0] + k * ts[1] + pos[2 * p] * ts[2] + pos[2 * p + 1] * ts[3];
          *e = static_cast<scalar_t>(static_cast<acc_t>(*e) + ap[k * N * P + n * P + p] + extra(p, k));
        }
      }
    });
    return;
  }
  at::parallel_for(0, N * P, grain(K), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / P, p = r % P;
      scalar_t* e = tp + n * ts[0] + pos[2 * p] * ts[2] + pos[2 * p + 1] * ts[3];
      for (int64_t k = 0; k < K; ++k) {
        e[k * ts[1]] = static_cast<scalar_t>(static_cast<acc_t>(e[k * ts[1]]) + ap[r * K + k] + extra(p, k));
      }
    }
  });
}

// The weight as (KH*KW, CO, C) in the accumulation dtype: one row-major (CO, C) matrix per tap,
// which at::mm takes directly (as is, or transposed). One sequential pass over the weight.
template <typename scalar_t, typename acc_t>
at::Tensor tap_major_weight(const at::Tensor& weight, const at::TensorOptions& opts) {
  const at::Tensor w = weight.contiguous();
  const int64_t CO = w.size(0), C = w.size(1), T = w.size(2) * w.size(3);
  at::Tensor out = at::empty({T, CO, C}, opts);
  const scalar_t* src = w.data_ptr<scalar_t>();
  acc_t* dst = out.data_ptr<acc_t>();
  at::parallel_for(0, CO, grain(C * T), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const scalar_t* row = src + o * C * T;
      for (int64_t t = 0; t < T; ++t) {
        acc_t* d = dst + (t * CO + o) * C;
        for (int64_t c = 0; c < C; ++c) d[c] = static_cast<acc_t>(row[c * T + t]);
      }
    }
  });
  return out;
}

// For one tap: the listed output positions that use it (reads padding, or uncovered) and the
// offset of the mirrored input sample each one reads.
void tap_users(const Geometry& g, const int32_t* pos, at::IntArrayRef xs, int64_t ky, int64_t kx,
               std::vector<int64_t>& rows, std::vector<int64_t>& off) {
  rows.clear();
  off.clear();
  for (int64_t p = 0; p < g.P; ++p) {
    const int64_t oy = pos[2 * p], ox = pos[2 * p + 1];
    const int64_t iy = oy * g.S - g.PT + ky, ix = ox * g.S - g.PL + kx;
    const bool pad = iy < 0 || iy >= g.H || ix < 0 || ix >= g.W;
    if (!(pad || oy >= g.HO_COV || ox >= g.WO_COV)) continue;
    rows.push_back(p);
    off.push_back(reflect_index(iy, g.H) * xs[2] + reflect_index(ix, g.W) * xs[3]);
  }
}

template <typename scalar_t>
void border_fwd_impl(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     at::Tensor& y, const at::Tensor& pos, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const bool cm = channel_major(x);
  const at::Tensor wt = tap_major_weight<scalar_t, acc_t>(weight, opts);
  at::Tensor acc = zeros_rows(g.N * g.P, g.CO, opts, cm);
  const int32_t* pp = pos.data_ptr<int32_t>();
  std::vector<int64_t> rows, off;
  for (int64_t ky = 0; ky < g.KH; ++ky) {
    for (int64_t kx = 0; kx < g.KW; ++kx) {
      tap_users(g, pp, x.strides(), ky, kx, rows, off);
      if (rows.empty()) continue;
      const at::Tensor xg = gather_rows<scalar_t, acc_t>(x, g.N, off, opts);
      const at::Tensor prod = product(xg, wt[ky * g.KW + kx].t(), cm);  // (rows, C) x (C, CO)
      add_rows<acc_t>(prod, rows, g.N, g.P, acc, cm);
    }
  }
  at::Tensor bt;
  if (bias.has_value() && bias->defined()) bt = bias->to(opts.dtype()).contiguous();
  const acc_t* bp = bt.defined() ? bt.data_ptr<acc_t>() : nullptr;
  const int64_t hc = g.HO_COV, wc = g.WO_COV;
  add_to_tensor<scalar_t, acc_t>(y, acc, pp, g.N, g.P, cm, [&](int64_t p, int64_t o) -> acc_t {
    const bool uncovered = pp[2 * p] >= hc || pp[2 * p + 1] >= wc;
    return (uncovered && bp != nullptr) ? bp[o] : acc_t(0);
  });
}

template <typename scalar_t>
void border_dgrad_impl(const at::Tensor& dy, const at::Tensor& weight, at::Tensor& dx, const at::Tensor& pos,
                       const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto opts = dy.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const bool cm = channel_major(dy);
  const at::Tensor wt = tap_major_weight<scalar_t, acc_t>(weight, opts);
  at::Tensor acc = zeros_rows(g.N * g.P, g.C, opts, cm);
  const int32_t* pp = pos.data_ptr<int32_t>();
  const auto ds = dy.strides();
  // Input row h sits at padded row h + top (candidate 0) and is mirrored at top - h (1) and
  // 2(H-1) - h + top (2); likewise for columns. The library dgrad already has candidate (0, 0)
  // from covered outputs. Per tap, the rows of all candidates go through one GEMM; each
  // candidate's rows are distinct input positions, added one candidate after the other.
  std::vector<int64_t> rows[9], off;
  for (int64_t ky = 0; ky < g.KH; ++ky) {
    for (int64_t kx = 0; kx < g.KW; ++kx) {
      off.clear();
      for (int cand = 0; cand < 9; ++cand) {
        const int cy = cand / 3, cx = cand % 3;
        rows[cand].clear();
        for (int64_t q = 0; q < g.P; ++q) {
          const int64_t h = pp[2 * q], w = pp[2 * q + 1];
          int64_t a, b;
          if (cy == 0) a = h + g.PT;
          else if (cy == 1) { if (h < 1 || h > g.PT) continue; a = g.PT - h; }
          else { if (h > g.H - 2 || h < g.H - 1 - g.PB) continue; a = 2 * (g.H - 1) - h + g.PT; }
          if (cx == 0) b = w + g.PL;
          else if (cx == 1) { if (w < 1 || w > g.PL) continue; b = g.PL - w; }
          else { if (w > g.W - 2 || w < g.W - 1 - g.PR) continue; b = 2 * (g.W - 1) - w + g.PL; }
          const int64_t ty = a - ky, tx = b - kx;
          if (ty < 0 || tx < 0 || ty % g.S != 0 || tx % g.S != 0) continue;
          const int64_t py = ty / g.S, px = tx / g.S;
          if (py >= g.HO || px >= g.WO) continue;
          if (cand == 0 && py < g.HO_COV && px < g.WO_COV) continue;
          rows[cand].push_back(q);
          off.push_back(py * ds[2] + px * ds[3]);
        }
      }
      if (off.empty()) continue;
      const int64_t L = static_cast<int64_t>(off.size());
      const at::Tensor dyg = gather_rows<scalar_t, acc_t>(dy, g.N, off, opts);
      // (N*L, CO) x (CO, C), viewed as (N, L, C) to take each candidate's slice of rows.
      const at::Tensor prod = product(dyg, wt[ky * g.KW + kx], cm).view({g.N, L, g.C});
      int64_t first = 0;
      for (int cand = 0; cand < 9; ++cand) {
        const int64_t len = static_cast<int64_t>(rows[cand].size());
        if (len == 0) continue;
        const at::Tensor part = prod.narrow(1, first, len).reshape({g.N * len, g.C});
        const at::Tensor part_laid = cm ? part.t().contiguous().t() : part.contiguous();
        add_rows<acc_t>(part_laid, rows[cand], g.N, g.P, acc, cm);
        first += len;
      }
    }
  }
  add_to_tensor<scalar_t, acc_t>(dx, acc, pp, g.N, g.P, cm, [](int64_t, int64_t) { return acc_t(0); });
}

template <typename scalar_t>
at::Tensor border_wgrad_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& pos, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor dw = at::zeros({g.CO, g.C, g.KH, g.KW}, opts);
  const int32_t* pp = pos.data_ptr<int32_t>();
  const auto ds = dy.strides();
  std::vector<int64_t> rows, off, dy_off;
  for (int64_t ky = 0; ky < g.KH; ++ky) {
    for (int64_t kx = 0; kx < g.KW; ++kx) {
      tap_users(g, pp, x.strides(), ky, kx, rows, off);
      if (rows.empty()) continue;
      dy_off.clear();
      for (int64_t p : rows) dy_off.push_back(pp[2 * p] * ds[2] + pp[2 * p + 1] * ds[3]);
      const at::Tensor xg = gather_rows<scalar_t, acc_t>(x, g.N, off, opts);
      const at::Tensor dyg = gather_rows<scalar_t, acc_t>(dy, g.N, dy_off, opts);
      dw.select(3, kx).select(2, ky).copy_(at::mm(dyg.t(), xg));  // (CO, rows) x (rows, C)
    }
  }
  return dw;
}

void check_dtypes(const at::Tensor& a, const at::Tensor& b, const char* what) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), what, ": dtype mismatch (", a.scalar_type(), " vs ",
              b.scalar_type(), ")");
}

}  // namespace

void reflect_conv2d_border_fwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                               at::Tensor& y, const at::Tensor& out_pos, int64_t stride,
                               const std::vector<int64_t>& pad4, int64_t ho_cov, int64_t wo_cov) {
  check_dtypes(x, weight, "reflect_conv2d_border_fwd");
  check_dtypes(x, y, "reflect_conv2d_border_fwd");
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1) && y.dim() == 4 && y.size(0) == x.size(0) &&
                  y.size(1) == weight.size(0),
              "reflect_conv2d_border_fwd: shapes of x, weight and y do not agree");
  const Geometry g = make_geometry(x, weight.size(0), weight.size(2), weight.size(3), y.size(2), y.size(3), stride,
                                   pad4, ho_cov, wo_cov, out_pos, y.size(2), y.size(3));
  if (g.P == 0 || g.N == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "reflect_conv2d_border_fwd", [&] {
    border_fwd_impl<scalar_t>(x, weight, bias, y, out_pos, g);
  });
}

void reflect_conv2d_border_dgrad(const at::Tensor& dy, const at::Tensor& weight, at::Tensor& dx,
                                 const at::Tensor& src_pos, int64_t stride, const std::vector<int64_t>& pad4,
                                 int64_t ho_cov, int64_t wo_cov) {
  check_dtypes(dy, weight, "reflect_conv2d_border_dgrad");
  check_dtypes(dy, dx, "reflect_conv2d_border_dgrad");
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == dx.size(1) && dy.dim() == 4 && dy.size(0) == dx.size(0) &&
                  dy.size(1) == weight.size(0),
              "reflect_conv2d_border_dgrad: shapes of dy, weight and dx do not agree");
  const Geometry g = make_geometry(dx, weight.size(0), weight.size(2), weight.size(3), dy.size(2), dy.size(3), stride,
                                   pad4, ho_cov, wo_cov, src_pos, dx.size(2), dx.size(3));
  if (g.P == 0 || g.N == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "reflect_conv2d_border_dgrad", [&] {
    border_dgrad_impl<scalar_t>(dy, weight, dx, src_pos, g);
  });
}

at::Tensor reflect_conv2d_border_wgrad(const at::Tensor& dy, const at::Tensor& x, int64_t kh, int64_t kw,
                                       const at::Tensor& out_pos, int64_t stride, const std::vector<int64_t>& pad4,
                                       int64_t ho_cov, int64_t wo_cov) {
  check_dtypes(dy, x, "reflect_conv2d_border_wgrad");
  TORCH_CHECK(dy.dim() == 4 && dy.size(0) == x.size(0), "reflect_conv2d_border_wgrad: shapes of dy and x do not agree");
  const Geometry g = make_geometry(x, dy.size(1), kh, kw, dy.size(2), dy.size(3), stride, pad4, ho_cov, wo_cov,
                                   out_pos, dy.size(2), dy.size(3));
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (g.P == 0 || g.N == 0) return at::zeros({g.CO, g.C, kh, kw}, x.options().dtype(acc_dtype));
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "reflect_conv2d_border_wgrad", [&] {
    out = border_wgrad_impl<scalar_t>(dy, x, out_pos, g);
  });
  return out;
}
