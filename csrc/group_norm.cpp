// Fused GroupNorm family on the CPU:  y = act( GN_affine(x) * up(gamma) + up(beta) ),  act = SiLU or none.
//
// Layouts. x (N, C, H, W) is dense NCHW-contiguous or channels_last-contiguous, and is read in place
// (no copy). y and dx are empty_like(x), so they keep x's layout; dy is brought to x's layout (a no-op
// when it already is). gamma/beta (N, C, h, w), h <= H, w <= W, are in x's memory format and are read
// at low resolution by index: the nearest source row/column of every output row/column is computed
// once with F.interpolate's float32 rule, src = min(floor(dst * (float)h / H), h - 1).
//   NCHW: a group (n, g) is one contiguous span of Cg*H*W elements; a channel plane is H*W. Once per
//         run of output rows that share a source row, the low-resolution gamma/beta rows (w values) are
//         combined with the channel's affine and expanded to W-long coefficient rows (a repeat when W is
//         an exact multiple of w as nearest upsampling gives, a gather otherwise), so the inner loops
//         are contiguous and branch-free; dgamma/dbeta rows are summed back over the same blocks.
//   NHWC: every pixel holds C contiguous channels; inner loops run over the channels, with per-channel
//         coefficient vectors, and gamma/beta pointers chosen per pixel.
//
// Dtypes. x: float32, bfloat16 or float64 (float16 is rejected; the Python side keeps it on the torch
// backend). Accumulation type A = float (double for float64 x): bf16 is widened on load, all maths is
// in A, and each output element is rounded once on store (round to nearest even). weight/bias are
// converted to A up front; gamma/beta are read in x's dtype, or converted to A up front when their
// dtype differs from x's. Statistics: per fixed-size chunk a two-pass (mean, then centred sums) over
// data still in L1/L2, chunks merged in double with Chan's formula in a fixed order. mean/rstd are
// (N, G) in A. dweight/dbias are A; dgamma/dbeta keep gamma/beta's dtype and layout, at low resolution.
//
// Parallelisation (at::parallel_for, OpenMP). Every reduction is split into pieces fixed by the shape
// alone and merged in a fixed order, so results do not depend on the thread count.
//   NCHW, N*G groups fill the threads: one task per (n, g) does stats then normalise (forward), or
//         channel sums then dx (backward), while the group is still in L2/L3. The backward keeps da of
//         the group (float, up to 4 MiB per thread) so that dx needs neither dy nor the SiLU derivative
//         again; the numbers are the same as recomputing it.
//   NCHW, few groups: stats over (n, g, chunk) tasks, merge, then normalise over (n, c, row block);
//         the backward does (n, c) plane sums, a merge, then dx over (n, c, row block).
//   NHWC: per batch of samples sized to stay in cache: stats over blocks of pixels (all groups at once),
//         merge, normalise; the backward sums over blocks of rows that never split the block of a
//         dgamma/dbeta row, merge, then dx. The second pass walks each thread's range backwards, so
//         it starts on what the first pass touched last.
//
// Bytes moved per element of x (s = element size): forward reads x twice and writes y (3s); when a
// group fits in L2/L3 (NCHW, enough groups) the second read is served from cache (about 2s from DRAM).
// Backward reads x and dy twice and writes dx (5s); NCHW with group tasks reads x and dy once from
// DRAM, then x and the kept da from cache (about 3s from DRAM). gamma/beta add (h*w)/(H*W) of that
// (dgamma/dbeta as much again in the backward), plus one W-long expanded row per run of output rows.

#include "vivat_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

using bf16_t = uint16_t;

#define GN_INLINE inline __attribute__((always_inline))

// Stats chunk of an NCHW group span (elements): two passes over it hit L1.
constexpr int64_t kChunk = 4096;
// NHWC stats block: about this many elements, at most kMaxPix pixels (float per-channel partial sums).
constexpr int64_t kNhwcBlock = 16384;
constexpr int64_t kMaxPix = 512;
// NHWC backward row blocks: at least this many elements each.
constexpr int64_t kRowTarget = 32768;
// Samples processed together in NHWC so that the second pass finds them in cache.
constexpr int64_t kCacheBytes = int64_t(16) << 20;
// NCHW backward, one task per group: keep da of the group (this many bytes at most, per thread) from
// the first pass so that the second pass does not recompute it (the activation derivative).
constexpr int64_t kDaCacheBytes = int64_t(4) << 20;

template <class S>
struct AccT {
  using type = float;
};
template <>
struct AccT<double> {
  using type = double;
};

GN_INLINE float load(float v) { return v; }
GN_INLINE double load(double v) { return v; }
GN_INLINE float load(bf16_t v) { return __builtin_bit_cast(float, static_cast<uint32_t>(v) << 16); }

template <class S>
struct Conv;
template <>
struct Conv<float> {
  static GN_INLINE float put(float v) { return v; }
};
template <>
struct Conv<double> {
  static GN_INLINE double put(double v) { return v; }
};
template <>
struct Conv<bf16_t> {
  // Round to nearest even; NaN stays a quiet NaN.
  static GN_INLINE bf16_t put(float v) {
    const uint32_t b = __builtin_bit_cast(uint32_t, v);
    const uint32_t r = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
    return static_cast<bf16_t>(v != v ? 0x7FC0u : r);
  }
};

// e^{-p} for float, branch-free so that the loops calling it vectorise: 2^t with t = -p log2(e) split
// into a nearest integer n (1.5 * 2^23 rounding trick; floorf does not vectorise without
// -fno-trapping-math) and f in [-1/2, 1/2], a degree-5 fit of 2^f (relative error < 1e-7), and n
// placed in the exponent bits. p is clamped to [-87, 87] so n stays in [-126, 126]; a NaN p stays NaN.
GN_INLINE float exp_neg(float p) {
  p = p < -87.0f ? -87.0f : p;
  p = p > 87.0f ? 87.0f : p;
  const float tm = p * -1.44269504088896341f + 12582912.0f;
  const float fn = tm - 12582912.0f;
  float f = __builtin_fmaf(p, -1.44269502162933349609375f, -fn);  // log2(e) = hi + lo
  f = __builtin_fmaf(p, -1.925963033500011079e-08f, f);
  float q = 1.3261102139949799e-3f;
  q = q * f + 9.671514853835106e-3f;
  q = q * f + 5.5507462471723557e-2f;
  q = q * f + 2.4022242426872253e-1f;
  q = q * f + 6.931469440460205e-1f;
  q = q * f + 1.0f;
  // The low mantissa bits of tm hold n (two's complement); shifted into the exponent field, + bias.
  const uint32_t e = (__builtin_bit_cast(uint32_t, tm) << 23) + 0x3F800000u;
  return q * __builtin_bit_cast(float, e);
}

GN_INLINE float sigmoid(float p) { return 1.0f / (1.0f + exp_neg(p)); }
GN_INLINE double exp_neg(double p) { return std::exp(-p); }
GN_INLINE double sigmoid(double p) { return 1.0 / (1.0 + std::exp(-p)); }

template <bool SILU, class A>
GN_INLINE A act(A p) {
  if constexpr (SILU) {
    return p / (A(1) + exp_neg(p));
  } else {
    return p;
  }
}

// dL/dp from dL/dy: dy * silu'(p), silu'(p) = s (1 + p (1 - s)).
template <bool SILU, class A>
GN_INLINE A act_grad(A dy, A p) {
  if constexpr (SILU) {
    const A s = sigmoid(p);
    return dy * (s * (A(1) + p * (A(1) - s)));
  } else {
    return dy;
  }
}

// ------------------------------------------------------------------------------------------------
// statistics
// ------------------------------------------------------------------------------------------------
struct Mom {
  double n, mean, m2;
};

GN_INLINE void mom_merge(Mom& a, const Mom& b) {
  if (b.n == 0) return;
  const double n = a.n + b.n;
  const double d = b.mean - a.mean;
  const double fb = b.n / n;
  a.mean += d * fb;
  a.m2 += b.m2 + d * d * (a.n * fb);
  a.n = n;
}

template <class A>
GN_INLINE void mom_finalize(const Mom& m, double eps, A& mean, A& rstd) {
  double var = m.m2 / m.n;
  var = var < 0 ? 0 : var;  // NaN stays NaN
  mean = static_cast<A>(m.mean);
  rstd = static_cast<A>(1.0 / std::sqrt(var + eps));
}

