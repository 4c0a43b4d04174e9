// Paged extend (prefill) attention: each request's new tokens attend causally to its cached
// prefix and to themselves, with K/V read straight from the per-layer pools by slot index (no
// gather, no mask tensor), tiled flash-style with an online softmax in fp32.
//
//   q        [T, H, D]      fp32 | bf16 (the batch's new tokens, request after request; any
//                           token stride, heads and dims contiguous)
//   k/v pool [S, KVH, D]    fp32 | bf16; the new tokens' K/V are already written
//   table    [B, C] int32   row b: the slot of every position of request b (prefix + new)
//   starts   [B] int64      offset of request b's first new token in q
//   prefix   [B] int64      cached prefix length; ext [B] int64 its number of new tokens
//   out      [T, H, D]      q's dtype
// New token i of request b sits at position p = prefix[b] + i and attends to the keys at
// positions [lo, p], lo = max(0, p - window + 1) with a sliding window (window > 0), else 0.
//
// A work item is (request, block of up to BQ new tokens, KV head): its M = BQ x G query rows
// (the G query heads of the KV head for each token, M <= 64) walk the keys up to the block's
// last position in blocks of 32, every key block shared by all M rows. fp32 (and mixed
// dtypes): scores are computed transposed, [32 keys x M rows] = K . Q^T with the queries
// transposed once per item and keys broadcast from their pool rows, so the masked online
// softmax runs down columns of 16 rows with no horizontal reductions; then O += P V. bf16 q
// and K/V: AVX512-BF16 dot products over dim pairs (QK, keys transposed by 32-bit words) and
// key pairs (PV, V rows interleaved by 16-bit unpacks), as decode_attention does; the softmax
// weights are rounded to bf16. O, m and l live in the item's scratch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "kernels.h"
#include "vec.h"

namespace radixlm {

#if RADIXLM_AVX512
namespace {

constexpr int kBK = 32;    // keys per block (two vectors of scores per row)
constexpr int kMaxD = 256;

inline __mmask16 lanes(int n) { return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1); }

// 16 (the first n of them) values at p as fp32.
inline __m512 load_n(const char* p, bool bf16, int n) {
  const __mmask16 m = lanes(n);
  return bf16 ? load_bf16x16_masked(reinterpret_cast<const uint16_t*>(p), m)
              : _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(p));
}

// The fp32 path works on transposed scores: lanes are query rows, so the online softmax needs
// no horizontal reductions and keys are used straight from their rows (broadcasts).
// st[j][0..16 MV) = sum_d k_j[d] * qt[d][...] for keys j of krows (n4: a multiple of 4; rows
// past n are zero rows); qt [D][Mp] scaled queries, transposed.
template <int MV>
void scores_t(const float* qt, int Mp, const float* const* krows, int D, int n4, float* st) {
  for (int j0 = 0; j0 < n4; j0 += 4) {
    __m512 acc[4][MV];
    for (int jj = 0; jj < 4; ++jj)
      for (int v = 0; v < MV; ++v) acc[jj][v] = _mm512_setzero_ps();
    const float* k0 = krows[j0];
    const float* k1 = krows[j0 + 1];
    const float* k2 = krows[j0 + 2];
    const float* k3 = krows[j0 + 3];
    for (int d = 0; d < D; ++d) {
      __m512 qv[MV];
      for (int v = 0; v < MV; ++v) qv[v] = _mm512_loadu_ps(qt + d * Mp + 16 * v);
      const __m512 b0 = _mm512_set1_ps(k0[d]), b1 = _mm512_set1_ps(k1[d]);
      const __m512 b2 = _mm512_set1_ps(k2[d]), b3 = _mm512_set1_ps(k3[d]);
      for (int v = 0; v < MV; ++v) {
        acc[0][v] = _mm512_fmadd_ps(b0, qv[v], acc[0][v]);
        acc[1][v] = _mm512_fmadd_ps(b1, qv[v], acc[1][v]);
        acc[2][v] = _mm512_fmadd_ps(b2, qv[v], acc[2][v]);
        acc[3][v] = _mm512_fmadd_ps(b3, qv[v], acc[3][v]);
      }
    }
    for (int jj = 0; jj < 4; ++jj)
      for (int v = 0; v < MV; ++v) _mm512_storeu_ps(st + (j0 + jj) * Mp + 16 * v, acc[jj][v]);
  }
}

