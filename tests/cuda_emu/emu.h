// A CPU emulation of the small subset of CUDA that ccadgpu's kernels use, so that their
// logic (results, per-page counts, warp aggregation, the shared-memory page table) can be
// tested on machines without a GPU.  Test-only: not shipped, not fast.
//
// Model: blocks run one after another; the threads of a block are real std::threads, so
// __syncthreads() and the warp collectives (__match_any_sync, __shfl_down_sync) are real
// rendezvous.  A collective that not all 32 lanes reach (a divergence bug in a kernel) or a
// barrier that not all threads reach is found as soon as every thread of the block is waiting
// or has returned (however slow the machine, a block that still moves is never cut short); it
// marks the launch broken, and the launch returns -1 instead of hanging.  A thread spinning in
// kernel code (waiting on a flag) counts as running, so that kind of deadlock would hang; none
// of ccadgpu's kernels spin (the hash table's probe loop is bounded).  __shared__ becomes a
// function-local static, which is block shared because blocks do not overlap.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

namespace emu {

inline std::atomic<bool> broken{false};
inline std::atomic<bool> bad_mask{false};

// Who in a block can still make progress.  ``blocked`` counts threads waiting at a barrier or
// collective that has not been released yet, ``finished`` threads that returned; ``progress``
// ticks on every release and every return.  The block is deadlocked exactly when every thread
// is blocked or finished: then nobody is left to release anything.
struct Stall {
    std::atomic<int> blocked{0};
    std::atomic<int> finished{0};
    std::atomic<unsigned long> progress{0};
    int nthreads = 0;

    bool deadlocked() const {
        // The two reads of ``progress`` make the counts one consistent snapshot: a release or
        // a return between them ticks it.  (A releaser is never counted as blocked, so a
        // release after the snapshot cannot make it read "all stuck".)
        const unsigned long p = progress.load();
        const int b = blocked.load(), f = finished.load();
        return p == progress.load() && b > 0 && b + f == nthreads;
    }
};

class Barrier {
  public:
    explicit Barrier(int n = 32) : n_(n) {}
    Stall* stall = nullptr;

    void wait() {
        std::unique_lock<std::mutex> lock(m_);
        const unsigned long gen = gen_;
        if (++count_ == n_) {
            stall->blocked -= n_ - 1;       // the waiters are released, before they wake
            count_ = 0;
            ++gen_;
            ++stall->progress;
            cv_.notify_all();
            return;
        }
        ++stall->blocked;
        // Poll: a slow block (two cores, hundreds of threads) keeps waiting for as long as
        // it takes; only a block in which nobody can move any more is declared deadlocked.
        while (!cv_.wait_for(lock, std::chrono::milliseconds(50),
                             [&] { return gen_ != gen || broken.load(); })) {
            if (stall->deadlocked()) {
                broken = true;
                cv_.notify_all();
                break;
            }
        }
        if (gen_ == gen) --stall->blocked;  // left without a release (the launch is broken)
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    int n_;
    int count_ = 0;
    unsigned long gen_ = 0;
};

struct Warp {
    Barrier bar{32};
    unsigned long long slot[32];
};

struct Block {
    explicit Block(int nthreads) : bar(nthreads), warps((nthreads + 31) / 32) {
        stall.nthreads = nthreads;
        bar.stall = &stall;
        for (Warp& w : warps) w.bar.stall = &stall;
    }
    Stall stall;
    Barrier bar;
    std::vector<Warp> warps;
};

inline thread_local uint3 tl_thread{0, 0, 0};
inline thread_local Block* tl_block = nullptr;
inline thread_local unsigned tl_lane = 0, tl_warp = 0;
inline uint3 g_block{0, 0, 0};
inline uint3 g_bdim{1, 1, 1};
inline uint3 g_gdim{1, 1, 1};

// Run fn on a grid of blocks; 0 on success, -1 if a barrier or collective deadlocked (some
// lanes or threads never reached it), -2 for a partial warp mask.
inline int launch(dim3 grid, dim3 block, const std::function<void()>& fn) {
    broken = false;
    bad_mask = false;
    const int nthreads = (int)(block.x * block.y * block.z);
    if (nthreads % 32 != 0) return -3;  // our kernels require whole warps
    g_bdim = {block.x, block.y, block.z};
    g_gdim = {grid.x, grid.y, grid.z};
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                g_block = {bx, by, bz};
                Block blk(nthreads);
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (int t = 0; t < nthreads; ++t) {
                    threads.emplace_back([&, t] {
                        tl_thread = {t % block.x, (t / block.x) % block.y,
                                     t / (block.x * block.y)};
                        tl_block = &blk;
                        tl_lane = (unsigned)t & 31u;
                        tl_warp = (unsigned)t >> 5;
                        fn();
                        ++blk.stall.finished;
                        ++blk.stall.progress;
                    });
                }
                for (auto& th : threads) th.join();
                if (broken) return -1;
            }
    return bad_mask ? -2 : 0;
}

}  // namespace emu

