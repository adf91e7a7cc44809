// One fused, in-place pass over flat gradient buffers on the CPU (the README's Contract).
//
// This file is compiled once per instruction set (SAGO_ISA = baseline, avx2, avx512,
// avx512bf16; see CMakeLists.txt) into its own namespace; sago_native.cpp picks one at run time.
// The code is the same for all of them: GCC/Clang vector extensions of the native width, over
// rows of kLanes = 16 logical lanes. Every logical lane does the same IEEE operations in the same
// order whatever the instruction set, so all variants give the same bits.
//
// Determinism: work is cut into a fixed list of chunks chosen in Python from the layout alone
// (never from the thread count). Threads take whole chunks; a chunk keeps one partial sum per
// lane, adds its lanes in lane order into its own row, and rows are added per segment in chunk
// order afterwards. So outputs and statistics are bitwise the same with 1 thread or 64.
//
// Sums (dots and statistics): each product is added into a float32 sum per lane by a fused
// multiply-add (one rounding), over a block of kBlockRows rows; each block's lane sums are then
// added in double. So a lane's error is at most kBlockRows roundings of its block's terms, well
// inside the order-free float32 bound of the README (n·u·Σ|x_i·y_i|), for bfloat16 (whose
// products, 8 + 8 significant bits, are exact in float32 anyway) as for float32. In registers
// that is one instruction a product, where double products cost two conversions and twice the
// vector width: the sums ride along the memory traffic instead of doubling the pass's time.
// Overflow follows the one rule (r·r or f·f not finite in float32: see affine_weights), which a
// float32 product overflowing cannot escape (Cauchy-Schwarz). The CPU's bfloat16 dot product
// (VDPBF16PS) is not used: it flushes subnormal inputs and results to zero, which would lose
// more than the README's underflow allowance and could not give the same bits elsewhere.
//
// g_final is float32 arithmetic without contraction (-ffp-contract=off): γ·f + α·r rounds
// exactly as the reference does. Sign gates and finiteness are decided on bits. A block is
// loaded in full before it is stored, so out may alias retain or forget (element for element)
// safely. Each thread runs with IEEE subnormals and round-to-nearest whatever its caller set
// (torch.set_flush_denormal flushes only the calling thread, which would make the bits depend
// on which thread took a chunk).
//
// inv_scale (a gradient scaler's 1/scale): every f and r element is multiplied by it in float32
// right after it is widened, before any other arithmetic; the state and g_final are not scaled.

#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "sago_native.h"
#include "combine_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#define SAGO_HAVE_MXCSR 1
#endif

namespace SAGO_ISA {
namespace {

constexpr int kLanes = 16;     // logical lanes: a chunk keeps 16 partial sums of each kind
constexpr int kBlockRows = 16; // rows of kLanes elements summed in float32 before a double add
constexpr int kRow = 8;        // doubles per chunk row: the six sums, padded

// One vector of native width for this build; a block of kLanes is kParts such vectors. The
// logical lanes, and so every result, are the same for every instruction set.
#if defined(__AVX512F__)
constexpr int kWidth = 16;
#elif defined(__AVX2__)
constexpr int kWidth = 8;
#else
constexpr int kWidth = 4;
#endif
constexpr int kParts = kLanes / kWidth;

typedef float VF __attribute__((vector_size(4 * kWidth)));
typedef float VFh __attribute__((vector_size(2 * kWidth)));   // half a VF
typedef double VDh __attribute__((vector_size(4 * kWidth)));  // half a VF's lanes as doubles:
                                                               // one native register
typedef uint32_t VU __attribute__((vector_size(4 * kWidth)));
typedef int32_t VI __attribute__((vector_size(4 * kWidth)));  // masks: -1 true, 0 false
typedef uint16_t VH __attribute__((vector_size(2 * kWidth)));

// Every helper that takes or returns a vector is inlined: a 64-byte vector passed by value
// outside AVX-512 goes through memory, which costs more than the arithmetic.
#define SAGO_INLINE inline __attribute__((always_inline))

SAGO_INLINE VU splat(uint32_t x) { return VU{} + x; }
SAGO_INLINE VF splat(float x) { return VF{} + x; }

SAGO_INLINE VF quiet_nan() { return reinterpret_cast<VF>(splat(0x7FC00000u)); }

// ------------------------------------------------------------------ fused multiply-add
// acc + x·y rounded once (IEEE fusedMultiplyAdd), for the sums only: one instruction where the
// CPU has it; without it (x86-64 baseline, SSE2) the same result is built in double. The
// product of two floats is exact in double; the sum p + acc rounded to nearest in double and
// then to float could round twice, so it is rounded to odd instead (nearest, then one ulp
// toward the exact sum where it was inexact and landed on an even significand), which a
// rounding to float then turns into the correctly rounded result (Boldo & Melquiond, "Emulation
// of FMA and correctly rounded sums: proved algorithms using rounding to odd", 2008).
#if defined(__AVX512F__)
SAGO_INLINE VF fma(VF x, VF y, VF acc) {
  return reinterpret_cast<VF>(_mm512_fmadd_ps(reinterpret_cast<__m512>(x),
                                              reinterpret_cast<__m512>(y),
                                              reinterpret_cast<__m512>(acc)));
}
#elif defined(__FMA__)
SAGO_INLINE VF fma(VF x, VF y, VF acc) {
  return reinterpret_cast<VF>(_mm256_fmadd_ps(reinterpret_cast<__m256>(x),
                                              reinterpret_cast<__m256>(y),
                                              reinterpret_cast<__m256>(acc)));
}
#elif defined(__x86_64__) || defined(__i386__)
typedef double VD2 __attribute__((vector_size(16)));
typedef int64_t VL2 __attribute__((vector_size(16)));

SAGO_INLINE VD2 fma_round_to_odd(VD2 x, VD2 y, VD2 acc) {
  const VD2 p = x * y;  // exact: 24 + 24 significant bits, exponents far inside double's
  const VD2 s = p + acc;
  const VD2 p_part = s - acc;  // TwoSum: s + e == p + acc exactly (e NaN when s is not finite)
  const VD2 acc_part = s - p_part;
  const VD2 e = (p - p_part) + (acc - acc_part);
  const VL2 bits = reinterpret_cast<VL2>(s);
  const VL2 inexact = (e < 0.0) | (e > 0.0);  // false for 0 and NaN
  const VL2 even = (bits & 1) == 0;
  const VL2 away = ~((e > 0.0) ^ (s > 0.0));  // e has s's sign: the odd neighbour is larger
  const VL2 step = (away & 1) | (~away & -1);
  return reinterpret_cast<VD2>(bits + (step & inexact & even));
}

SAGO_INLINE VF fma(VF x, VF y, VF acc) {
  typedef float VF2 __attribute__((vector_size(8)));
  VF result;
  for (int half = 0; half < kWidth; half += 2) {
    const VF2 xh = {x[half], x[half + 1]}, yh = {y[half], y[half + 1]};
    const VF2 ah = {acc[half], acc[half + 1]};
    const VD2 rounded = fma_round_to_odd(__builtin_convertvector(xh, VD2),
                                         __builtin_convertvector(yh, VD2),
                                         __builtin_convertvector(ah, VD2));
    const VF2 out = __builtin_convertvector(rounded, VF2);  // round to nearest: to float
    result[half] = out[0];
    result[half + 1] = out[1];
  }
  return result;
}
#else  // other architectures: the C library's fmaf (one instruction on AArch64)
SAGO_INLINE VF fma(VF x, VF y, VF acc) {
  VF result;
  for (int q = 0; q < kWidth; ++q) result[q] = __builtin_fmaf(x[q], y[q], acc[q]);
  return result;
}
#endif

// ------------------------------------------------------------------ element formats
// widen: buffer words -> float32 (exact); narrow: float32 -> words, round to nearest even,
// NaN stays NaN (canonical quiet NaN, as torch's casts).

struct Float32 {
  using Word = float;
  SAGO_INLINE static VF widen(const float* p) {
    VF x;
    std::memcpy(&x, p, sizeof x);
    return x;
  }
  SAGO_INLINE static void narrow(VF x, float* p) { std::memcpy(p, &x, sizeof x); }
};

// 16-bit words <-> 32-bit lanes. GCC's generic __builtin_convertvector between these widths
// loads twice and shuffles; the one-instruction forms are spelled out where they exist.
SAGO_INLINE VU load_words(const uint16_t* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<VU>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(__AVX2__)
  return reinterpret_cast<VU>(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  VH h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, VU);
#endif
}

SAGO_INLINE void store_words(VU words, uint16_t* p) {  // every lane holds a value < 2**16
#if defined(__AVX512F__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(reinterpret_cast<__m512i>(words)));
#elif defined(__AVX2__)
  const __m256i packed = _mm256_packus_epi32(reinterpret_cast<__m256i>(words), _mm256_setzero_si256());
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08)));
#else
  VH h = __builtin_convertvector(words, VH);
  std::memcpy(p, &h, sizeof h);