template <class A, int L>
GN_INLINE A lane_sum(A* v) {
  for (int w = L / 2; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) v[j] += v[j + w];
  return v[0];
}

// Moments of a contiguous span: mean first, then the centred sums of (x - mean) and (x - mean)^2.
template <class S>
Mom span_moments(const S* __restrict p, int64_t n) {
  using A = typename AccT<S>::type;
  constexpr int L = 256 / sizeof(A);  // four 512-bit accumulators
  const int64_t nb = n / L * L;
  alignas(64) A acc[L];
  for (int j = 0; j < L; ++j) acc[j] = 0;
  for (int64_t i = 0; i < nb; i += L) {
#pragma omp simd
    for (int j = 0; j < L; ++j) acc[j] += load(p[i + j]);
  }
  A tail = 0;
  for (int64_t i = nb; i < n; ++i) tail += load(p[i]);
  const A m = (lane_sum<A, L>(acc) + tail) / static_cast<A>(n);

  alignas(64) A a1[L];
  alignas(64) A a2[L];
  for (int j = 0; j < L; ++j) a1[j] = a2[j] = 0;
  for (int64_t i = 0; i < nb; i += L) {
#pragma omp simd
    for (int j = 0; j < L; ++j) {
      const A d = load(p[i + j]) - m;
      a1[j] += d;
      a2[j] += d * d;
    }
  }
  A t1 = 0, t2 = 0;
  for (int64_t i = nb; i < n; ++i) {
    const A d = load(p[i]) - m;
    t1 += d;
    t2 += d * d;
  }
  const double s1 = static_cast<double>(lane_sum<A, L>(a1)) + static_cast<double>(t1);
  const double s2 = static_cast<double>(lane_sum<A, L>(a2)) + static_cast<double>(t2);
  const double dn = static_cast<double>(n);
  return Mom{dn, static_cast<double>(m) + s1 / dn, s2 - s1 * s1 / dn};
}

// ------------------------------------------------------------------------------------------------
// problem description shared by the kernels
// ------------------------------------------------------------------------------------------------
std::vector<int64_t> nearest_index(int64_t src, int64_t dst) {
  std::vector<int64_t> idx(static_cast<size_t>(dst));
  const float scale = static_cast<float>(src) / static_cast<float>(dst);
  for (int64_t d = 0; d < dst; ++d)
    idx[d] = std::min(static_cast<int64_t>(std::floor(static_cast<float>(d) * scale)), src - 1);
  return idx;
}

// How the W output columns read a low-resolution row of width w: k > 0 when column i reads i / k
// exactly (W == k * w), else through the general index col.
struct ColMap {
  int64_t w = 1;
  int64_t k = 0;
  const int64_t* col = nullptr;
};

ColMap make_colmap(const std::vector<int64_t>& col, int64_t w, int64_t W) {
  ColMap m;
  m.w = w;
  m.col = col.data();
  if (W % w == 0) {
    const int64_t k = W / w;
    bool exact = true;
    for (int64_t i = 0; i < W; ++i) exact = exact && col[i] == i / k;
    if (exact) m.k = k;
  }
  return m;
}

template <int K, class A>
GN_INLINE void repeat_k(const A* __restrict src, A* __restrict out, int64_t w) {
  for (int64_t s = 0; s < w; ++s) {
    const A v = src[s];
#pragma GCC unroll 16
    for (int j = 0; j < K; ++j) out[K * s + j] = v;
  }
}

// out[i] = src[column i's source], i < W.
template <class A>
void expand_cols(const A* __restrict src, A* __restrict out, int64_t W, const ColMap& m) {
  switch (m.k) {
    case 1:
      for (int64_t i = 0; i < W; ++i) out[i] = src[i];
      return;
    case 2: return repeat_k<2>(src, out, m.w);
    case 3: return repeat_k<3>(src, out, m.w);
    case 4: return repeat_k<4>(src, out, m.w);
    case 5: return repeat_k<5>(src, out, m.w);
    case 6: return repeat_k<6>(src, out, m.w);
    case 7: return repeat_k<7>(src, out, m.w);
    case 8: return repeat_k<8>(src, out, m.w);
    case 16: return repeat_k<16>(src, out, m.w);
    default:
      break;
  }
  if (m.k > 0) {
    for (int64_t s = 0; s < m.w; ++s)
      for (int64_t j = 0; j < m.k; ++j) out[s * m.k + j] = src[s];
  } else {
    for (int64_t i = 0; i < W; ++i) out[i] = src[m.col[i]];
  }
}

// The full-width row: the low-resolution row itself when columns map one to one, else expanded into out.
template <class A>
GN_INLINE const A* expand_or_alias(const A* low, A* out, int64_t W, const ColMap& m) {
  if (m.k == 1) return low;
  expand_cols(low, out, W, m);
  return out;
}

template <int K, class A>
GN_INLINE void sum_k(const A* __restrict src, A* __restrict out, int64_t w) {
  for (int64_t s = 0; s < w; ++s) {
    A t = src[K * s];
#pragma GCC unroll 16
    for (int j = 1; j < K; ++j) t += src[K * s + j];
    out[s] = t;
  }
}

// Transpose of expand_cols: out[s] = sum of src over the columns reading s (in column order).
template <class A>
void reduce_cols(const A* __restrict src, A* __restrict out, int64_t W, const ColMap& m) {
  switch (m.k) {
    case 1:
      for (int64_t i = 0; i < W; ++i) out[i] = src[i];
      return;
    case 2: return sum_k<2>(src, out, m.w);
    case 4: return sum_k<4>(src, out, m.w);
    case 8: return sum_k<8>(src, out, m.w);
    default:
      break;
  }
  for (int64_t s = 0; s < m.w; ++s) out[s] = 0;
  if (m.k > 0) {
    for (int64_t i = 0; i < W; ++i) out[i / m.k] += src[i];
  } else {
    for (int64_t i = 0; i < W; ++i) out[m.col[i]] += src[i];
  }
}

// A low-resolution row in A (fill when the tensor is absent).
template <class GS, class A>
GN_INLINE void load_low(const GS* __restrict row, int64_t w, A fill, A* __restrict out) {
  if (row) {
    for (int64_t s = 0; s < w; ++s) out[s] = load(row[s]);
  } else {
    for (int64_t s = 0; s < w; ++s) out[s] = fill;
  }
}

// Scratch of the NCHW kernels, in rows of W elements (w <= W).
constexpr int64_t kScratchRows = 7;

bool covers(const std::vector<int64_t>& idx, int64_t src) {
  std::vector<char> hit(static_cast<size_t>(src), 0);
  for (int64_t v : idx) hit[v] = 1;
  return std::all_of(hit.begin(), hit.end(), [](char c) { return c != 0; });
}

template <class S, class GS>
struct Ctx {
  using A = typename AccT<S>::type;
  int64_t N, C, H, W, HW, G, Cg;
  const S* x;
  const A* w;  // (C), ones when weight is None
  const A* b;  // (C), zeros when bias is None
  const GS* gam = nullptr;
  const GS* bet = nullptr;
  int64_t hg = 1, wg = 1, hb = 1, wb = 1;
  std::vector<int64_t> rowg, colg, rowb, colb;
  ColMap cmg, cmb;  // for an absent gamma (beta) the map of the other one, so both read alike
  const A* mean;  // (N*G)
  const A* rstd;  // (N*G)
  bool sp() const { return gam != nullptr || bet != nullptr; }
  const GS* gam_plane(int64_t n, int64_t c) const { return gam + (n * C + c) * hg * wg; }
  const GS* bet_plane(int64_t n, int64_t c) const { return bet + (n * C + c) * hb * wb; }
};

int num_threads() { return std::max(1, at::get_num_threads()); }

// One task per (n, g) keeps a group in cache between passes; use it when the tasks fill the threads.
bool group_tasks_fill(int64_t tasks, int64_t nt) {
  if (nt <= 1) return true;
  if (tasks < nt) return false;
  const int64_t rounds = (tasks + nt - 1) / nt;
  return static_cast<double>(tasks) / static_cast<double>(rounds * nt) >= 0.75;
}

// ------------------------------------------------------------------------------------------------
// NCHW forward
// ------------------------------------------------------------------------------------------------
template <bool SILU, class S, class A>
void apply_scalar(const S* __restrict x, S* __restrict y, int64_t n, A m, A a, A b) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const A p = (load(x[i]) - m) * a + b;
    y[i] = Conv<S>::put(act<SILU>(p));
  }
}

