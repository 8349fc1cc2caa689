// adamx: Adam / AdamW with stored moments (bfloat16, stochastic bfloat16, 8-bit blockwise)
// as one pass over memory, for XLA on CPU.
//
// The companion of adam_cpu.cc for adamx.with_storage(adam/adamw, mu=..., nu=...): per
// element it decodes the stored m and v, runs the same float32 Adam arithmetic in the same
// order as adam_cpu.cc (see adamx/kernels/_fused.py `formula`), writes the new parameter, and
// encodes the new m and v back into their storage:
//
//   mode 0  float32        stored as is
//   mode 1  bfloat16       round to nearest even (XLA's astype)
//   mode 2  bfloat16_sr    bits + (noise >> 16), top half; noise = mix(mix(i ^ seed) + seed)
//                          with i the element's row-major index in the leaf (storage.py)
//   mode 3  8-bit, signed code; mode 4  8-bit, unsigned code (storage.Blockwise8 with
//           stochastic_rounding=False): a leaf is rows of its last axis (cols), each row
//           cut into blocks of `block` (the last padded with the code of 0); per block
//           scale = max|x| (NaN kept), r = 1 / (scale > 0 ? scale : 1) (float32),
//           y = |x| == scale ? sign(x) : x * r (a multiply, not a division: XLA's CPU
//           backend turns a division by a block's scale into this multiply, so the two
//           paths agree only if both multiply), code = #midpoints <= y; unsigned: code = x > 0 ? max(code, 1) : 0. Decode: table[code] * scale
//           (unsigned: a non-zero code decodes to at least FLT_MIN).
//   mode 5, 6  the same codes (signed, unsigned) rounded stochastically (the default
//           Blockwise8): count = #table[1:] <= y, k = min(count, 254), code = count >= 255
//           ? 255 : k + (y - table[k] > u * (table[k+1] - table[k])), u = (h >> 8) * 2^-24
//           with h = mix(mix(i ^ seed) + seed) of the element's row-major index i in the
//           leaf (as mode 2); unsigned: then max(code, 1) for x > 0, 0 otherwise.
//
// The code tables and the search buckets all come from Python (the `tables` and
// `buckets` operands, built and checked by adamx/storage/_blockwise8.py `search_buckets`,
// the same tables the XLA path searches); nothing of the code is hard-wired here. A count
// of boundaries (midpoints, or the code values) at or below y (with -0.0 made +0.0): the
// top 16 bits of y (sign, exponent, 7 mantissa bits), clamped to the exponents that
// matter, pick a bucket entry `c | has << 8 | t << 16`: c boundaries lie at or below the
// bucket's lowest value, and at most one inside it, whose low 16 bits are t; the count is
// c, plus 1 when y is at or above that boundary (compared on the low 16 bits, the high 16
// being the bucket's). One table read per element, no search.
//
// Work: each leaf is cut into segments (an 8-bit block, or 2048 elements when no moment
// of the leaf is 8-bit), in chunks of about 64 Ki elements spread over XLA's intra-op
// thread pool. With AVX-512 a segment is one pass, 16 elements at a time in registers
// (FusedSeg, specialised per pair of storage modes); 8-bit moments wait in a small buffer
// for their block's scale. Without AVX-512 the scalar functions do the same operations
// in five passes over the segment through two float buffers.

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define ADAMX_AVX512 1
#endif

#include "adam_math.h"
#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using adamx::kNumScalars;
using adamx::Scalars;

enum Mode : int64_t { kF32 = 0, kBf16 = 1, kBf16Sr = 2, kQ8Signed = 3, kQ8Unsigned = 4 };
// Modes 5 and 6 (8-bit rounded stochastically) are read as kQ8Signed / kQ8Unsigned with
// Moment::sr set.
constexpr int64_t kQ8SignedSr = 5, kQ8UnsignedSr = 6;

struct Tables {
  const float* code[2];       // [0] signed, [1] unsigned: 256 values each
  const uint32_t* bucket[4];  // nearest signed, nearest unsigned, floor signed, floor
                              // unsigned: 2 * bucket_n entries each, c | has << 8 | t16 << 16
  int32_t bucket_lo, bucket_n;
  // [u][2 k], [u][2 k + 1]: code[u][k] and code[u][min(k + 1, 255)], the neighbours of
  // stochastic rounding read with one 64-bit gather (built in Impl from `code`).
  const float* pair[2];
};

struct Moment {
  int64_t mode;
  const void* in;
  void* out;
  const float* scale_in;  // 8-bit only
  float* scale_out;
  uint32_t seed;          // bfloat16_sr and stochastic 8-bit only
  bool sr;                // 8-bit: rounded stochastically
};

struct Leaf {
  const float* p;
  const float* g;
  float* out;
  int64_t rows, cols, block, nb;  // segments: rows * nb, each `block` long (last clipped)
  Moment m, v;
  int decay;
};

inline uint32_t Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float Float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// ----------------------------------------------------------------------------- Adam