#define threadIdx (emu::tl_thread)
#define blockIdx (emu::g_block)
#define blockDim (emu::g_bdim)
#define gridDim (emu::g_gdim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __shared__ static

inline void __syncthreads() { emu::tl_block->bar.wait(); }

namespace emu {
// A warp collective: every lane publishes ``bits``, then ``read(slots)`` sees all 32; nobody
// overwrites a slot before every lane has read.
template <typename F>
inline auto warp_exchange(unsigned mask, unsigned long long bits, F&& read) {
    if (mask != 0xffffffffu) bad_mask = true;
    Warp& w = tl_block->warps[tl_warp];
    w.slot[tl_lane] = bits;
    w.bar.wait();
    auto out = read(w.slot);
    w.bar.wait();
    return out;
}

template <typename T>
inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}
}  // namespace emu

inline unsigned __match_any_sync(unsigned mask, unsigned long long value) {
    return emu::warp_exchange(mask, value, [&](const unsigned long long* slot) {
        unsigned m = 0;
        for (int i = 0; i < 32; ++i)
            if (slot[i] == value) m |= 1u << i;
        return m;
    });
}

inline unsigned __ballot_sync(unsigned mask, bool pred) {
    return emu::warp_exchange(mask, pred ? 1u : 0u, [](const unsigned long long* slot) {
        unsigned m = 0;
        for (int i = 0; i < 32; ++i)
            if (slot[i]) m |= 1u << i;
        return m;
    });
}

// Lane ``src`` of the warp's values, or the caller's own when ``src`` is outside the warp.
template <typename T>
inline T emu_shuffle(unsigned mask, T var, unsigned src) {
    return emu::warp_exchange(mask, emu::to_bits(var), [&](const unsigned long long* slot) {
        T out = var;
        if (src < 32) std::memcpy(&out, &slot[src], sizeof(T));
        return out;
    });
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, int delta) {
    return emu_shuffle(mask, var, emu::tl_lane + (unsigned)delta);
}

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane) {
    return emu_shuffle(mask, var, (unsigned)src_lane & 31u);
}

inline bool __all_sync(unsigned mask, bool pred) { return __ballot_sync(mask, pred) == ~0u; }

inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }

inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

inline unsigned atomicAdd(unsigned* p, unsigned v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

inline unsigned atomicOr(unsigned* p, unsigned v) {
    return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}

inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned val) {
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}

inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp,
                                    unsigned long long val) {
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;  // the old value either way
}

inline double atomicAdd(double* p, double v) {
    unsigned long long* q = reinterpret_cast<unsigned long long*>(p);
    unsigned long long old = __atomic_load_n(q, __ATOMIC_SEQ_CST), want;
    do {
        double d;
        std::memcpy(&d, &old, 8);
        d += v;
        std::memcpy(&want, &d, 8);
    } while (!__atomic_compare_exchange_n(q, &old, want, false, __ATOMIC_SEQ_CST,
                                          __ATOMIC_SEQ_CST));
    double prev;
    std::memcpy(&prev, &old, 8);
    return prev;
}
