// Weight-stationary linear for CPU decode: y[M, N] = x[M, K] @ W[N, K]^T (+ bias).
//
// The weight is repacked once, at load, into tiles of 32 output features so that one step
// streams every weight byte exactly once, in order, from memory:
//   fp32: [N/32][K][32] float
//   bf16: [N/32][K/2][32][2] bf16   (pairs along K, the operand order of vdpbf16ps)
//   int8: [N/32][K][32] int8, with one fp32 scale per output feature (w = q * scale)
// N is padded to a multiple of 32 (and K to an even number for bf16) with zeros.
// Each tile's 32 outputs are computed for up to 12 rows of x at a time in registers; for more
// rows the same tile (in L1/L2 after the first chunk) is reused, so large M stays compute-bound.
// Threads take tiles dynamically from torch's OpenMP pool (torch.set_num_threads applies).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <array>
#include <memory>
#include <string>
#include <utility>

#include "vec.h"

namespace radixlm {

namespace {

constexpr int64_t kTile = 32;
constexpr int kMaxRows = 12;
constexpr int64_t kBlockRows = 20 * kMaxRows;

#if RADIXLM_AVX512
using Acc = __m512[kMaxRows][2];

// Runs step(k, acc) for k in [0, n). For 1-2 rows the FMA latency chain, not memory, would
// bound the loop (2-4 independent accumulators), so even and odd k go to two accumulator sets
// that are summed at the end.
template <int R, class Step>
inline void k_loop(int64_t n, Acc& acc, Step step) {
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  int64_t k = 0;
  if constexpr (R <= 2) {
    Acc odd;
    for (int r = 0; r < R; ++r) odd[r][0] = odd[r][1] = _mm512_setzero_ps();
    for (; k + 1 < n; k += 2) {
      step(k, acc);
      step(k + 1, odd);
    }
    for (int r = 0; r < R; ++r) {
      acc[r][0] = _mm512_add_ps(acc[r][0], odd[r][0]);
      acc[r][1] = _mm512_add_ps(acc[r][1], odd[r][1]);
    }
  }
  for (; k < n; ++k) step(k, acc);
}

// acc[r][0..1] += x[r, k] * w[k, 0..31] over all k, for R rows of fp32 x; load_w(k, w0, w1)
// produces row k of the tile as two fp32 vectors.
template <int R, class LoadW>
inline void tile_f32(const float* x, int64_t ldx, int64_t K, Acc& acc, LoadW load_w) {
  k_loop<R>(K, acc, [&](int64_t k, Acc& a) {
    __m512 w0, w1;
    load_w(k, w0, w1);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      __m512 xv = _mm512_set1_ps(x[r * ldx + k]);
      a[r][0] = _mm512_fmadd_ps(xv, w0, a[r][0]);
      a[r][1] = _mm512_fmadd_ps(xv, w1, a[r][1]);
    }
  });
}

template <int R>
inline void tile_fp32(const float* x, int64_t ldx, const float* w, int64_t K, Acc& acc) {
  tile_f32<R>(x, ldx, K, acc, [&](int64_t k, __m512& w0, __m512& w1) {
    w0 = _mm512_loadu_ps(w + k * kTile);
    w1 = _mm512_loadu_ps(w + k * kTile + 16);
  });
}

// int8 weights widened to fp32 on the fly (the per-feature scales are applied at the store).
template <int R>
inline void tile_int8(const float* x, int64_t ldx, const int8_t* w, int64_t K, Acc& acc) {
  tile_f32<R>(x, ldx, K, acc, [&](int64_t k, __m512& w0, __m512& w1) {
    __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k * kTile));
    w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
    w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)));
  });
}

// x is bf16 padded to an even K; w holds K/2 pairs per output.
template <int R>
inline void tile_bf16(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t K2, Acc& acc) {
#if defined(__AVX512BF16__)
  k_loop<R>(K2, acc, [&](int64_t k2, Acc& a) {
    __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k2 * 2 * kTile);
    __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + k2 * 2 * kTile + 32);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, x + r * ldx + 2 * k2, 4);
      __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
      a[r][0] = _mm512_dpbf16_ps(a[r][0], w0, xv);
      a[r][1] = _mm512_dpbf16_ps(a[r][1], w1, xv);
    }
  });
