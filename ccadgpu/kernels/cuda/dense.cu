// ccadgpu streaming device ops: copy, scale, axpy, triad, sum, dot.
//
// Each op is a template on COUNT (instrumented or plain) and the element type; the extern "C"
// entry points ``ccad_<op>_<f32|f64|i32|i64>_<plain|counted>`` take the same arguments, so the
// cost of counting is the difference between two launches of one argument tuple.  Work is
// split into tiles of blockDim.x * CCAD_ITEMS consecutive elements, walked grid-stride; every
// operand is dense, so a tile's counts are its byte ranges split at page boundaries (see
// ccad_counters.cuh).  Launch with a 1-D block whose size is a multiple of 32.
//
// sum/dot add into ``out[0]`` (the caller zeroes it): double for float inputs, long long for
// integer inputs (64-bit wrapping, as NumPy's int64); one atomicAdd per block.
#include "ccad_counters.cuh"

#define CCAD_TILE_LOOP(n)                                                                   \
    const ccad_i64 tile = (ccad_i64)blockDim.x * CCAD_ITEMS;                                \
    for (ccad_i64 t0 = (ccad_i64)blockIdx.x * tile; t0 < (n); t0 += (ccad_i64)gridDim.x * tile)

#define CCAD_TILE_ITEMS(n, body)                                                            \
    {                                                                                       \
        const ccad_i64 t1 = ccad_min(t0 + tile, (n));                                       \
        _Pragma("unroll") for (int k = 0; k < CCAD_ITEMS; ++k) {                            \
            const ccad_i64 i = t0 + (ccad_i64)k * blockDim.x + threadIdx.x;                 \
            if (i < t1) { body; }                                                           \
        }                                                                                   \
    }

// Count the tile [t0, min(t0 + tile, n)) of dense operand p into counter array g.
#define CCAD_TILE_COUNT(g, p, n)                                                            \
    ccad_count_range_block(c, (g), ccad_addr((p) + t0), ccad_addr((p) + ccad_min(t0 + tile, (n))))

// y[i] = x[i]
template <bool COUNT, typename T>
__device__ void ccad_copy_impl(T* y, const T* x, ccad_i64 n, CcadCounters c) {
    CCAD_TILE_LOOP(n) {
        CCAD_TILE_ITEMS(n, y[i] = x[i])
        if (COUNT && ccad_dense(c)) {
            CCAD_TILE_COUNT(c.rd, x, n);
            CCAD_TILE_COUNT(c.wr, y, n);
        }
    }
}

// y[i] = a * x[i]   (y may be x)
template <bool COUNT, typename T>
__device__ void ccad_scale_impl(T* y, const T* x, T a, ccad_i64 n, CcadCounters c) {
    CCAD_TILE_LOOP(n) {
        CCAD_TILE_ITEMS(n, y[i] = a * x[i])
        if (COUNT && ccad_dense(c)) {
            CCAD_TILE_COUNT(c.rd, x, n);
            CCAD_TILE_COUNT(c.wr, y, n);
        }
    }
}

// y[i] = a * x[i] + y[i]   (x may be y; it is then read once)
template <bool COUNT, typename T>
__device__ void ccad_axpy_impl(T* y, const T* x, T a, ccad_i64 n, CcadCounters c) {
    CCAD_TILE_LOOP(n) {
        CCAD_TILE_ITEMS(n, y[i] = a * x[i] + y[i])
        if (COUNT && ccad_dense(c)) {
            CCAD_TILE_COUNT(c.rd, x, n);
            if ((const T*)y != x) CCAD_TILE_COUNT(c.rd, y, n);
            CCAD_TILE_COUNT(c.wr, y, n);
        }
    }
}

// a[i] = b[i] + s * c[i]   (STREAM triad; an input may be the output or the other input,
// each distinct array is read once)
template <bool COUNT, typename T>
__device__ void ccad_triad_impl(T* a, const T* b, const T* cc, T s, ccad_i64 n, CcadCounters c) {
    CCAD_TILE_LOOP(n) {
        CCAD_TILE_ITEMS(n, a[i] = b[i] + s * cc[i])
        if (COUNT && ccad_dense(c)) {
            CCAD_TILE_COUNT(c.rd, b, n);
            if (cc != b) CCAD_TILE_COUNT(c.rd, cc, n);
            CCAD_TILE_COUNT(c.wr, a, n);
        }
    }
}

