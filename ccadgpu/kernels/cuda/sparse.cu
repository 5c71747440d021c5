// ccadgpu indexed device ops: gather, scatter, CSR SpMV.
//
//   gather:  y[i] = x[idx[i]]        ccad_gather_<f32|f64|i32|i64>_<i32|i64>_<plain|counted>
//   scatter: y[idx[i]] = x[i]        ccad_scatter_<f32|f64|i32|i64>_<i32|i64>_<plain|counted>
//            (duplicate indices: one of the writers wins, unspecified which, as on any GPU;
//             every store is counted)
//   spmv:    y[r] = sum_k data[k] * x[indices[k]],  k in [indptr[r], indptr[r+1])
//                                    ccad_spmv_<f32|f64>_<i32|i64>_<plain|counted>
//            (SciPy's CSR layout: indptr[0] == 0, indptr[nrows] == nnz)
//
// Indices must be in range (the Python launcher checks them first).  The work loops test each
// one again, against ``nsrc`` (gather's x, scatter's y, SpMV's x elements), and SpMV clamps
// each row's ``indptr`` range to ``[0, nnz]`` (read once per warp, so every lane runs the same
// trips): an index array changed after the check (another thread's store) is never followed
// outside the arrays; the access is skipped and ``*bad`` set to 1, so the launcher can say
// the launch saw changed indices (a null ``bad`` only skips).  Dense operands (idx, gather's
// y, scatter's x, SpMV's indptr/indices/data/y) count their bytes once per launch, per tile or
// per row; the indexed ones (gather's x, scatter's y, SpMV's x) count each access, aggregated
// per warp (__match_any_sync) and per block (shared table), see ccad_counters.cuh.  1-D blocks,
// a multiple of 32 threads.
#include "ccad_counters.cuh"

// Whether index value ``j`` is inside ``[0, n)``: one unsigned compare.
__device__ __forceinline__ bool ccad_in(ccad_i64 j, ccad_i64 n) {
    return (ccad_u64)j < (ccad_u64)n;
}

// A flag, not a count: it cannot wrap, however many indices changed.
__device__ __forceinline__ void ccad_bad(unsigned* bad) {
    if (bad) atomicOr(bad, 1u);
}