template <bool SILU, class S, class A>
void apply_row(const S* __restrict x, S* __restrict y, int64_t n, A m, const A* __restrict ca,
               const A* __restrict cb) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const A p = (load(x[i]) - m) * ca[i] + cb[i];
    y[i] = Conv<S>::put(act<SILU>(p));
  }
}

// Normalise rows [r0, r1) of plane (n, c). scratch: kScratchRows * W elements.
template <bool SILU, class S, class GS>
void fwd_plane(const Ctx<S, GS>& P, int64_t n, int64_t c, int64_t r0, int64_t r1, S* y,
               typename AccT<S>::type* scratch) {
  using A = typename AccT<S>::type;
  const int64_t W = P.W;
  const int64_t ng = n * P.G + c / P.Cg;
  const A m = P.mean[ng];
  const A Ac = P.rstd[ng] * P.w[c];
  const A bc = P.b[c];
  const int64_t off = (n * P.C + c) * P.HW;
  const S* xp = P.x + off;
  S* yp = y + off;
  if (!P.sp()) {
    apply_scalar<SILU>(xp + r0 * W, yp + r0 * W, (r1 - r0) * W, m, Ac, bc);
    return;
  }
  // Per run of rows sharing source rows: p = (x - m) * ca + cb with ca = Ac * gamma, cb = bc * gamma + beta,
  // combined at low resolution when gamma and beta have the same width, then expanded.
  A* ca = scratch;
  A* cb = scratch + W;
  A* gl = scratch + 2 * W;
  A* bl = scratch + 3 * W;
  const A* cap = ca;
  const A* cbp = cb;
  const GS* gpl = P.gam ? P.gam_plane(n, c) : nullptr;
  const GS* bpl = P.bet ? P.bet_plane(n, c) : nullptr;
  const bool same = P.cmg.w == P.cmb.w;
  int64_t cur_g = -1, cur_b = -1;
  for (int64_t hh = r0; hh < r1; ++hh) {
    const int64_t sg = gpl ? P.rowg[hh] : 0;
    const int64_t sb = bpl ? P.rowb[hh] : 0;
    if (sg != cur_g || sb != cur_b) {
      load_low(gpl ? gpl + sg * P.wg : nullptr, P.cmg.w, A(1), gl);
      load_low(bpl ? bpl + sb * P.wb : nullptr, P.cmb.w, A(0), bl);
      if (same) {
        for (int64_t j = 0; j < P.cmg.w; ++j) {
          const A g = gl[j];
          gl[j] = Ac * g;
          bl[j] = bc * g + bl[j];
        }
        cap = expand_or_alias(gl, ca, W, P.cmg);
        cbp = expand_or_alias(bl, cb, W, P.cmb);
      } else {
        expand_cols(gl, ca, W, P.cmg);
        expand_cols(bl, cb, W, P.cmb);
        for (int64_t i = 0; i < W; ++i) {
          const A g = ca[i];
          ca[i] = Ac * g;
          cb[i] = bc * g + cb[i];
        }
        cap = ca;
        cbp = cb;
      }
      cur_g = sg;
      cur_b = sb;
    }
    apply_row<SILU>(xp + hh * W, yp + hh * W, W, m, cap, cbp);
  }
}

template <bool SILU, class S, class GS>
void fwd_nchw(Ctx<S, GS>& P, S* y, typename AccT<S>::type* mean, typename AccT<S>::type* rstd,
              double eps) {
  using A = typename AccT<S>::type;
  const int64_t NG = P.N * P.G;
  const int64_t L = P.Cg * P.HW;
  const int64_t nch = (L + kChunk - 1) / kChunk;
  const int64_t nt = num_threads();
  P.mean = mean;
  P.rstd = rstd;
  auto group_base = [&](int64_t ng) { return P.x + ng * L; };

  if (group_tasks_fill(NG, nt)) {
    at::parallel_for(0, NG, 1, [&](int64_t b0, int64_t e0) {
      std::vector<A> scratch(static_cast<size_t>(kScratchRows * P.W));
      for (int64_t ng = b0; ng < e0; ++ng) {
        const S* base = group_base(ng);
        Mom m{0, 0, 0};
        for (int64_t k = 0; k < nch; ++k) {
          const int64_t o = k * kChunk;
          mom_merge(m, span_moments(base + o, std::min(kChunk, L - o)));
        }
        mom_finalize(m, eps, mean[ng], rstd[ng]);
        const int64_t n = ng / P.G, c0 = (ng % P.G) * P.Cg;
        for (int64_t c = c0 + P.Cg - 1; c >= c0; --c) fwd_plane<SILU>(P, n, c, 0, P.H, y, scratch.data());
      }
    });
    return;
  }

  std::vector<Mom> part(static_cast<size_t>(NG * nch));
  at::parallel_for(0, NG * nch, 1, [&](int64_t b0, int64_t e0) {
    for (int64_t i = b0; i < e0; ++i) {
      const int64_t ng = i / nch, k = i % nch, o = k * kChunk;
      part[i] = span_moments(group_base(ng) + o, std::min(kChunk, L - o));
    }
  });
  for (int64_t ng = 0; ng < NG; ++ng) {
    Mom m{0, 0, 0};
    for (int64_t k = 0; k < nch; ++k) mom_merge(m, part[ng * nch + k]);
    mom_finalize(m, eps, mean[ng], rstd[ng]);
  }
  const int64_t NC = P.N * P.C;
  const int64_t nrb = std::min<int64_t>(P.H, std::max<int64_t>(1, (8 * nt + NC - 1) / NC));
  const int64_t rb = (P.H + nrb - 1) / nrb;
  at::parallel_for(0, NC * nrb, 1, [&](int64_t b0, int64_t e0) {
    std::vector<A> scratch(static_cast<size_t>(kScratchRows * P.W));
    for (int64_t i = e0 - 1; i >= b0; --i) {
      const int64_t nc = i / nrb, r0 = (i % nrb) * rb, r1 = std::min(P.H, r0 + rb);
      if (r0 < r1) fwd_plane<SILU>(P, nc / P.C, nc % P.C, r0, r1, y, scratch.data());
    }
  });
}

// ------------------------------------------------------------------------------------------------
// NHWC forward
// ------------------------------------------------------------------------------------------------
// Moments of every group over pixels [q0, q1) of sample n. out: G entries.
template <class S, class GS>
void nhwc_block_moments(const Ctx<S, GS>& P, int64_t n, int64_t q0, int64_t q1, Mom* out,
                        typename AccT<S>::type* scratch) {
  using A = typename AccT<S>::type;
  const int64_t C = P.C, G = P.G, Cg = P.Cg, np = q1 - q0;
  const S* xb = P.x + (n * P.HW + q0) * C;
  A* s = scratch;           // C
  A* mv = scratch + C;      // C
  A* a2 = scratch + 2 * C;  // C
  for (int64_t c = 0; c < C; ++c) s[c] = 0;
  for (int64_t q = 0; q < np; ++q) {
    const S* xq = xb + q * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) s[c] += load(xq[c]);
  }
  const double cnt = static_cast<double>(np * Cg);
  for (int64_t g = 0; g < G; ++g) {
    double t = 0;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) t += s[c];
    const A gm = static_cast<A>(t / cnt);
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) mv[c] = gm;
  }
  for (int64_t c = 0; c < C; ++c) s[c] = a2[c] = 0;
  for (int64_t q = 0; q < np; ++q) {
    const S* xq = xb + q * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const A d = load(xq[c]) - mv[c];
      s[c] += d;
      a2[c] += d * d;
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    double s1 = 0, s2 = 0;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
      s1 += s[c];
      s2 += a2[c];
    }
    out[g] = Mom{cnt, static_cast<double>(mv[g * Cg]) + s1 / cnt, s2 - s1 * s1 / cnt};
  }
}