template <int kDecay, bool kMaximize>
void AdamSeg(const float* pp, const float* gp, float* __restrict m, float* __restrict v,
             float* out, int64_t n, const Scalars& s) {
  // out may be pp (in place): each element is read before it is written.
  int64_t i = 0;
#ifdef ADAMX_AVX512
  // The same operations as the scalar loop below, 16 lanes at a time (no FMA: each is
  // rounded as float32).
  const __m512 neg_lr = _mm512_set1_ps(s.neg_lr), w1 = _mm512_set1_ps(s.w1);
  const __m512 b2 = _mm512_set1_ps(s.b2), w2 = _mm512_set1_ps(s.w2);
  const __m512 bc1 = _mm512_set1_ps(s.bc1), er_bc2 = _mm512_set1_ps(s.er_bc2);
  const __m512 sq_bc2 = _mm512_set1_ps(s.sq_bc2), eps = _mm512_set1_ps(s.eps);
  const __m512 wd = _mm512_set1_ps(s.wd);
  for (; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1u);
    __m512 g = _mm512_maskz_loadu_ps(k, gp + i);
    if (kMaximize) g = _mm512_xor_ps(g, _mm512_set1_ps(-0.0f));
    const __m512 p = _mm512_maskz_loadu_ps(k, pp + i);
    if (kDecay == 1) g = _mm512_add_ps(g, _mm512_mul_ps(wd, p));
    __m512 mm = _mm512_maskz_loadu_ps(k, m + i);
    mm = _mm512_add_ps(mm, _mm512_mul_ps(w1, _mm512_sub_ps(g, mm)));
    __m512 vv = _mm512_maskz_loadu_ps(k, v + i);
    vv = _mm512_add_ps(_mm512_mul_ps(b2, vv), _mm512_mul_ps(_mm512_mul_ps(w2, g), g));
    _mm512_mask_storeu_ps(m + i, k, mm);
    _mm512_mask_storeu_ps(v + i, k, vv);
    const __m512 den = _mm512_add_ps(
        _mm512_div_ps(_mm512_sqrt_ps(_mm512_add_ps(vv, er_bc2)), sq_bc2), eps);
    __m512 d = _mm512_div_ps(_mm512_div_ps(mm, bc1), den);
    if (kDecay == 2) d = _mm512_add_ps(d, _mm512_mul_ps(wd, p));
    _mm512_mask_storeu_ps(out + i, k, _mm512_add_ps(p, _mm512_mul_ps(neg_lr, d)));
  }
  i = n;
#endif
  for (; i < n; ++i) {
    out[i] = adamx::AdamElement<kDecay, kMaximize>(pp[i], gp[i], m[i], v[i], s);
  }
}

using AdamFn = void (*)(const float*, const float*, float*, float*, float*, int64_t,
                        const Scalars&);

AdamFn PickAdam(int decay, bool maximize) {
  if (maximize) {
    return decay == 1 ? &AdamSeg<1, true> : decay == 2 ? &AdamSeg<2, true> : &AdamSeg<0, true>;
  }
  return decay == 1 ? &AdamSeg<1, false> : decay == 2 ? &AdamSeg<2, false> : &AdamSeg<0, false>;
}

// --------------------------------------------------------------------- bfloat16

void DecodeBf16(const uint16_t* __restrict in, float* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = Float(static_cast<uint32_t>(in[i]) << 16);
}

inline uint16_t NanBf16(uint32_t u) { return static_cast<uint16_t>((u >> 16) | 0x40u); }

void EncodeBf16(const float* __restrict x, uint16_t* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = Bits(x[i]);
    const uint16_t r = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    out[i] = (u & 0x7FFFFFFFu) > 0x7F800000u ? NanBf16(u) : r;
  }
}

inline uint32_t Mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7FEB352Du;
  h ^= h >> 15;
  h *= 0x846CA68Bu;
  return h ^ (h >> 16);
}

#ifdef ADAMX_AVX512
inline __m512i Mix32x16(__m512i h) {
  h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
  h = _mm512_mullo_epi32(h, _mm512_set1_epi32(0x7FEB352D));
  h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 15));
  h = _mm512_mullo_epi32(h, _mm512_set1_epi32(static_cast<int>(0x846CA68Bu)));
  return _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
}
#endif

void EncodeBf16Sr(const float* __restrict x, uint16_t* __restrict out, int64_t n,
                  uint32_t first, uint32_t seed) {
  int64_t i = 0;
#ifdef ADAMX_AVX512
  const __m512i vseed = _mm512_set1_epi32(static_cast<int>(seed));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i inf = _mm512_set1_epi32(0x7F800000);
  const __m512i quiet = _mm512_set1_epi32(0x40);
  for (; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1u);
    const __m512i u = _mm512_maskz_loadu_epi32(k, x + i);
    const __m512i index =
        _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(first + static_cast<uint32_t>(i))), iota);
    const __m512i h = Mix32x16(_mm512_add_epi32(Mix32x16(_mm512_xor_si512(index, vseed)), vseed));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_srli_epi32(h, 16)), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), quiet);
    _mm512_mask_cvtepi32_storeu_epi16(out + i, k, r);
  }
  i = n;