#endif
}

SAGO_INLINE VF widen_words(const uint16_t* p, VU (*to_bits)(VU)) {
  return reinterpret_cast<VF>(to_bits(load_words(p)));
}

struct BFloat16 {
  using Word = uint16_t;
  SAGO_INLINE static VU bits(VU h) { return h << 16; }
#if defined(__AVX512BW__)
  // each word into the high half of its lane, the low half zeroed: one word permutation
  SAGO_INLINE static VF widen(const uint16_t* p) {
    const __m512i words =
        _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m512i to_high_halves = _mm512_set_epi16(
        15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, 7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0,
        1, 0, 0, 0);
    return reinterpret_cast<VF>(
        _mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, to_high_halves, words));
  }
#elif defined(__AVX2__)
  // the 16 bytes in both halves (a broadcast load), then each word into the high half of its
  // lane with the low half zeroed: one byte shuffle instead of a widening and a shift
  SAGO_INLINE static VF widen(const uint16_t* p) {
    const __m256i words =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i to_high_halves =
        _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,  //
                         -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15);
    return reinterpret_cast<VF>(_mm256_shuffle_epi8(words, to_high_halves));
  }
#else
  SAGO_INLINE static VF widen(const uint16_t* p) { return widen_words(p, bits); }
#endif
#if defined(__AVX2__) && !defined(__AVX512F__)
  // NaN made canonical first, then rounded in place; the high halves gathered by one shuffle
  SAGO_INLINE static void narrow_portable(VF x, uint16_t* p) {
    const VF canonical = x != x ? quiet_nan() : x;  // 0x7FC00000 rounds to 0x7FC0
    const VU u = reinterpret_cast<VU>(canonical);
    const VU rounded = u + 0x7FFFu + ((u >> 16) & 1u);
    const __m256i high_halves =
        _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,  //
                         2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i packed = _mm256_permute4x64_epi64(
        _mm256_shuffle_epi8(reinterpret_cast<__m256i>(rounded), high_halves), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
#else
  SAGO_INLINE static void narrow_portable(VF x, uint16_t* p) {
    VU u = reinterpret_cast<VU>(x);
    VU rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const VI nan = x != x;  // one unordered compare (not changed by denormals-are-zero)
    store_words(nan ? splat(0x7FC0u) : rounded, p);
  }
#endif
#if defined(__AVX512BF16__)
  // The CPU's conversion (VCVTNEPS2BF16) rounds to nearest even as the portable code does, but
  // reads subnormal inputs as zero and keeps NaN payloads: a vector holding either (rare) takes
  // the portable code, so the bits are the same on every instruction set.
  SAGO_INLINE static void narrow(VF x, uint16_t* p) {
    const __m512 v = reinterpret_cast<__m512>(x);
    constexpr int kNanOrSubnormal = 0x01 | 0x20 | 0x80;  // quiet NaN, subnormal, signalling NaN
    if (__builtin_expect(_mm512_fpclass_ps_mask(v, kNanOrSubnormal) != 0, 0)) {
      narrow_portable(x, p);
      return;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
  }
#else
  SAGO_INLINE static void narrow(VF x, uint16_t* p) { narrow_portable(x, p); }
#endif
};

struct Float16 {
  using Word = uint16_t;
  SAGO_INLINE static VU bits(VU h) {
    VU sign = (h & 0x8000u) << 16;
    VU exponent = (h >> 10) & 0x1Fu;
    VU mantissa = h & 0x3FFu;
    VU normal = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    VU special = sign | 0x7F800000u | (mantissa << 13);
    // subnormal: mantissa * 2**-24 is exact and a normal float32 (no denormal arithmetic)
    VF scaled = __builtin_convertvector(reinterpret_cast<VI>(mantissa), VF) * 0x1p-24f;
    VU subnormal = sign | reinterpret_cast<VU>(scaled);
    return exponent == 0u ? subnormal : exponent == 31u ? special : normal;
  }
  SAGO_INLINE static VF widen(const uint16_t* p) { return widen_words(p, bits); }
  SAGO_INLINE static void narrow(VF x, uint16_t* p) {  // integers only
    VU u = reinterpret_cast<VU>(x);
    VU sign = (u >> 16) & 0x8000u;
    VU a = u & 0x7FFFFFFFu;
    // normal range: drop 13 mantissa bits with rounding; a carry moves into the exponent
    VU normal = (a + 0xFFFu + ((a >> 13) & 1u) - 0x38000000u) >> 13;
    // below 2**-14: the value in units of 2**-24, rounded (shift in [14, 31] matters)
    VU e = a >> 23;
    VU m = (a & 0x7FFFFFu) | 0x800000u;
    VU shift = 126u - (e < 125u ? e : splat(125u));  // >= 1
    shift = shift > 31u ? splat(31u) : shift;
    VU half = (splat(1u) << (shift - 1u)) - 1u;
    VU subnormal = (m + half + ((m >> shift) & 1u)) >> shift;
    VU h = a > 0x7F800000u   ? splat(0x7E00u)
           : a >= 0x477FF000u ? splat(0x7C00u)
           : a >= 0x38800000u ? normal
                              : subnormal;
    store_words(sign | h, p);
  }
};

// ------------------------------------------------------------------ one chunk

enum Mode {
  kSum = SAGO_GATE_SUM,
  kSago = SAGO_GATE_SAGO,
  kSagoPreferRetain = SAGO_GATE_SAGO_PREFER_RETAIN,
  kAffine = 8,     // g = a·f + b·r with per-segment (a, b)
  kDots = 9,       // read only: f·r, r·r, f·f
  kDotsEma = 10,   // read only: f·r, r·r, f·f, and f·m', m'·m' with m' = beta·r + keep·m
  kAffineEma = 11, // g = a·f + b·r + c·m' with per-segment (a, b, c); m' into the state
};

constexpr bool is_ema(int mode) { return mode == kDotsEma || mode == kAffineEma; }

struct Weights {
  float a, b, c;       // kAffine, kAffineEma
  float alpha, gamma;  // gates
  float beta, keep;    // the moving average
  float scale;         // inv_scale (1 when none: x·1 = x exactly, but the flag skips it)
};

struct Splats {  // the weights broadcast once per chunk, held in registers (not reloaded
  VF a, b, c, alpha, gamma, beta, keep, scale;  // after every store, which may alias them)
};

// kWidth lanes in double, as two native registers (a vector wider than the machine's would
// travel through memory): lanes [0, kWidth/2) in lo, the rest in hi.
struct VD {
  VDh lo, hi;
};

SAGO_INLINE VD& operator+=(VD& acc, const VD& x) {
  acc.lo += x.lo;
  acc.hi += x.hi;
  return acc;
}
SAGO_INLINE double lane(const VD& x, int q) {
  return q < kWidth / 2 ? x.lo[q] : x.hi[q - kWidth / 2];
}

// The six sums of kWidth logical lanes: f·r, r·r, f·f, o·o, o·r, o·f (kDotsEma: f·m' in o_f,
// m'·m' in oo). Sums<VF> holds the current block's float32 sums, Sums<VD> the finished blocks'.
template <class V>
struct Sums {
  V fr, rr, ff, oo, o_r, o_f;

  // The k-th sum by name, not by pointer arithmetic: a struct whose address is taken and
  // indexed stays in memory, and its sums then wait on store-to-load forwarding every row.
  template <int k>
  SAGO_INLINE V& get() {
    static_assert(0 <= k && k < SAGO_NUM_SUMS, "six sums");
    if constexpr (k == 0) return fr;
    if constexpr (k == 1) return rr;
    if constexpr (k == 2) return ff;
    if constexpr (k == 3) return oo;
    if constexpr (k == 4) return o_r;
    if constexpr (k == 5) return o_f;
  }
};

// float32 lanes to double, by shuffles rather than through memory (a vector whose halves are
// copied out by address stays in memory, and so would the sums it is read from)
SAGO_INLINE VD wide(VF x) {
#if defined(__AVX512F__)  // GCC splits a generic 8-lane conversion in four; one instruction each
  const __m512 v = reinterpret_cast<__m512>(x);
  return {reinterpret_cast<VDh>(_mm512_cvtps_pd(_mm512_castps512_ps256(v))),
          reinterpret_cast<VDh>(_mm512_cvtps_pd(
              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))))};
#elif defined(__AVX2__)
  return {__builtin_convertvector(__builtin_shufflevector(x, x, 0, 1, 2, 3), VDh),
          __builtin_convertvector(__builtin_shufflevector(x, x, 4, 5, 6, 7), VDh)};
#else  // SSE2 converts two lanes at a time; convert the whole, then split
  typedef double VDw __attribute__((vector_size(8 * kWidth)));
  const VDw all = __builtin_convertvector(x, VDw);
  return {__builtin_shufflevector(all, all, 0, 1), __builtin_shufflevector(all, all, 2, 3)};
#endif
}

