// The per-instruction-set entry points of combine_kernels.cpp (one namespace per build of it).

#ifndef SAGO_COMBINE_KERNELS_H_
#define SAGO_COMBINE_KERNELS_H_

#include "sago_native.h"

#define SAGO_DECLARE_ISA(isa)                                                        \
  namespace isa {                                                                    \
  int32_t combine(const SagoCombineArgs& args);                                      \
  int32_t convert(int32_t dtype, const void* src, void* dst, int64_t n, bool widen); \
  void fused_multiply_add(const float* x, const float* y, const float* acc,          \
                          float* out, int64_t n);                                    \
  }

SAGO_DECLARE_ISA(baseline)
#ifdef SAGO_HAVE_AVX2
SAGO_DECLARE_ISA(avx2)
#endif
#ifdef SAGO_HAVE_AVX512
SAGO_DECLARE_ISA(avx512)
#endif
#ifdef SAGO_HAVE_AVX512BF16
SAGO_DECLARE_ISA(avx512bf16)
#endif

#undef SAGO_DECLARE_ISA

#endif  // SAGO_COMBINE_KERNELS_H_