#endif
  for (; i < n; ++i) {
    const uint32_t u = Bits(x[i]);
    const uint32_t index = first + static_cast<uint32_t>(i);
    const uint32_t noise = Mix32(Mix32(index ^ seed) + seed) >> 16;
    const uint16_t r = static_cast<uint16_t>((u + noise) >> 16);
    out[i] = (u & 0x7FFFFFFFu) > 0x7F800000u ? NanBf16(u) : r;
  }
}

// ------------------------------------------------------------------------ 8-bit

// The block's scale: max |x|, NaN if any element is NaN (as jnp.max).
float AbsMax(const float* x, int64_t n) {
  int64_t i = 0;
  float best = 0.0f;
  bool nan = false;
#ifdef ADAMX_AVX512
  __m512 acc = _mm512_setzero_ps();
  __mmask16 unordered = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + i));
    unordered |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    acc = _mm512_max_ps(acc, a);
  }
  best = _mm512_reduce_max_ps(acc);
  nan = unordered != 0;
#endif
  for (; i < n; ++i) {
    const float a = std::fabs(x[i]);
    nan |= a != a;
    best = a > best ? a : best;
  }
  return nan ? NAN : best;
}

// #boundaries <= y of search `s` (an index into Tables::bucket).
inline int Count(float y, const Tables& t, int s) {
  y = y + 0.0f;  // -0.0 -> +0.0: the same count (the search compares values)
  const uint32_t bits = Bits(y);
  int32_t idx = static_cast<int32_t>((bits >> 16) & 0x7FFFu) - t.bucket_lo;
  idx = std::min(std::max(idx, 0), t.bucket_n - 1);
  if (bits >> 31) idx += t.bucket_n;
  const uint32_t e = t.bucket[s][idx];
  int c = static_cast<int>(e & 0xFFu);
  if (e & 0x100u) {  // a boundary in this bucket, with the same top 16 bits as y
    const uint32_t low = bits & 0xFFFFu, mid = e >> 16;
    c += (bits >> 31) ? (low <= mid) : (low >= mid);
  }
  return c;
}

// Search indices into Tables::bucket.
constexpr int kNearest = 0, kFloor = 2;

// The stochastic choice between table[k] and table[k + 1] (see the header), one element.
inline int StochasticCode(float y, uint32_t index, uint32_t seed, const Tables& t, int u) {
  const int count = Count(y, t, kFloor + u);
  if (count >= 255) return 255;
  const float* table = t.code[u];
  const float below = table[count], above = table[count + 1];
  const float uniform = static_cast<float>(Mix32(Mix32(index ^ seed) + seed) >> 8) * 0x1p-24f;
  return count + ((y - below) > uniform * (above - below) ? 1 : 0);
}

#ifdef ADAMX_AVX512
// Count (see above) of 16 values at once, search s.
inline __m512i Count16(__m512i bits, const Tables& t, int s, __mmask16 k) {
  const __m512i zero = _mm512_setzero_si512();
  __m512i idx = _mm512_sub_epi32(
      _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x7FFF)),
      _mm512_set1_epi32(t.bucket_lo));
  idx = _mm512_min_epi32(_mm512_max_epi32(idx, zero), _mm512_set1_epi32(t.bucket_n - 1));
  const __mmask16 neg = _mm512_movepi32_mask(bits);
  idx = _mm512_mask_add_epi32(idx, neg, idx, _mm512_set1_epi32(t.bucket_n));
  const __m512i e = _mm512_mask_i32gather_epi32(zero, k, idx, t.bucket[s], 4);
  __m512i c = _mm512_and_si512(e, _mm512_set1_epi32(0xFF));
  const __m512i mid = _mm512_srli_epi32(e, 16);
  const __m512i low = _mm512_and_si512(bits, _mm512_set1_epi32(0xFFFF));
  const __mmask16 inside = _mm512_test_epi32_mask(e, _mm512_set1_epi32(0x100));
  const __mmask16 up = (_mm512_mask_cmpge_epu32_mask(inside & ~neg, low, mid)) |
                       (_mm512_mask_cmple_epu32_mask(inside & neg, low, mid));
  return _mm512_mask_add_epi32(c, up, c, _mm512_set1_epi32(1));
}
#endif