// A finished block: its float32 lane sums (exact in double) added to the double sums, and reset.
// The sums in use are [kFirst, kLast) in Sums' order.
template <int kFirst, int kLast, int k = kFirst>
SAGO_INLINE void flush(Sums<VF>& block, Sums<VD>& total) {
  if constexpr (k < kLast) {
    total.template get<k>() += wide(block.template get<k>());
    block.template get<k>() = VF{};
    flush<kFirst, kLast, k + 1>(block, total);
  }
}

// ------------------------------------------------------------------ gates on bits
// Which lanes conflict (signs differ, neither ±0) and which hold a non-finite r or f, as the
// README defines them on bits. AVX-512 decides them into mask registers with one instruction a
// test; elsewhere they are vectors of -1/0. Integer tests either way, so the same lanes on
// every instruction set.

#if defined(__AVX512F__)
typedef __mmask16 Mask;

SAGO_INLINE Mask conflicts_of(VU rb, VU fb) {
  const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i r = reinterpret_cast<__m512i>(rb), f = reinterpret_cast<__m512i>(fb);
  const Mask nonzero = _mm512_mask_test_epi32_mask(_mm512_test_epi32_mask(r, magnitude), f,
                                                   magnitude);
  return _mm512_mask_cmplt_epi32_mask(nonzero, _mm512_xor_si512(r, f), _mm512_setzero_si512());
}
SAGO_INLINE Mask non_finite_of(VF r, VF f) {  // NaN or ±inf: exponent all ones
  constexpr int kNanOrInf = 0x01 | 0x08 | 0x10 | 0x80;
  return _mm512_fpclass_ps_mask(reinterpret_cast<__m512>(r), kNanOrInf) |
         _mm512_fpclass_ps_mask(reinterpret_cast<__m512>(f), kNanOrInf);
}
SAGO_INLINE VF select(Mask m, VF yes, VF no) {
  return reinterpret_cast<VF>(
      _mm512_mask_blend_ps(m, reinterpret_cast<__m512>(no), reinterpret_cast<__m512>(yes)));
}
SAGO_INLINE void count(VU& counts, Mask m) {  // +1 in the lanes of m
  const __m512i c = reinterpret_cast<__m512i>(counts);
  counts = reinterpret_cast<VU>(_mm512_mask_sub_epi32(c, m, c, _mm512_set1_epi32(-1)));
}
SAGO_INLINE Mask mask_of(VI lanes) {
  return _mm512_movepi32_mask(reinterpret_cast<__m512i>(lanes));
}
#elif defined(__AVX2__)
// A mask is the sign bit of each lane (the other bits are don't-care), which is what BLENDVPS
// reads: the predicates become sign bits in fewer instructions than -1/0 lanes, since AVX2
// compares integers only for equality and signed order.
typedef VI Mask;

