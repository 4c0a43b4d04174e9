// Fused elementwise kernels of the decoder layer, with the rounding of the torch reference:
// a bf16 op rounds its fp32 result once per torch op, and these kernels round at the same
// points (see radixlm/kernels/reference.py), so fp32 results agree to the last bits and bf16
// results to one bf16 ulp where a reduction order differs.
//
//   add_rmsnorm   residual += x (in place; or residual = x), out = w * rms_normalise(residual)
//   rope_         q, k rotated in place (rotate-half layout) by cos/sin rows of `positions`
//   silu_mul      out = silu(gate) * up for gate_up = [gate | up]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "vec.h"

namespace radixlm {

namespace {
inline bool is_bf16(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16; }

inline float ld(const void* p, int64_t i, bool bf16) {
  return bf16 ? bf16_to_float(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}
inline void st(void* p, int64_t i, float v, bool bf16) {
  if (bf16) {
    static_cast<uint16_t*>(p)[i] = float_to_bf16(v);
  } else {
    static_cast<float*>(p)[i] = v;
  }
}
}  // namespace

// Returns (normed, residual). x, residual: [T, Hd] contiguous rows, same dtype; w: [Hd].
// With a residual, it is updated in place to x + residual and returned; without, x is returned.
std::vector<at::Tensor> add_rmsnorm(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                    const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [T, hidden] with contiguous rows");
  const int64_t T = x.size(0), Hd = x.size(1);
  const bool bf = is_bf16(x);
  TORCH_CHECK(bf || x.scalar_type() == at::kFloat, "fp32 or bf16 only");
  at::Tensor res = residual.has_value() && residual->defined() ? *residual : x;
  TORCH_CHECK(res.is_contiguous() && res.scalar_type() == x.scalar_type() && res.sizes() == x.sizes(), "residual must match x");
  TORCH_CHECK(weight.numel() == Hd, "weight must be [hidden]");
  const bool add = residual.has_value() && residual->defined();
  const bool wbf = is_bf16(weight);
  TORCH_CHECK(weight.is_contiguous() && (wbf || weight.scalar_type() == at::kFloat), "weight dtype");
  at::Tensor out = at::empty({T, Hd}, x.options());
  const char* xp = static_cast<const char*>(x.data_ptr());
  const int64_t xrow = x.stride(0) * x.element_size();
  void* rp = res.data_ptr();
  void* op = out.data_ptr();
  const void* wp = weight.data_ptr();
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const void* xr = xp + t * xrow;
      float ss = 0.f;
      for (int64_t i = 0; i < Hd; ++i) {
        float v = add ? ld(xr, i, bf) + ld(rp, t * Hd + i, bf) : ld(xr, i, bf);
        if (bf) v = round_bf16(v);
        if (add) st(rp, t * Hd + i, v, bf);
        ss += v * v;
      }
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(Hd) + static_cast<float>(eps));
      for (int64_t i = 0; i < Hd; ++i) {
        const float v = add ? ld(rp, t * Hd + i, bf) : ld(xr, i, bf);
        float h = v * inv;
        if (bf) h = round_bf16(h);
        // torch: weight (its dtype) * h.to(x dtype); the product is in the promoted dtype.
        st(op, t * Hd + i, ld(wp, i, wbf) * h, bf || wbf);
      }
    }
  });
  return {out, res};
}

// Rotates q [T, H, D] and k [T, KVH, D] in place (rows may be strided views of a fused qkv).
void rope_(const at::Tensor& positions, at::Tensor& q, at::Tensor& k, const at::Tensor& cos,
           const at::Tensor& sin) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3, "q [T,H,D], k [T,KVH,D]");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == q.size(2) && k.stride(2) == 1 && k.stride(1) == k.size(2), "heads must be contiguous");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous(), "fp32 tables");
  const int64_t T = q.size(0), D = q.size(2), half = D / 2;
  const bool bf = is_bf16(q);
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
      void* row = base + h * D * x.element_size();
      for (int64_t i = 0; i < half; ++i) {
        const float a = ld(row, i, bf), b = ld(row, i + half, bf);
        float c0 = c[i], s0 = s[i], c1 = c[i + half], s1 = s[i + half];
        if (bf) {
          c0 = round_bf16(c0), s0 = round_bf16(s0), c1 = round_bf16(c1), s1 = round_bf16(s1);
          st(row, i, round_bf16(a * c0) + round_bf16(-b * s0), true);
          st(row, i + half, round_bf16(b * c1) + round_bf16(a * s1), true);
        } else {
          // volatile-free but FMA-free: each product is rounded, as two torch muls and an add.
          const float p0 = a * c0, q0 = -b * s0, p1 = b * c1, q1 = a * s1;
          st(row, i, p0 + q0, false);
          st(row, i + half, p1 + q1, false);
        }
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
}

// gate_up [T, 2I] -> out [T, I] = silu(gate) * up, rounding after silu and after the product.
at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous(), "gate_up must be contiguous [T, 2I]");
  const int64_t T = gate_up.size(0), I = gate_up.size(1) / 2;
  const bool bf = is_bf16(gate_up);
  TORCH_CHECK(bf || gate_up.scalar_type() == at::kFloat, "fp32 or bf16 only");
  at::Tensor out = at::empty({T, I}, gate_up.options());
  const void* gp = gate_up.data_ptr();
  void* op = out.data_ptr();
  at::parallel_for(0, T * I, 4096, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t t = e / I, i = e % I;
      const float g = ld(gp, t * 2 * I + i, bf), u = ld(gp, t * 2 * I + I + i, bf);
      float a = g / (1.f + std::exp(-g));
      if (bf) a = round_bf16(a);
      st(op, e, a * u, bf);
    }
  });
  return out;
}

}  // namespace radixlm
