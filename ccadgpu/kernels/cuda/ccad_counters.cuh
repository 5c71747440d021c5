// ccadgpu: per-page access counting for instrumented CUDA kernels.
//
// What is counted (the same model as the CPU stand-in, ccadgpu/counters.py)
// ---------------------------------------------------------------------------
// Memory traffic per page, in bytes read (``rd``) and written (``wr``):
// * a dense operand (an array the kernel sweeps: copy's source, a stencil's input, SpMV's
//   indptr/indices/data, ...) counts each of its bytes once per launch, as perfect reuse in a
//   cache would give (a 5-point stencil counts its input once, not five times);
// * an indexed operand (gather's source, scatter's destination, SpMV's x) counts
//   ``sizeof(element)`` bytes per access, whatever the reuse.
// A page is ``(address - base) >> shift``: one counter array of ``npages`` entries per
// direction covers one contiguous managed range (the emulated space); addresses outside
// ``[base, base + (npages << shift))`` are not counted and never written.  ``flags`` selects
// what is counted: CCAD_COUNT_DENSE, CCAD_COUNT_INDEXED or both (the host may price dense
// operands arithmetically itself and want only the in-kernel histograms).  The scalar result
// of a reduction (``sum``/``dot``) is scratch and is not counted.  Elements are naturally
// aligned, so no element straddles two pages.
//
// How (as few global atomics as possible)
// ---------------------------------------
// * Dense operands are counted arithmetically: work is split into contiguous tiles, and the
//   block splits each tile's byte range at page boundaries and issues one global atomicAdd per
//   page it touched; nothing per element.
// * Indexed operands are aggregated per warp with __match_any_sync on the page index (one
//   leader per distinct page adds ``popc(peers)`` accesses), then per block in a shared-memory
//   table of access counts that is flushed with one global atomicAdd (bytes) per distinct page
//   per block.  When the counted range has at most CCAD_HIST_SLOTS pages the table is indexed
//   by page directly (one 32-bit shared atomic per leader, no keys, no probing: the common
//   case, counters over one operand's pages); otherwise it is a hash table (page -> count),
//   and an update whose CCAD_HIST_PROBES probes find no slot goes straight to the global
//   counter, so counts stay exact.  A block counts at most 2^32 - 1 accesses to one page per
//   launch.
//
// Constraints: warp-level helpers must be called by all 32 lanes of a warp (kernels keep their
// loop trip counts warp-uniform and pass ``valid=false`` for idle lanes); blocks are a
// multiple of 32 threads.  __match_any_sync needs sm_70 or newer.
//
// Only this header and the .cu files that include it are needed: no standard headers, so the
// same text compiles with nvcc and with NVRTC (CuPy RawModule); the Python loader inlines this
// header into each source so that CuPy's compile cache is keyed on the full text.
#pragma once

typedef unsigned long long ccad_u64;
typedef long long ccad_i64;

#define CCAD_NO_PAGE (~0ull)
#define CCAD_NO_KEY 0xffffffffu
// One table is 16 KiB of shared memory: 4096 page-indexed 32-bit counts, or a 2048-slot hash
// table (32-bit key + count).  Small enough that 8 blocks of 256 threads stay resident per SM
// (occupancy is what hides a gather's memory latency).
#ifndef CCAD_HIST_SLOTS
#define CCAD_HIST_SLOTS 4096  // page-indexed mode: ranges of at most this many pages
#endif
#define CCAD_HASH_SLOTS (CCAD_HIST_SLOTS / 2)
#ifndef CCAD_HIST_PROBES
#define CCAD_HIST_PROBES 4
#endif
#define CCAD_COUNT_DENSE 1u    // count dense operands (arithmetically, per tile)
#define CCAD_COUNT_INDEXED 2u  // count indexed operands (in-kernel histograms)

#ifndef CCAD_ITEMS
#define CCAD_ITEMS 8  // elements per thread per tile in the dense kernels
#endif