// Codes of one block of n values (n <= block) whose scale (AbsMax) is known, padded to
// `block` with the code of 0; `first` is the row-major index in the leaf of x[0] and
// `seed` the leaf's seed (stochastic rounding only).
void EncodeQ8Scaled(const float* __restrict x, int64_t n, int64_t block,
                    uint8_t* __restrict q, float scale, const Tables& t, int u, bool sr,
                    uint32_t seed, uint32_t first) {
  const float safe = scale > 0.0f ? scale : 1.0f;
  const float inv = 1.0f / safe;  // y = x * inv, and exactly +-1 at the absmax (header)
  int64_t i = 0;
#ifdef ADAMX_AVX512
  const __m512 vsafe = _mm512_set1_ps(safe);
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512 vone = _mm512_set1_ps(1.0f);
  const __m512 vsign = _mm512_set1_ps(-0.0f);
  const __m512 fzero = _mm512_setzero_ps();
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i vseed = _mm512_set1_epi32(static_cast<int>(seed));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1u);
    const __m512 xv = _mm512_maskz_loadu_ps(k, x + i);
    const __mmask16 at_max = _mm512_cmp_ps_mask(_mm512_abs_ps(xv), vsafe, _CMP_EQ_OQ);
    const __m512 unit = _mm512_or_ps(_mm512_and_ps(xv, vsign), vone);  // sign(x) * 1
    const __m512 y =
        _mm512_add_ps(_mm512_mask_blend_ps(at_max, _mm512_mul_ps(xv, vinv), unit), fzero);
    const __m512i bits = _mm512_castps_si512(y);
    __m512i c;
    if (!sr) {
      c = Count16(bits, t, kNearest + u, k);
    } else {
      const __m512i count = Count16(bits, t, kFloor + u, k);
      const __m512i lo = _mm512_min_epi32(count, _mm512_set1_epi32(254));
      // table[lo] and table[lo + 1] as one 64-bit pair per lane: two 8-lane gathers of
      // pairs (16 loads) instead of two 16-lane gathers (32), then split evens and odds.
      const __m512i q0 = _mm512_i32gather_epi64(_mm512_castsi512_si256(lo), t.pair[u], 8);
      const __m512i q1 =
          _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(lo, 1), t.pair[u], 8);
      const __m512i evens =
          _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      const __m512i odds = _mm512_add_epi32(evens, one);
      const __m512 below =
          _mm512_permutex2var_ps(_mm512_castsi512_ps(q0), evens, _mm512_castsi512_ps(q1));
      const __m512 above =
          _mm512_permutex2var_ps(_mm512_castsi512_ps(q0), odds, _mm512_castsi512_ps(q1));
      const __m512i index = _mm512_add_epi32(
          _mm512_set1_epi32(static_cast<int>(first + static_cast<uint32_t>(i))), iota);
      const __m512i h =
          Mix32x16(_mm512_add_epi32(Mix32x16(_mm512_xor_si512(index, vseed)), vseed));
      const __m512 uniform = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(h, 8)),
                                           _mm512_set1_ps(0x1p-24f));
      const __mmask16 up = _mm512_cmp_ps_mask(
          _mm512_sub_ps(y, below), _mm512_mul_ps(uniform, _mm512_sub_ps(above, below)),
          _CMP_GT_OQ);
      c = _mm512_mask_add_epi32(lo, up, lo, one);
      const __mmask16 top = _mm512_cmpge_epi32_mask(count, _mm512_set1_epi32(255));
      c = _mm512_mask_mov_epi32(c, top, _mm512_set1_epi32(255));
    }
    if (u) {
      const __mmask16 pos = _mm512_cmp_ps_mask(xv, fzero, _CMP_GT_OQ);
      c = _mm512_maskz_max_epi32(pos, c, one);
    }
    _mm512_mask_cvtepi32_storeu_epi8(q + i, k, c);
  }
  i = n;
#endif
  for (; i < n; ++i) {
    const float xi = x[i];
    const float y = std::fabs(xi) == safe ? std::copysign(1.0f, xi) : xi * inv;
    int c = sr ? StochasticCode(y, first + static_cast<uint32_t>(i), seed, t, u)
               : Count(y, t, kNearest + u);
    if (u) c = xi > 0.0f ? std::max(c, 1) : 0;
    q[i] = static_cast<uint8_t>(c);
  }
  if (n < block) {  // the code of 0: nearest and stochastic agree on a table value
    const uint8_t pad = u ? 0 : static_cast<uint8_t>(Count(0.0f, t, kNearest));
    std::memset(q + n, pad, static_cast<size_t>(block - n));
  }
}

void EncodeQ8(const float* __restrict x, int64_t n, int64_t block, uint8_t* __restrict q,
              float* scale_out, const Tables& t, int u, bool sr, uint32_t seed,
              uint32_t first) {
  const float scale = AbsMax(x, n);
  *scale_out = scale;
  EncodeQ8Scaled(x, n, block, q, scale, t, u, sr, seed, first);
}

void DecodeQ8(const uint8_t* __restrict q, float scale, int64_t n, float* __restrict x,
              const Tables& t, int u) {
  const float* table = t.code[u];
  int64_t i = 0;
  for (; i < n; ++i) {
    float val = table[q[i]] * scale;
    if (u && q[i] != 0) val = FLT_MIN > val ? FLT_MIN : val;
    x[i] = val;
  }
}

// -------------------------------------------------------------------- segments

void Decode(const Moment& mo, int64_t flat, int64_t codes, int64_t seg, int64_t n, float* x,
            const Tables& t) {
  switch (mo.mode) {
    case kF32:
      std::memcpy(x, static_cast<const float*>(mo.in) + flat, n * sizeof(float));
      break;
    case kBf16:
    case kBf16Sr:
      DecodeBf16(static_cast<const uint16_t*>(mo.in) + flat, x, n);
      break;
    default:
      DecodeQ8(static_cast<const uint8_t*>(mo.in) + codes, mo.scale_in[seg], n, x, t,
               mo.mode == kQ8Unsigned);
  }
}