// o[r][c0 .. c0 + 16 NC) += sum_j pt[j][r] v_j[...] for RB rows from r0; vrows[j]: fp32 rows
// readable up to Dp.
template <int RB, int NC>
inline void pv_t_rows(const float* pt, int Mp, int r0, const float* const* vrows, int n, int c0, int Op, float* o) {
  __m512 acc[RB][NC];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_loadu_ps(o + (r0 + r) * Op + c0 + 16 * c);
  for (int j = 0; j < n; ++j) {
    __m512 vv[NC];
    for (int c = 0; c < NC; ++c) vv[c] = _mm512_loadu_ps(vrows[j] + c0 + 16 * c);
    for (int r = 0; r < RB; ++r) {
      const __m512 pj = _mm512_set1_ps(pt[j * Mp + r0 + r]);
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_fmadd_ps(pj, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(o + (r0 + r) * Op + c0 + 16 * c, acc[r][c]);
}

template <int RB>
void pv_t_block(const float* pt, int Mp, int r0, const float* const* vrows, int n, int Dp, float* o) {
  int c0 = 0;
  for (; c0 + 64 <= Dp; c0 += 64) pv_t_rows<RB, 4>(pt, Mp, r0, vrows, n, c0, Dp, o);
  for (; c0 < Dp; c0 += 16) pv_t_rows<RB, 1>(pt, Mp, r0, vrows, n, c0, Dp, o);
}

void pv_t(const float* pt, int Mp, int M, const float* const* vrows, int n, int Dp, float* o) {
  int r = 0;
  for (; r + 4 <= M; r += 4) pv_t_block<4>(pt, Mp, r, vrows, n, Dp, o);
  for (; r < M; ++r) pv_t_block<1>(pt, Mp, r, vrows, n, Dp, o);
}

using ScoresT = void (*)(const float*, int, const float* const*, int, int, float*);
constexpr ScoresT kScoresT[4] = {&scores_t<1>, &scores_t<2>, &scores_t<3>, &scores_t<4>};

alignas(64) constexpr float kZeroRowF[kMaxD] = {};

#if defined(__AVX512BF16__)
constexpr bool kBf16Dot = true;

// bf16 q and K/V: AVX512-BF16 dot products, two dims (QK) or two keys (PV) per instruction,
// fp32 accumulation (exact products), as decode_attention's attend_block_bf16 does.
// s[r][0..31] = sum over dim pairs of q[r] . kp: q [.][Qp] bf16 (raw, zero past D), kp
// [D/2][kBK] uint32 (a key's dims 2i, 2i+1 in word i: the key block transposed by words).
template <int RB>
inline void scores_rows_bf16(const uint16_t* q, int Qp, const uint32_t* kp, int pairs, float* s) {
  __m512 a0[RB], a1[RB];
  for (int r = 0; r < RB; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  for (int i = 0; i < pairs; ++i) {
    const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kp + i * kBK);
    const __m512bh k1 = (__m512bh)_mm512_loadu_si512(kp + i * kBK + 16);
    for (int r = 0; r < RB; ++r) {
      uint32_t w;
      std::memcpy(&w, q + r * Qp + 2 * i, 4);
      const __m512bh qv = (__m512bh)_mm512_set1_epi32(static_cast<int>(w));
      a0[r] = _mm512_dpbf16_ps(a0[r], qv, k0);
      a1[r] = _mm512_dpbf16_ps(a1[r], qv, k1);
    }
  }
  for (int r = 0; r < RB; ++r) {
    _mm512_storeu_ps(s + r * kBK, a0[r]);
    _mm512_storeu_ps(s + r * kBK + 16, a1[r]);
  }
}

void scores_bf16(const uint16_t* q, int Qp, const uint32_t* kp, int pairs, int M, float* s) {
  int r = 0;
  for (; r + 4 <= M; r += 4) scores_rows_bf16<4>(q + r * Qp, Qp, kp, pairs, s + r * kBK);
  for (; r < M; ++r) scores_rows_bf16<1>(q + r * Qp, Qp, kp, pairs, s + r * kBK);
}

// o[r] += sum_j p[r][j] v[j] over key pairs for RB rows, NC 32-dim chunks from chunk c0; p
// [.][kBK] bf16 (pairs of weights as words); vrows[j]: V row of key j (bf16, n keys, odd n
// padded with a zero row). o is in unpack order: position c * 32 + x holds dim
// c * 32 + acc_dim(x) (see acc_dim).
template <int RB, int NC>
inline void pv_rows_bf16(const uint16_t* p, const char* const* vrows, int n, int c0, int nc, uint32_t last, int Op,
                         float* o) {
  __m512 acc[RB][2 * NC];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < 2 * NC; ++c) acc[r][c] = _mm512_loadu_ps(o + r * Op + c0 * 32 + 16 * c);
  for (int j = 0; j < n; j += 2) {
    __m512bh lo[NC], hi[NC];
    for (int c = 0; c < NC; ++c) {
      const __mmask32 mk = static_cast<__mmask32>(c0 + c == nc - 1 ? last : 0xffffffffu);
      const __m512i a = _mm512_maskz_loadu_epi16(mk, vrows[j] + (c0 + c) * 64);
      const __m512i b = _mm512_maskz_loadu_epi16(mk, vrows[j + 1] + (c0 + c) * 64);
      lo[c] = (__m512bh)_mm512_unpacklo_epi16(a, b);
      hi[c] = (__m512bh)_mm512_unpackhi_epi16(a, b);
    }
    for (int r = 0; r < RB; ++r) {
      uint32_t w;
      std::memcpy(&w, p + r * kBK + j, 4);
      const __m512bh pp = (__m512bh)_mm512_set1_epi32(static_cast<int>(w));
      for (int c = 0; c < NC; ++c) {
        acc[r][2 * c] = _mm512_dpbf16_ps(acc[r][2 * c], pp, lo[c]);
        acc[r][2 * c + 1] = _mm512_dpbf16_ps(acc[r][2 * c + 1], pp, hi[c]);
      }
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < 2 * NC; ++c) _mm512_storeu_ps(o + r * Op + c0 * 32 + 16 * c, acc[r][c]);
}

template <int RB>
void pv_block_bf16(const uint16_t* p, const char* const* vrows, int n, int nc, uint32_t last, int Op, float* o) {
  int c0 = 0;
  for (; c0 + 2 <= nc; c0 += 2) pv_rows_bf16<RB, 2>(p, vrows, n, c0, nc, last, Op, o);
  for (; c0 < nc; ++c0) pv_rows_bf16<RB, 1>(p, vrows, n, c0, nc, last, Op, o);
}

void pv_bf16(const uint16_t* p, const char* const* vrows, int n, int nc, uint32_t last, int Op, int M, float* o) {
  int r = 0;
  for (; r + 4 <= M; r += 4) pv_block_bf16<4>(p + r * kBK, vrows, n, nc, last, Op, o + r * Op);
  for (; r < M; ++r) pv_block_bf16<1>(p + r * kBK, vrows, n, nc, last, Op, o + r * Op);
}
#else
constexpr bool kBf16Dot = false;
#endif

// Position x (0..31) of a 32-dim chunk of the bf16 PV accumulator -> the dim it holds (the
// 16-bit unpacks interleave within 128-bit lanes): lo lane 4L + i holds 8L + i, hi lane
// 4L + i holds 8L + 4 + i.
inline int acc_dim(int x) { return x < 16 ? (x / 4) * 8 + x % 4 : ((x - 16) / 4) * 8 + 4 + x % 4; }

alignas(64) constexpr uint16_t kZeroRow[kMaxD] = {};

}  // namespace
#endif

at::Tensor extend_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                            const at::Tensor& table, const at::Tensor& starts, const at::Tensor& prefix,
                            const at::Tensor& ext, double scale, int64_t window) {
#if RADIXLM_AVX512
  TORCH_CHECK(q.dim() == 3 && k_pool.dim() == 3 && v_pool.dim() == 3, "q [T,H,D], pools [S,KVH,D]");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == q.size(2), "q heads must be contiguous");
  TORCH_CHECK(k_pool.is_contiguous() && v_pool.is_contiguous(), "pools must be contiguous");
  TORCH_CHECK(k_pool.scalar_type() == v_pool.scalar_type(), "k and v pools differ in dtype");
  TORCH_CHECK(table.scalar_type() == at::kInt && table.is_contiguous(), "table must be int32");
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KVH = k_pool.size(1), S = k_pool.size(0);
  TORCH_CHECK(H % KVH == 0, "query heads must be a multiple of KV heads");
  TORCH_CHECK(D <= kMaxD && k_pool.size(2) == D, "head_dim must be <= 256 and match the pools");
  const bool q_bf16 = q.scalar_type() == at::kBFloat16;
  const bool kv_bf16 = k_pool.scalar_type() == at::kBFloat16;
  TORCH_CHECK(q_bf16 || q.scalar_type() == at::kFloat, "q must be fp32 or bf16");
  TORCH_CHECK(kv_bf16 || k_pool.scalar_type() == at::kFloat, "pools must be fp32 or bf16");
  at::Tensor st = starts.to(at::kLong).contiguous(), pre = prefix.to(at::kLong).contiguous();
  at::Tensor ex = ext.to(at::kLong).contiguous();
  const int64_t B = st.numel(), C = table.size(1);
  TORCH_CHECK(pre.numel() == B && ex.numel() == B && table.size(0) >= B, "one table row per request");
  const int64_t* st_p = st.data_ptr<int64_t>();
  const int64_t* pre_p = pre.data_ptr<int64_t>();
  const int64_t* ex_p = ex.data_ptr<int64_t>();
  const int32_t* tab = table.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(pre_p[b] >= 0 && ex_p[b] >= 0 && pre_p[b] + ex_p[b] <= C, "request ", b, " is longer than its table row");
    TORCH_CHECK(st_p[b] >= 0 && st_p[b] + ex_p[b] <= T, "request ", b, " has new tokens outside q");
    for (int64_t j = 0; j < pre_p[b] + ex_p[b]; ++j) {
      const int32_t s = tab[b * C + j];
      TORCH_CHECK(s >= 0 && s < S, "slot ", s, " outside the pool");
    }
  }
  at::Tensor out = at::empty({T, H, D}, q.options().memory_format(at::MemoryFormat::Contiguous));
  const int G = static_cast<int>(H / KVH);
  const int GH = std::min(G, 64);          // query heads per item (all G unless G > 64)
  const int HG = (G + GH - 1) / GH;        // head groups per KV head
  const int BQ = std::max(1, std::min(32, 48 / GH));  // tokens per item: M = BQ x GH <= 64 rows
  // Items: (request, token block, KV head, head group), heaviest (latest) blocks first.
  std::vector<int64_t> item_b, item_q0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t q0 = (ex_p[b] - 1) / BQ * BQ; q0 >= 0 && ex_p[b] > 0; q0 -= BQ) {
      item_b.push_back(b);
      item_q0.push_back(q0);
    }
  }
  const int64_t blocks = static_cast<int64_t>(item_b.size()), items = blocks * KVH * HG;
  const int64_t eb = k_pool.element_size();
  const int64_t row_bytes = KVH * D * eb, head_bytes = D * eb;
  const char* kb = static_cast<const char*>(k_pool.data_ptr());
  const char* vb = static_cast<const char*>(v_pool.data_ptr());
  const char* qb = static_cast<const char*>(q.data_ptr());
  const int64_t q_row = q.stride(0) * q.element_size();
  const int threads = std::max(1, at::get_num_threads());
  // bf16 q and K/V with an even head_dim take the AVX512-BF16 dot-product path.
  const bool dot = kBf16Dot && q_bf16 && kv_bf16 && D % 2 == 0;
  const int Dp = static_cast<int>((D + 15) / 16 * 16);  // fp32 rows: whole vectors
  const int nd = Dp / 16;
  const int nc = static_cast<int>((D + 31) / 32);  // bf16 path: 32-dim chunks
  const int rem32 = static_cast<int>(D - 32 * (nc - 1));
  const uint32_t last32 = rem32 == 32 ? 0xffffffffu : (1u << rem32) - 1;
  const int Op = dot ? nc * 32 : Dp;  // output accumulator row (bf16 path: unpack order)
  // fp32 path: K/V rows are read in place when they are fp32 and whole vectors, else copied.
  const bool copy_kv = kv_bf16 || D % 16 != 0;
  const float ninf = -std::numeric_limits<float>::infinity();

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (items > 1)
  for (int64_t it = 0; it < items; ++it) {
    const FlushDenormals ftz;
    const int64_t blk = it / (KVH * HG), kvh = (it / HG) % KVH, g0 = (it % HG) * GH;
    const int64_t b = item_b[blk], q0 = item_q0[blk];
    const int gh = static_cast<int>(std::min<int64_t>(GH, G - g0));
    const int nq = static_cast<int>(std::min<int64_t>(BQ, ex_p[b] - q0));
    const int M = nq * gh;  // row r: token q0 + r / gh, head kvh * G + g0 + r % gh
    const int Mp = (M + 15) / 16 * 16;
    // Scratch (floats): queries [Dp][Mp] (fp32 path: scaled, transposed) or [M][Dp] (bf16:
    // raw, in the first half of each row); outputs [M][Op]; key and value blocks [kBK][Dp]
    // (fp32 copies, or the bf16 path's key block by dim-pair words); scores [kBK][Mp] (fp32,
    // transposed) or [M][kBK] (bf16 path) and its bf16 weights [M][kBK]; max, sum, alpha [Mp].
    const size_t Ms = static_cast<size_t>(Mp);
    std::unique_ptr<float[]> buf(new float[Ms * Dp + Ms * Op + 2 * static_cast<size_t>(Dp) * kBK + 2 * Ms * kBK + 3 * Ms]);
    float* qs = buf.get();
    float* os = qs + Ms * Dp;
    float* kt = os + Ms * Op;
    float* vf = kt + static_cast<size_t>(Dp) * kBK;
    float* s = vf + static_cast<size_t>(Dp) * kBK;
    uint16_t* pb = reinterpret_cast<uint16_t*>(s + Ms * kBK);
    float* m = s + 2 * Ms * kBK;
    float* l = m + Ms;
    float* alpha = l + Ms;
    uint16_t* qh = reinterpret_cast<uint16_t*>(qs);
    const __m512 sc = _mm512_set1_ps(static_cast<float>(scale));
    if (!dot) std::fill(qs, qs + Ms * Dp, 0.f);
    for (int r = 0; r < M; ++r) {
      const int64_t t = st_p[b] + q0 + r / gh, h = kvh * G + g0 + r % gh;
      const char* qp = qb + t * q_row + h * D * q.element_size();
      if (dot) {
        std::memcpy(qh + r * Dp, qp, D * 2);
        std::fill(qh + r * Dp + D, qh + (r + 1) * Dp, uint16_t{0});
      } else {
        for (int c = 0; c < nd; ++c) {
          const int n = static_cast<int>(std::min<int64_t>(16, D - 16 * c));
          alignas(64) float tmp[16];
          _mm512_store_ps(tmp, _mm512_mul_ps(load_n(qp + 16 * c * q.element_size(), q_bf16, n), sc));
          for (int i = 0; i < n; ++i) qs[(16 * c + i) * Mp + r] = tmp[i];
        }
      }
    }
    std::fill(m, m + Mp, ninf);
    std::fill(l, l + Mp, 0.f);
    std::fill(os, os + M * Op, 0.f);
    // Position of each row's token (padding rows: below every key, so they see nothing).
    alignas(64) int32_t pos[64];
    for (int r = 0; r < Mp; ++r) pos[r] = r < M ? static_cast<int32_t>(pre_p[b] + q0 + r / gh) : -(1 << 30);
    const int64_t p_first = pre_p[b] + q0, p_last = p_first + nq - 1;
    const int64_t k_lo = window > 0 ? std::max<int64_t>(0, p_first - window + 1) : 0;
    const int32_t* slots = tab + b * C;
    const char* vrows[kBK + 1];
    const float* kr32[kBK + 4];
    const float* vr32[kBK];
    for (int64_t k0 = k_lo; k0 <= p_last; k0 += kBK) {
      const int n = static_cast<int>(std::min<int64_t>(kBK, p_last + 1 - k0));
      if (dot) {
#if defined(__AVX512BF16__)
        uint32_t* kw = reinterpret_cast<uint32_t*>(kt);  // key block transposed by dim pairs
        const int pairs = static_cast<int>(D / 2);
        for (int j = 0; j < kBK; ++j) {
          const uint32_t* kr = j < n ? reinterpret_cast<const uint32_t*>(kb + slots[k0 + j] * row_bytes + kvh * head_bytes)
                                     : reinterpret_cast<const uint32_t*>(kZeroRow);
          for (int i = 0; i < pairs; ++i) kw[i * kBK + j] = kr[i];
          vrows[j] = j < n ? vb + slots[k0 + j] * row_bytes + kvh * head_bytes : reinterpret_cast<const char*>(kZeroRow);
        }
        scores_bf16(qh, Dp, kw, pairs, M, s);
        for (int r = 0; r < M; ++r) {  // causal / window mask, online softmax, bf16 weights
          const int64_t p = pos[r];
          const int64_t lo = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
          const int64_t a = std::max<int64_t>(lo - k0, 0), e = std::min<int64_t>(p - k0 + 1, n);  // valid [a, e)
          if (a >= e) {  // no key of this block is visible to this row
            std::fill(pb + r * kBK, pb + (r + 1) * kBK, uint16_t{0});
            continue;
          }
          const uint32_t valid = static_cast<uint32_t>(((e >= 32 ? 0xffffffffull : (1ull << e) - 1)) & ~((1ull << a) - 1));
          const __mmask16 v0 = static_cast<__mmask16>(valid & 0xffff), v1 = static_cast<__mmask16>(valid >> 16);
          const __m512 vninf = _mm512_set1_ps(ninf);
          const __m512 s0 = _mm512_mask_mov_ps(vninf, v0, _mm512_mul_ps(_mm512_loadu_ps(s + r * kBK), sc));
          const __m512 s1 = _mm512_mask_mov_ps(vninf, v1, _mm512_mul_ps(_mm512_loadu_ps(s + r * kBK + 16), sc));
          const float m_new = std::max(m[r], _mm512_reduce_max_ps(_mm512_max_ps(s0, s1)));
          const float al = std::exp(m[r] - m_new);  // 0 on the row's first block
          const __m512 mv = _mm512_set1_ps(m_new);
          // weights rounded to bf16; l sums the rounded weights
          const __m512 p0 = round_bf16_vec(_mm512_maskz_mov_ps(v0, exp_ps(_mm512_sub_ps(s0, mv))));
          const __m512 p1 = round_bf16_vec(_mm512_maskz_mov_ps(v1, exp_ps(_mm512_sub_ps(s1, mv))));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb + r * kBK), cvt_fp32_bf16(p0));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb + r * kBK + 16), cvt_fp32_bf16(p1));
          l[r] = l[r] * al + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
          m[r] = m_new;
          if (al != 1.f) {
            const __m512 av = _mm512_set1_ps(al);
            for (int c = 0; c < Op / 16; ++c)
              _mm512_storeu_ps(os + r * Op + 16 * c, _mm512_mul_ps(_mm512_loadu_ps(os + r * Op + 16 * c), av));
          }
        }
        pv_bf16(pb, vrows, n + (n & 1), nc, last32, Op, M, os);  // an odd block ends in a zero row