#else
  // No AVX512-BF16: widen both operands to fp32 (even lanes, then odd lanes of each pair).
  const __m512i even = _mm512_set1_epi32(0x0000ffff);
  k_loop<R>(K2, acc, [&](int64_t k2, Acc& a) {
    __m512i p0 = _mm512_loadu_si512(w + k2 * 2 * kTile);
    __m512i p1 = _mm512_loadu_si512(w + k2 * 2 * kTile + 32);
    __m512 w0e = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_and_si512(p0, even), 16));
    __m512 w0o = _mm512_castsi512_ps(_mm512_andnot_si512(even, p0));
    __m512 w1e = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_and_si512(p1, even), 16));
    __m512 w1o = _mm512_castsi512_ps(_mm512_andnot_si512(even, p1));
    for (int r = 0; r < R; ++r) {
      __m512 xe = _mm512_set1_ps(bf16_to_float(x[r * ldx + 2 * k2]));
      __m512 xo = _mm512_set1_ps(bf16_to_float(x[r * ldx + 2 * k2 + 1]));
      a[r][0] = _mm512_fmadd_ps(xe, w0e, _mm512_fmadd_ps(xo, w0o, a[r][0]));
      a[r][1] = _mm512_fmadd_ps(xe, w1e, _mm512_fmadd_ps(xo, w1o, a[r][1]));
    }
  });
#endif
}

enum class Kind { kFp32, kBf16, kInt8 };

// int8 tile [K][32] -> the bf16 pair layout [K2][32][2] (K2 = Kx / 2, a missing odd row is 0).
// Exact: every int8 value is a bf16 value, so the bf16 bits are the fp32 bits' top half.
inline void int8_tile_to_bf16(const int8_t* w, int64_t K, int64_t K2, uint16_t* out) {
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t k2 = 0; k2 < K2; ++k2) {
    const int64_t k = 2 * k2;
    __m256i q0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k * kTile));
    __m256i q1 = k + 1 < K ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (k + 1) * kTile))
                           : _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      __m128i e8 = h ? _mm256_extracti128_si256(q0, 1) : _mm256_castsi256_si128(q0);
      __m128i o8 = h ? _mm256_extracti128_si256(q1, 1) : _mm256_castsi256_si128(q1);
      __m512i e = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(e8)));
      __m512i o = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(o8)));
      __m512i pair = _mm512_or_si512(_mm512_srli_epi32(e, 16), _mm512_and_si512(o, hi));
      _mm512_storeu_si512(out + k2 * 2 * kTile + h * 32, pair);
    }
  }
}

// int8 tile [K][32] -> fp32 [K][32].
inline void int8_tile_to_fp32(const int8_t* w, int64_t K, float* out) {
  for (int64_t k = 0; k < K; ++k) {
    __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k * kTile));
    _mm512_storeu_ps(out + k * kTile, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q))));
    _mm512_storeu_ps(out + k * kTile + 16,
                     _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1))));
  }
}

// Writes R rows of one tile: out[r, n0 : n0 + valid] = acc * scale + bias.
template <int R>
inline void store_tile(Acc& acc, int64_t n0, int64_t valid, const float* scale,
                       const float* bias, void* out, int64_t ldo, bool out_bf16) {
  for (int h = 0; h < 2; ++h) {
    int64_t n = n0 + 16 * h;
    int64_t cnt = valid - 16 * h;
    if (cnt <= 0) break;
    __mmask16 m = cnt >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << cnt) - 1);
    __m512 s = scale ? _mm512_maskz_loadu_ps(m, scale + n) : _mm512_set1_ps(1.0f);
    __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + n) : _mm512_setzero_ps();
    for (int r = 0; r < R; ++r) {
      __m512 y = _mm512_fmadd_ps(acc[r][h], s, b);
      if (out_bf16) {
        store_bf16x16_masked(static_cast<uint16_t*>(out) + r * ldo + n, y, m);
      } else {
        _mm512_mask_storeu_ps(static_cast<float*>(out) + r * ldo + n, m, y);
      }
    }
  }
}