void Encode(const Moment& mo, int64_t flat, int64_t codes, int64_t seg, int64_t n,
            int64_t block, const float* x, const Tables& t) {
  switch (mo.mode) {
    case kF32:
      std::memcpy(static_cast<float*>(mo.out) + flat, x, n * sizeof(float));
      break;
    case kBf16:
      EncodeBf16(x, static_cast<uint16_t*>(mo.out) + flat, n);
      break;
    case kBf16Sr:
      EncodeBf16Sr(x, static_cast<uint16_t*>(mo.out) + flat, n, static_cast<uint32_t>(flat),
                   mo.seed);
      break;
    default:
      EncodeQ8(x, n, block, static_cast<uint8_t*>(mo.out) + codes, mo.scale_out + seg, t,
               mo.mode == kQ8Unsigned, mo.sr, mo.seed, static_cast<uint32_t>(flat));
  }
}

#ifdef ADAMX_AVX512
// ------------------------------------------------------- one pass per segment (AVX-512)
//
// The same operations as Decode / AdamSeg / Encode above, 16 elements at a time in
// registers: no float buffers but for 8-bit moments, whose codes need the block's scale
// (the new values wait in a buffer while their absmax is taken on the way).

inline __mmask16 Tail(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
}

template <int64_t kMode>
inline __m512 Load16(const Moment& mo, int64_t flat, int64_t code, float scale,
                     const float* table, __mmask16 k) {
  if constexpr (kMode == kF32) {
    return _mm512_maskz_loadu_ps(k, static_cast<const float*>(mo.in) + flat);
  } else if constexpr (kMode == kBf16 || kMode == kBf16Sr) {
    const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(mo.in) + flat);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    const __m512i c = _mm512_cvtepu8_epi32(
        _mm_maskz_loadu_epi8(k, static_cast<const uint8_t*>(mo.in) + code));
    // table[c]: a gather from the 1 KiB table (L1), faster here than a permute tree
    // (measured: 1.65 against 2.2 ns per element for two 8-bit moments).
    __m512 val = _mm512_mul_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, c, table, 4),
                               _mm512_set1_ps(scale));
    if constexpr (kMode == kQ8Unsigned) {  // max(tiny, val): NaN stays NaN
      val = _mm512_mask_max_ps(val, _mm512_test_epi32_mask(c, c), _mm512_set1_ps(FLT_MIN), val);
    }
    return val;
  }
}

template <int64_t kMode>
inline void Store16(const Moment& mo, __m512 x, int64_t flat, int64_t i, float* buffer,
                    __m512& amax, __mmask16& nan, __mmask16 k) {
  if constexpr (kMode == kF32) {
    _mm512_mask_storeu_ps(static_cast<float*>(mo.out) + flat, k, x);
  } else if constexpr (kMode == kBf16 || kMode == kBf16Sr) {
    const __m512i u = _mm512_castps_si512(x);
    __m512i r;
    if constexpr (kMode == kBf16) {
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      r = _mm512_srli_epi32(
          _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), odd), 16);
    } else {
      const __m512i seed = _mm512_set1_epi32(static_cast<int>(mo.seed));
      const __m512i index = _mm512_add_epi32(
          _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(flat))),
          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
      const __m512i h = Mix32x16(_mm512_add_epi32(Mix32x16(_mm512_xor_si512(index, seed)), seed));
      r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_srli_epi32(h, 16)), 16);
    }
    const __mmask16 isnan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
    r = _mm512_mask_or_epi32(r, isnan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    _mm512_mask_cvtepi32_storeu_epi16(static_cast<uint16_t*>(mo.out) + flat, k, r);
  } else {
    const __m512 a = _mm512_mask_abs_ps(_mm512_setzero_ps(), k, x);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    amax = _mm512_max_ps(amax, a);
    _mm512_mask_storeu_ps(buffer + i, k, x);
  }
}

template <int64_t kMode>
inline void Finish(const Moment& mo, const float* buffer, int64_t n, int64_t block,
                   int64_t flat, int64_t code, int64_t seg, __m512 amax, __mmask16 nan,
                   const Tables& t) {
  if constexpr (kMode == kQ8Signed || kMode == kQ8Unsigned) {
    const float scale = nan ? NAN : _mm512_reduce_max_ps(amax);
    mo.scale_out[seg] = scale;
    EncodeQ8Scaled(buffer, n, block, static_cast<uint8_t*>(mo.out) + code, scale, t,
                   kMode == kQ8Unsigned, mo.sr, mo.seed, static_cast<uint32_t>(flat));
  }
}

constexpr int64_t kPrefetch = 1024;

template <typename T>
inline void Prefetch(const T* x) {
  _mm_prefetch(reinterpret_cast<const char*>(x + kPrefetch), _MM_HINT_T0);
}