__device__ __forceinline__ ccad_i64 ccad_clamp(ccad_i64 v, ccad_i64 lo, ccad_i64 hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

template <bool COUNT, typename T, typename I>
__device__ void ccad_gather_impl(T* y, const T* x, const I* idx, ccad_i64 n, ccad_i64 nsrc,
                                 unsigned* bad, CcadCounters c) {
    __shared__ CcadHist hr;
    if (COUNT) {
        ccad_hist_init(c, &hr);
        __syncthreads();
    }
    const ccad_i64 tile = (ccad_i64)blockDim.x * CCAD_ITEMS;
    // trip counts depend on blockIdx only: every lane reaches the warp-level counting together
    for (ccad_i64 t0 = (ccad_i64)blockIdx.x * tile; t0 < n; t0 += (ccad_i64)gridDim.x * tile) {
        const ccad_i64 t1 = ccad_min(t0 + tile, n);
        ccad_u64 a[CCAD_ITEMS];
#pragma unroll
        for (int k = 0; k < CCAD_ITEMS; ++k) {
            const ccad_i64 i = t0 + (ccad_i64)k * blockDim.x + threadIdx.x;
            a[k] = 0;                          // 0: no access (past the end, a bad index)
            if (i < t1) {
                const ccad_i64 j = (ccad_i64)idx[i];
                if (ccad_in(j, nsrc)) {
                    y[i] = x[j];
                    a[k] = ccad_addr(x + j);
                } else {
                    ccad_bad(bad);
                }
            }
        }
        // counted after every load of the tile is in flight, not between them
        // (c.flags is a kernel argument: the branch is uniform, all lanes take it)
        if (COUNT && ccad_indexed(c)) {
#pragma unroll
            for (int k = 0; k < CCAD_ITEMS; ++k) {
                ccad_warp_count(c, c.rd, &hr, a[k], a[k] != 0, (unsigned)sizeof(T));
            }
        }
        if (COUNT && ccad_dense(c)) {
            ccad_count_range_block(c, c.rd, ccad_addr(idx + t0), ccad_addr(idx + t1));
            ccad_count_range_block(c, c.wr, ccad_addr(y + t0), ccad_addr(y + t1));
        }
    }
    if (COUNT) {
        __syncthreads();
        ccad_hist_flush(c, &hr, c.rd, (unsigned)sizeof(T));
    }
}

template <bool COUNT, typename T, typename I>
__device__ void ccad_scatter_impl(T* y, const I* idx, const T* x, ccad_i64 n, ccad_i64 nsrc,
                                  unsigned* bad, CcadCounters c) {
    __shared__ CcadHist hw;
    if (COUNT) {
        ccad_hist_init(c, &hw);
        __syncthreads();
    }
    const ccad_i64 tile = (ccad_i64)blockDim.x * CCAD_ITEMS;
    for (ccad_i64 t0 = (ccad_i64)blockIdx.x * tile; t0 < n; t0 += (ccad_i64)gridDim.x * tile) {
        const ccad_i64 t1 = ccad_min(t0 + tile, n);
#pragma unroll
        for (int k = 0; k < CCAD_ITEMS; ++k) {
            const ccad_i64 i = t0 + (ccad_i64)k * blockDim.x + threadIdx.x;
            bool ok = i < t1;
            ccad_u64 a = 0;
            if (ok) {
                const ccad_i64 j = (ccad_i64)idx[i];
                ok = ccad_in(j, nsrc);
                if (ok) {
                    y[j] = x[i];
                    a = ccad_addr(y + j);
                } else {
                    ccad_bad(bad);
                }
            }
            if (COUNT && ccad_indexed(c)) ccad_warp_count(c, c.wr, &hw, a, ok, (unsigned)sizeof(T));
        }
        if (COUNT && ccad_dense(c)) {
            ccad_count_range_block(c, c.rd, ccad_addr(idx + t0), ccad_addr(idx + t1));
            ccad_count_range_block(c, c.rd, ccad_addr(x + t0), ccad_addr(x + t1));
        }
    }
    if (COUNT) {
        __syncthreads();
        ccad_hist_flush(c, &hw, c.wr, (unsigned)sizeof(T));
    }
}

// One warp per row ("vector CSR"): lanes stride the row's nonzeros, a shuffle reduction sums
// them, lane 0 stores.  Counts: indptr, the used slice [indptr[0], indptr[nrows]) of indices and
// data, and y are dense (each byte once per launch; the grid counts them up front, see
// ccad_count_range_grid), and one x element per nonzero (indexed, warp-aggregated).
template <bool COUNT, typename T, typename I>
__device__ void ccad_spmv_impl(T* y, const I* indptr, const I* indices, const T* data,
                               const T* x, ccad_i64 nrows, ccad_i64 nnz, ccad_i64 nsrc,
                               unsigned* bad, CcadCounters c) {
    __shared__ CcadHist hr;
    if (COUNT) {
        if (ccad_dense(c) && nrows > 0) {
            const ccad_i64 k0 = ccad_clamp((ccad_i64)indptr[0], 0, nnz);
            const ccad_i64 k1 = ccad_clamp((ccad_i64)indptr[nrows], k0, nnz);
            ccad_count_range_grid(c, c.rd, ccad_addr(indptr), ccad_addr(indptr + nrows + 1));
            ccad_count_range_grid(c, c.rd, ccad_addr(indices + k0), ccad_addr(indices + k1));
            ccad_count_range_grid(c, c.rd, ccad_addr(data + k0), ccad_addr(data + k1));
            ccad_count_range_grid(c, c.wr, ccad_addr(y), ccad_addr(y + nrows));
        }
        ccad_hist_init(c, &hr);
        __syncthreads();
    }
    const unsigned lane = threadIdx.x & 31u;
    const ccad_i64 warp = ((ccad_i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const ccad_i64 nwarps = ((ccad_i64)gridDim.x * blockDim.x) >> 5;
    for (ccad_i64 r = warp; r < nrows; r += nwarps) {
        // lane 0's reading for the whole warp: the same trips on every lane, even if
        // indptr changes meanwhile (the warp collectives below need all 32)
        const ccad_i64 p0 = __shfl_sync(0xffffffffu, (ccad_i64)indptr[r], 0);
        const ccad_i64 p1 = __shfl_sync(0xffffffffu, (ccad_i64)indptr[r + 1], 0);
        const ccad_i64 k0 = ccad_clamp(p0, 0, nnz), k1 = ccad_clamp(p1, k0, nnz);
        if (lane == 0 && (k0 != p0 || k1 != p1)) ccad_bad(bad);   // changed after the check
        T acc = (T)0;
        for (ccad_i64 kb = k0; kb < k1; kb += 32) {
            const ccad_i64 k = kb + lane;
            bool ok = k < k1;
            ccad_u64 a = 0;
            if (ok) {
                const ccad_i64 j = (ccad_i64)indices[k];
                ok = ccad_in(j, nsrc);
                if (ok) {
                    acc += data[k] * x[j];
                    a = ccad_addr(x + j);
                } else {
                    ccad_bad(bad);
                }
            }
            if (COUNT && ccad_indexed(c)) ccad_warp_count(c, c.rd, &hr, a, ok, (unsigned)sizeof(T));
        }
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
        if (lane == 0) y[r] = acc;
    }
    if (COUNT) {
        __syncthreads();
        ccad_hist_flush(c, &hr, c.rd, (unsigned)sizeof(T));
    }
}

#define CCAD_INDEXED_ENTRIES(SFX, T, ISFX, I, VARIANT, COUNT)                                   \
    extern "C" __global__ void ccad_gather_##SFX##_##ISFX##_##VARIANT(                          \
        T* y, const T* x, const I* idx, ccad_i64 n, ccad_i64 nsrc, unsigned* bad,              \
        CCAD_CNT_PARAMS) {                                                                       \
        ccad_gather_impl<COUNT, T, I>(y, x, idx, n, nsrc, bad, CCAD_CNT_VALUE);                  \
    }                                                                                            \
    extern "C" __global__ void ccad_scatter_##SFX##_##ISFX##_##VARIANT(                         \
        T* y, const I* idx, const T* x, ccad_i64 n, ccad_i64 nsrc, unsigned* bad,              \
        CCAD_CNT_PARAMS) {                                                                       \
        ccad_scatter_impl<COUNT, T, I>(y, idx, x, n, nsrc, bad, CCAD_CNT_VALUE);                 \
    }

#define CCAD_SPMV_ENTRIES(SFX, T, ISFX, I, VARIANT, COUNT)                                      \
    extern "C" __global__ void ccad_spmv_##SFX##_##ISFX##_##VARIANT(                            \
        T* y, const I* indptr, const I* indices, const T* data, const T* x, ccad_i64 nrows,     \
        ccad_i64 nnz, ccad_i64 nsrc, unsigned* bad, CCAD_CNT_PARAMS) {                          \
        ccad_spmv_impl<COUNT, T, I>(y, indptr, indices, data, x, nrows, nnz, nsrc, bad,          \
                                    CCAD_CNT_VALUE);                                             \
    }