#endif
        continue;
      }
      // fp32 path: rows of the key and value blocks (fp32, readable up to Dp)
      for (int j = 0; j < n; ++j) {
        const char* kr = kb + slots[k0 + j] * row_bytes + kvh * head_bytes;
        const char* vr = vb + slots[k0 + j] * row_bytes + kvh * head_bytes;
        if (copy_kv) {
          for (int c = 0; c < nd; ++c) {
            const int w = static_cast<int>(std::min<int64_t>(16, D - 16 * c));
            _mm512_storeu_ps(kt + j * Dp + 16 * c, load_n(kr + 16 * c * eb, kv_bf16, w));
            _mm512_storeu_ps(vf + j * Dp + 16 * c, load_n(vr + 16 * c * eb, kv_bf16, w));
          }
          kr32[j] = kt + j * Dp;
          vr32[j] = vf + j * Dp;
        } else {
          kr32[j] = reinterpret_cast<const float*>(kr);
          vr32[j] = reinterpret_cast<const float*>(vr);
        }
      }
      const int n4 = (n + 3) / 4 * 4;
      for (int j = n; j < n4; ++j) kr32[j] = kZeroRowF;
      kScoresT[Mp / 16 - 1](qs, Mp, kr32, static_cast<int>(D), n4, s);
      // Mask and online softmax, 16 rows per vector: st[j] holds key j's scores for all rows.
      const __m512 vninf = _mm512_set1_ps(ninf);
      for (int v = 0; v < Mp / 16; ++v) {
        const __m512i pv = _mm512_load_si512(pos + 16 * v);
        const __m512i lo = window > 0 ? _mm512_sub_epi32(pv, _mm512_set1_epi32(static_cast<int>(window - 1)))
                                      : _mm512_set1_epi32(0);
        __m512 mx = vninf;
        for (int j = 0; j < n; ++j) {
          const __m512i kp = _mm512_set1_epi32(static_cast<int>(k0 + j));
          const __mmask16 ok = _mm512_cmple_epi32_mask(kp, pv) & _mm512_cmpge_epi32_mask(kp, lo);
          const __m512 sv = _mm512_mask_mov_ps(vninf, ok, _mm512_loadu_ps(s + j * Mp + 16 * v));
          _mm512_storeu_ps(s + j * Mp + 16 * v, sv);
          mx = _mm512_max_ps(mx, sv);
        }
        const __m512 m_old = _mm512_loadu_ps(m + 16 * v);
        const __m512 m_new = _mm512_max_ps(m_old, mx);
        // rows that still see nothing subtract 0 (their weights are masked to 0 anyway)
        const __m512 base = _mm512_mask_mov_ps(m_new, _mm512_cmp_ps_mask(m_new, vninf, _CMP_EQ_OQ), _mm512_setzero_ps());
        const __m512 al = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m_old, vninf, _CMP_NEQ_OQ), exp_ps(_mm512_sub_ps(m_old, base)));
        __m512 sum = _mm512_setzero_ps();
        for (int j = 0; j < n; ++j) {
          const __m512 sv = _mm512_loadu_ps(s + j * Mp + 16 * v);
          const __m512 pj = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(sv, vninf, _CMP_NEQ_OQ), exp_ps(_mm512_sub_ps(sv, base)));
          _mm512_storeu_ps(s + j * Mp + 16 * v, pj);
          sum = _mm512_add_ps(sum, pj);
        }
        _mm512_storeu_ps(l + 16 * v, _mm512_fmadd_ps(_mm512_loadu_ps(l + 16 * v), al, sum));
        _mm512_storeu_ps(m + 16 * v, m_new);
        _mm512_storeu_ps(alpha + 16 * v, al);
      }
      for (int r = 0; r < M; ++r) {
        if (alpha[r] == 1.f) continue;
        const __m512 av = _mm512_set1_ps(alpha[r]);
        for (int c = 0; c < nd; ++c)
          _mm512_storeu_ps(os + r * Op + 16 * c, _mm512_mul_ps(_mm512_loadu_ps(os + r * Op + 16 * c), av));
      }
      pv_t(s, Mp, M, vr32, n, Dp, os);
    }
    for (int r = 0; r < M; ++r) {
      const int64_t t = st_p[b] + q0 + r / gh, h = kvh * G + g0 + r % gh;
      const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
      const float* o = os + r * Op;
      if (q_bf16) {
        uint16_t* dst = static_cast<uint16_t*>(out.data_ptr()) + (t * H + h) * D;
        if (dot) {
          for (int x = 0; x < Op; ++x) {
            const int dim = (x / 32) * 32 + acc_dim(x % 32);
            if (dim < D) dst[dim] = float_to_bf16(o[x] * inv);
          }
        } else {
          for (int d = 0; d < D; ++d) dst[d] = float_to_bf16(o[d] * inv);
        }
      } else {
        float* dst = out.data_ptr<float>() + (t * H + h) * D;
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