template <int64_t kM, int64_t kV, int kDecay, bool kMaximize>
void FusedSeg(const Leaf& L, int64_t seg, const Scalars& s, const Tables& t, float* mb,
              float* vb) {
  const int64_t r = seg / L.nb;
  const int64_t c0 = (seg - r * L.nb) * L.block;
  const int64_t n = std::min(L.block, L.cols - c0);
  const int64_t flat = r * L.cols + c0;
  const int64_t code = seg * L.block;
  constexpr bool kQm = kM == kQ8Signed || kM == kQ8Unsigned;
  constexpr bool kQv = kV == kQ8Signed || kV == kQ8Unsigned;
  const float m_scale = kQm ? L.m.scale_in[seg] : 0.0f;
  const float v_scale = kQv ? L.v.scale_in[seg] : 0.0f;
  const float* m_table = t.code[kM == kQ8Unsigned];
  const float* v_table = t.code[kV == kQ8Unsigned];
  const __m512 neg_lr = _mm512_set1_ps(s.neg_lr), w1 = _mm512_set1_ps(s.w1);
  const __m512 b2 = _mm512_set1_ps(s.b2), w2 = _mm512_set1_ps(s.w2);
  const __m512 bc1 = _mm512_set1_ps(s.bc1), er_bc2 = _mm512_set1_ps(s.er_bc2);
  const __m512 sq_bc2 = _mm512_set1_ps(s.sq_bc2), eps = _mm512_set1_ps(s.eps);
  const __m512 wd = _mm512_set1_ps(s.wd);
  __m512 m_amax = _mm512_setzero_ps(), v_amax = _mm512_setzero_ps();
  __mmask16 m_nan = 0, v_nan = 0;
  const float* pp = L.p + flat;
  const float* gp = L.g + flat;
  float* out = L.out + flat;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = Tail(n - i);
    // Prefetch kPrefetch elements ahead (the stream continues into the next segment):
    // with the longer per-element work of stochastic rounding and 8-bit codes the
    // hardware prefetchers alone leave the loads waiting.
    _mm_prefetch(reinterpret_cast<const char*>(gp + i + kPrefetch), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(pp + i + kPrefetch), _MM_HINT_T0);
    if constexpr (kM == kF32) Prefetch(static_cast<const float*>(L.m.in) + flat + i);
    if constexpr (kM == kBf16 || kM == kBf16Sr) Prefetch(static_cast<const uint16_t*>(L.m.in) + flat + i);
    if constexpr (kV == kF32) Prefetch(static_cast<const float*>(L.v.in) + flat + i);
    if constexpr (kV == kBf16 || kV == kBf16Sr) Prefetch(static_cast<const uint16_t*>(L.v.in) + flat + i);
    if constexpr (kQm) Prefetch(static_cast<const uint8_t*>(L.m.in) + code + i);
    if constexpr (kQv) Prefetch(static_cast<const uint8_t*>(L.v.in) + code + i);
    __m512 g = _mm512_maskz_loadu_ps(k, gp + i);
    if (kMaximize) g = _mm512_xor_ps(g, _mm512_set1_ps(-0.0f));
    const __m512 p = _mm512_maskz_loadu_ps(k, pp + i);
    if (kDecay == 1) g = _mm512_add_ps(g, _mm512_mul_ps(wd, p));
    __m512 mm = Load16<kM>(L.m, flat + i, code + i, m_scale, m_table, k);
    mm = _mm512_add_ps(mm, _mm512_mul_ps(w1, _mm512_sub_ps(g, mm)));
    __m512 vv = Load16<kV>(L.v, flat + i, code + i, v_scale, v_table, k);
    vv = _mm512_add_ps(_mm512_mul_ps(b2, vv), _mm512_mul_ps(_mm512_mul_ps(w2, g), g));
    Store16<kM>(L.m, mm, flat + i, i, mb, m_amax, m_nan, k);
    Store16<kV>(L.v, vv, flat + i, i, vb, v_amax, v_nan, k);
    const __m512 den = _mm512_add_ps(
        _mm512_div_ps(_mm512_sqrt_ps(_mm512_add_ps(vv, er_bc2)), sq_bc2), eps);
    __m512 d = _mm512_div_ps(_mm512_div_ps(mm, bc1), den);
    if (kDecay == 2) d = _mm512_add_ps(d, _mm512_mul_ps(wd, p));
    _mm512_mask_storeu_ps(out + i, k, _mm512_add_ps(p, _mm512_mul_ps(neg_lr, d)));
  }
  Finish<kM>(L.m, mb, n, L.block, flat, code, seg, m_amax, m_nan, t);
  Finish<kV>(L.v, vb, n, L.block, flat, code, seg, v_amax, v_nan, t);
}

using SegFn = void (*)(const Leaf&, int64_t, const Scalars&, const Tables&, float*, float*);

template <int64_t kM, int64_t kV>
SegFn PickSeg3(int decay, bool maximize) {
  if (maximize) {
    return decay == 1   ? &FusedSeg<kM, kV, 1, true>
           : decay == 2 ? &FusedSeg<kM, kV, 2, true>
                        : &FusedSeg<kM, kV, 0, true>;
  }
  return decay == 1   ? &FusedSeg<kM, kV, 1, false>
         : decay == 2 ? &FusedSeg<kM, kV, 2, false>
                      : &FusedSeg<kM, kV, 0, false>;
}

