// Persistent thread pool behind parallel_for. Per-token inference issues a few hundred small
// parallel loops per token, so threads are started once and woken per loop: a worker spins briefly
// after each loop (the next one usually follows within microseconds), then sleeps on a condition
// variable; likewise the caller spins briefly for the workers to finish before it sleeps. Both
// spins are bounded (kSpin), so an idle pool does not keep cores busy. Nested parallel_for calls
// from inside a body run serially on the calling worker.
#include "core/parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace qforge {
namespace {

using Body = std::function<void(std::size_t, std::size_t)>;

int default_threads() {
  if (const char* env = std::getenv("QFORGE_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

thread_local bool t_inside_pool = false;

// How long a thread polls before it sleeps on a condition variable: long enough to bridge the gap
// between the loops of a forward pass and the tail of a loop (a futex wake costs several
// microseconds), short enough not to burn a core when the pool goes idle.
constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Polls done() for up to kSpin; true when it became true. Between short pause loops it yields,
// so that on an oversubscribed machine the thread it waits for can get the core.
template <class Done>
bool spin_until(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return done();
    std::this_thread::yield();
  }
}

class ThreadPool {
 public:
  // n_threads counts the calling thread: n_threads - 1 workers are started.
  explicit ThreadPool(int n_threads) {
    workers_.reserve(static_cast<std::size_t>(std::max(0, n_threads - 1)));
    for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    workers_.clear();  // joins
  }

  std::size_t size() const { return workers_.size() + 1; }

  void run(std::size_t n, std::size_t chunk, const Body& body) {
    {
      std::lock_guard lock(mutex_);
      body_ = &body;
      n_ = n;
      chunk_ = chunk;
      next_.store(0);
      error_ = nullptr;
      busy_.store(static_cast<int>(workers_.size()));
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    t_inside_pool = true;
    work();
    t_inside_pool = false;
    const auto all_done = [this] { return busy_.load(std::memory_order_acquire) == 0; };
    std::unique_lock lock(mutex_);
    if (!all_done()) {
      lock.unlock();
      if (!spin_until(all_done)) {
        lock.lock();
        done_.wait(lock, all_done);
      } else {
        lock.lock();
      }
    }
    body_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work() {
    for (;;) {
      const std::size_t begin = next_.fetch_add(chunk_);
      if (begin >= n_) return;
      try {
        (*body_)(begin, std::min(n_, begin + chunk_));
      } catch (...) {
        std::lock_guard lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_);
      }
    }
  }

  void worker_loop() {
    t_inside_pool = true;
    // Generation 0 is "no job yet": a worker that starts late must still take the first job.
    std::uint64_t seen = 0;
    for (;;) {
      // Spin for a short while: the next loop of a forward pass typically starts right away.
      spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
        seen = generation_.load();
        if (stop_) return;
      }
      work();
      // The last worker wakes the caller in case it sleeps. Taking the mutex orders the notify
      // after the caller's predicate check, so the wake-up cannot be lost.
      if (busy_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard lock(mutex_);
        done_.notify_one();
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::atomic<std::uint64_t> generation_{0};
  bool stop_ = false;
  std::atomic<int> busy_{0};
  const Body* body_ = nullptr;
  std::size_t n_ = 0;
  std::size_t chunk_ = 1;
  std::atomic<std::size_t> next_{0};
  std::mutex error_mutex_;
  std::exception_ptr error_;
  std::vector<std::jthread> workers_;
};

std::atomic<int> g_threads{0};
std::mutex g_pool_mutex;  // one parallel_for at a time from outside the pool; guards g_pool
std::unique_ptr<ThreadPool> g_pool;

}  // namespace

int thread_count() {
  int n = g_threads.load();
  if (n == 0) {
    n = default_threads();
    g_threads.store(n);
  }
  return n;
}

void set_thread_count(int n) {
  g_threads.store(n > 0 ? n : default_threads());
}

void parallel_for(std::size_t n, const std::function<void(std::size_t, std::size_t)>& body,
                  std::size_t min_chunk) {
  if (n == 0) return;
  min_chunk = std::max<std::size_t>(min_chunk, 1);
  const int threads = thread_count();
  const std::size_t workers =
      std::min<std::size_t>(static_cast<std::size_t>(threads), (n + min_chunk - 1) / min_chunk);
  if (workers <= 1 || t_inside_pool) {
    body(0, n);
    return;
  }
  // Chunks are handed out dynamically so uneven work (e.g. rows of different cost) balances.
  // Several chunks per worker: a thread that is descheduled for a while (shared machines) leaves
  // less work behind.
  const std::size_t chunks = std::min(n, workers * 8);
  const std::size_t chunk = std::max(min_chunk, (n + chunks - 1) / chunks);
  std::lock_guard lock(g_pool_mutex);
  if (!g_pool || g_pool->size() != static_cast<std::size_t>(threads)) {
    g_pool.reset();
    g_pool = std::make_unique<ThreadPool>(threads);
  }
  g_pool->run(n, chunk, body);
}

}  // namespace qforge
