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
// Work items are (request, split): a long context is split over the KV length so both threads
// work even at batch 1, and the splits are merged with their log-sum-exp. An item walks its keys
// once, block by block, and every head attends to a block while its K/V rows (whole rows, all KV
// heads: contiguous for consecutive slots) are in cache; each head group keeps its output
// accumulators in registers within a block.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "vec.h"

namespace radixlm {

#if RADIXLM_AVX512
namespace {

constexpr int kBlock = 16;
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

// Prefetches `bytes` at p into L2, line by line: K/V rows are scattered over the pool and, even
// when consecutive, the hardware prefetcher does not keep up with whole-row reads of many
// requests. L2, not L1: a block's rows (2 x 16 rows) outnumber L1's outstanding misses, and the
// L1 hint measured 1.5-2x slower at batch 8 (the same as no prefetch at all).
inline void prefetch_row(const char* p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
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

// The largest head sub-group whose output accumulators (gs x nd vectors) stay in registers.
constexpr int gs_max(int nd) { return nd <= 4 ? 4 : nd <= 5 ? 3 : nd <= 8 ? 2 : 1; }

// One block of n <= 16 keys for GS query heads of one KV head: qf [GS][Dp] fp32 (pre-scaled,
// zero past D); krows/vrows[j]: the key's K/V of this KV head. Online-softmax update of the
// unnormalised accumulator acc[GS][Dp] (held in registers over the block), the running max m
// and sum l. Scores: one 16-lane partial per (key, head), then one transposing reduction per
// head. `last` masks the last chunk of a head when D % 16 != 0 (those lanes read as 0).
template <int ND, int GS>
void attend_block(const float* qf, int Dp, __mmask16 last, const char* const* krows, const char* const* vrows,
                  int n, bool bf16, float* acc, float* m, float* l) {
  const int64_t eb = bf16 ? 2 : 4;
  auto mask = [last](int c) { return c == ND - 1 ? last : static_cast<__mmask16>(0xffff); };
  __m512 part[GS][kBlock];
  for (int j = 0; j < kBlock; ++j) {
    if (j >= n) {
      for (int g = 0; g < GS; ++g) part[g][j] = _mm512_setzero_ps();
      continue;
    }
    __m512 kv[ND];
    for (int c = 0; c < ND; ++c) kv[c] = load16(krows[j] + c * 16 * eb, bf16, mask(c));
    for (int g = 0; g < GS; ++g) {
      __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qf + g * Dp), kv[0]);
      for (int c = 1; c < ND; ++c) a = _mm512_fmadd_ps(_mm512_loadu_ps(qf + g * Dp + c * 16), kv[c], a);
      part[g][j] = a;
    }
  }
  const __mmask16 valid = static_cast<__mmask16>(n == 16 ? 0xffff : (1u << n) - 1);
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  alignas(64) float p[GS][kBlock];
  __m512 o[GS][ND];
  for (int g = 0; g < GS; ++g) {
    const __m512 sv = _mm512_mask_mov_ps(ninf, valid, hsum16(part[g]));
    const float m_new = std::max(m[g], _mm512_reduce_max_ps(sv));
    const float alpha = std::exp(m[g] - m_new);  // 0 on the first block (m = -inf, acc = 0)
    const __m512 pv = _mm512_maskz_mov_ps(valid, exp_ps(_mm512_sub_ps(sv, _mm512_set1_ps(m_new))));
    _mm512_store_ps(p[g], pv);
    l[g] = l[g] * alpha + _mm512_reduce_add_ps(pv);
    m[g] = m_new;
    const __m512 av = _mm512_set1_ps(alpha);
    for (int c = 0; c < ND; ++c) o[g][c] = _mm512_mul_ps(_mm512_loadu_ps(acc + g * Dp + c * 16), av);
  }
  for (int j = 0; j < n; ++j) {
    __m512 vv[ND];
    for (int c = 0; c < ND; ++c) vv[c] = load16(vrows[j] + c * 16 * eb, bf16, mask(c));
    for (int g = 0; g < GS; ++g) {
      const __m512 pj = _mm512_set1_ps(p[g][j]);
      for (int c = 0; c < ND; ++c) o[g][c] = _mm512_fmadd_ps(pj, vv[c], o[g][c]);
    }
  }
  for (int g = 0; g < GS; ++g) {
    for (int c = 0; c < ND; ++c) _mm512_storeu_ps(acc + g * Dp + c * 16, o[g][c]);
  }
}

using BlockFn = void (*)(const float*, int, __mmask16, const char* const*, const char* const*, int, bool,
                         float*, float*, float*);

template <int ND, int GS>
constexpr BlockFn pick() {
  if constexpr (GS <= gs_max(ND)) {
    return &attend_block<ND, GS>;
  } else {
    return nullptr;
  }
}

template <int ND>
constexpr std::array<BlockFn, 4> row() {
  return {pick<ND, 1>(), pick<ND, 2>(), pick<ND, 3>(), pick<ND, 4>()};
}

// [nd - 1][gs - 1]: the specialisation for heads of nd 16-lane chunks, gs heads at once.
constexpr std::array<std::array<BlockFn, 4>, kMaxD / 16> kBlockFns = {
    row<1>(), row<2>(), row<3>(),  row<4>(),  row<5>(),  row<6>(),  row<7>(),  row<8>(),
    row<9>(), row<10>(), row<11>(), row<12>(), row<13>(), row<14>(), row<15>(), row<16>()};

#if defined(__AVX512BF16__)
constexpr bool kBf16Dot = true;
alignas(64) constexpr uint16_t kZeroRow[kMaxD] = {};

// attend_block for bf16 q and bf16 K/V with AVX512-BF16 dot products (no widening of K/V):
// scores as pairwise bf16 products summed in fp32 (exact products) times `scale`; the softmax
// weights are rounded to bf16 (their sum l is taken over the rounded weights, so the output is
// their exact weighted mean) and o += p_j v_j + p_j+1 v_j+1 over key pairs, V rows interleaved
// by 16-bit unpacks. qv: [GS][Dp] bf16 (raw q, zero past D; Dp = D rounded up to 32). The
// accumulator of each 32-dim chunk is two vectors, [lo | hi], in unpack order: acc position
// (c * 32 + p) holds dim c * 32 + bf16_acc_dim(p) (see the merge in decode_attention).
template <int NC, int GS>
void attend_block_bf16(const void* qv, int Dp, uint32_t last, const char* const* krows, const char* const* vrows,
                       int n, float scale, float* acc, float* m, float* l) {
  const uint16_t* qb = static_cast<const uint16_t*>(qv);
  auto mask = [last](int c) { return static_cast<__mmask32>(c == NC - 1 ? last : 0xffffffffu); };
  __m512 part[GS][kBlock];
  for (int j = 0; j < kBlock; ++j) {
    if (j >= n) {
      for (int g = 0; g < GS; ++g) part[g][j] = _mm512_setzero_ps();
      continue;
    }
    __m512bh kv[NC];
    for (int c = 0; c < NC; ++c) kv[c] = (__m512bh)_mm512_maskz_loadu_epi16(mask(c), krows[j] + c * 64);
    for (int g = 0; g < GS; ++g) {
      __m512 a = _mm512_setzero_ps();
      for (int c = 0; c < NC; ++c) {
        a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(qb + g * Dp + c * 32), kv[c]);
      }
      part[g][j] = a;
    }
  }
  const __mmask16 valid = static_cast<__mmask16>(n == 16 ? 0xffff : (1u << n) - 1);
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 sc = _mm512_set1_ps(scale);
  alignas(64) uint16_t pb[GS][kBlock];
  __m512 o[GS][2 * NC];
  for (int g = 0; g < GS; ++g) {
    const __m512 sv = _mm512_mask_mov_ps(ninf, valid, _mm512_mul_ps(hsum16(part[g]), sc));
    const float m_new = std::max(m[g], _mm512_reduce_max_ps(sv));
    const float alpha = std::exp(m[g] - m_new);  // 0 on the first block (m = -inf, acc = 0)
    const __m512 pv = round_bf16_vec(_mm512_maskz_mov_ps(valid, exp_ps(_mm512_sub_ps(sv, _mm512_set1_ps(m_new)))));
    _mm256_store_si256(reinterpret_cast<__m256i*>(pb[g]), cvt_fp32_bf16(pv));
    l[g] = l[g] * alpha + _mm512_reduce_add_ps(pv);
    m[g] = m_new;
    const __m512 av = _mm512_set1_ps(alpha);
    for (int c = 0; c < 2 * NC; ++c) o[g][c] = _mm512_mul_ps(_mm512_loadu_ps(acc + g * Dp + c * 16), av);
  }
  const char* zero = reinterpret_cast<const char*>(kZeroRow);
  for (int j = 0; j < n; j += 2) {
    const char* v0 = vrows[j];
    const char* v1 = j + 1 < n ? vrows[j + 1] : zero;  // p[j + 1] is 0; the row must be finite
    __m512bh lo[NC], hi[NC];
    for (int c = 0; c < NC; ++c) {
      const __m512i a = _mm512_maskz_loadu_epi16(mask(c), v0 + c * 64);
      const __m512i b = _mm512_maskz_loadu_epi16(mask(c), v1 + c * 64);
      lo[c] = (__m512bh)_mm512_unpacklo_epi16(a, b);
      hi[c] = (__m512bh)_mm512_unpackhi_epi16(a, b);
    }
    for (int g = 0; g < GS; ++g) {
      int32_t pair;
      std::memcpy(&pair, pb[g] + j, 4);
      const __m512bh pp = (__m512bh)_mm512_set1_epi32(pair);
      for (int c = 0; c < NC; ++c) {
        o[g][2 * c] = _mm512_dpbf16_ps(o[g][2 * c], pp, lo[c]);
        o[g][2 * c + 1] = _mm512_dpbf16_ps(o[g][2 * c + 1], pp, hi[c]);
      }
    }
  }
  for (int g = 0; g < GS; ++g) {
    for (int c = 0; c < 2 * NC; ++c) _mm512_storeu_ps(acc + g * Dp + c * 16, o[g][c]);
  }
}