// Normalise pixels [q0, q1) of sample n; Mc/Ac/Bc: per-channel mean, rstd*weight, bias of sample n.
template <bool SILU, class S, class GS>
void fwd_nhwc_pixels(const Ctx<S, GS>& P, int64_t n, int64_t q0, int64_t q1, const typename AccT<S>::type* Mc,
                     const typename AccT<S>::type* Ac, const typename AccT<S>::type* Bc, const GS* ones,
                     const GS* zeros, S* y) {
  using A = typename AccT<S>::type;
  const int64_t C = P.C, W = P.W;
  const S* xb = P.x + (n * P.HW) * C;
  S* yb = y + (n * P.HW) * C;
  if (!P.sp()) {
    for (int64_t q = q0; q < q1; ++q) {
      const S* __restrict xq = xb + q * C;
      S* __restrict yq = yb + q * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yq[c] = Conv<S>::put(act<SILU>((load(xq[c]) - Mc[c]) * Ac[c] + Bc[c]));
    }
    return;
  }
  const GS* gs = P.gam ? P.gam + n * P.hg * P.wg * C : nullptr;
  const GS* bs = P.bet ? P.bet + n * P.hb * P.wb * C : nullptr;
  int64_t hh = q0 / W, ww = q0 % W;
  for (int64_t q = q0; q < q1; ++q) {
    const S* __restrict xq = xb + q * C;
    S* __restrict yq = yb + q * C;
    const GS* __restrict gq = gs ? gs + (P.rowg[hh] * P.wg + P.colg[ww]) * C : ones;
    const GS* __restrict bq = bs ? bs + (P.rowb[hh] * P.wb + P.colb[ww]) * C : zeros;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const A a = (load(xq[c]) - Mc[c]) * Ac[c] + Bc[c];
      yq[c] = Conv<S>::put(act<SILU>(a * load(gq[c]) + load(bq[c])));
    }
    if (++ww == W) {
      ww = 0;
      ++hh;
    }
  }
}

// Number of samples handled together so that one pass over them stays in cache.
int64_t samples_per_batch(int64_t N, int64_t bytes_per_sample) {
  return std::max<int64_t>(1, std::min<int64_t>(N, kCacheBytes / std::max<int64_t>(1, bytes_per_sample)));
}

template <bool SILU, class S, class GS>
void fwd_nhwc(Ctx<S, GS>& P, S* y, typename AccT<S>::type* mean, typename AccT<S>::type* rstd, double eps) {
  using A = typename AccT<S>::type;
  const int64_t C = P.C, G = P.G, HW = P.HW;
  P.mean = mean;
  P.rstd = rstd;
  const int64_t pix = std::max<int64_t>(1, std::min<int64_t>(kMaxPix, kNhwcBlock / C));
  const int64_t nblk = (HW + pix - 1) / pix;
  const int64_t per = samples_per_batch(P.N, C * HW * static_cast<int64_t>(sizeof(S)));
  std::vector<A> Mc(static_cast<size_t>(per * C)), Ac(static_cast<size_t>(per * C)), Bc(static_cast<size_t>(per * C));
  std::vector<GS> ones(static_cast<size_t>(C), Conv<GS>::put(A(1))), zeros(static_cast<size_t>(C), Conv<GS>::put(A(0)));
  std::vector<Mom> part;
  for (int64_t n0 = 0; n0 < P.N; n0 += per) {
    const int64_t ns = std::min(per, P.N - n0);
    part.assign(static_cast<size_t>(ns * nblk * G), Mom{0, 0, 0});
    at::parallel_for(0, ns * nblk, 1, [&](int64_t b0, int64_t e0) {
      std::vector<A> scratch(static_cast<size_t>(3 * C));
      for (int64_t i = b0; i < e0; ++i) {
        const int64_t n = n0 + i / nblk, q0 = (i % nblk) * pix;
        nhwc_block_moments(P, n, q0, std::min(HW, q0 + pix), part.data() + i * G, scratch.data());
      }
    });
    for (int64_t j = 0; j < ns; ++j) {
      const int64_t n = n0 + j;
      for (int64_t g = 0; g < G; ++g) {
        Mom m{0, 0, 0};
        for (int64_t k = 0; k < nblk; ++k) mom_merge(m, part[(j * nblk + k) * G + g]);
        mom_finalize(m, eps, mean[n * G + g], rstd[n * G + g]);
      }
      for (int64_t c = 0; c < C; ++c) {
        const int64_t ng = n * G + c / P.Cg;
        Mc[j * C + c] = mean[ng];
        Ac[j * C + c] = rstd[ng] * P.w[c];
        Bc[j * C + c] = P.b[c];
      }
    }
    at::parallel_for(0, ns * nblk, 1, [&](int64_t b0, int64_t e0) {
      for (int64_t i = e0 - 1; i >= b0; --i) {
        const int64_t j = i / nblk, q0 = (i % nblk) * pix;
        fwd_nhwc_pixels<SILU>(P, n0 + j, q0, std::min(HW, q0 + pix), Mc.data() + j * C, Ac.data() + j * C,
                              Bc.data() + j * C, ones.data(), zeros.data(), y);
      }
    });
  }
}

// ------------------------------------------------------------------------------------------------
// NCHW backward
// ------------------------------------------------------------------------------------------------
// Per-channel sums S1 = sum(da), S2d = sum(da * (x - mean)) of one row, and the dgamma/dbeta
// row accumulators (dp * a, dp) at full width.
template <bool SILU, bool SP, bool STORE, class S, class A>
GN_INLINE void bwd_row_sums(const S* __restrict x, const S* __restrict dy, int64_t n, A m, A Ac, A bc,
                            const A* __restrict gu, const A* __restrict bu, A* __restrict accg,
                            A* __restrict accb, A* __restrict dast, A& s1_out, A& s2_out) {
  A s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t i = 0; i < n; ++i) {
    const A d = load(x[i]) - m;
    const A a = d * Ac + bc;
    if constexpr (SP) {
      const A g = gu[i];
      const A p = a * g + bu[i];
      const A dp = act_grad<SILU>(load(dy[i]), p);
      const A da = dp * g;
      s1 += da;
      s2 += da * d;
      accg[i] += dp * a;
      accb[i] += dp;
      if constexpr (STORE) dast[i] = da;
    } else {
      const A da = act_grad<SILU>(load(dy[i]), a);
      s1 += da;
      s2 += da * d;
      if constexpr (STORE) dast[i] = da;
    }
  }
  s1_out = s1;
  s2_out = s2;
}

template <bool SILU, bool SP, class S, class A>
GN_INLINE void bwd_row_dx(const S* __restrict x, const S* __restrict dy, S* __restrict dx, int64_t n, A m, A Ac,
                          A bc, const A* __restrict gu, const A* __restrict bu, A K1, A K2, A K3) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const A d = load(x[i]) - m;
    const A a = d * Ac + bc;
    A da;
    if constexpr (SP) {
      const A g = gu[i];
      da = act_grad<SILU>(load(dy[i]), a * g + bu[i]) * g;
    } else {
      da = act_grad<SILU>(load(dy[i]), a);
    }
    dx[i] = Conv<S>::put(K1 * da + (K2 * d + K3));
  }
}

// dx from the da kept by the first pass.
template <class S, class A>
GN_INLINE void dx_from_da(const S* __restrict x, const A* __restrict da, S* __restrict dx, int64_t n, A m, A K1, A K2,
                          A K3) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = Conv<S>::put(K1 * da[i] + (K2 * (load(x[i]) - m) + K3));
}

// Sum a full-width accumulator row into its low-resolution row (column blocks), store it, clear acc.
template <class GS, class A>
void flush_row(A* __restrict acc, int64_t W, const ColMap& m, A* __restrict low, GS* __restrict out) {
  reduce_cols(acc, low, W, m);
  for (int64_t j = 0; j < m.w; ++j) out[j] = Conv<GS>::put(low[j]);
  for (int64_t i = 0; i < W; ++i) acc[i] = 0;
}

template <class S, class GS>
struct BwdOut {
  using A = typename AccT<S>::type;
  const S* dy;
  S* dx = nullptr;     // null: not wanted
  GS* dgam = nullptr;  // null: not wanted
  GS* dbet = nullptr;
  double* S1;   // (N*C) sum(da)
  double* S2d;  // (N*C) sum(da * (x - mean))
  A* K1;        // (N*C) rstd * w
  A* K2;        // (N*G) -rstd^2 * mean_g(dxhat * xhat)
  A* K3;        // (N*G) -rstd * mean_g(dxhat)
};

