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
// the cache's), so each warp counts its own row segment of ``in`` and of ``out``: lanes 0 and 1
// split one contiguous range each, through the block's shared tables, which merge the
// segments of a block's warps before one global atomic per distinct page per block.
#include "ccad_counters.cuh"

template <bool COUNT, typename T>
__device__ void ccad_stencil5_impl(T* out, const T* in, ccad_i64 nx, ccad_i64 ny, T center,
                                   T neighbor, CcadCounters c) {
    __shared__ CcadHist hr, hw;
    if (COUNT) {
        ccad_hist_init(&hr);
        ccad_hist_init(&hw);
        __syncthreads();
    }
    const unsigned lane = ccad_tid() & 31u;
    const ccad_i64 warp_x0 = (ccad_i64)(threadIdx.x & ~31u);  // first column of this warp
    for (ccad_i64 row = (ccad_i64)blockIdx.y * blockDim.y + threadIdx.y; row < ny;
         row += (ccad_i64)gridDim.y * blockDim.y) {
        const ccad_i64 up = row > 0 ? row - 1 : 0;
        const ccad_i64 down = row < ny - 1 ? row + 1 : ny - 1;
        const T* r = in + row * nx;
        for (ccad_i64 col0 = (ccad_i64)blockIdx.x * blockDim.x; col0 < nx;
             col0 += (ccad_i64)gridDim.x * blockDim.x) {
            const ccad_i64 col = col0 + threadIdx.x;
            if (col < nx) {
                const ccad_i64 left = col > 0 ? col - 1 : 0;
                const ccad_i64 right = col < nx - 1 ? col + 1 : nx - 1;
                out[row * nx + col] =
                    center * r[col] +
                    neighbor * (in[up * nx + col] + in[down * nx + col] + r[left] + r[right]);
            }
            if (COUNT && ccad_dense(c)) {
                const ccad_i64 s0 = col0 + warp_x0;  // the warp's segment [s0, s1) of this row
                const ccad_i64 s1 = ccad_min(s0 + 32, nx);
                if (s0 < s1) {
                    if (lane == 0)
                        ccad_count_range(c, c.rd, &hr, ccad_addr(r + s0), ccad_addr(r + s1));
                    else if (lane == 1)
                        ccad_count_range(c, c.wr, &hw, ccad_addr(out + row * nx + s0),
                                         ccad_addr(out + row * nx + s1));
                }
            }
        }
    }
    if (COUNT) {
        __syncthreads();
        ccad_hist_flush(&hr, c.rd);
        ccad_hist_flush(&hw, c.wr);
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
