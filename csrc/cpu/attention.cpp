// Paged decode attention: one new query per request against its whole KV history, read
// straight from the per-layer pools by slot index (no gather into a padded block).
//
//   q        [B, H, D]      fp32 | bf16 (any row stride; head and dim contiguous)
//   k/v pool [S, KVH, D]    fp32 | bf16 (row s = KV of slot s)
//   table    [R, C] int32   req_to_token: slot of every position of request row r
//   rows     [B] int64      request row of each batch entry; lens [B] int64 its KV length
//   out      [B, H, D]      q's dtype
// Query heads h = kvh * G + g share KV head kvh (GQA, G = H / KVH). A sliding window w keeps
// keys at positions >= len - w. Softmax is computed online in fp32 over blocks of 16 keys.
// Work items are (request, KV head, split): a long context is split over the KV length so both
// threads work even at batch 1, and the splits are merged with their log-sum-exp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "vec.h"

namespace radixlm {

#if RADIXLM_AVX512
namespace {

constexpr int kBlock = 16;
constexpr int kMaxG = 16;
constexpr int kMaxD = 256;

// 16 lanes (the first `m` of them) as fp32; lanes outside the mask read as 0 and are never
// read from memory.
inline __m512 load16(const void* p, bool bf16, __mmask16 m) {
  return bf16 ? load_bf16x16_masked(static_cast<const uint16_t*>(p), m)
              : _mm512_maskz_loadu_ps(m, static_cast<const float*>(p));
}

inline __mmask16 chunk_mask(int c, int nd, int D) {
  const int rem = D - 16 * (nd - 1);
  return c == nd - 1 && rem < 16 ? static_cast<__mmask16>((1u << rem) - 1) : static_cast<__mmask16>(0xffff);
}

// Prefetches `bytes` at p into L1, line by line (K/V rows are scattered over the pool: without
// this, every key is a dependent cache miss and a long batch is latency-bound).
inline void prefetch_row(const char* p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}

// r[j] = sum of the 16 lanes of v[j], for 16 vectors at once (a transposing tree of unpacks
// and lane shuffles: ~45 instructions instead of 16 horizontal reductions).
inline __m512 hsum16(const __m512 (&v)[16]) {
  __m512 a[8], b[4];
  for (int i = 0; i < 8; ++i) {  // a[i]: keys 2i, 2i+1 interleaved within each 128-bit lane
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  for (int i = 0; i < 4; ++i) {  // b[i]: keys 4i..4i+3, one partial per 128-bit lane
    b[i] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  const __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(d0, d1, _MM_SHUFFLE(3, 1, 3, 1)));
}

struct Partial {
  float m[kMaxG];
  float l[kMaxG];
};

// Attends G query heads (qf: [G][Dp] fp32, pre-scaled, zero past D; Dp = D rounded up to 16) over positions [p0, p1)
// of one request. Writes the unnormalised accumulator acc[G][Dp], running max m and sum l.
void attend_range(const float* qf, int G, int D, int Dp, const int32_t* slots, int64_t p0, int64_t p1,
                  const char* kbase, const char* vbase, int64_t row_bytes, int64_t head_off,
                  bool bf16, float* acc, Partial& st) {
  const int nd = (D + 15) / 16;  // the last chunk is masked when D % 16 != 0
  for (int g = 0; g < G; ++g) {
    st.m[g] = -std::numeric_limits<float>::infinity();
    st.l[g] = 0.f;
    for (int d = 0; d < Dp; ++d) acc[g * Dp + d] = 0.f;
  }
  alignas(64) float s[kMaxG][kBlock];
  const int64_t head_bytes = static_cast<int64_t>(D) * (bf16 ? 2 : 4);
  for (int64_t j = p0; j < std::min(p1, p0 + kBlock); ++j) {
    prefetch_row(kbase + slots[j] * row_bytes + head_off, head_bytes);
  }
  for (int64_t b0 = p0; b0 < p1; b0 += kBlock) {
    const int n = static_cast<int>(std::min<int64_t>(kBlock, p1 - b0));
    // This block's V rows and the next block's K rows arrive while the scores are computed.
    for (int j = 0; j < n; ++j) prefetch_row(vbase + slots[b0 + j] * row_bytes + head_off, head_bytes);
    for (int64_t j = b0 + kBlock; j < std::min(p1, b0 + 2 * kBlock); ++j) {
      prefetch_row(kbase + slots[j] * row_bytes + head_off, head_bytes);
    }
    // scores s[g][j] = q_g . k_j: per key and head a 16-lane partial, then one transposing
    // reduction per head for the whole block.
    alignas(64) __m512 part[kMaxG][kBlock];
    for (int j = 0; j < kBlock; ++j) {
      if (j >= n) {
        for (int g = 0; g < G; ++g) part[g][j] = _mm512_setzero_ps();
        continue;
      }
      const char* kp = kbase + slots[b0 + j] * row_bytes + head_off;
      __m512 kv[kMaxD / 16];
      for (int c = 0; c < nd; ++c) kv[c] = load16(kp + c * 16 * (bf16 ? 2 : 4), bf16, chunk_mask(c, nd, D));
      for (int g = 0; g < G; ++g) {
        // qf rows are padded to a multiple of 16 with zeros (see decode_attention)
        const float* qg = qf + g * Dp;
        __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qg), kv[0]);
        for (int c = 1; c < nd; ++c) a = _mm512_fmadd_ps(_mm512_loadu_ps(qg + c * 16), kv[c], a);
        part[g][j] = a;
      }
    }
    for (int g = 0; g < G; ++g) _mm512_store_ps(s[g], hsum16(part[g]));
    const __mmask16 valid = static_cast<__mmask16>(n == 16 ? 0xffff : (1u << n) - 1);
    const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    alignas(64) float p[kMaxG][kBlock];
    for (int g = 0; g < G; ++g) {
      __m512 sv = _mm512_mask_loadu_ps(ninf, valid, s[g]);
      const float bmax = _mm512_reduce_max_ps(sv);
      const float m_new = std::max(st.m[g], bmax);
      const float alpha = std::exp(st.m[g] - m_new);  // 0 on the first block (m = -inf)
      __m512 pv = _mm512_maskz_mov_ps(valid, exp_ps(_mm512_sub_ps(sv, _mm512_set1_ps(m_new))));
      _mm512_store_ps(p[g], pv);
      st.l[g] = st.l[g] * alpha + _mm512_reduce_add_ps(pv);
      st.m[g] = m_new;
      if (alpha != 1.f) {
        const __m512 av = _mm512_set1_ps(alpha);
        for (int c = 0; c < nd; ++c) {
          float* ap = acc + g * Dp + c * 16;
          _mm512_storeu_ps(ap, _mm512_mul_ps(_mm512_loadu_ps(ap), av));
        }
      }
    }
    // acc[g] += sum_j p[g][j] * v_j
    for (int j = 0; j < n; ++j) {
      const char* vp = vbase + slots[b0 + j] * row_bytes + head_off;
      __m512 vv[kMaxD / 16];
      for (int c = 0; c < nd; ++c) vv[c] = load16(vp + c * 16 * (bf16 ? 2 : 4), bf16, chunk_mask(c, nd, D));
      for (int g = 0; g < G; ++g) {
        const __m512 pj = _mm512_set1_ps(p[g][j]);
        for (int c = 0; c < nd; ++c) {
          float* ap = acc + g * Dp + c * 16;
          _mm512_storeu_ps(ap, _mm512_fmadd_ps(pj, vv[c], _mm512_loadu_ps(ap)));
        }
      }
    }
  }
}

}  // namespace
#endif

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                            const at::Tensor& table, const at::Tensor& rows, const at::Tensor& lens,
                            double scale, int64_t window) {
#if RADIXLM_AVX512
  TORCH_CHECK(q.dim() == 3 && k_pool.dim() == 3 && v_pool.dim() == 3, "q [B,H,D], pools [S,KVH,D]");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == q.size(2), "q heads must be contiguous");
  TORCH_CHECK(k_pool.is_contiguous() && v_pool.is_contiguous(), "pools must be contiguous");
  TORCH_CHECK(k_pool.scalar_type() == v_pool.scalar_type(), "k and v pools differ in dtype");
  TORCH_CHECK(table.scalar_type() == at::kInt && table.is_contiguous(), "table must be int32");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KVH = k_pool.size(1);
  TORCH_CHECK(H % KVH == 0 && H / KVH <= kMaxG, "unsupported head grouping");
  TORCH_CHECK(D <= kMaxD && k_pool.size(2) == D, "head_dim must be <= 256 and match the pools");
  const int G = static_cast<int>(H / KVH);
  const bool q_bf16 = q.scalar_type() == at::kBFloat16;
  const bool kv_bf16 = k_pool.scalar_type() == at::kBFloat16;
  TORCH_CHECK(q_bf16 || q.scalar_type() == at::kFloat, "q must be fp32 or bf16");
  TORCH_CHECK(kv_bf16 || k_pool.scalar_type() == at::kFloat, "pools must be fp32 or bf16");
  at::Tensor rows_c = rows.to(at::kLong).contiguous(), lens_c = lens.to(at::kLong).contiguous();
  const int64_t* row_p = rows_c.data_ptr<int64_t>();
  const int64_t* len_p = lens_c.data_ptr<int64_t>();
  const int64_t C = table.size(1);
  const int32_t* tab = table.data_ptr<int32_t>();
  at::Tensor out = at::empty({B, H, D}, q.options().memory_format(at::MemoryFormat::Contiguous));

  // Splits over the KV length: enough items for every thread, each split >= 128 keys.
  const int threads = std::max(1, at::get_num_threads());
  int64_t max_len = 0;
  for (int64_t b = 0; b < B; ++b) max_len = std::max(max_len, len_p[b]);
  int64_t splits = 1;
  if (B * KVH < 4 * threads) {
    splits = std::min<int64_t>((4 * threads + B * KVH - 1) / (B * KVH), std::max<int64_t>(1, max_len / 128));
  }
  const int64_t items = B * KVH * splits;
  // Partial results of every split: acc [items][G][D], m and l [items][G].
  const int64_t Dp = (D + 15) / 16 * 16;  // accumulator rows padded to whole vectors
  std::unique_ptr<float[]> acc_buf(new float[static_cast<size_t>(items) * G * Dp]);
  std::vector<Partial> parts(static_cast<size_t>(items));
  const int64_t row_bytes = KVH * D * k_pool.element_size();
  const char* kb = static_cast<const char*>(k_pool.data_ptr());
  const char* vb = static_cast<const char*>(v_pool.data_ptr());
  const char* qb = static_cast<const char*>(q.data_ptr());
  const int64_t q_row = q.stride(0) * q.element_size();

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (items > 1)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t b = it / (KVH * splits), kvh = (it / splits) % KVH, sp = it % splits;
    const int64_t len = len_p[b];
    const int64_t start = window > 0 ? std::max<int64_t>(0, len - window) : 0;
    const int64_t span = len - start;
    const int64_t p0 = start + span * sp / splits, p1 = start + span * (sp + 1) / splits;
    alignas(64) float qf[kMaxG * kMaxD];
    const int nd = static_cast<int>((D + 15) / 16);
    for (int g = 0; g < G; ++g) {
      const char* qp = qb + b * q_row + (kvh * G + g) * D * q.element_size();
      for (int c = 0; c < nd; ++c) {
        __m512 v = load16(qp + c * 16 * q.element_size(), q_bf16, chunk_mask(c, nd, static_cast<int>(D)));
        _mm512_storeu_ps(qf + g * Dp + c * 16, _mm512_mul_ps(v, _mm512_set1_ps(static_cast<float>(scale))));
      }
    }
    attend_range(qf, G, static_cast<int>(D), static_cast<int>(Dp), tab + row_p[b] * C, p0, p1, kb, vb, row_bytes,
                 kvh * D * k_pool.element_size(), kv_bf16, acc_buf.get() + it * G * Dp, parts[it]);
  }
  // Merge the splits of each (request, KV head) and normalise.
  const int64_t groups = B * KVH;