template <int64_t kM>
SegFn PickSeg2(int64_t v, int decay, bool maximize) {
  switch (v) {
    case kF32: return PickSeg3<kM, kF32>(decay, maximize);
    case kBf16: return PickSeg3<kM, kBf16>(decay, maximize);
    case kBf16Sr: return PickSeg3<kM, kBf16Sr>(decay, maximize);
    case kQ8Signed: return PickSeg3<kM, kQ8Signed>(decay, maximize);
    default: return PickSeg3<kM, kQ8Unsigned>(decay, maximize);
  }
}

SegFn PickSeg(int64_t m, int64_t v, int decay, bool maximize) {
  switch (m) {
    case kF32: return PickSeg2<kF32>(v, decay, maximize);
    case kBf16: return PickSeg2<kBf16>(v, decay, maximize);
    case kBf16Sr: return PickSeg2<kBf16Sr>(v, decay, maximize);
    case kQ8Signed: return PickSeg2<kQ8Signed>(v, decay, maximize);
    default: return PickSeg2<kQ8Unsigned>(v, decay, maximize);
  }
}
#endif

struct Chunk {
  int32_t leaf;
  int64_t lo, hi;  // segments
};

struct Job {
  std::vector<Leaf> leaves;
  std::vector<AdamFn> fns;
#ifdef ADAMX_AVX512
  std::vector<SegFn> segs;
#endif
  std::vector<Chunk> chunks;
  Tables t;
  std::vector<float> pairs;  // Tables::pair's storage: 2 x 512
  Scalars s;
  int64_t max_block = 0;
  std::atomic<size_t> next{0};

  void Work() {
    std::vector<float> buffer(2 * static_cast<size_t>(max_block) + 32);
    float* mb = buffer.data();
    float* vb = mb + max_block + 16;
    for (size_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks.size();
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      const Chunk& k = chunks[c];
      const Leaf& L = leaves[k.leaf];
      const AdamFn adam = fns[k.leaf];
#ifdef ADAMX_AVX512
      const SegFn fused = segs[k.leaf];
      for (int64_t seg = k.lo; seg < k.hi; ++seg) fused(L, seg, s, t, mb, vb);
      continue;
#endif
      for (int64_t seg = k.lo; seg < k.hi; ++seg) {
        const int64_t r = seg / L.nb;
        const int64_t c0 = (seg - r * L.nb) * L.block;
        const int64_t n = std::min(L.block, L.cols - c0);
        const int64_t flat = r * L.cols + c0;
        const int64_t codes = seg * L.block;
        Decode(L.m, flat, codes, seg, n, mb, t);
        Decode(L.v, flat, codes, seg, n, vb, t);
        adam(L.p + flat, L.g + flat, mb, vb, L.out + flat, n, s);
        Encode(L.m, flat, codes, seg, n, L.block, mb, t);
        Encode(L.v, flat, codes, seg, n, L.block, vb, t);
      }
    }
  }
};

using adamx::kChunk;
constexpr int64_t kPlainSegment = 2048;

ffi::Future Failed(const char* what) {
  return adamx::Failed(
      ffi::Error::InvalidArgument(std::string("adamx adam storage kernel: ") + what));
}

bool IsQ8(int64_t mode) { return mode == kQ8Signed || mode == kQ8Unsigned; }