// *out += sum(x)
template <bool COUNT, typename T>
__device__ void ccad_sum_impl(typename CcadAcc<T>::type* out, const T* x, ccad_i64 n,
                              CcadCounters c) {
    typedef typename CcadAcc<T>::type A;
    A acc = (A)0;
    CCAD_TILE_LOOP(n) {
        CCAD_TILE_ITEMS(n, acc += (A)x[i])
        if (COUNT && ccad_dense(c)) CCAD_TILE_COUNT(c.rd, x, n);
    }
    acc = ccad_block_sum<A>(acc);
    if (ccad_tid() == 0) ccad_atomic_add_acc(out, acc);
}

// *out += dot(x, y)   (x may be y; it is then read once)
template <bool COUNT, typename T>
__device__ void ccad_dot_impl(typename CcadAcc<T>::type* out, const T* x, const T* y, ccad_i64 n,
                              CcadCounters c) {
    typedef typename CcadAcc<T>::type A;
    A acc = (A)0;
    CCAD_TILE_LOOP(n) {
        CCAD_TILE_ITEMS(n, acc += (A)x[i] * (A)y[i])
        if (COUNT && ccad_dense(c)) {
            CCAD_TILE_COUNT(c.rd, x, n);
            if (y != x) CCAD_TILE_COUNT(c.rd, y, n);
        }
    }
    acc = ccad_block_sum<A>(acc);
    if (ccad_tid() == 0) ccad_atomic_add_acc(out, acc);
}

// ---- extern "C" entry points (names are looked up by the Python loader) -------------------

#define CCAD_DENSE_ENTRIES(SFX, T, VARIANT, COUNT)                                              \
    extern "C" __global__ void ccad_copy_##SFX##_##VARIANT(T* y, const T* x, ccad_i64 n,         \
                                                           CCAD_CNT_PARAMS) {                   \
        ccad_copy_impl<COUNT, T>(y, x, n, CCAD_CNT_VALUE);                                       \
    }                                                                                            \
    extern "C" __global__ void ccad_scale_##SFX##_##VARIANT(T* y, const T* x, T a, ccad_i64 n,   \
                                                            CCAD_CNT_PARAMS) {                  \
        ccad_scale_impl<COUNT, T>(y, x, a, n, CCAD_CNT_VALUE);                                   \
    }                                                                                            \
    extern "C" __global__ void ccad_axpy_##SFX##_##VARIANT(T* y, const T* x, T a, ccad_i64 n,    \
                                                           CCAD_CNT_PARAMS) {                   \
        ccad_axpy_impl<COUNT, T>(y, x, a, n, CCAD_CNT_VALUE);                                    \
    }                                                                                            \
    extern "C" __global__ void ccad_triad_##SFX##_##VARIANT(T* a, const T* b, const T* cc, T s, \
                                                            ccad_i64 n, CCAD_CNT_PARAMS) {      \
        ccad_triad_impl<COUNT, T>(a, b, cc, s, n, CCAD_CNT_VALUE);                               \
    }                                                                                            \
    extern "C" __global__ void ccad_sum_##SFX##_##VARIANT(                                      \
        CcadAcc<T>::type* out, const T* x, ccad_i64 n, CCAD_CNT_PARAMS) {                       \
        ccad_sum_impl<COUNT, T>(out, x, n, CCAD_CNT_VALUE);                                      \
    }                                                                                            \
    extern "C" __global__ void ccad_dot_##SFX##_##VARIANT(                                      \
        CcadAcc<T>::type* out, const T* x, const T* y, ccad_i64 n, CCAD_CNT_PARAMS) {           \
        ccad_dot_impl<COUNT, T>(out, x, y, n, CCAD_CNT_VALUE);                                   \
    }

#define CCAD_DENSE_BOTH(SFX, T)                   \
    CCAD_DENSE_ENTRIES(SFX, T, plain, false)      \
    CCAD_DENSE_ENTRIES(SFX, T, counted, true)

CCAD_DENSE_BOTH(f64, double)
CCAD_DENSE_BOTH(f32, float)
CCAD_DENSE_BOTH(i64, long long)
CCAD_DENSE_BOTH(i32, int)