// Pass 1 over plane (n, c): S1, S2d, and its dgamma/dbeta plane; da into dast (H*W) when STORE.
// scratch: kScratchRows * W.
template <bool SILU, bool SP, bool STORE, class S, class GS>
void bwd_plane_sums(const Ctx<S, GS>& P, const BwdOut<S, GS>& O, int64_t n, int64_t c,
                    typename AccT<S>::type* scratch, typename AccT<S>::type* dast) {
  using A = typename AccT<S>::type;
  const int64_t W = P.W, H = P.H;
  const int64_t ng = n * P.G + c / P.Cg;
  const A m = P.mean[ng];
  const A Ac = P.rstd[ng] * P.w[c];
  const A bc = P.b[c];
  const int64_t off = (n * P.C + c) * P.HW;
  const S* xp = P.x + off;
  const S* dyp = O.dy + off;
  double S1 = 0, S2 = 0;
  if constexpr (!SP) {
    // The plane is one contiguous span: fixed blocks, each summed in A, then added in double.
    constexpr int64_t kBlk = 2048;
    for (int64_t o = 0; o < P.HW; o += kBlk) {
      A s1, s2;
      bwd_row_sums<SILU, false, STORE>(xp + o, dyp + o, std::min(kBlk, P.HW - o), m, Ac, bc, (const A*)nullptr,
                                       (const A*)nullptr, (A*)nullptr, (A*)nullptr, STORE ? dast + o : nullptr, s1, s2);
      S1 += s1;
      S2 += s2;
    }
  } else {
    A* gu = scratch;
    A* bu = scratch + W;
    A* accg = scratch + 2 * W;
    A* accb = scratch + 3 * W;
    A* low = scratch + 4 * W;
    A* gl = scratch + 5 * W;
    A* bl = scratch + 6 * W;
    const A* gup = gu;
    const A* bup = bu;
    for (int64_t i = 0; i < 2 * W; ++i) accg[i] = 0;  // accg and accb
    const GS* gpl = P.gam ? P.gam_plane(n, c) : nullptr;
    const GS* bpl = P.bet ? P.bet_plane(n, c) : nullptr;
    GS* dgpl = O.dgam ? O.dgam + (n * P.C + c) * P.hg * P.wg : nullptr;
    GS* dbpl = O.dbet ? O.dbet + (n * P.C + c) * P.hb * P.wb : nullptr;
    int64_t cur_g = -1, cur_b = -1;
    for (int64_t hh = 0; hh < H; ++hh) {
      const int64_t sg = gpl ? P.rowg[hh] : 0;
      const int64_t sb = bpl ? P.rowb[hh] : 0;
      if (sg != cur_g || sb != cur_b) {
        if (dgpl && cur_g >= 0 && sg != cur_g) flush_row(accg, W, P.cmg, low, dgpl + cur_g * P.wg);
        if (dbpl && cur_b >= 0 && sb != cur_b) flush_row(accb, W, P.cmb, low, dbpl + cur_b * P.wb);
        load_low(gpl ? gpl + sg * P.wg : nullptr, P.cmg.w, A(1), gl);
        load_low(bpl ? bpl + sb * P.wb : nullptr, P.cmb.w, A(0), bl);
        gup = expand_or_alias(gl, gu, W, P.cmg);
        bup = expand_or_alias(bl, bu, W, P.cmb);
        cur_g = sg;
        cur_b = sb;
      }
      A s1, s2;
      bwd_row_sums<SILU, true, STORE>(xp + hh * W, dyp + hh * W, W, m, Ac, bc, gup, bup, accg, accb, STORE ? dast + hh * W : nullptr, s1,
                                      s2);
      S1 += s1;
      S2 += s2;
    }
    if (dgpl && cur_g >= 0) flush_row(accg, W, P.cmg, low, dgpl + cur_g * P.wg);
    if (dbpl && cur_b >= 0) flush_row(accb, W, P.cmb, low, dbpl + cur_b * P.wb);
  }
  O.S1[n * P.C + c] = S1;
  O.S2d[n * P.C + c] = S2;
}

// Group coefficients of dx from the channel sums of group (n, g).
template <class S, class GS>
void bwd_group_coeffs(const Ctx<S, GS>& P, const BwdOut<S, GS>& O, int64_t ng) {
  using A = typename AccT<S>::type;
  const int64_t n = ng / P.G, c0 = (ng % P.G) * P.Cg;
  const double r = static_cast<double>(P.rstd[ng]);
  double t1 = 0, t2 = 0;
  for (int64_t c = c0; c < c0 + P.Cg; ++c) {
    const double w = static_cast<double>(P.w[c]);
    t1 += w * O.S1[n * P.C + c];
    t2 += w * O.S2d[n * P.C + c];
    O.K1[n * P.C + c] = static_cast<A>(r * w);
  }
  const double L = static_cast<double>(P.Cg * P.HW);
  const double M1 = t1 / L;      // mean_g(dxhat)
  const double M2 = r * t2 / L;  // mean_g(dxhat * xhat)
  O.K2[ng] = static_cast<A>(-r * r * M2);
  O.K3[ng] = static_cast<A>(-r * M1);
}

// Pass 2 over rows [r0, r1) of plane (n, c). scratch: kScratchRows * W.
template <bool SILU, bool SP, class S, class GS>
void bwd_plane_dx(const Ctx<S, GS>& P, const BwdOut<S, GS>& O, int64_t n, int64_t c, int64_t r0, int64_t r1,
                  typename AccT<S>::type* scratch) {
  using A = typename AccT<S>::type;
  const int64_t W = P.W;
  const int64_t ng = n * P.G + c / P.Cg;
  const A m = P.mean[ng];
  const A Ac = P.rstd[ng] * P.w[c];
  const A bc = P.b[c];
  const A K1 = O.K1[n * P.C + c], K2 = O.K2[ng], K3 = O.K3[ng];
  const int64_t off = (n * P.C + c) * P.HW;
  const S* xp = P.x + off;
  const S* dyp = O.dy + off;
  S* dxp = O.dx + off;
  if constexpr (!SP) {
    bwd_row_dx<SILU, false>(xp + r0 * W, dyp + r0 * W, dxp + r0 * W, (r1 - r0) * W, m, Ac, bc, (const A*)nullptr,
                            (const A*)nullptr, K1, K2, K3);
  } else {
    A* gu = scratch;
    A* bu = scratch + W;
    A* gl = scratch + 2 * W;
    A* bl = scratch + 3 * W;
    const A* gup = gu;
    const A* bup = bu;
    const GS* gpl = P.gam ? P.gam_plane(n, c) : nullptr;
    const GS* bpl = P.bet ? P.bet_plane(n, c) : nullptr;
    int64_t cur_g = -1, cur_b = -1;
    for (int64_t hh = r0; hh < r1; ++hh) {
      const int64_t sg = gpl ? P.rowg[hh] : 0;
      const int64_t sb = bpl ? P.rowb[hh] : 0;
      if (sg != cur_g || sb != cur_b) {
        load_low(gpl ? gpl + sg * P.wg : nullptr, P.cmg.w, A(1), gl);
        load_low(bpl ? bpl + sb * P.wb : nullptr, P.cmb.w, A(0), bl);
        gup = expand_or_alias(gl, gu, W, P.cmg);
        bup = expand_or_alias(bl, bu, W, P.cmb);
        cur_g = sg;
        cur_b = sb;
      }
      bwd_row_dx<SILU, true>(xp + hh * W, dyp + hh * W, dxp + hh * W, W, m, Ac, bc, gup, bup, K1, K2, K3);
    }
  }
}