template <int R>
void run_rows(Kind kind, const void* x, int64_t ldx, const void* w_tile, int64_t K, int64_t n0,
              int64_t valid, const float* scale, const float* bias, void* out, int64_t ldo,
              bool out_bf16) {
  Acc acc;  // fully unrolled over R: stays in registers
  if (kind == Kind::kFp32) {
    tile_fp32<R>(static_cast<const float*>(x), ldx, static_cast<const float*>(w_tile), K, acc);
  } else if (kind == Kind::kInt8) {
    tile_int8<R>(static_cast<const float*>(x), ldx, static_cast<const int8_t*>(w_tile), K, acc);
  } else {
    tile_bf16<R>(static_cast<const uint16_t*>(x), ldx, static_cast<const uint16_t*>(w_tile), K / 2, acc);
  }
  store_tile<R>(acc, n0, valid, scale, bias, out, ldo, out_bf16);
}

using RowsFn = void (*)(Kind, const void*, int64_t, const void*, int64_t, int64_t, int64_t,
                        const float*, const float*, void*, int64_t, bool);
template <int... Rs>
constexpr std::array<RowsFn, sizeof...(Rs)> rows_table(std::integer_sequence<int, Rs...>) {
  return {&run_rows<Rs + 1>...};
}
#endif

int64_t padded(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

}  // namespace

// Packs W [N, K] for `linear_packed`. kind: "fp32" | "bf16" (W converted to that dtype) or
// "int8" (W already quantized to int8; the per-feature scales are passed to linear_packed).
at::Tensor pack_linear_weight(const at::Tensor& weight, const std::string& kind) {
  TORCH_CHECK(weight.dim() == 2, "weight must be [N, K]");
  const int64_t N = weight.size(0), K = weight.size(1);
  const int64_t Np = padded(N, kTile);
  if (kind == "fp32") {
    at::Tensor w = at::zeros({Np, K}, weight.options().dtype(at::kFloat));
    w.narrow(0, 0, N).copy_(weight);
    // [Np/32, 32, K] -> [Np/32, K, 32]
    return w.view({Np / kTile, kTile, K}).transpose(1, 2).contiguous();
  }
  if (kind == "bf16") {
    const int64_t Kp = padded(K, 2);
    at::Tensor w = at::zeros({Np, Kp}, weight.options().dtype(at::kBFloat16));
    w.narrow(0, 0, N).narrow(1, 0, K).copy_(weight);
    // [Np/32, 32, Kp/2, 2] -> [Np/32, Kp/2, 32, 2]
    return w.view({Np / kTile, kTile, Kp / 2, 2}).transpose(1, 2).contiguous();
  }
  if (kind == "int8") {
    TORCH_CHECK(weight.scalar_type() == at::kChar, "int8 packing takes quantized int8 weights");
    at::Tensor w = at::zeros({Np, K}, weight.options());
    w.narrow(0, 0, N).copy_(weight);
    return w.view({Np / kTile, kTile, K}).transpose(1, 2).contiguous();
  }
  TORCH_CHECK(false, "unknown packed kind ", kind);
}