using Bf16BlockFn = void (*)(const void*, int, uint32_t, const char* const*, const char* const*, int, float,
                             float*, float*, float*);

template <int NC, int GS>
constexpr Bf16BlockFn pick_bf16() {
  if constexpr (GS <= gs_max(2 * NC)) {
    return &attend_block_bf16<NC, GS>;
  } else {
    return nullptr;
  }
}

template <int NC>
constexpr std::array<Bf16BlockFn, 4> row_bf16() {
  return {pick_bf16<NC, 1>(), pick_bf16<NC, 2>(), pick_bf16<NC, 3>(), pick_bf16<NC, 4>()};
}

// [nc - 1][gs - 1]: heads of nc 32-dim chunks, gs heads at once.
constexpr std::array<std::array<Bf16BlockFn, 4>, kMaxD / 32> kBf16BlockFns = {
    row_bf16<1>(), row_bf16<2>(), row_bf16<3>(), row_bf16<4>(),
    row_bf16<5>(), row_bf16<6>(), row_bf16<7>(), row_bf16<8>()};
#else
constexpr bool kBf16Dot = false;
#endif

// Position p (0..31) of a 32-dim chunk of the bf16-dot accumulator -> the dim it holds: lo
// vector lane 4L + i holds dim 8L + i, hi vector lane 4L + i holds dim 8L + 4 + i.
inline int bf16_acc_dim(int p) { return p < 16 ? (p / 4) * 8 + p % 4 : ((p - 16) / 4) * 8 + 4 + p % 4; }

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
  TORCH_CHECK(H % KVH == 0, "query heads must be a multiple of KV heads");
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
  if (B < 4 * threads) {
    splits = std::min<int64_t>((4 * threads + B - 1) / B, std::max<int64_t>(1, max_len / 128));
  }
  const int64_t items = B * splits;
  // bf16 q and K/V take the AVX512-BF16 dot-product blocks (attend_block_bf16).
  const bool dot = kBf16Dot && q_bf16 && kv_bf16;
  // Partial results of every split: acc [items][H][Dp], m and l [items][H].
  const int64_t Dp = dot ? (D + 31) / 32 * 32 : (D + 15) / 16 * 16;  // whole vectors / chunks
  std::unique_ptr<float[]> acc_buf(new float[static_cast<size_t>(items * H * Dp)]);
  std::unique_ptr<float[]> m_buf(new float[static_cast<size_t>(items * H)]);
  std::unique_ptr<float[]> l_buf(new float[static_cast<size_t>(items * H)]);
  const int64_t row_bytes = KVH * D * k_pool.element_size();
  const int64_t head_bytes = D * k_pool.element_size();
  const char* kb = static_cast<const char*>(k_pool.data_ptr());
  const char* vb = static_cast<const char*>(v_pool.data_ptr());
  const char* qb = static_cast<const char*>(q.data_ptr());
  const int64_t q_row = q.stride(0) * q.element_size();
  const int nd = static_cast<int>((D + 15) / 16);
  const __mmask16 last = chunk_mask(nd - 1, nd, static_cast<int>(D));
  const int nc = static_cast<int>((D + 31) / 32);
  const int rem32 = static_cast<int>(D - 32 * (nc - 1));
  const uint32_t last32 = rem32 == 32 ? 0xffffffffu : (1u << rem32) - 1;
  const int gmax = gs_max(dot ? 2 * nc : nd);
  const int64_t qf_bytes = H * Dp * (dot ? 2 : 4);

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (items > 1)
  for (int64_t it = 0; it < items; ++it) {
    const FlushDenormals ftz;
    const int64_t b = it / splits, sp = it % splits;
    const int64_t len = len_p[b];
    const int64_t start = window > 0 ? std::max<int64_t>(0, len - window) : 0;
    const int64_t span = len - start;
    const int64_t p0 = start + span * sp / splits, p1 = start + span * (sp + 1) / splits;
    float* acc = acc_buf.get() + it * H * Dp;
    float* m = m_buf.get() + it * H;
    float* l = l_buf.get() + it * H;
    std::unique_ptr<char[]> qf_buf(new char[static_cast<size_t>(qf_bytes)]);
    char* qf = qf_buf.get();
    for (int64_t h = 0; h < H; ++h) {
      const char* qp = qb + b * q_row + h * D * q.element_size();
      if (dot) {  // raw bf16, zero past D
        uint16_t* dst = reinterpret_cast<uint16_t*>(qf) + h * Dp;
        std::memcpy(dst, qp, D * 2);
        std::fill(dst + D, dst + Dp, uint16_t{0});
      } else {  // fp32, pre-scaled, zero past D
        for (int c = 0; c < nd; ++c) {
          __m512 v = load16(qp + c * 16 * q.element_size(), q_bf16, chunk_mask(c, nd, static_cast<int>(D)));
          _mm512_storeu_ps(reinterpret_cast<float*>(qf) + h * Dp + c * 16,
                           _mm512_mul_ps(v, _mm512_set1_ps(static_cast<float>(scale))));
        }
      }
      m[h] = -std::numeric_limits<float>::infinity();
      l[h] = 0.f;
    }
    std::fill(acc, acc + H * Dp, 0.f);
    const int32_t* slots = tab + row_p[b] * C;
    for (int64_t j = p0; j < std::min(p1, p0 + kBlock); ++j) prefetch_row(kb + slots[j] * row_bytes, row_bytes);
    const char* krows[kBlock];
    const char* vrows[kBlock];
    for (int64_t b0 = p0; b0 < p1; b0 += kBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kBlock, p1 - b0));
      // This block's V rows and the next block's K rows arrive while the scores are computed.
      for (int j = 0; j < n; ++j) prefetch_row(vb + slots[b0 + j] * row_bytes, row_bytes);
      for (int64_t j = b0 + kBlock; j < std::min(p1, b0 + 2 * kBlock); ++j) {
        prefetch_row(kb + slots[j] * row_bytes, row_bytes);
      }
      for (int64_t kvh = 0; kvh < KVH; ++kvh) {
        for (int j = 0; j < n; ++j) {
          krows[j] = kb + slots[b0 + j] * row_bytes + kvh * head_bytes;
          vrows[j] = vb + slots[b0 + j] * row_bytes + kvh * head_bytes;
        }
        for (int g0 = 0; g0 < G;) {
          const int gs = std::min(gmax, G - g0);
          const int64_t h = kvh * G + g0;
#if defined(__AVX512BF16__)
          if (dot) {
            kBf16BlockFns[nc - 1][gs - 1](qf + h * Dp * 2, static_cast<int>(Dp), last32, krows, vrows, n,
                                          static_cast<float>(scale), acc + h * Dp, m + h, l + h);
          } else
#endif
          {
            kBlockFns[nd - 1][gs - 1](reinterpret_cast<const float*>(qf) + h * Dp, static_cast<int>(Dp), last,
                                      krows, vrows, n, kv_bf16, acc + h * Dp, m + h, l + h);
          }
          g0 += gs;
        }
      }
    }
  }
  // Merge the splits of each (request, head) and normalise.
  const int64_t heads = B * H;