// Layout attribute, per leaf: mu mode, nu mode, rows, cols, block (block ignored when no
// moment is 8-bit). Operands per leaf: p, g, mu (+ mu scale if 8-bit), nu (+ nu scale);
// results per leaf: p, mu (+ scale), nu (+ scale).
ffi::Future Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                 ffi::Buffer<ffi::U32> seeds, ffi::Buffer<ffi::F32> tables,
                 ffi::Buffer<ffi::U32> buckets, ffi::RemainingArgs args,
                 ffi::RemainingRets rets, int64_t decay, bool maximize,
                 ffi::Span<const int64_t> decay_mask, ffi::Span<const int64_t> layout,
                 int64_t bucket_lo, int64_t bucket_n) {
  if (scalars.element_count() != kNumScalars) return Failed("wrong scalar count");
  if (tables.element_count() != 2 * 256) return Failed("wrong table size");
  if (buckets.element_count() != static_cast<size_t>(8 * bucket_n)) {
    return Failed("wrong bucket table size");
  }
  const size_t n = decay_mask.size();
  if (layout.size() != 5 * n || seeds.element_count() != 2 * n) {
    return Failed("wrong attribute sizes");
  }
  auto job = std::make_shared<Job>();
  const float* sc = scalars.typed_data();
  job->s = adamx::ReadScalars(sc);
  const float* tb = tables.typed_data();
  const uint32_t* bk = buckets.typed_data();
  job->t = Tables{{tb, tb + 256},
                  {bk, bk + 2 * bucket_n, bk + 4 * bucket_n, bk + 6 * bucket_n},
                  static_cast<int32_t>(bucket_lo), static_cast<int32_t>(bucket_n),
                  {nullptr, nullptr}};
  job->pairs.resize(2 * 512);
  for (int u = 0; u < 2; ++u) {
    for (int k = 0; k < 256; ++k) {
      job->pairs[512 * u + 2 * k] = job->t.code[u][k];
      job->pairs[512 * u + 2 * k + 1] = job->t.code[u][std::min(k + 1, 255)];
    }
    job->t.pair[u] = job->pairs.data() + 512 * u;
  }
  const uint32_t* sd = seeds.typed_data();
  size_t a = 0, r = 0;
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t* lay = layout.begin() + 5 * i;
    Leaf L{};
    for (int k = 0; k < 2; ++k) {
      Moment& mo = k == 0 ? L.m : L.v;
      const int64_t mode = lay[k];
      if (mode < kF32 || mode > kQ8UnsignedSr) return Failed("unknown storage mode");
      mo.sr = mode == kQ8SignedSr || mode == kQ8UnsignedSr;
      mo.mode = mo.sr ? mode - 2 : mode;
    }
    L.rows = lay[2];
    L.cols = lay[3];
    const int64_t size = L.rows * L.cols;
    const bool q8 = IsQ8(L.m.mode) || IsQ8(L.v.mode);
    L.block = q8 ? std::min(lay[4], L.cols) : kPlainSegment;
    if (!q8) {
      L.cols = size;
      L.rows = 1;
    }
    L.nb = L.cols > 0 ? (L.cols + L.block - 1) / L.block : 0;
    auto p = args.get<ffi::AnyBuffer>(a++);
    auto g = args.get<ffi::AnyBuffer>(a++);
    auto out = rets.get<ffi::AnyBuffer>(r++);
    if (!p.has_value() || !g.has_value() || !out.has_value()) return Failed("missing operand");
    if (p->element_count() != static_cast<size_t>(size) ||
        g->element_count() != static_cast<size_t>(size)) {
      return Failed("leaf sizes differ");
    }
    L.p = static_cast<const float*>(p->untyped_data());
    L.g = static_cast<const float*>(g->untyped_data());
    L.out = static_cast<float*>((*out)->untyped_data());
    for (int k = 0; k < 2; ++k) {
      Moment& mo = k == 0 ? L.m : L.v;
      mo.seed = sd[2 * i + k];
      auto in = args.get<ffi::AnyBuffer>(a++);
      auto o = rets.get<ffi::AnyBuffer>(r++);
      if (!in.has_value() || !o.has_value()) return Failed("missing moment operand");
      mo.in = in->untyped_data();
      mo.out = (*o)->untyped_data();
      const size_t want = IsQ8(mo.mode) ? static_cast<size_t>(L.rows * L.nb * L.block)
                                        : static_cast<size_t>(size);
      if (in->element_count() != want || (*o)->element_count() != want) {
        return Failed("moment size does not match its layout");
      }
      if (IsQ8(mo.mode)) {
        auto si = args.get<ffi::AnyBuffer>(a++);
        auto so = rets.get<ffi::AnyBuffer>(r++);
        if (!si.has_value() || !so.has_value()) return Failed("missing scale operand");
        if (si->element_count() != static_cast<size_t>(L.rows * L.nb) ||
            (*so)->element_count() != static_cast<size_t>(L.rows * L.nb)) {
          return Failed("scale size does not match its layout");
        }
        mo.scale_in = static_cast<const float*>(si->untyped_data());
        mo.scale_out = static_cast<float*>((*so)->untyped_data());
      }
    }
    job->leaves.push_back(L);
    job->fns.push_back(PickAdam(decay_mask[i] != 0 ? static_cast<int>(decay) : 0, maximize));
#ifdef ADAMX_AVX512
    job->segs.push_back(PickSeg(L.m.mode, L.v.mode,
                                decay_mask[i] != 0 ? static_cast<int>(decay) : 0, maximize));
#endif
    job->max_block = std::max(job->max_block, L.block);
    total += size;
  }
  if (a != args.size() || r != rets.size()) return Failed("wrong operand count");
  for (size_t i = 0; i < n; ++i) {
    const Leaf& L = job->leaves[i];
    const int64_t segs = L.rows * L.nb;
    const int64_t per = std::max<int64_t>(1, kChunk / L.block);
    for (int64_t lo = 0; lo < segs; lo += per) {
      job->chunks.push_back(Chunk{static_cast<int32_t>(i), lo, std::min(segs, lo + per)});
    }
  }
  const auto chunks = static_cast<int64_t>(job->chunks.size());
  return adamx::RunChunks(pool, std::move(job), chunks, total);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxAdamStorageStep, Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("decay")
                                  .Attr<bool>("maximize")
                                  .Attr<ffi::Span<const int64_t>>("decay_mask")
                                  .Attr<ffi::Span<const int64_t>>("layout")
                                  .Attr<int64_t>("bucket_lo")
                                  .Attr<int64_t>("bucket_n"));