template <bool SILU, bool SP, class S, class GS>
void bwd_nchw(const Ctx<S, GS>& P, const BwdOut<S, GS>& O) {
  using A = typename AccT<S>::type;
  const int64_t NG = P.N * P.G, NC = P.N * P.C;
  const int64_t nt = num_threads();
  const size_t sc = static_cast<size_t>(kScratchRows * P.W);
  if (group_tasks_fill(NG, nt)) {
    const int64_t L = P.Cg * P.HW;
    const bool keep = O.dx != nullptr && L * static_cast<int64_t>(sizeof(A)) <= kDaCacheBytes;
    at::parallel_for(0, NG, 1, [&](int64_t b0, int64_t e0) {
      std::vector<A> scratch(sc);
      std::vector<A> da(keep ? static_cast<size_t>(L) : 0);
      for (int64_t ng = b0; ng < e0; ++ng) {
        const int64_t n = ng / P.G, c0 = (ng % P.G) * P.Cg;
        for (int64_t c = c0; c < c0 + P.Cg; ++c) {
          if (keep)
            bwd_plane_sums<SILU, SP, true>(P, O, n, c, scratch.data(), da.data() + (c - c0) * P.HW);
          else
            bwd_plane_sums<SILU, SP, false>(P, O, n, c, scratch.data(), (A*)nullptr);
        }
        bwd_group_coeffs(P, O, ng);
        if (!O.dx) continue;
        for (int64_t c = c0 + P.Cg - 1; c >= c0; --c) {
          if (keep) {
            const int64_t g = ng, off = (n * P.C + c) * P.HW;
            dx_from_da(P.x + off, da.data() + (c - c0) * P.HW, O.dx + off, P.HW, P.mean[g], O.K1[n * P.C + c],
                       O.K2[g], O.K3[g]);
          } else {
            bwd_plane_dx<SILU, SP>(P, O, n, c, 0, P.H, scratch.data());
          }
        }
      }
    });
    return;
  }
  at::parallel_for(0, NC, 1, [&](int64_t b0, int64_t e0) {
    std::vector<A> scratch(sc);
    for (int64_t i = b0; i < e0; ++i)
      bwd_plane_sums<SILU, SP, false>(P, O, i / P.C, i % P.C, scratch.data(), (typename AccT<S>::type*)nullptr);
  });
  for (int64_t ng = 0; ng < NG; ++ng) bwd_group_coeffs(P, O, ng);
  if (!O.dx) return;
  const int64_t nrb = std::min<int64_t>(P.H, std::max<int64_t>(1, (8 * nt + NC - 1) / NC));
  const int64_t rb = (P.H + nrb - 1) / nrb;
  at::parallel_for(0, NC * nrb, 1, [&](int64_t b0, int64_t e0) {
    std::vector<A> scratch(sc);
    for (int64_t i = e0 - 1; i >= b0; --i) {
      const int64_t nc = i / nrb, r0 = (i % nrb) * rb, r1 = std::min(P.H, r0 + rb);
      if (r0 < r1) bwd_plane_dx<SILU, SP>(P, O, nc / P.C, nc % P.C, r0, r1, scratch.data());
    }
  });
}

// ------------------------------------------------------------------------------------------------
// NHWC backward
// ------------------------------------------------------------------------------------------------
template <bool SILU, bool SP, class S, class GS, class A>
GN_INLINE void bwd_pixel_sums(const S* __restrict x, const S* __restrict dy, int64_t C, const A* __restrict Mc,
                              const A* __restrict Ac, const A* __restrict Bc, const GS* __restrict gq,
                              const GS* __restrict bq, A* __restrict s1, A* __restrict s2, A* __restrict ag,
                              A* __restrict ab) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const A d = load(x[c]) - Mc[c];
    const A a = d * Ac[c] + Bc[c];
    if constexpr (SP) {
      const A g = load(gq[c]);
      const A dp = act_grad<SILU>(load(dy[c]), a * g + load(bq[c]));
      const A da = dp * g;
      s1[c] += da;
      s2[c] += da * d;
      ag[c] += dp * a;
      ab[c] += dp;
    } else {
      const A da = act_grad<SILU>(load(dy[c]), a);
      s1[c] += da;
      s2[c] += da * d;
    }
  }
}

template <bool SILU, bool SP, class S, class GS, class A>
GN_INLINE void bwd_pixel_dx(const S* __restrict x, const S* __restrict dy, S* __restrict dx, int64_t C,
                            const A* __restrict Mc, const A* __restrict Ac, const A* __restrict Bc,
                            const GS* __restrict gq, const GS* __restrict bq, const A* __restrict K1,
                            const A* __restrict K2, const A* __restrict K3) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const A d = load(x[c]) - Mc[c];
    const A a = d * Ac[c] + Bc[c];
    A da;
    if constexpr (SP) {
      const A g = load(gq[c]);
      da = act_grad<SILU>(load(dy[c]), a * g + load(bq[c])) * g;
    } else {
      da = act_grad<SILU>(load(dy[c]), a);
    }
    dx[c] = Conv<S>::put(K1[c] * da + (K2[c] * d + K3[c]));
  }
}

template <bool SILU, bool SP, class S, class GS>
void bwd_nhwc(const Ctx<S, GS>& P, const BwdOut<S, GS>& O) {
  using A = typename AccT<S>::type;
  const int64_t N = P.N, C = P.C, G = P.G, H = P.H, W = P.W, HW = P.HW;
  const bool dg = SP && O.dgam != nullptr;
  const bool db = SP && O.dbet != nullptr;

  // Row blocks: at least kRowTarget elements, never splitting the rows of one dgamma/dbeta row.
  std::vector<int64_t> rs{0};
  {
    const int64_t target = std::max<int64_t>(1, kRowTarget / std::max<int64_t>(1, W * C));
    for (int64_t hh = 1; hh < H; ++hh) {
      const bool ok = (!dg || P.rowg[hh] != P.rowg[hh - 1]) && (!db || P.rowb[hh] != P.rowb[hh - 1]);
      if (ok && hh - rs.back() >= target) rs.push_back(hh);
    }
    rs.push_back(H);
  }
  const int64_t nrb = static_cast<int64_t>(rs.size()) - 1;
  const int64_t per = samples_per_batch(N, 2 * C * HW * static_cast<int64_t>(sizeof(S)));

  // Per-channel coefficients of every sample.
  std::vector<A> Mc(static_cast<size_t>(N * C)), Ac(static_cast<size_t>(N * C)), Bc(static_cast<size_t>(N * C));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t ng = n * G + c / P.Cg;
      Mc[n * C + c] = P.mean[ng];
      Ac[n * C + c] = P.rstd[ng] * P.w[c];
      Bc[n * C + c] = P.b[c];
    }
  std::vector<GS> ones(static_cast<size_t>(C), Conv<GS>::put(A(1))), zeros(static_cast<size_t>(C), Conv<GS>::put(A(0)));
  std::vector<double> part1, part2;

  auto src_ptrs = [&](int64_t n, int64_t hh, int64_t ww, const GS*& gq, const GS*& bq) {
    gq = P.gam ? P.gam + (((n * P.hg + P.rowg[hh]) * P.wg + P.colg[ww]) * C) : ones.data();
    bq = P.bet ? P.bet + (((n * P.hb + P.rowb[hh]) * P.wb + P.colb[ww]) * C) : zeros.data();
  };

  for (int64_t n0 = 0; n0 < N; n0 += per) {
    const int64_t ns = std::min(per, N - n0);
    part1.assign(static_cast<size_t>(ns * nrb * C), 0.0);
    part2.assign(static_cast<size_t>(ns * nrb * C), 0.0);
    at::parallel_for(0, ns * nrb, 1, [&](int64_t b0, int64_t e0) {
      const size_t wa = static_cast<size_t>(std::max(P.wg, P.wb) * C);
      std::vector<A> s1(static_cast<size_t>(C)), s2(static_cast<size_t>(C)), dummy(static_cast<size_t>(2 * C));
      std::vector<A> accg(SP ? wa : 0), accb(SP ? wa : 0);
      for (int64_t i = b0; i < e0; ++i) {
        const int64_t n = n0 + i / nrb, k = i % nrb;
        const int64_t r0 = rs[k], r1 = rs[k + 1];
        const S* xs = P.x + n * HW * C;
        const S* dys = O.dy + n * HW * C;
        const A* mc = Mc.data() + n * C;
        const A* ac = Ac.data() + n * C;
        const A* bc = Bc.data() + n * C;
        double* p1 = part1.data() + i * C;
        double* p2 = part2.data() + i * C;
        int64_t cur_g = -1, cur_b = -1;
        auto flush_g = [&]() {
          GS* out = O.dgam + ((n * P.hg + cur_g) * P.wg) * C;
          for (int64_t j = 0; j < P.wg * C; ++j) {
            out[j] = Conv<GS>::put(accg[j]);
            accg[j] = 0;
          }
        };
        auto flush_b = [&]() {
          GS* out = O.dbet + ((n * P.hb + cur_b) * P.wb) * C;
          for (int64_t j = 0; j < P.wb * C; ++j) {
            out[j] = Conv<GS>::put(accb[j]);
            accb[j] = 0;
          }
        };
        if (dg) std::fill(accg.begin(), accg.end(), A(0));
        if (db) std::fill(accb.begin(), accb.end(), A(0));
        for (int64_t hh = r0; hh < r1; ++hh) {
          if (dg && P.rowg[hh] != cur_g) {
            if (cur_g >= 0) flush_g();
            cur_g = P.rowg[hh];
          }
          if (db && P.rowb[hh] != cur_b) {
            if (cur_b >= 0) flush_b();
            cur_b = P.rowb[hh];
          }
          std::fill(s1.begin(), s1.end(), A(0));
          std::fill(s2.begin(), s2.end(), A(0));
          for (int64_t ww = 0; ww < W; ++ww) {
            const int64_t q = hh * W + ww;
            if constexpr (SP) {
              const GS *gq, *bq;
              src_ptrs(n, hh, ww, gq, bq);
              A* ag = dg ? accg.data() + P.colg[ww] * C : dummy.data();
              A* ab = db ? accb.data() + P.colb[ww] * C : dummy.data() + C;
              bwd_pixel_sums<SILU, true>(xs + q * C, dys + q * C, C, mc, ac, bc, gq, bq, s1.data(), s2.data(), ag, ab);
            } else {
              bwd_pixel_sums<SILU, false>(xs + q * C, dys + q * C, C, mc, ac, bc, (const GS*)nullptr,
                                          (const GS*)nullptr, s1.data(), s2.data(), (A*)nullptr, (A*)nullptr);
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            p1[c] += s1[c];
            p2[c] += s2[c];
          }
        }
        if (dg && cur_g >= 0) flush_g();
        if (db && cur_b >= 0) flush_b();
      }
    });
    for (int64_t j = 0; j < ns; ++j) {
      const int64_t n = n0 + j;
      for (int64_t c = 0; c < C; ++c) {
        double t1 = 0, t2 = 0;
        for (int64_t k = 0; k < nrb; ++k) {
          t1 += part1[(j * nrb + k) * C + c];
          t2 += part2[(j * nrb + k) * C + c];
        }
        O.S1[n * C + c] = t1;
        O.S2d[n * C + c] = t2;
      }
      for (int64_t g = 0; g < G; ++g) bwd_group_coeffs(P, O, n * G + g);
    }
    if (!O.dx) continue;
    // Expand the group coefficients to channels.
    std::vector<A> K2c(static_cast<size_t>(ns * C)), K3c(static_cast<size_t>(ns * C));
    for (int64_t j = 0; j < ns; ++j)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t ng = (n0 + j) * G + c / P.Cg;
        K2c[j * C + c] = O.K2[ng];
        K3c[j * C + c] = O.K3[ng];
      }
    at::parallel_for(0, ns * nrb, 1, [&](int64_t b0, int64_t e0) {
      for (int64_t i = e0 - 1; i >= b0; --i) {
        const int64_t j = i / nrb, n = n0 + j, k = i % nrb;
        const S* xs = P.x + n * HW * C;
        const S* dys = O.dy + n * HW * C;
        S* dxs = O.dx + n * HW * C;
        const A* mc = Mc.data() + n * C;
        const A* ac = Ac.data() + n * C;
        const A* bc = Bc.data() + n * C;
        const A* k1 = O.K1 + n * C;
        const A* k2 = K2c.data() + j * C;
        const A* k3 = K3c.data() + j * C;
        for (int64_t hh = rs[k]; hh < rs[k + 1]; ++hh)
          for (int64_t ww = 0; ww < W; ++ww) {
            const int64_t q = hh * W + ww;
            const GS *gq = nullptr, *bq = nullptr;
            if constexpr (SP) src_ptrs(n, hh, ww, gq, bq);
            bwd_pixel_dx<SILU, SP>(xs + q * C, dys + q * C, dxs + q * C, C, mc, ac, bc, gq, bq, k1, k2, k3);
          }
      }
    });
  }
}