SAGO_INLINE Mask conflicts_of(VU rb, VU fb) {
  // signs differ (the sign of r ^ f) and neither is ±0: r != 0 as a float compare is exactly
  // "magnitude bits non-zero" (NaN included) with denormals-are-zero off, as every chunk runs
  const __m256 r = reinterpret_cast<__m256>(rb), f = reinterpret_cast<__m256>(fb);
  const __m256 zero = _mm256_setzero_ps();
  const __m256 nonzero =
      _mm256_and_ps(_mm256_cmp_ps(r, zero, _CMP_NEQ_UQ), _mm256_cmp_ps(f, zero, _CMP_NEQ_UQ));
  return reinterpret_cast<VI>(_mm256_and_ps(_mm256_xor_ps(r, f), nonzero));
}
SAGO_INLINE Mask non_finite_of(VF r, VF f) {
  // the larger magnitude's exponent is all ones iff adding one exponent unit carries into the
  // sign bit
  const VU magnitude_r = reinterpret_cast<VU>(r) & 0x7FFFFFFFu;
  const VU magnitude_f = reinterpret_cast<VU>(f) & 0x7FFFFFFFu;
  const __m256i larger = _mm256_max_epu32(reinterpret_cast<__m256i>(magnitude_r),
                                          reinterpret_cast<__m256i>(magnitude_f));
  return reinterpret_cast<VI>(reinterpret_cast<VU>(larger) + 0x00800000u);
}
SAGO_INLINE VF select(Mask m, VF yes, VF no) {
  return reinterpret_cast<VF>(_mm256_blendv_ps(
      reinterpret_cast<__m256>(no), reinterpret_cast<__m256>(yes), reinterpret_cast<__m256>(m)));
}
SAGO_INLINE void count(VU& counts, Mask m) { counts += reinterpret_cast<VU>(m) >> 31; }
SAGO_INLINE Mask mask_of(VI lanes) { return lanes; }
#else
typedef VI Mask;

SAGO_INLINE Mask conflicts_of(VU rb, VU fb) {
  // "and not either-zero": fewer instructions than two "!= 0" tests where compares only test
  // equality, as on AVX2
  const VI either_zero = ((rb & 0x7FFFFFFFu) == 0u) | ((fb & 0x7FFFFFFFu) == 0u);
  return (reinterpret_cast<VI>(rb ^ fb) < 0) & ~either_zero;
}
SAGO_INLINE Mask non_finite_of(VF r, VF f) {
  const VU rb = reinterpret_cast<VU>(r), fb = reinterpret_cast<VU>(f);
  return ((rb & 0x7F800000u) == 0x7F800000u) | ((fb & 0x7F800000u) == 0x7F800000u);
}
SAGO_INLINE VF select(Mask m, VF yes, VF no) { return m ? yes : no; }
SAGO_INLINE void count(VU& counts, Mask m) { counts -= reinterpret_cast<VU>(m); }  // -(-1)
SAGO_INLINE Mask mask_of(VI lanes) { return lanes; }
#endif

