// A small persistent thread pool. parallel_for splits [0, n) into contiguous chunks, one or more
// per worker, and blocks until all are done. Exceptions thrown by the body are re-thrown in the
// caller (the first one wins).
#pragma once

#include <cstddef>
#include <functional>

namespace qforge {

// Number of worker threads (defaults to the hardware concurrency; QFORGE_THREADS overrides).
int thread_count();
void set_thread_count(int n);

// body(begin, end) is called on disjoint ranges covering [0, n). min_chunk bounds the split.
void parallel_for(std::size_t n, const std::function<void(std::size_t, std::size_t)>& body,
                  std::size_t min_chunk = 1);

}  // namespace qforge
