/* Vector math for the CPU kernels: an 8-float vector type (GCC/Clang
 * vector extensions: one AVX register, two SSE or NEON registers) and an
 * exp accurate to about 1 ulp, so that GELU's tanh runs 8 lanes at a time
 * instead of one scalar expf call per element. PP_SIMD_CLONES compiles a
 * hot loop twice on x86-64, for AVX2 and for the baseline, and picks one
 * when the program starts; exec/model/ is built with -ffp-contract=off, so
 * both give the same bits. Private to exec/model/. */
#ifndef PP_CPU_VMATH_H
#define PP_CPU_VMATH_H

#include <stdint.h>
#include <string.h>

#define PP_VW 8

/* The 8-float vectors pass only into always-inlined functions, where GCC's note
 * that AVX changes the calling convention does not apply. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define PP_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PP_SIMD_CLONES
#endif

/* Always inlined, also at -O0: a vector function called across the clones'
 * targets would pass its 8 floats in AVX registers on one side and in
 * memory on the other (-Wpsabi's warning). */
#define PP_VINLINE static inline __attribute__((always_inline))

typedef float pp_vf __attribute__((vector_size(PP_VW * sizeof(float))));
typedef int32_t pp_vi __attribute__((vector_size(PP_VW * sizeof(int32_t))));

PP_VINLINE pp_vf pp_vload(const float *p)
{
    pp_vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

PP_VINLINE void pp_vstore(float *p, pp_vf v)
{
    memcpy(p, &v, sizeof v);
}

PP_VINLINE pp_vf pp_vset(float x)
{
    return (pp_vf){0} + x;
}

PP_VINLINE pp_vf pp_vmin(pp_vf a, pp_vf b)
{
    pp_vi lt = a < b;
    return (pp_vf)((lt & (pp_vi)a) | (~lt & (pp_vi)b));
}

PP_VINLINE pp_vf pp_vmax(pp_vf a, pp_vf b)
{
    pp_vi gt = a > b;
    return (pp_vf)((gt & (pp_vi)a) | (~gt & (pp_vi)b));
}

/* exp(x): x = k ln2 + r with |r| <= ln2/2 (ln2 split in two parts so r is
 * exact to float precision), exp(r) by its Taylor series to r^7 (the
 * truncation error is below 6e-9 relative, under half an ulp), times 2^k
 * built in the exponent bits. Inputs are clamped to [-87.3, 88.3], where
 * exp stays a normal float; below that the result is ~1e-38, not 0. */
PP_VINLINE pp_vf pp_vexp(pp_vf x)
{
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
    x = pp_vmax(pp_vmin(x, pp_vset(88.3f)), pp_vset(-87.3f));
    pp_vf kf = x * 1.4426950408889634f;
    /* round to nearest: add and subtract 1.5 * 2^23 */
    kf = (kf + 12582912.0f) - 12582912.0f;
    pp_vf r = x - kf * ln2_hi - kf * ln2_lo;
    pp_vf p = pp_vset(1.0f / 5040.0f);
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    pp_vi k = __builtin_convertvector(kf, pp_vi);
    pp_vi bits = (k + 127) << 23;
    return p * (pp_vf)bits;
}

/* tanh(u) = 1 - 2 / (1 + exp(2u)): exact limits +-1 at both ends. */
PP_VINLINE pp_vf pp_vtanh(pp_vf u)
{
    return 1.0f - 2.0f / (1.0f + pp_vexp(2.0f * u));
}

#pragma GCC diagnostic pop

#endif