// kWidth elements (one part of a row). kInputSums: f·r, r·r, f·f; kOutputSums: o·o, o·r, o·f
// and conflicts; kDotsEma sums f·m' into o_f and m'·m' into oo. kTail: ``valid`` marks the
// lanes before a chunk's end (zero-padded past it); full rows need no mask. kStoreState: write
// m' into the state (kAffineEma). kScaled: f and r are multiplied by inv_scale as they are read.
template <class IO, int kMode, bool kInputSums, bool kOutputSums, bool kStoreState, bool kScaled,
          bool kTail = false>
SAGO_INLINE void part(const typename IO::Word* r_ptr, const typename IO::Word* f_ptr,
                      typename IO::Word* o_ptr, typename IO::Word* m_ptr, const Splats& w,
                      Sums<VF>& s, VU& conflicts, VI valid = VI{}) {
  VF r = IO::widen(r_ptr);
  VF f = IO::widen(f_ptr);
  if constexpr (kScaled) {
    r = r * w.scale;
    f = f * w.scale;
  }
  if (kInputSums) {
    s.fr = fma(f, r, s.fr);
    s.rr = fma(r, r, s.rr);
    s.ff = fma(f, f, s.ff);
  }
  VF m = VF{};
  if constexpr (is_ema(kMode)) m = w.beta * r + w.keep * IO::widen(m_ptr);
  if constexpr (kMode == kDotsEma) {
    s.o_f = fma(f, m, s.o_f);
    s.oo = fma(m, m, s.oo);
  }
  if (kMode == kDots || kMode == kDotsEma) return;
  // padding lanes hold ±0 (times inv_scale): never in conflict
  const Mask conflict = conflicts_of(reinterpret_cast<VU>(r), reinterpret_cast<VU>(f));
  VF o;
  if (kMode == kSum) {
    o = w.gamma * f + w.alpha * r;
  } else if (kMode == kAffine) {
    o = w.a * f + w.b * r;
  } else if (kMode == kAffineEma) {
    o = w.a * f + w.b * r + w.c * m;
  } else {
    const VF forget_part = w.gamma * f;
    const VF retain_part = w.alpha * r;
    const VF kept = kMode == kSago ? forget_part : forget_part + retain_part;
    o = select(conflict, retain_part, kept);
    o = select(non_finite_of(r, f), quiet_nan(), o);
  }
  IO::narrow(o, o_ptr);
  if (kStoreState) IO::narrow(m, m_ptr);
  if (kOutputSums) {
    // a NaN weight times a padding 0 must not count
    const VF ov = kTail ? select(mask_of(valid), o, VF{}) : o;
    s.oo = fma(ov, ov, s.oo);
    s.o_r = fma(ov, r, s.o_r);
    s.o_f = fma(ov, f, s.o_f);
    count(conflicts, conflict);
  }
}

// Elements [0, n) of one chunk: combine (unless a dots mode) and fill the chunk's row of sums.
// m_ptr: the state (the EMA modes; nullptr otherwise).
template <class IO, int kMode, bool kStats, bool kStoreState, bool kScaled>
void chunk_pass(const typename IO::Word* r_ptr, const typename IO::Word* f_ptr,
                typename IO::Word* o_ptr, typename IO::Word* m_ptr, int64_t n,
                const Weights& weights, double* row, int64_t* conflicts_out) {
  using Word = typename IO::Word;
  constexpr bool kWrites = kMode != kDots && kMode != kDotsEma;
  constexpr bool kInputSums =
      !kWrites || (kStats && kMode != kAffine && kMode != kAffineEma);
  constexpr bool kOutputSums = kStats && kWrites;
  // the sums in use, [kFirst, kLast) of Sums' fields f·r, r·r, f·f, o·o, o·r, o·f
  constexpr int kFirst = kInputSums ? 0 : 3;
  constexpr int kLast = kOutputSums || kMode == kDotsEma ? 6 : kInputSums ? 3 : 0;
  Sums<VF> block = {};  // one part's sums of the current block
  Sums<VD> total[kParts] = {};
  VU conflicts[kParts] = {};
  const Splats w = {splat(weights.a),     splat(weights.b),     splat(weights.c),
                    splat(weights.alpha), splat(weights.gamma), splat(weights.beta),
                    splat(weights.keep),  splat(weights.scale)};
  const int64_t full = n - n % kLanes;
  int64_t i = 0;
  // Blocks of kBlockRows rows from the chunk's start (the last may be short), each a part at a
  // time: a lane's sums see the same rows in the same order, and only one part's sums need
  // registers (AVX2 has two parts of eight lanes, SSE2 four of four; AVX-512 one).
  while (i < full) {
    const int64_t end = full - i > kBlockRows * kLanes ? i + kBlockRows * kLanes : full;
    for (int p = 0; p < kParts; ++p) {
      VU counted = conflicts[p];
      for (int64_t row = i; row < end; row += kLanes) {
        const int64_t at = row + p * kWidth;
        part<IO, kMode, kInputSums, kOutputSums, kStoreState, kScaled>(
            r_ptr + at, f_ptr + at, o_ptr + at, is_ema(kMode) ? m_ptr + at : nullptr, w, block,
            counted);
      }
      conflicts[p] = counted;
      flush<kFirst, kLast>(block, total[p]);
    }
    i = end;
  }
  if (i < n) {  // the tail through zero-padded copies, a block of its own
    const int width = static_cast<int>(n - i);
    Word r_tail[kLanes] = {}, f_tail[kLanes] = {}, o_tail[kLanes] = {}, m_tail[kLanes] = {};
    std::memcpy(r_tail, r_ptr + i, width * sizeof(Word));
    std::memcpy(f_tail, f_ptr + i, width * sizeof(Word));
    if (is_ema(kMode)) std::memcpy(m_tail, m_ptr + i, width * sizeof(Word));
    for (int p = 0; p < kParts; ++p) {
      VI lane;
      for (int q = 0; q < kWidth; ++q) lane[q] = p * kWidth + q;
      const int at = p * kWidth;
      part<IO, kMode, kInputSums, kOutputSums, kStoreState, kScaled, true>(
          r_tail + at, f_tail + at, o_tail + at, m_tail + at, w, block, conflicts[p],
          lane < width);
      flush<kFirst, kLast>(block, total[p]);
    }
    if (kWrites) std::memcpy(o_ptr + i, o_tail, width * sizeof(Word));
    if (kStoreState) std::memcpy(m_ptr + i, m_tail, width * sizeof(Word));
  }
  if (kLast == 0) return;
  double totals[SAGO_NUM_SUMS] = {0, 0, 0, 0, 0, 0};
  int64_t conflict_count = 0;
  for (int p = 0; p < kParts; ++p) {  // logical lane order 0..15
    for (int q = 0; q < kWidth; ++q) {
      totals[0] += lane(total[p].fr, q);
      totals[1] += lane(total[p].rr, q);
      totals[2] += lane(total[p].ff, q);
      totals[3] += lane(total[p].oo, q);
      totals[4] += lane(total[p].o_r, q);
      totals[5] += lane(total[p].o_f, q);
      conflict_count += conflicts[p][q];
    }
  }
  if (kInputSums) {
    for (int k = 0; k < 3; ++k) row[k] = totals[k];
  }
  if (kMode == kDotsEma) {  // f·m', m'·m'
    row[3] = totals[5];
    row[4] = totals[3];
  }
  if (kOutputSums) {
    for (int k = 3; k < SAGO_NUM_SUMS; ++k) row[k] = totals[k];
    *conflicts_out = conflict_count;
  }
}