#pragma omp parallel for schedule(static) num_threads(threads) if (heads > 64)
  for (int64_t bh = 0; bh < heads; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t sp = 0; sp < splits; ++sp) mx = std::max(mx, m_buf[(b * splits + sp) * H + h]);
    float l = 0.f;
    alignas(64) float o[kMaxD] = {};
    for (int64_t sp = 0; sp < splits; ++sp) {
      const int64_t it = b * splits + sp;
      const float li = l_buf[it * H + h];
      if (li == 0.f) continue;  // an empty split
      const float w = std::exp(m_buf[it * H + h] - mx);
      l += li * w;
      const float* a = acc_buf.get() + (it * H + h) * Dp;
      if (dot) {  // un-permute the unpack order (bf16_acc_dim)
        for (int d = 0; d < Dp; ++d) {
          const int dim = (d / 32) * 32 + bf16_acc_dim(d % 32);
          if (dim < D) o[dim] += a[d] * w;
        }
      } else {
        for (int d = 0; d < D; ++d) o[d] += a[d] * w;
      }
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    if (q_bf16) {
      uint16_t* dst = static_cast<uint16_t*>(out.data_ptr()) + (b * H + h) * D;
      for (int d = 0; d < D; ++d) dst[d] = float_to_bf16(o[d] * inv);
    } else {
      float* dst = out.data_ptr<float>() + (b * H + h) * D;
      for (int d = 0; d < D; ++d) dst[d] = o[d] * inv;
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