#define CCAD_INDEXED_BOTH(SFX, T, ISFX, I)                  \
    CCAD_INDEXED_ENTRIES(SFX, T, ISFX, I, plain, false)     \
    CCAD_INDEXED_ENTRIES(SFX, T, ISFX, I, counted, true)
#define CCAD_SPMV_BOTH(SFX, T, ISFX, I)                     \
    CCAD_SPMV_ENTRIES(SFX, T, ISFX, I, plain, false)        \
    CCAD_SPMV_ENTRIES(SFX, T, ISFX, I, counted, true)

CCAD_INDEXED_BOTH(f64, double, i64, long long)
CCAD_INDEXED_BOTH(f64, double, i32, int)
CCAD_INDEXED_BOTH(f32, float, i64, long long)
CCAD_INDEXED_BOTH(f32, float, i32, int)
CCAD_INDEXED_BOTH(i64, long long, i64, long long)
CCAD_INDEXED_BOTH(i64, long long, i32, int)
CCAD_INDEXED_BOTH(i32, int, i64, long long)
CCAD_INDEXED_BOTH(i32, int, i32, int)

CCAD_SPMV_BOTH(f64, double, i64, long long)
CCAD_SPMV_BOTH(f64, double, i32, int)
CCAD_SPMV_BOTH(f32, float, i64, long long)
CCAD_SPMV_BOTH(f32, float, i32, int)
