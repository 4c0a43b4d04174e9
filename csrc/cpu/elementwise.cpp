// Fused elementwise kernels of the decoder layer, with the rounding of the torch reference:
// a bf16 op rounds its fp32 result once per torch op, and these kernels round at the same
// points (see radixlm/kernels/reference.py), so fp32 results agree to the last bits and bf16
// results to one bf16 ulp where a reduction order differs.
//
//   add_rmsnorm   residual += x (in place; or residual = x), out = w * rms_normalise(residual)
//   rope_         q, k rotated in place (rotate-half layout) by cos/sin rows of `positions`
//   silu_mul      out = silu(gate) * up for gate_up = [gate | up]
// All three are AVX-512 over 16 lanes with a masked tail; rows are split across threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "vec.h"

namespace radixlm {

#if RADIXLM_AVX512
namespace {

// 16 lanes at p + i (the first `n` valid) as fp32, from fp32 or bf16 memory.
inline __m512 ld16(const void* p, int64_t i, bool bf16, __mmask16 m) {
  return bf16 ? load_bf16x16_masked(static_cast<const uint16_t*>(p) + i, m)
              : _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
}

// Stores 16 fp32 lanes to fp32 or bf16 memory (bf16: rounded to nearest even).
inline void st16(void* p, int64_t i, __m512 v, bool bf16, __mmask16 m) {
  if (bf16) {
    store_bf16x16_masked(static_cast<uint16_t*>(p) + i, v, m);
  } else {
    _mm512_mask_storeu_ps(static_cast<float*>(p) + i, m, v);
  }
}

inline __mmask16 tail(int64_t n, int64_t i) {
  const int64_t r = n - i;
  return r >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << r) - 1);
}

inline __m512 maybe_round(__m512 v, bool bf16) { return bf16 ? round_bf16_vec(v) : v; }

}  // namespace
#endif

// Returns (normed, residual). x, residual: [T, Hd] contiguous rows, same dtype; w: [Hd].
// With a residual, it is updated in place to x + residual and returned; without, x is returned.
std::vector<at::Tensor> add_rmsnorm(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                    const at::Tensor& weight, double eps) {
#if RADIXLM_AVX512
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [T, hidden] with contiguous rows");
  const int64_t T = x.size(0), Hd = x.size(1);
  const bool bf = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf || x.scalar_type() == at::kFloat, "fp32 or bf16 only");
  const bool add = residual.has_value() && residual->defined();
  at::Tensor res = add ? *residual : x;
  TORCH_CHECK(res.scalar_type() == x.scalar_type() && res.sizes() == x.sizes(), "residual must match x");
  TORCH_CHECK(!add || res.is_contiguous(), "residual must be contiguous");
  TORCH_CHECK(weight.numel() == Hd && weight.is_contiguous(), "weight must be [hidden]");
  const bool wbf = weight.scalar_type() == at::kBFloat16;
  TORCH_CHECK(wbf || weight.scalar_type() == at::kFloat, "weight dtype");
  at::Tensor out = at::empty({T, Hd}, x.options());
  const char* xp = static_cast<const char*>(x.data_ptr());
  const int64_t xrow = x.stride(0) * x.element_size();
  char* rp = static_cast<char*>(res.data_ptr());
  const int64_t rrow = res.stride(0) * res.element_size();
  char* op = static_cast<char*>(out.data_ptr());
  const int64_t orow = Hd * out.element_size();
  const void* wp = weight.data_ptr();
  const bool out_bf = bf || wbf;  // torch: weight * h.to(x dtype), in the promoted dtype
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const void* xr = xp + t * xrow;
      void* rr = rp + t * rrow;
      __m512 ss = _mm512_setzero_ps();
      for (int64_t i = 0; i < Hd; i += 16) {
        const __mmask16 m = tail(Hd, i);
        __m512 v = ld16(xr, i, bf, m);
        if (add) {
          v = maybe_round(_mm512_add_ps(v, ld16(rr, i, bf, m)), bf);
          st16(rr, i, v, bf, m);
        }
        ss = _mm512_fmadd_ps(v, v, ss);
      }
      const float inv = 1.f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(Hd) + static_cast<float>(eps));
      const __m512 iv = _mm512_set1_ps(inv);
      const void* src = add ? rr : xr;
      for (int64_t i = 0; i < Hd; i += 16) {
        const __mmask16 m = tail(Hd, i);
        const __m512 h = maybe_round(_mm512_mul_ps(ld16(src, i, bf, m), iv), bf);
        st16(op + t * orow, i, _mm512_mul_ps(ld16(wp, i, wbf, m), h), out_bf, m);
      }
    }
  });
  return {out, res};