// The counter arrays and the page geometry, as passed to every kernel.
struct CcadCounters {
    ccad_u64* rd;     // bytes read, per page
    ccad_u64* wr;     // bytes written, per page
    ccad_u64 base;    // address of page 0
    ccad_u64 npages;  // entries in rd and wr
    unsigned shift;   // log2(page size)
    unsigned flags;   // CCAD_COUNT_DENSE | CCAD_COUNT_INDEXED
};

__device__ __forceinline__ bool ccad_dense(const CcadCounters& c) {
    return (c.flags & CCAD_COUNT_DENSE) != 0u;
}
__device__ __forceinline__ bool ccad_indexed(const CcadCounters& c) {
    return (c.flags & CCAD_COUNT_INDEXED) != 0u;
}

// Block-level page histogram in shared memory: access counts, indexed by page when the range
// fits, else open addressing with keys never removed.
struct CcadHist {
    union {
        unsigned direct[CCAD_HIST_SLOTS];
        struct {
            unsigned key[CCAD_HASH_SLOTS];
            unsigned cnt[CCAD_HASH_SLOTS];
        } hash;
    } u;
};

__device__ __forceinline__ unsigned ccad_tid() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

__device__ __forceinline__ unsigned ccad_nthreads() {
    return blockDim.x * blockDim.y * blockDim.z;
}

__device__ __forceinline__ ccad_i64 ccad_min(ccad_i64 a, ccad_i64 b) { return a < b ? a : b; }
__device__ __forceinline__ ccad_i64 ccad_max(ccad_i64 a, ccad_i64 b) { return a > b ? a : b; }

template <typename P>
__device__ __forceinline__ ccad_u64 ccad_addr(const P* p) {
    return (ccad_u64)(const void*)p;
}

// Page index of an address, or CCAD_NO_PAGE if it is outside the counted range.
__device__ __forceinline__ ccad_u64 ccad_page_of(const CcadCounters& c, ccad_u64 addr) {
    if (addr < c.base) return CCAD_NO_PAGE;
    ccad_u64 p = (addr - c.base) >> c.shift;
    return p < c.npages ? p : CCAD_NO_PAGE;
}

__device__ __forceinline__ bool ccad_hist_direct(const CcadCounters& c) {
    return c.npages <= CCAD_HIST_SLOTS;
}

// All threads of the block call this, then __syncthreads() before the first add.
__device__ __forceinline__ void ccad_hist_init(const CcadCounters& c, CcadHist* h) {
    if (ccad_hist_direct(c)) {
        for (unsigned i = ccad_tid(); i < CCAD_HIST_SLOTS; i += ccad_nthreads())
            h->u.direct[i] = 0;
    } else {
        for (unsigned i = ccad_tid(); i < CCAD_HASH_SLOTS; i += ccad_nthreads()) {
            h->u.hash.key[i] = CCAD_NO_KEY;
            h->u.hash.cnt[i] = 0;
        }
    }
}

// Add ``n`` accesses of ``bytes`` each to ``page`` (a valid page index) in the block table; the
// global counter array ``g`` takes the update (in bytes) when the probes find no slot.
__device__ __forceinline__ void ccad_hist_add(const CcadCounters& c, CcadHist* h, ccad_u64* g,
                                              ccad_u64 page, unsigned n, unsigned bytes) {
    if (ccad_hist_direct(c)) {
        atomicAdd(&h->u.direct[page], n);
        return;
    }
    // Consecutive pages land in consecutive slots: dense runs never collide.
    const unsigned want = (unsigned)page;
    unsigned s = want & (CCAD_HASH_SLOTS - 1);
    for (int probe = 0; probe < CCAD_HIST_PROBES; ++probe) {
        // volatile: another thread may have claimed the slot since the last probe
        unsigned k = ((volatile unsigned*)h->u.hash.key)[s];
        if (k == CCAD_NO_KEY) {
            k = atomicCAS(&h->u.hash.key[s], CCAD_NO_KEY, want);
            if (k == CCAD_NO_KEY) k = want;  // we claimed it
        }
        if (k == want) {
            atomicAdd(&h->u.hash.cnt[s], n);
            return;
        }
        s = (s + 1) & (CCAD_HASH_SLOTS - 1);
    }
    atomicAdd(&g[page], (ccad_u64)n * bytes);
}

