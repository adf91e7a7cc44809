// The C ABI of the native backend, and the choice of instruction set at run time.
//
// combine_kernels.cpp is built once per instruction set (CMakeLists.txt); here the best one
// this CPU supports is chosen, unless the caller asks for a lower one (args->isa, from
// SAGO_NATIVE_ISA in native.py: tests and benchmarks compare them). All variants give the
// same bits, so the choice is about speed only.

#include "sago_native.h"

#include "combine_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#endif

namespace {

struct Isa {
  int32_t (*combine)(const SagoCombineArgs&);
  int32_t (*convert)(int32_t, const void*, void*, int64_t, bool);
  void (*fma)(const float*, const float*, const float*, float*, int64_t);
};

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
// CPUID leaf 7, sub-leaf 1, EAX bit 5 (AVX512_BF16), with the OS saving the AVX-512 state
// (checked through avx512f beside it); __builtin_cpu_supports knows this flag only in newer
// compilers. Asked once: under a hypervisor each CPUID is a VM exit (microseconds a call).
bool cpu_has_avx512_bf16() {
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || eax < 1) return false;
    __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx);
    return ((eax >> 5) & 1u) != 0;
  }();
  return has;
}
#endif

bool cpu_has(int isa) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  if (isa == SAGO_ISA_AVX512_BF16) return avx512 && cpu_has_avx512_bf16();
  if (isa == SAGO_ISA_AVX512) return avx512;
  if (isa == SAGO_ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == SAGO_ISA_BASELINE;
}

// The best compiled variant at or below ``wanted`` (< 0: the best there is) that this CPU runs.
int32_t pick(int32_t wanted, Isa* isa) {
  if (wanted < 0 || wanted > SAGO_ISA_AVX512_BF16) wanted = SAGO_ISA_AVX512_BF16;
#ifdef SAGO_HAVE_AVX512BF16
  if (wanted >= SAGO_ISA_AVX512_BF16 && cpu_has(SAGO_ISA_AVX512_BF16)) {
    *isa = {avx512bf16::combine, avx512bf16::convert, avx512bf16::fused_multiply_add};
    return SAGO_ISA_AVX512_BF16;
  }
#endif
#ifdef SAGO_HAVE_AVX512
  if (wanted >= SAGO_ISA_AVX512 && cpu_has(SAGO_ISA_AVX512)) {
    *isa = {avx512::combine, avx512::convert, avx512::fused_multiply_add};
    return SAGO_ISA_AVX512;
  }
#endif
#ifdef SAGO_HAVE_AVX2
  if (wanted >= SAGO_ISA_AVX2 && cpu_has(SAGO_ISA_AVX2)) {
    *isa = {avx2::combine, avx2::convert, avx2::fused_multiply_add};
    return SAGO_ISA_AVX2;
  }
#endif
  *isa = {baseline::combine, baseline::convert, baseline::fused_multiply_add};
  return SAGO_ISA_BASELINE;
}

}  // namespace

extern "C" {

int32_t sago_native_abi(void) { return SAGO_NATIVE_ABI; }

int32_t sago_native_max_threads(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int32_t sago_native_isa(int32_t wanted) {
  Isa isa;
  return pick(wanted, &isa);
}

int32_t sago_native_combine(const SagoCombineArgs* args) {
  if (args == nullptr || args->abi != SAGO_NATIVE_ABI) return SAGO_BAD_ABI;
  Isa isa;
  pick(args->isa, &isa);
  return isa.combine(*args);
}

int32_t sago_native_widen(int32_t isa, int32_t dtype, const uint16_t* src, float* dst, int64_t n) {
  Isa chosen;
  pick(isa, &chosen);
  return chosen.convert(dtype, src, dst, n, true);
}

int32_t sago_native_narrow(int32_t isa, int32_t dtype, const float* src, uint16_t* dst,
                           int64_t n) {
  Isa chosen;
  pick(isa, &chosen);
  return chosen.convert(dtype, src, dst, n, false);
}

int32_t sago_native_fma(int32_t isa, const float* x, const float* y, const float* acc,
                        float* out, int64_t n) {
  Isa chosen;
  pick(isa, &chosen);
  chosen.fma(x, y, acc, out, n);
  return SAGO_OK;
}

}  // extern "C"