#pragma omp parallel for schedule(static) num_threads(threads) if (groups > 8)
  for (int64_t gi = 0; gi < groups; ++gi) {
    const int64_t b = gi / KVH, kvh = gi % KVH;
    for (int g = 0; g < G; ++g) {
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t sp = 0; sp < splits; ++sp) m = std::max(m, parts[gi * splits + sp].m[g]);
      float l = 0.f;
      std::vector<float> o(D, 0.f);
      for (int64_t sp = 0; sp < splits; ++sp) {
        const Partial& pt = parts[gi * splits + sp];
        if (pt.l[g] == 0.f) continue;  // an empty split
        const float w = std::exp(pt.m[g] - m);
        l += pt.l[g] * w;
        const float* a = acc_buf.get() + (gi * splits + sp) * G * Dp + g * Dp;
        for (int d = 0; d < D; ++d) o[d] += a[d] * w;
      }
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int64_t h = kvh * G + g;
      if (q_bf16) {
        uint16_t* dst = static_cast<uint16_t*>(out.data_ptr()) + (b * H + h) * D;
        for (int d = 0; d < D; ++d) dst[d] = float_to_bf16(o[d] * inv);
      } else {
        float* dst = out.data_ptr<float>() + (b * H + h) * D;
        for (int d = 0; d < D; ++d) dst[d] = o[d] * inv;
      }
    }
  }
  return out;