// ------------------------------------------------------------------------------------------------
// host side: checks, dtype/layout dispatch
// ------------------------------------------------------------------------------------------------
struct Prep {
  bool cl;  // channels_last
  at::MemoryFormat fmt;
  at::ScalarType acc;
  at::Tensor w, b;                     // (C) acc
  c10::optional<at::Tensor> gam, bet;  // in fmt, x's dtype or acc
  bool native;                         // gamma/beta in x's dtype
};

Prep prepare(const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
             const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta, int64_t G) {
  TORCH_CHECK(x.device().is_cpu(), "vivat group_norm (cpp): x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, "vivat group_norm (cpp): x must be 4-D (N, C, H, W), got shape ", x.sizes());
  const auto xt = x.scalar_type();
  TORCH_CHECK(xt != at::kHalf,
              "vivat group_norm (cpp): float16 has no C++ kernel; use the torch backend for float16 CPU tensors");
  TORCH_CHECK(xt == at::kFloat || xt == at::kBFloat16 || xt == at::kDouble,
              "vivat group_norm (cpp): x must be float32, bfloat16 or float64, got ", xt);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(G > 0 && C % G == 0, "vivat group_norm (cpp): num_groups=", G, " must divide C=", C);
  Prep p;
  if (x.is_contiguous()) {
    p.cl = false;
  } else {
    TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
                "vivat group_norm (cpp): x must be dense NCHW or channels_last, got strides ", x.strides());
    p.cl = true;
  }
  p.fmt = p.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  p.acc = xt == at::kDouble ? at::kDouble : at::kFloat;
  auto vec = [&](const c10::optional<at::Tensor>& t, const char* name, double fill) {
    if (!t.has_value() || !t->defined()) return at::full({C}, fill, x.options().dtype(p.acc));
    TORCH_CHECK(t->device().is_cpu(), "vivat group_norm (cpp): ", name, " must be on the CPU");
    TORCH_CHECK(t->dim() == 1 && t->size(0) == C, "vivat group_norm (cpp): ", name, " must have shape (", C,
                "), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == xt || t->scalar_type() == at::kFloat, "vivat group_norm (cpp): ", name,
                " must have x's dtype or float32, got ", t->scalar_type());
    return t->to(p.acc).contiguous();
  };
  p.w = vec(weight, "weight", 1.0);
  p.b = vec(bias, "bias", 0.0);
  auto spatial = [&](const c10::optional<at::Tensor>& t, const char* name) -> c10::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return c10::nullopt;
    TORCH_CHECK(t->device().is_cpu(), "vivat group_norm (cpp): ", name, " must be on the CPU");
    TORCH_CHECK(t->dim() == 4 && t->size(0) == N && t->size(1) == C && t->size(2) >= 1 && t->size(2) <= H &&
                    t->size(3) >= 1 && t->size(3) <= W,
                "vivat group_norm (cpp): ", name, " must have shape (", N, ", ", C, ", h, w) with 1 <= h <= ", H,
                " and 1 <= w <= ", W, ", got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == xt || t->scalar_type() == at::kFloat, "vivat group_norm (cpp): ", name,
                " must have x's dtype or float32, got ", t->scalar_type());
    return t->contiguous(p.fmt);  // no copy when already in x's layout
  };
  p.gam = spatial(gamma, "gamma");
  p.bet = spatial(beta, "beta");
  p.native = (!p.gam || p.gam->scalar_type() == xt) && (!p.bet || p.bet->scalar_type() == xt);
  if (!p.native) {
    if (p.gam) p.gam = p.gam->to(p.acc);
    if (p.bet) p.bet = p.bet->to(p.acc);
  }
  return p;
}

template <class S, class GS>
void fill_ctx(Ctx<S, GS>& P, const at::Tensor& x, const Prep& p, int64_t G) {
  using A = typename AccT<S>::type;
  P.N = x.size(0);
  P.C = x.size(1);
  P.H = x.size(2);
  P.W = x.size(3);
  P.HW = P.H * P.W;
  P.G = G;
  P.Cg = P.C / G;
  P.x = reinterpret_cast<const S*>(x.data_ptr());
  P.w = p.w.data_ptr<A>();
  P.b = p.b.data_ptr<A>();
  if (p.gam) {
    P.gam = reinterpret_cast<const GS*>(p.gam->data_ptr());
    P.hg = p.gam->size(2);
    P.wg = p.gam->size(3);
    P.rowg = nearest_index(P.hg, P.H);
    P.colg = nearest_index(P.wg, P.W);
  }
  if (p.bet) {
    P.bet = reinterpret_cast<const GS*>(p.bet->data_ptr());
    P.hb = p.bet->size(2);
    P.wb = p.bet->size(3);
    P.rowb = nearest_index(P.hb, P.H);
    P.colb = nearest_index(P.wb, P.W);
  }
  if (p.gam) P.cmg = make_colmap(P.colg, P.wg, P.W);
  if (p.bet) P.cmb = make_colmap(P.colb, P.wb, P.W);
  if (!p.gam) P.cmg = P.cmb;
  if (!p.bet) P.cmb = P.cmg;
}