// ------------------------------------------------------------------ coefficients

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

inline bool is_finite(float x) { return (bits_of(x) & 0x7F800000u) != 0x7F800000u; }

// A double sum as the float32 value the coefficients use: rounded to nearest, ±inf past
// float32's range (a plain cast of an out-of-range double is undefined behaviour in C++).
inline float to_float32(double x) {
  constexpr double kRoundsToInf = 0x1.ffffffp127;  // FLT_MAX + half an ulp (a tie goes up)
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (x >= kRoundsToInf) return kInf;
  if (x <= -kRoundsToInf) return -kInf;
  return static_cast<float>(x);  // NaN stays NaN
}

// (a, b) with g_final = a·f + b·r, from float32 dots as the Triton coefficient kernel does:
// PCGrad a = γ, b = α − γ·c with c = d/(n+eps) if d < 0 else 0; BLUR a = γ − α·c, b = α with
// c = d/(m+eps). Both NaN where a weight or any of the three dots is not finite in float32 (the
// segment becomes NaN). All three, not only the two a method uses: the sums here are exact-ish
// doubles, so f·r alone would stay finite where a float32 sum overflows in some order; r·r and
// f·f overflow whatever the order, and when both are finite no partial sum of f·r can
// (Cauchy-Schwarz). So every backend, whatever its order and width, agrees (reference.py).
void affine_weights(float d, float n, float m, float alpha, float gamma, float eps, int code,
                    float* a, float* b) {
  if (code == SAGO_PROJECTION_BLUR) {
    const float c = d / (m + eps);
    *a = gamma - alpha * c;
    *b = alpha;
  } else {
    const float c = d < 0.0f ? d / (n + eps) : 0.0f;
    *a = gamma;
    *b = alpha - gamma * c;
  }
  const bool ok = is_finite(d) && is_finite(n) && is_finite(m);
  if (!(ok && is_finite(*a) && is_finite(*b))) *a = *b = quiet_nan()[0];
}

// ------------------------------------------------------------------ the combine

// IEEE subnormals and round-to-nearest in this thread while it lives: the caller's thread may
// flush subnormals to zero (torch.set_flush_denormal) where OpenMP's other threads do not, and
// the bits would then depend on which thread took which chunk.
class IeeeArithmetic {
 public:
#ifdef SAGO_HAVE_MXCSR
  IeeeArithmetic() : saved_(_mm_getcsr()) {
    // clear flush-to-zero (bit 15), denormals-are-zero (bit 6) and the rounding mode (13-14)
    _mm_setcsr(saved_ & ~(0x8000u | 0x0040u | 0x6000u));
  }
  ~IeeeArithmetic() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};


class Combine {
 public:
  explicit Combine(const SagoCombineArgs& args) : A(args) {}