// y = x @ W^T (* scales) (+ bias) with W packed by `pack_linear_weight`. x: [M, K] fp32/bf16
// (bf16 only with kind "bf16" ... or any with int8); returns [M, N] in x's dtype.
at::Tensor linear_packed(const at::Tensor& x_in, const at::Tensor& packed, int64_t N,
                         const std::string& kind_name, const c10::optional<at::Tensor>& scales,
                         const c10::optional<at::Tensor>& bias) {
#if RADIXLM_AVX512
  TORCH_CHECK(x_in.dim() == 2, "x must be [M, K]");
  const int64_t M = x_in.size(0), K = x_in.size(1);
  const bool out_bf16 = x_in.scalar_type() == at::kBFloat16;
  TORCH_CHECK(out_bf16 || x_in.scalar_type() == at::kFloat, "x must be fp32 or bf16");
  Kind kind = kind_name == "fp32" ? Kind::kFp32 : kind_name == "bf16" ? Kind::kBf16 : Kind::kInt8;
  // int8 weights: 1-2 rows convert each weight on the fly (memory-bound); more rows dequantize
  // each tile once into a scratch tile (L1/L2) and run the bf16 (dpbf16, for bf16 activations)
  // or fp32 kernel over it, so the conversion is not repeated per row chunk.
  const bool dequant = kind == Kind::kInt8 && M > 2;
  const Kind run_kind = !dequant ? kind : out_bf16 ? Kind::kBf16 : Kind::kFp32;
  // Operand x in the precision of the kernel that runs: fp32 for fp32/int8 weights, bf16 (even
  // K) for bf16.
  at::Tensor x;
  if (run_kind == Kind::kBf16) {
    TORCH_CHECK(out_bf16, "bf16-packed weights take bf16 activations");
    if (K % 2) {
      x = at::zeros({M, K + 1}, x_in.options());
      x.narrow(1, 0, K).copy_(x_in);
    } else {
      x = x_in.contiguous();
    }
  } else {
    TORCH_CHECK(kind == Kind::kInt8 || !out_bf16, "fp32-packed weights take fp32 activations");
    TORCH_CHECK(kind != Kind::kBf16, "bf16-packed weights take bf16 activations");
    x = x_in.to(at::kFloat).contiguous();
  }
  const int64_t Kx = x.size(1);
  const int64_t tiles = packed.size(0);
  TORCH_CHECK(padded(N, kTile) == tiles * kTile, "packed weight does not match N");
  at::Tensor out = at::empty({M, N}, x_in.options());
  const float* s = nullptr;
  at::Tensor scale_f;
  if (kind == Kind::kInt8) {
    TORCH_CHECK(scales.has_value(), "int8 weights need scales");
    scale_f = scales->to(at::kFloat).contiguous();
    s = scale_f.data_ptr<float>();
  }
  at::Tensor bias_f;
  const float* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    bias_f = bias->to(at::kFloat).contiguous();
    b = bias_f.data_ptr<float>();
  }
  const int64_t tile_elems = (kind == Kind::kBf16 ? Kx : K) * kTile;
  const int64_t elem = kind == Kind::kFp32 ? 4 : kind == Kind::kBf16 ? 2 : 1;
  const char* wbase = static_cast<const char*>(packed.data_ptr());
  const char* xbase = static_cast<const char*>(x.data_ptr());
  const int64_t xelem = x.element_size();
  char* obase = static_cast<char*>(out.data_ptr());
  const int64_t oelem = out.element_size();
  static constexpr auto table = rows_table(std::make_integer_sequence<int, kMaxRows>{});
  const int64_t kdim = run_kind == Kind::kBf16 ? Kx : K;  // (bf16: Kx/2 pairs inside)
  // NOTE: dynamic scheduling in small chunks: when another process takes a core, the thread
  // that still runs picks up the tiles of the one that was descheduled, instead of waiting at
  // the barrier for a static half (throughput then degrades in proportion, not by half or more).
  const int64_t chunk = std::max<int64_t>(1, tiles / (8 * std::max(1, at::get_num_threads())));
  // Rows in blocks of kBlockRows: one block of x (<= 240 x K) stays in L2 while every tile
  // streams past it; the weights are re-read once per block, negligible next to the FLOPs of
  // a block that large.
  for (int64_t mb = 0; mb < M; mb += kBlockRows) {
    const int64_t mend = std::min(M, mb + kBlockRows);
#pragma omp parallel num_threads(at::get_num_threads()) if (tiles > 1)
    {
      std::unique_ptr<float[]> scratch(dequant ? new float[Kx * kTile] : nullptr);
#pragma omp for schedule(dynamic, chunk)
      for (int64_t t = 0; t < tiles; ++t) {
        const void* wt = wbase + t * tile_elems * elem;
        if (dequant) {
          const int8_t* q = static_cast<const int8_t*>(wt);
          if (run_kind == Kind::kBf16) {
            int8_tile_to_bf16(q, K, Kx / 2, reinterpret_cast<uint16_t*>(scratch.get()));
          } else {
            int8_tile_to_fp32(q, K, scratch.get());
          }
          wt = scratch.get();
        }
        const int64_t n0 = t * kTile;
        const int64_t valid = std::min<int64_t>(kTile, N - n0);
        for (int64_t m0 = mb; m0 < mend; m0 += kMaxRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, mend - m0));
          table[rows - 1](run_kind, xbase + m0 * Kx * xelem, Kx, wt, kdim, n0, valid, s, b,
                          obase + m0 * N * oelem, N, out_bf16);
        }
      }
    }
  }
  return out;
#else
  TORCH_CHECK(false, "radixlm_cpu was built without AVX-512");
#endif
}

}  // namespace radixlm