#else
  TORCH_CHECK(false, "radixlm_cpu was built without AVX-512");
#endif
}

}  // namespace radixlm

namespace radixlm {

// k_pool[slots[t]] = k[t], v_pool[slots[t]] = v[t] for the new tokens of a step (one call for
// both pools instead of two indexed writes). k, v: [T, KVH, D] with contiguous heads (strided
// token rows, as views of the fused qkv output), the pools' dtype; slots: [T] int64.
void set_kv_(at::Tensor& k_pool, at::Tensor& v_pool, const at::Tensor& slots, const at::Tensor& k,
             const at::Tensor& v) {
  TORCH_CHECK(k_pool.is_contiguous() && v_pool.is_contiguous(), "pools must be contiguous");
  TORCH_CHECK(k.scalar_type() == k_pool.scalar_type() && v.scalar_type() == v_pool.scalar_type(),
              "k/v must have the pools' dtype");
  TORCH_CHECK(k.dim() == 3 && v.dim() == 3 && k.size(1) == k_pool.size(1) && k.size(2) == k_pool.size(2),
              "k/v must be [T, KVH, D] like the pools");
  TORCH_CHECK(k.stride(2) == 1 && k.stride(1) == k.size(2) && v.stride(2) == 1 && v.stride(1) == v.size(2),
              "k/v heads must be contiguous");
  at::Tensor sl = slots.to(at::kLong).contiguous();
  const int64_t T = sl.numel(), S = k_pool.size(0);
  TORCH_CHECK(k.size(0) == T && v.size(0) == T, "one slot per token");
  const int64_t* sp = sl.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(sp[t] >= 0 && sp[t] < S, "slot ", sp[t], " outside the pool");
  const int64_t row = k.size(1) * k.size(2) * k.element_size();
  char* kd = static_cast<char*>(k_pool.data_ptr());
  char* vd = static_cast<char*>(v_pool.data_ptr());
  const char* ks = static_cast<const char*>(k.data_ptr());
  const char* vs = static_cast<const char*>(v.data_ptr());
  const int64_t kst = k.stride(0) * k.element_size(), vst = v.stride(0) * v.element_size();
  at::parallel_for(0, T, 256, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      std::memcpy(kd + sp[t] * row, ks + t * kst, row);
      std::memcpy(vd + sp[t] * row, vs + t * vst, row);
    }
  });
}

}  // namespace radixlm