template <class F>
void dispatch_types(at::ScalarType xt, bool native, F&& f) {
  switch (xt) {
    case at::kFloat:
      f(float{}, float{});
      break;
    case at::kDouble:
      f(double{}, double{});
      break;
    case at::kBFloat16:
      if (native)
        f(bf16_t{}, bf16_t{});
      else
        f(bf16_t{}, float{});
      break;
    default:
      TORCH_CHECK(false, "vivat group_norm (cpp): unsupported dtype ", xt);
  }
}

template <class F>
void dispatch_bool(bool v, F&& f) {
  if (v)
    f(std::true_type{});
  else
    f(std::false_type{});
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta, int64_t num_groups,
    double eps, bool silu) {
  const Prep p = prepare(x, weight, bias, gamma, beta, num_groups);
  const int64_t N = x.size(0);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({N, num_groups}, x.options().dtype(p.acc));
  at::Tensor rstd = at::empty({N, num_groups}, x.options().dtype(p.acc));
  if (x.numel() == 0) {
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    rstd.fill_(std::numeric_limits<double>::quiet_NaN());
    return {y, mean, rstd};
  }
  dispatch_types(x.scalar_type(), p.native, [&](auto s_tag, auto g_tag) {
    using S = decltype(s_tag);
    using GS = decltype(g_tag);
    using A = typename AccT<S>::type;
    Ctx<S, GS> P;
    fill_ctx(P, x, p, num_groups);
    S* yp = reinterpret_cast<S*>(y.data_ptr());
    A* mp = mean.data_ptr<A>();
    A* rp = rstd.data_ptr<A>();
    dispatch_bool(silu, [&](auto si) {
      constexpr bool SILU = decltype(si)::value;
      if (p.cl)
        fwd_nhwc<SILU>(P, yp, mp, rp, eps);
      else
        fwd_nchw<SILU>(P, yp, mp, rp, eps);
    });
  });
  return {y, mean, rstd};
}

std::tuple<c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>,
           c10::optional<at::Tensor>, c10::optional<at::Tensor>>
group_norm_bwd(const at::Tensor& dy_in, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
               const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& gamma,
               const c10::optional<at::Tensor>& beta, const at::Tensor& mean_in, const at::Tensor& rstd_in,
               int64_t num_groups, double eps, bool silu, const std::vector<bool>& mask) {
  (void)eps;  // rstd already holds it
  TORCH_CHECK(mask.size() == 5, "vivat group_norm_bwd (cpp): mask must have 5 entries, got ", mask.size());
  const Prep p = prepare(x, weight, bias, gamma, beta, num_groups);
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(dy_in.sizes() == x.sizes(), "vivat group_norm_bwd (cpp): dy has shape ", dy_in.sizes(),
              " but x has ", x.sizes());
  TORCH_CHECK(mean_in.numel() == N * num_groups && rstd_in.numel() == N * num_groups,
              "vivat group_norm_bwd (cpp): mean/rstd must have N*G = ", N * num_groups, " elements");
  const bool has_w = weight.has_value() && weight->defined();
  const bool has_b = bias.has_value() && bias->defined();
  const bool want_dx = mask[0];
  const bool want_dw = mask[1] && has_w;
  const bool want_db = mask[2] && has_b;
  const bool want_dg = mask[3] && p.gam.has_value();
  const bool want_dbt = mask[4] && p.bet.has_value();
  if (!(want_dx || want_dw || want_db || want_dg || want_dbt))
    return {c10::nullopt, c10::nullopt, c10::nullopt, c10::nullopt, c10::nullopt};

  const at::Tensor dy = dy_in.to(x.scalar_type()).contiguous(p.fmt);
  const at::Tensor mean = mean_in.to(p.acc).contiguous();
  const at::Tensor rstd = rstd_in.to(p.acc).contiguous();
  const auto aopt = x.options().dtype(p.acc);
  at::Tensor dx = want_dx ? at::empty_like(x) : at::Tensor();
  at::Tensor S1 = at::empty({N * C}, x.options().dtype(at::kDouble));
  at::Tensor S2d = at::empty({N * C}, x.options().dtype(at::kDouble));
  at::Tensor K1 = at::empty({N * C}, aopt);
  at::Tensor K2 = at::empty({N * num_groups}, aopt);
  at::Tensor K3 = at::empty({N * num_groups}, aopt);
  auto low_res = [&](const at::Tensor& t, int64_t H, int64_t W) {
    // Every element is written when the index maps cover every source row and column.
    const bool full = covers(nearest_index(t.size(2), H), t.size(2)) && covers(nearest_index(t.size(3), W), t.size(3));
    auto opts = t.options();
    return full ? at::empty(t.sizes(), opts.memory_format(p.fmt)) : at::zeros(t.sizes(), opts.memory_format(p.fmt));
  };
  at::Tensor dgam = want_dg ? low_res(*p.gam, x.size(2), x.size(3)) : at::Tensor();
  at::Tensor dbet = want_dbt ? low_res(*p.bet, x.size(2), x.size(3)) : at::Tensor();

  if (x.numel() > 0) {
    dispatch_types(x.scalar_type(), p.native, [&](auto s_tag, auto g_tag) {
      using S = decltype(s_tag);
      using GS = decltype(g_tag);
      using A = typename AccT<S>::type;
      Ctx<S, GS> P;
      fill_ctx(P, x, p, num_groups);
      P.mean = mean.data_ptr<A>();
      P.rstd = rstd.data_ptr<A>();
      BwdOut<S, GS> O;
      O.dy = reinterpret_cast<const S*>(dy.data_ptr());
      O.dx = want_dx ? reinterpret_cast<S*>(dx.data_ptr()) : nullptr;
      O.dgam = want_dg ? reinterpret_cast<GS*>(dgam.data_ptr()) : nullptr;
      O.dbet = want_dbt ? reinterpret_cast<GS*>(dbet.data_ptr()) : nullptr;
      O.S1 = S1.data_ptr<double>();
      O.S2d = S2d.data_ptr<double>();
      O.K1 = K1.data_ptr<A>();
      O.K2 = K2.data_ptr<A>();
      O.K3 = K3.data_ptr<A>();
      dispatch_bool(silu, [&](auto si) {
        dispatch_bool(P.sp(), [&](auto spt) {
          constexpr bool SILU = decltype(si)::value;
          constexpr bool SP = decltype(spt)::value;
          if (p.cl)
            bwd_nhwc<SILU, SP>(P, O);
          else
            bwd_nchw<SILU, SP>(P, O);
        });
      });
    });
  } else {
    S1.zero_();
    S2d.zero_();
    if (want_dg) dgam.zero_();
    if (want_dbt) dbet.zero_();
  }

  c10::optional<at::Tensor> odx, odw, odb, odg, odbt;
  if (want_dx) odx = dx;
  if (want_dw || want_db) {
    // dweight = sum_n rstd * S2d, dbias = sum_n S1 (in n order).
    const at::Tensor r = rstd.to(at::kDouble).view({N, num_groups, 1}).expand({N, num_groups, C / num_groups}).reshape({N, C});
    if (want_dw) {
      at::Tensor t = (S2d.view({N, C}) * r);
      at::Tensor acc = at::zeros({C}, t.options());
      for (int64_t n = 0; n < N; ++n) acc.add_(t[n]);
      odw = acc.to(p.acc);
    }
    if (want_db) {
      at::Tensor acc = at::zeros({C}, S1.options());
      const at::Tensor s = S1.view({N, C});
      for (int64_t n = 0; n < N; ++n) acc.add_(s[n]);
      odb = acc.to(p.acc);
    }
  }
  if (want_dg) odg = dgam.scalar_type() == gamma->scalar_type() ? dgam : dgam.to(gamma->scalar_type());
  if (want_dbt) odbt = dbet.scalar_type() == beta->scalar_type() ? dbet : dbet.to(beta->scalar_type());
  return {odx, odw, odb, odg, odbt};
}