// All threads of the block call this after a __syncthreads(): one global atomic (bytes) per
// distinct page the block touched.
__device__ __forceinline__ void ccad_hist_flush(const CcadCounters& c, const CcadHist* h,
                                                ccad_u64* g, unsigned bytes) {
    if (ccad_hist_direct(c)) {
        for (unsigned i = ccad_tid(); i < (unsigned)c.npages; i += ccad_nthreads()) {
            const unsigned n = h->u.direct[i];
            if (n != 0) atomicAdd(&g[i], (ccad_u64)n * bytes);
        }
        return;
    }
    for (unsigned i = ccad_tid(); i < CCAD_HASH_SLOTS; i += ccad_nthreads()) {
        const unsigned n = h->u.hash.cnt[i];
        if (n != 0) atomicAdd(&g[h->u.hash.key[i]], (ccad_u64)n * bytes);
    }
}

// Clip the byte range [lo, hi) to the counted range; false if nothing is left.
__device__ __forceinline__ bool ccad_clip(const CcadCounters& c, ccad_u64& lo, ccad_u64& hi) {
    ccad_u64 end = c.base + (c.npages << c.shift);
    if (lo < c.base) lo = c.base;
    if (hi > end) hi = end;
    return lo < hi;
}

// The whole block counts the byte range [lo, hi) (a dense tile): thread t takes the t-th page
// of the range, so a tile costs one global atomic per page and no per-element work.
__device__ __forceinline__ void ccad_count_range_block(const CcadCounters& c, ccad_u64* g,
                                                       ccad_u64 lo, ccad_u64 hi) {
    if (!ccad_clip(c, lo, hi)) return;
    ccad_u64 first = (lo - c.base) >> c.shift;
    ccad_u64 last = (hi - 1 - c.base) >> c.shift;
    for (ccad_u64 p = first + ccad_tid(); p <= last; p += ccad_nthreads()) {
        ccad_u64 ps = c.base + (p << c.shift);
        ccad_u64 pe = ps + (1ull << c.shift);
        ccad_u64 a = lo > ps ? lo : ps;
        ccad_u64 b = hi < pe ? hi : pe;
        atomicAdd(&g[p], b - a);
    }
}

// The whole grid counts the byte range [lo, hi) of a dense operand swept once per launch:
// global thread t takes the t-th page, one atomic per page in all.  For kernels whose work
// items do not map to contiguous tiles (rows of a stencil, rows of a CSR matrix), counting per
// item would make every warp of a block hammer the same page's slot; counting the whole range
// up front gives the same totals (each byte once per launch) at no per-item cost.
// Not inlined: the hot loops that follow keep their register budget (occupancy).
__device__ __noinline__ void ccad_count_range_grid(const CcadCounters& c, ccad_u64* g,
                                                   ccad_u64 lo, ccad_u64 hi) {
    if (!ccad_clip(c, lo, hi)) return;
    const ccad_u64 nthreads = ccad_nthreads();
    const ccad_u64 block =
        blockIdx.x + (ccad_u64)gridDim.x * (blockIdx.y + (ccad_u64)gridDim.y * blockIdx.z);
    const ccad_u64 stride = nthreads * gridDim.x * gridDim.y * gridDim.z;
    const ccad_u64 first = (lo - c.base) >> c.shift;
    const ccad_u64 last = (hi - 1 - c.base) >> c.shift;
    for (ccad_u64 p = first + block * nthreads + ccad_tid(); p <= last; p += stride) {
        ccad_u64 ps = c.base + (p << c.shift);
        ccad_u64 pe = ps + (1ull << c.shift);
        atomicAdd(&g[p], (hi < pe ? hi : pe) - (lo > ps ? lo : ps));
    }
}

