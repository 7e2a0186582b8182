// parallel_for for gaussian-flametalk's compiled CPU kernels: std::thread with dynamic scheduling (an atomic work
// counter), not OpenMP, so the kernels build with compilers that lack OpenMP and never meet a second OpenMP runtime
// beside torch's.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace gft {

// Run fn(begin, end) over [0, n) in chunks of `grain`, on up to `threads` threads (the caller's included).
template <class F>
void parallel_for(int64_t n, int64_t grain, int threads, F fn) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    const int64_t n_chunks = (n + grain - 1) / grain;
    int workers = static_cast<int>(std::min<int64_t>(std::max(threads, 1), n_chunks));
    if (workers <= 1) {
        fn(int64_t(0), n);
        return;
    }
    std::atomic<int64_t> next(0);
    auto work = [&]() {
        for (;;) {
            const int64_t chunk = next.fetch_add(1, std::memory_order_relaxed);
            if (chunk >= n_chunks) break;
            const int64_t b = chunk * grain;
            fn(b, std::min(n, b + grain));
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(workers - 1);
    for (int i = 0; i < workers - 1; ++i) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
}

}  // namespace gft
