// ccadgpu 5-point 2-D stencil with clamped edges (hotspot-like diffusion), on a row-major
// ny x nx grid, as the CPU stand-in computes it (ccadgpu/kernels/cpu.py):
//
//   out[i][j] = center * in[i][j]
//             + neighbor * (in[i-1][j] + in[i+1][j] + in[i][j-1] + in[i][j+1])
//
// where an index past an edge reads the edge element.  Entry points
// ``ccad_stencil5_<f32|f64>_<plain|counted>``.  Launch with blockDim.x a multiple of 32 (a warp
// is then a segment of one row) and a 2-D grid; both loops are grid-stride.
//
// Counting: both operands are dense (each byte once per launch; the neighbours' re-reads are
// the cache's), so the grid counts the two ranges up front (ccad_count_range_grid): one
// atomic per page per launch, nothing per element or per row.
#include "ccad_counters.cuh"

template <bool COUNT, typename T>
__device__ void ccad_stencil5_impl(T* out, const T* in, ccad_i64 nx, ccad_i64 ny, T center,
                                   T neighbor, CcadCounters c) {
    if (COUNT && ccad_dense(c)) {
        ccad_count_range_grid(c, c.rd, ccad_addr(in), ccad_addr(in + nx * ny));
        ccad_count_range_grid(c, c.wr, ccad_addr(out), ccad_addr(out + nx * ny));
    }
    for (ccad_i64 row = (ccad_i64)blockIdx.y * blockDim.y + threadIdx.y; row < ny;
         row += (ccad_i64)gridDim.y * blockDim.y) {
        const ccad_i64 up = row > 0 ? row - 1 : 0;
        const ccad_i64 down = row < ny - 1 ? row + 1 : ny - 1;
        const T* r = in + row * nx;
        for (ccad_i64 col = (ccad_i64)blockIdx.x * blockDim.x + threadIdx.x; col < nx;
             col += (ccad_i64)gridDim.x * blockDim.x) {
            const ccad_i64 left = col > 0 ? col - 1 : 0;
            const ccad_i64 right = col < nx - 1 ? col + 1 : nx - 1;
            out[row * nx + col] =
                center * r[col] +
                neighbor * (in[up * nx + col] + in[down * nx + col] + r[left] + r[right]);
        }
    }
}

#define CCAD_STENCIL_ENTRIES(SFX, T, VARIANT, COUNT)                                            \
    extern "C" __global__ void ccad_stencil5_##SFX##_##VARIANT(                                 \
        T* out, const T* in, ccad_i64 nx, ccad_i64 ny, T center, T neighbor, CCAD_CNT_PARAMS) { \
        ccad_stencil5_impl<COUNT, T>(out, in, nx, ny, center, neighbor, CCAD_CNT_VALUE);         \
    }

CCAD_STENCIL_ENTRIES(f64, double, plain, false)
CCAD_STENCIL_ENTRIES(f64, double, counted, true)
CCAD_STENCIL_ENTRIES(f32, float, plain, false)
CCAD_STENCIL_ENTRIES(f32, float, counted, true)