// Warp-aggregated count of one access of ``bytes`` at ``addr`` per lane (``valid`` false for
// idle lanes).  Must be reached by all 32 lanes of the warp together.
//
// With the page-indexed table a lane's update is one shared atomic, so full aggregation
// (__match_any_sync, slow on current GPUs) costs more than it saves on scattered accesses:
// only the cheap common case is aggregated there (the whole warp on one page: a shuffle and a
// vote, then one add); otherwise each lane adds its own access.  The hash table pays probes per
// update, so there every distinct page of the warp is aggregated to one leader.
__device__ __forceinline__ void ccad_warp_count(const CcadCounters& c, ccad_u64* g, CcadHist* h,
                                                ccad_u64 addr, bool valid, unsigned bytes) {
    ccad_u64 page = valid ? ccad_page_of(c, addr) : CCAD_NO_PAGE;
    const unsigned lane = ccad_tid() & 31u;
#ifndef CCAD_WARP_VOTE
#define CCAD_WARP_VOTE 1  // 0: every lane adds its own access (benchmarks/gpu_variants.py)
#endif
    if (ccad_hist_direct(c)) {
#if !CCAD_WARP_VOTE
        if (page != CCAD_NO_PAGE) atomicAdd(&h->u.direct[page], 1u);
        return;
#endif
        const ccad_u64 first = __shfl_sync(0xffffffffu, page, 0);
        const unsigned counted = __ballot_sync(0xffffffffu, page != CCAD_NO_PAGE);
        if (__all_sync(0xffffffffu, page == first || page == CCAD_NO_PAGE)) {
            if (lane == 0 && counted) atomicAdd(&h->u.direct[first], (unsigned)__popc(counted));
        } else if (page != CCAD_NO_PAGE) {
            atomicAdd(&h->u.direct[page], 1u);
        }
        return;
    }
    unsigned peers = __match_any_sync(0xffffffffu, page);
    if (page != CCAD_NO_PAGE && lane == (unsigned)(__ffs(peers) - 1))
        ccad_hist_add(c, h, g, page, (unsigned)__popc(peers), bytes);
}

// Sum of ``v`` over the block, valid in thread 0.  Blocks are whole warps; all threads call.
template <typename A>
__device__ __forceinline__ A ccad_block_sum(A v) {
    __shared__ A part[32];
    const unsigned tid = ccad_tid();
    const unsigned lane = tid & 31u, warp = tid >> 5;
    const unsigned nwarps = (ccad_nthreads() + 31u) >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nwarps ? part[lane] : (A)0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    }
    return v;
}

// Reductions accumulate floats in double and integers in 64 bits (wrapping, as NumPy's int64).
template <typename T> struct CcadAcc { typedef double type; };
template <> struct CcadAcc<int> { typedef long long type; };
template <> struct CcadAcc<long long> { typedef long long type; };

__device__ __forceinline__ void ccad_atomic_add_acc(double* p, double v) { atomicAdd(p, v); }
__device__ __forceinline__ void ccad_atomic_add_acc(long long* p, long long v) {
    atomicAdd((ccad_u64*)p, (ccad_u64)v);  // two's complement: signed add, wrapping
}

// Kernel parameters shared by every entry point (plain variants take and ignore them, so the
// two variants of an op are launched with the same argument tuple).
#define CCAD_CNT_PARAMS                                                                    \
    ccad_u64 *cnt_rd, ccad_u64 *cnt_wr, ccad_u64 cnt_base, ccad_u64 cnt_npages, unsigned cnt_shift, \
        unsigned cnt_flags
#define CCAD_CNT_VALUE CcadCounters{cnt_rd, cnt_wr, cnt_base, cnt_npages, cnt_shift, cnt_flags}