  template <class IO>
  int32_t run() {
    try {
      rows_.assign(static_cast<size_t>(A.num_chunks) * kRow, 0.0);
      conflicts_.assign(static_cast<size_t>(A.num_chunks), 0);
      if (A.scope != SAGO_ELEMENT) coef_.assign(static_cast<size_t>(A.num_segments) * 3, 0.0f);
    } catch (const std::bad_alloc&) {
      return SAGO_OUT_OF_MEMORY;
    }
    if (A.scope == SAGO_ELEMENT) {
      switch (A.code) {
        case SAGO_GATE_SUM: return write_pass<IO, kSum>();
        case SAGO_GATE_SAGO: return write_pass<IO, kSago>();
        case SAGO_GATE_SAGO_PREFER_RETAIN: return write_pass<IO, kSagoPreferRetain>();
        default: return SAGO_BAD_METHOD;
      }
    }
    if (A.phase == SAGO_PHASE_WRITE_COEF) {  // the caller's coefficients (a Gramian weighting)
      for (int64_t j = 0; j < A.num_segments; ++j) {
        coef_[j * 3] = A.seg_coef[j * 2];
        coef_[j * 3 + 1] = A.seg_coef[j * 2 + 1];
      }
      return write_pass<IO, kAffine>();
    }
    if (A.phase == SAGO_PHASE_DOTS_EMA || A.phase == SAGO_PHASE_WRITE_EMA) {
      if (A.code != SAGO_PROJECTION_GRU) return SAGO_BAD_PHASE;
      if (A.phase == SAGO_PHASE_DOTS_EMA) return ema_dots<IO>();
      for (size_t k = 0; k < coef_.size(); ++k) coef_[k] = A.seg_coef[k];  // (a, b, c)
      return write_pass<IO, kAffineEma>();
    }
    if (A.code != SAGO_PROJECTION_PCGRAD && A.code != SAGO_PROJECTION_BLUR &&
        A.code != SAGO_PROJECTION_WEIGHTING && A.code != SAGO_PROJECTION_GRU) {
      return SAGO_BAD_METHOD;
    }
    if (A.phase != SAGO_PHASE_ALL && A.phase != SAGO_PHASE_DOTS && A.phase != SAGO_PHASE_WRITE) {
      return SAGO_BAD_PHASE;
    }
    // a weighting's coefficients come from the caller: only its DOTS phase runs here
    if (A.code == SAGO_PROJECTION_WEIGHTING && A.phase != SAGO_PHASE_DOTS) return SAGO_BAD_PHASE;
    if (A.code == SAGO_PROJECTION_GRU) return SAGO_BAD_PHASE;  // only its EMA phases
    std::vector<double> dots;
    try {
      dots.assign(static_cast<size_t>(A.num_segments) * 3, 0.0);
    } catch (const std::bad_alloc&) {
      return SAGO_OUT_OF_MEMORY;
    }
    if (A.phase == SAGO_PHASE_WRITE) {
      for (size_t k = 0; k < dots.size(); ++k) dots[k] = A.seg_dots[k];
    } else {
      for_each_chunk([&](int64_t c, const Weights& w) {
        const int64_t start = A.chunk_start[c];
        run_chunk<IO, kDots, false>(false, input<IO>(A.retain, start),
                                    input<IO>(A.forget, start), nullptr, nullptr,
                                    A.chunk_len[c], w, &rows_[c * kRow], nullptr);
      });
      segment_dots(dots.data(), 3);
      if (A.phase == SAGO_PHASE_DOTS) {
        for (size_t k = 0; k < dots.size(); ++k) A.seg_dots[k] = dots[k];
        return SAGO_OK;
      }
    }
    coefficients(dots.data());
    return write_pass<IO, kAffine>();
  }

 private:
  template <class IO>
  static const typename IO::Word* input(const void* base, int64_t offset) {
    return static_cast<const typename IO::Word*>(base) + offset;
  }

  // GRU's DOTS_EMA: per segment f·r, r·r, f·f, f·m', m'·m' into seg_dots (chunk order).
  template <class IO>
  int32_t ema_dots() {
    for_each_chunk([&](int64_t c, const Weights& w) {
      const int64_t start = A.chunk_start[c];
      run_chunk<IO, kDotsEma, false>(false, input<IO>(A.retain, start),
                                     input<IO>(A.forget, start), nullptr, state<IO>(start),
                                     A.chunk_len[c], w, &rows_[c * kRow], nullptr);
    });
    segment_dots(A.seg_dots, SAGO_NUM_EMA_DOTS);
    return SAGO_OK;
  }

  template <class IO>
  typename IO::Word* state(int64_t offset) const {
    return static_cast<typename IO::Word*>(A.state) + offset;
  }

  // One chunk with the statistics or not, scaled by inv_scale or not (template flags, so the
  // plain pass does no work for either).
  template <class IO, int kMode, bool kStoreState>
  void run_chunk(bool stats, const typename IO::Word* r, const typename IO::Word* f,
                 typename IO::Word* o, typename IO::Word* m, int64_t n, const Weights& w,
                 double* row, int64_t* conflicts) const {
    const bool scaled = A.inv_scale != nullptr;
    if constexpr (kMode == kDots || kMode == kDotsEma) {  // they always sum, never write
      if (scaled) {
        chunk_pass<IO, kMode, false, kStoreState, true>(r, f, o, m, n, w, row, conflicts);
      } else {
        chunk_pass<IO, kMode, false, kStoreState, false>(r, f, o, m, n, w, row, conflicts);
      }
      return;
    }
    if (stats && scaled) {
      chunk_pass<IO, kMode, true, kStoreState, true>(r, f, o, m, n, w, row, conflicts);
    } else if (stats) {
      chunk_pass<IO, kMode, true, kStoreState, false>(r, f, o, m, n, w, row, conflicts);
    } else if (scaled) {
      chunk_pass<IO, kMode, false, kStoreState, true>(r, f, o, m, n, w, row, conflicts);
    } else {
      chunk_pass<IO, kMode, false, kStoreState, false>(r, f, o, m, n, w, row, conflicts);
    }
  }

