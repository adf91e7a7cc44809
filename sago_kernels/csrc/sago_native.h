// sago_kernels native CPU backend: the C ABI that sago_kernels/native.py loads with ctypes.
//
// A plain C ABI (no torch headers) keeps the build to one C++17 file compiled in seconds,
// independent of the installed torch version. The Python side validates every argument
// (dtype, lengths, layout, aliasing) before calling; the library trusts those checks and only
// rejects codes it does not know.

#ifndef SAGO_NATIVE_H_
#define SAGO_NATIVE_H_

#include <stdint.h>

#if defined(_WIN32)
#define SAGO_NATIVE_API __declspec(dllexport)
#else
#define SAGO_NATIVE_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever SagoCombineArgs or a function signature changes; native.py refuses a library
// built from other sources (e.g. a stale build in the source tree).
#define SAGO_NATIVE_ABI 6

enum SagoDtype { SAGO_FLOAT32 = 0, SAGO_BFLOAT16 = 1, SAGO_FLOAT16 = 2 };
enum SagoScope { SAGO_ELEMENT = 0, SAGO_SEGMENT = 1, SAGO_GLOBAL = 2 };
// Gate codes (scope ELEMENT) and projection codes (the other scopes), as in methods.py.
enum SagoGate { SAGO_GATE_SUM = 0, SAGO_GATE_SAGO = 1, SAGO_GATE_SAGO_PREFER_RETAIN = 2 };
// WEIGHTING: the weights come from a Gramian weighting computed by the caller (weightings.py):
// the library runs the DOTS phase, then WRITE_COEF with the caller's coefficients.
// GRU: a projection off a moving average of g_r held in the state buffer (gru.py): DOTS_EMA,
// then WRITE_EMA with the caller's coefficients.
enum SagoProjection {
  SAGO_PROJECTION_PCGRAD = 0,
  SAGO_PROJECTION_BLUR = 1,
  SAGO_PROJECTION_WEIGHTING = 2,
  SAGO_PROJECTION_GRU = 3,
};

// Instruction sets the kernels are built for (x86-64; elsewhere only BASELINE). AVX512_BF16:
// AVX-512 with the CPU's own float32 -> bfloat16 conversion (same bits as the others).
enum SagoIsa {
  SAGO_ISA_BASELINE = 0,
  SAGO_ISA_AVX2 = 1,
  SAGO_ISA_AVX512 = 2,
  SAGO_ISA_AVX512_BF16 = 3,
};

// What one call does. Projection methods on sharded buffers (sharding.py) split the combine
// around a sum of the per-segment dots over the ranks: DOTS, then the caller reduces seg_dots,
// then WRITE with the reduced dots. WRITE_COEF writes a·f + b·r with the caller's per-segment
// coefficients (seg_coef), whatever the method code: Gramian weightings use DOTS, then it.
// GRU (code SAGO_PROJECTION_GRU only): DOTS_EMA reads f, r and the state m, and writes five
// dots per segment of f, r and m' = beta·r + keep·m (f·r, r·r, f·f, f·m', m'·m'; m' is not
// stored); WRITE_EMA writes a·f + b·r + c·m' with the caller's (a, b, c) per segment, and m'
// into the state, except in segments whose c is NaN (they keep their state).
enum SagoPhase {
  SAGO_PHASE_ALL = 0,
  SAGO_PHASE_DOTS = 1,
  SAGO_PHASE_WRITE = 2,
  SAGO_PHASE_WRITE_COEF = 3,
  SAGO_PHASE_DOTS_EMA = 4,
  SAGO_PHASE_WRITE_EMA = 5,
};

enum SagoStatus {
  SAGO_OK = 0,
  SAGO_BAD_ABI = 1,
  SAGO_BAD_DTYPE = 2,
  SAGO_BAD_METHOD = 3,
  SAGO_OUT_OF_MEMORY = 4,
  SAGO_BAD_PHASE = 5,
};

