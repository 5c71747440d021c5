// The ccadgpu CUDA sources, compiled for the CPU emulation in emu.h (test-only).
//
// Every entry point ``ccad_X(args...)`` gets a host wrapper ``emu_ccad_X(gx, gy, bx, by,
// args...)`` that runs it on a gx x gy grid of bx x by blocks and returns 0, or a negative
// code when the kernel deadlocked or used a partial warp mask (see emu::launch).
#include "emu.h"

#include "dense.cu"
#include "stencil.cu"
#include "sparse.cu"

#define EMU_UNPAREN(...) __VA_ARGS__
#define EMU_WRAP(NAME, PARAMS, ARGS)                                                        \
    extern "C" int emu_##NAME(unsigned gx, unsigned gy, unsigned bx, unsigned by,           \
                              EMU_UNPAREN PARAMS) {                                         \
        return emu::launch(dim3(gx, gy, 1), dim3(bx, by, 1), [=]() { NAME ARGS; });         \
    }

#define EMU_CNT_PARAMS \
    ccad_u64 *rd, ccad_u64 *wr, ccad_u64 base, ccad_u64 np, unsigned sh, unsigned fl
#define EMU_CNT_ARGS rd, wr, base, np, sh, fl

#define EMU_DENSE(SFX, T, V)                                                                  \
    EMU_WRAP(ccad_copy_##SFX##_##V, (T * y, const T* x, ccad_i64 n, EMU_CNT_PARAMS),         \
             (y, x, n, EMU_CNT_ARGS))                                                         \
    EMU_WRAP(ccad_scale_##SFX##_##V, (T * y, const T* x, T a, ccad_i64 n, EMU_CNT_PARAMS),   \
             (y, x, a, n, EMU_CNT_ARGS))                                                      \
    EMU_WRAP(ccad_axpy_##SFX##_##V, (T * y, const T* x, T a, ccad_i64 n, EMU_CNT_PARAMS),    \
             (y, x, a, n, EMU_CNT_ARGS))                                                      \
    EMU_WRAP(ccad_triad_##SFX##_##V,                                                          \
             (T * a, const T* b, const T* c, T s, ccad_i64 n, EMU_CNT_PARAMS),               \
             (a, b, c, s, n, EMU_CNT_ARGS))                                                   \
    EMU_WRAP(ccad_sum_##SFX##_##V,                                                            \
             (CcadAcc<T>::type * out, const T* x, ccad_i64 n, EMU_CNT_PARAMS),               \
             (out, x, n, EMU_CNT_ARGS))                                                       \
    EMU_WRAP(ccad_dot_##SFX##_##V,                                                            \
             (CcadAcc<T>::type * out, const T* x, const T* y, ccad_i64 n, EMU_CNT_PARAMS),   \
             (out, x, y, n, EMU_CNT_ARGS))

#define EMU_STENCIL(SFX, T, V)                                                                \
    EMU_WRAP(ccad_stencil5_##SFX##_##V,                                                       \
             (T * out, const T* in, ccad_i64 nx, ccad_i64 ny, T c0, T c1, EMU_CNT_PARAMS),   \
             (out, in, nx, ny, c0, c1, EMU_CNT_ARGS))

#define EMU_INDEXED(SFX, T, ISFX, I, V)                                                       \
    EMU_WRAP(ccad_gather_##SFX##_##ISFX##_##V,                                                \
             (T * y, const T* x, const I* idx, ccad_i64 n, ccad_i64 ns, unsigned* bad,        \
              EMU_CNT_PARAMS),                                                                \
             (y, x, idx, n, ns, bad, EMU_CNT_ARGS))                                           \
    EMU_WRAP(ccad_scatter_##SFX##_##ISFX##_##V,                                               \
             (T * y, const I* idx, const T* x, ccad_i64 n, ccad_i64 ns, unsigned* bad,        \
              EMU_CNT_PARAMS),                                                                \
             (y, idx, x, n, ns, bad, EMU_CNT_ARGS))

#define EMU_SPMV(SFX, T, ISFX, I, V)                                                          \
    EMU_WRAP(ccad_spmv_##SFX##_##ISFX##_##V,                                                  \
             (T * y, const I* indptr, const I* indices, const T* data, const T* x,           \
              ccad_i64 nrows, ccad_i64 nnz, ccad_i64 ns, unsigned* bad, EMU_CNT_PARAMS),     \
             (y, indptr, indices, data, x, nrows, nnz, ns, bad, EMU_CNT_ARGS))

#define EMU_ALL(V)                                   \
    EMU_DENSE(f64, double, V)                        \
    EMU_DENSE(f32, float, V)                         \
    EMU_DENSE(i64, long long, V)                     \
    EMU_DENSE(i32, int, V)                           \
    EMU_STENCIL(f64, double, V)                      \
    EMU_STENCIL(f32, float, V)                       \
    EMU_INDEXED(f64, double, i64, long long, V)      \
    EMU_INDEXED(f64, double, i32, int, V)            \
    EMU_INDEXED(f32, float, i64, long long, V)       \
    EMU_INDEXED(f32, float, i32, int, V)             \
    EMU_INDEXED(i64, long long, i64, long long, V)   \
    EMU_INDEXED(i64, long long, i32, int, V)         \
    EMU_INDEXED(i32, int, i64, long long, V)         \
    EMU_INDEXED(i32, int, i32, int, V)               \
    EMU_SPMV(f64, double, i64, long long, V)         \
    EMU_SPMV(f64, double, i32, int, V)               \
    EMU_SPMV(f32, float, i64, long long, V)          \
    EMU_SPMV(f32, float, i32, int, V)

EMU_ALL(plain)
EMU_ALL(counted)

// Self-tests of the emulation's deadlock detection (not ccadgpu kernels).
// kind 0: every thread reaches the barrier, but thread 0 only after ``ms`` milliseconds (a slow
//         block must not be mistaken for a deadlock);
// kind 1: thread 0 returns before __syncthreads (deadlock);
// kind 2: lane 0 of each warp skips a warp collective (deadlock).
__global__ void emu_selftest(int kind, int ms, int* out) {
    const unsigned t = threadIdx.x;
    if (kind == 0 && t == 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    if (kind == 1 && t == 0) return;
    if (kind == 2 && (t & 31u) == 0) return;
    if (kind == 2) {
        __ballot_sync(0xffffffffu, true);
    } else {
        __syncthreads();
    }
    atomicAdd((unsigned*)out, 1u);
}
EMU_WRAP(emu_selftest, (int kind, int ms, int* out), (kind, ms, out))