  template <class Body>
  void for_each_chunk(Body body) {
    const int64_t chunks = A.num_chunks;
    const float scale = A.inv_scale != nullptr ? *A.inv_scale : 1.0f;
    const Weights gates{A.alpha, A.alpha, 0.0f, A.alpha, A.gamma, A.beta, A.keep, scale};
#ifdef _OPENMP
    const int threads = A.num_threads > 0 ? A.num_threads : 1;
#pragma omp parallel num_threads(threads) if (threads > 1 && chunks > 1)
#endif
    {
      const IeeeArithmetic ieee;  // in every thread of the region
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1) nowait  // the region's end is the one barrier
#endif
      for (int64_t c = 0; c < chunks; ++c) body(c, gates);
    }
  }

  // Each segment's first ``width`` sums into dots[j * width ...]: its chunks' rows in chunk
  // order (independent of the thread count).
  void segment_dots(double* dots, int width) const {
    for (int64_t j = 0; j < A.num_segments; ++j) {
      for (int k = 0; k < width; ++k) dots[j * width + k] = 0.0;
      for (int64_t c = A.seg_chunk[j]; c < A.seg_chunk[j + 1]; ++c) {
        for (int k = 0; k < width; ++k) dots[j * width + k] += rows_[c * kRow + k];
      }
    }
  }

  // Per-segment (a, b) from the segments' dots (float32 weights, as the Triton kernels).
  void coefficients(const double* dots) {
    double total[3] = {0, 0, 0};
    for (int64_t j = 0; j < A.num_segments; ++j) {
      const double* d = dots + j * 3;
      for (int k = 0; k < 3; ++k) total[k] += d[k];
      affine_weights(to_float32(d[0]), to_float32(d[1]), to_float32(d[2]), A.alpha, A.gamma,
                     A.eps, A.code, &coef_[j * 3], &coef_[j * 3 + 1]);
    }
    if (A.scope == SAGO_GLOBAL) {
      float a, b;
      affine_weights(to_float32(total[0]), to_float32(total[1]), to_float32(total[2]), A.alpha,
                     A.gamma, A.eps, A.code, &a, &b);
      for (int64_t j = 0; j < A.num_segments; ++j) {
        coef_[j * 3] = a;
        coef_[j * 3 + 1] = b;
      }
    }
  }

  template <class IO, int kMode>
  int32_t write_pass() {
    using Word = typename IO::Word;
    for_each_chunk([&](int64_t c, const Weights& gates) {
      Weights w = gates;
      if (kMode == kAffine || kMode == kAffineEma) {
        w.a = coef_[A.chunk_seg[c] * 3];
        w.b = coef_[A.chunk_seg[c] * 3 + 1];
        w.c = coef_[A.chunk_seg[c] * 3 + 2];
      }
      const int64_t start = A.chunk_start[c];
      const int64_t n = A.chunk_len[c];
      const Word* r = input<IO>(A.retain, start);
      const Word* f = input<IO>(A.forget, start);
      Word* o = static_cast<Word*>(A.out) + start;
      Word* m = kMode == kAffineEma ? state<IO>(start) : nullptr;
      double* row = A.want_stats ? &rows_[c * kRow] : nullptr;
      int64_t* conflicts = A.want_stats ? &conflicts_[c] : nullptr;
      // a segment written as NaN (its coefficients are NaN) keeps its state
      if constexpr (kMode == kAffineEma) {
        if (is_finite(w.c)) {
          run_chunk<IO, kMode, true>(A.want_stats, r, f, o, m, n, w, row, conflicts);
          return;
        }
      }
      run_chunk<IO, kMode, false>(A.want_stats, r, f, o, m, n, w, row, conflicts);
    });
    if (A.want_stats) reduce_stats();
    return SAGO_OK;
  }

  // Per-segment totals of the chunk rows, in chunk order (independent of the thread count).
  void reduce_stats() {
    for (int64_t j = 0; j < A.num_segments; ++j) {
      double* sums = A.seg_sums + j * SAGO_NUM_SUMS;
      int64_t conflicts = 0;
      for (int k = 0; k < SAGO_NUM_SUMS; ++k) sums[k] = 0.0;
      for (int64_t c = A.seg_chunk[j]; c < A.seg_chunk[j + 1]; ++c) {
        for (int k = 0; k < SAGO_NUM_SUMS; ++k) sums[k] += rows_[c * kRow + k];
        conflicts += conflicts_[c];
      }
      A.seg_conflicts[j] = conflicts;
    }
  }

  const SagoCombineArgs& A;
  std::vector<double> rows_;
  std::vector<int64_t> conflicts_;
  std::vector<float> coef_;
};

template <class IO>
void convert_blocks(const void* src, void* dst, int64_t n, bool widen) {
  using Word = typename IO::Word;
  for (int64_t i = 0; i < n; i += kLanes) {
    const int width = static_cast<int>(n - i < kLanes ? n - i : kLanes);
    if (widen) {
      Word in[kLanes] = {};
      float out[kLanes];
      std::memcpy(in, static_cast<const Word*>(src) + i, width * sizeof(Word));
      for (int p = 0; p < kParts; ++p) Float32::narrow(IO::widen(in + p * kWidth), out + p * kWidth);
      std::memcpy(static_cast<float*>(dst) + i, out, width * sizeof(float));
    } else {
      float in[kLanes] = {};
      Word out[kLanes];
      std::memcpy(in, static_cast<const float*>(src) + i, width * sizeof(float));
      for (int p = 0; p < kParts; ++p) IO::narrow(Float32::widen(in + p * kWidth), out + p * kWidth);
      std::memcpy(static_cast<Word*>(dst) + i, out, width * sizeof(Word));
    }
  }
}

}  // namespace

int32_t combine(const SagoCombineArgs& args) {
  Combine combine(args);
  switch (args.dtype) {
    case SAGO_FLOAT32: return combine.run<Float32>();
    case SAGO_BFLOAT16: return combine.run<BFloat16>();
    case SAGO_FLOAT16: return combine.run<Float16>();
    default: return SAGO_BAD_DTYPE;
  }
}

void fused_multiply_add(const float* x, const float* y, const float* acc, float* out,
                        int64_t n) {
  const IeeeArithmetic ieee;
  for (int64_t i = 0; i < n; i += kWidth) {
    const int width = static_cast<int>(n - i < kWidth ? n - i : kWidth);
    float a[kWidth] = {}, b[kWidth] = {}, c[kWidth] = {}, result[kWidth];
    std::memcpy(a, x + i, width * sizeof(float));
    std::memcpy(b, y + i, width * sizeof(float));
    std::memcpy(c, acc + i, width * sizeof(float));
    Float32::narrow(fma(Float32::widen(a), Float32::widen(b), Float32::widen(c)), result);
    std::memcpy(out + i, result, width * sizeof(float));
  }
}

int32_t convert(int32_t dtype, const void* src, void* dst, int64_t n, bool widen) {
  switch (dtype) {
    case SAGO_BFLOAT16: convert_blocks<BFloat16>(src, dst, n, widen); return SAGO_OK;
    case SAGO_FLOAT16: convert_blocks<Float16>(src, dst, n, widen); return SAGO_OK;
    default: return SAGO_BAD_DTYPE;
  }
}

}  // namespace SAGO_ISA