// Dots per segment written by DOTS_EMA (see SagoPhase).
#define SAGO_NUM_EMA_DOTS 5

// Number of per-segment sums written to seg_sums, in this order:
// f·r, r·r, f·f, o·o, o·r, o·f (o = g_final in float32, before rounding to the buffer dtype).
#define SAGO_NUM_SUMS 6

typedef struct SagoCombineArgs {
  int32_t abi;          // SAGO_NATIVE_ABI
  int32_t dtype;        // SagoDtype of all three buffers
  int32_t scope;        // SagoScope
  int32_t code;         // SagoGate or SagoProjection
  int32_t want_stats;   // fill seg_sums and seg_conflicts
  int32_t num_threads;  // OpenMP threads (results do not depend on it)
  int32_t isa;          // highest SagoIsa to use; < 0: the best this CPU runs (same results)
  const void* retain;   // g_r
  const void* forget;   // g_f
  void* out;            // g_final; may equal retain or forget
  // The fixed chunking (see native.py): a chunk lies inside one segment; chunks are numbered
  // segment by segment, so segment j owns chunks seg_chunk[j] .. seg_chunk[j + 1] - 1.
  int64_t num_segments;
  const int64_t* seg_chunk;    // [num_segments + 1]
  int64_t num_chunks;
  const int64_t* chunk_start;  // [num_chunks] element offset in the buffers
  const int64_t* chunk_len;    // [num_chunks] elements, > 0
  const int64_t* chunk_seg;    // [num_chunks] owning segment
  float alpha;                 // retain weight
  float gamma;                 // forget weight
  float eps;                   // projection denominators
  double* seg_sums;            // [num_segments * SAGO_NUM_SUMS] when want_stats
  int64_t* seg_conflicts;      // [num_segments] when want_stats
  int32_t phase;               // SagoPhase; DOTS and WRITE only for projection methods
  double* seg_dots;            // [num_segments * 3] f·r, r·r, f·f: DOTS writes, WRITE reads
  const float* seg_coef;       // [num_segments * 2] (a, b) per segment: WRITE_COEF reads;
                               // [num_segments * 3] (a, b, c): WRITE_EMA reads
  void* state;                 // GRU's moving average m (dtype as the buffers): DOTS_EMA reads,
                               // WRITE_EMA reads and writes; never aliases the other buffers
  float beta;                  // weight of r in m' = beta·r + keep·m
  float keep;                  // weight of m
  const float* inv_scale;      // NULL, or a gradient scaler's 1/scale: every f and r element is
                               // multiplied by it in float32 as it is read, before any other
                               // arithmetic (gates, dots, statistics, m'); m and out unscaled
} SagoCombineArgs;

SAGO_NATIVE_API int32_t sago_native_abi(void);
// Threads an OpenMP region may use here; 1 when built without OpenMP.
SAGO_NATIVE_API int32_t sago_native_max_threads(void);
// The SagoIsa a call with ``isa = wanted`` runs.
SAGO_NATIVE_API int32_t sago_native_isa(int32_t wanted);
SAGO_NATIVE_API int32_t sago_native_combine(const SagoCombineArgs* args);
// The exact conversions the combine uses, for tests: float32 <-> bfloat16/float16 words,
// round to nearest even, NaN stays NaN. dtype is a SagoDtype other than SAGO_FLOAT32.
SAGO_NATIVE_API int32_t sago_native_widen(int32_t isa, int32_t dtype, const uint16_t* src,
                                          float* dst, int64_t n);
SAGO_NATIVE_API int32_t sago_native_narrow(int32_t isa, int32_t dtype, const float* src,
                                           uint16_t* dst, int64_t n);
// The fused multiply-add the sums use, for tests: out = acc + x·y rounded once (the baseline
// build emulates it; the others have the instruction).
SAGO_NATIVE_API int32_t sago_native_fma(int32_t isa, const float* x, const float* y,
                                        const float* acc, float* out, int64_t n);

#ifdef __cplusplus
}
#endif

#endif  // SAGO_NATIVE_H_