#else
  TORCH_CHECK(false, "radixlm_cpu was built without AVX-512");
#endif
}

// Rotates q [T, H, D] and k [T, KVH, D] in place (rows may be strided views of a fused qkv).
void rope_(const at::Tensor& positions, at::Tensor& q, at::Tensor& k, const at::Tensor& cos,
           const at::Tensor& sin) {
#if RADIXLM_AVX512
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3, "q [T,H,D], k [T,KVH,D]");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == q.size(2) && k.stride(2) == 1 && k.stride(1) == k.size(2),
              "heads must be contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "q and k differ in dtype");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous(), "fp32 tables");
  const int64_t T = q.size(0), D = q.size(2), half = D / 2;
  const bool bf = q.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf || q.scalar_type() == at::kFloat, "fp32 or bf16 only");
  at::Tensor pos = positions.to(at::kLong).contiguous();
  const int64_t* pp = pos.data_ptr<int64_t>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(pp[t] >= 0 && pp[t] < cos.size(0), "position ", pp[t], " outside the RoPE table");
  }
  auto rotate = [&](at::Tensor& x, int64_t t, const float* c, const float* s) {
    char* base = static_cast<char*>(x.data_ptr()) + t * x.stride(0) * x.element_size();
    for (int64_t h = 0; h < x.size(1); ++h) {
      char* row = base + h * D * x.element_size();
      for (int64_t i = 0; i < half; i += 16) {
        const __mmask16 m = tail(half, i);
        const __m512 a = ld16(row, i, bf, m), b = ld16(row, i + half, bf, m);
        // torch: x * cos + cat(-x2, x1) * sin, tables cast to x's dtype; each op rounded.
        const __m512 c0 = maybe_round(_mm512_maskz_loadu_ps(m, c + i), bf);
        const __m512 s0 = maybe_round(_mm512_maskz_loadu_ps(m, s + i), bf);
        const __m512 c1 = maybe_round(_mm512_maskz_loadu_ps(m, c + i + half), bf);
        const __m512 s1 = maybe_round(_mm512_maskz_loadu_ps(m, s + i + half), bf);
        const __m512 nb = _mm512_sub_ps(_mm512_setzero_ps(), b);
        const __m512 lo = _mm512_add_ps(maybe_round(_mm512_mul_ps(a, c0), bf), maybe_round(_mm512_mul_ps(nb, s0), bf));
        const __m512 hi = _mm512_add_ps(maybe_round(_mm512_mul_ps(b, c1), bf), maybe_round(_mm512_mul_ps(a, s1), bf));
        st16(row, i, lo, bf, m);
        st16(row, i + half, hi, bf, m);
      }
    }
  };
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* c = cp + pp[t] * D;
      const float* s = sp + pp[t] * D;
      rotate(q, t, c, s);
      rotate(k, t, c, s);
    }
  });
#else
  TORCH_CHECK(false, "radixlm_cpu was built without AVX-512");
#endif
}

// gate_up [T, 2I] -> out [T, I] = silu(gate) * up, rounding after silu and after the product.
at::Tensor silu_mul(const at::Tensor& gate_up) {
#if RADIXLM_AVX512
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous(), "gate_up must be contiguous [T, 2I]");
  const int64_t T = gate_up.size(0), I = gate_up.size(1) / 2;
  const bool bf = gate_up.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf || gate_up.scalar_type() == at::kFloat, "fp32 or bf16 only");
  at::Tensor out = at::empty({T, I}, gate_up.options());
  const char* gp = static_cast<const char*>(gate_up.data_ptr());
  char* op = static_cast<char*>(out.data_ptr());
  const int64_t es = gate_up.element_size();
  const __m512 one = _mm512_set1_ps(1.f);
  at::parallel_for(0, T, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, I)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const char* g = gp + t * 2 * I * es;
      const char* u = g + I * es;
      char* o = op + t * I * es;
      for (int64_t i = 0; i < I; i += 16) {
        const __mmask16 m = tail(I, i);
        const __m512 gv = ld16(g, i, bf, m);
        const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        const __m512 a = maybe_round(_mm512_div_ps(gv, _mm512_add_ps(one, e)), bf);
        st16(o, i, _mm512_mul_ps(a, ld16(u, i, bf, m)), bf, m);
      }
    }
  });
  return out;
#else
  TORCH_CHECK(false, "radixlm_cpu was built without AVX-512");
#endif
}

}  // namespace radixlm
