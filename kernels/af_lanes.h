/* The lanes of the sums of squares (the guarded step's norm pass, _driver.pxi,
   and the per-tensor reductions, _reduce.pxi): AF_LANES float64 accumulators,
   element j of a row of AF_LANES going to lane j, each lane adding in element
   order.  gcc kept the plain `double acc[AF_LANES]` in memory across rows, so
   each row waited on a store and a reload (about 10 G elements/s in L1 with
   AVX2, against 14 in registers).  Vectors of AF_VW lanes held in locals stay
   in registers; the order of the additions is unchanged, so the bits are too.
   The AVX-512 build uses 8-wide vectors: half the instructions of 4-wide ones
   (Lamb's pass 1 cold at 16M, 1 thread, on an Intel Xeon: 18.4-18.6 ms
   against 19.3-19.4; the norm pass 4.3-4.4 against 4.6).  Compilers without
   GNU vector extensions keep the plain loop. */
#ifndef ADAMFAST_AF_LANES_H
#define ADAMFAST_AF_LANES_H

#ifndef AF_LANES
#  error "AF_LANES must be defined (_kinds.pxi, rendered by setup.py, defines it)"
#endif

#if defined(__GNUC__) || defined(__clang__)
#  define AF_VECTOR_LANES 1
#  ifdef __AVX512F__
#    define AF_VW 8
typedef double af_vd __attribute__((vector_size(64)));
static inline af_vd af_vd_float(const float *x) {
    af_vd v = {x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]};
    return v;
}
#  elif defined(__AVX__)
#    define AF_VW 4
typedef double af_vd __attribute__((vector_size(32)));
static inline af_vd af_vd_float(const float *x) {
    af_vd v = {x[0], x[1], x[2], x[3]};
    return v;
}
#  else
#    define AF_VW 2
typedef double af_vd __attribute__((vector_size(16)));
static inline af_vd af_vd_float(const float *x) {
    af_vd v = {x[0], x[1]};
    return v;
}
#  endif
#  if AF_LANES % AF_VW != 0
#    error "AF_LANES must be a multiple of the vector width"
#  endif
#  define AF_NV (AF_LANES / AF_VW)
static inline af_vd af_vd_double(const double *x) {
    af_vd v;
    __builtin_memcpy(&v, x, sizeof v);
    return v;
}
#else
#  define AF_VECTOR_LANES 0
#endif

#endif
