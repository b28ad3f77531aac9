// What the host emulations of CUDA thread blocks share (tests/host/*.cpp): a barrier for a
// block's threads run as std::threads, and deterministic test values.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace host {

// __syncthreads() for `count` std::threads: each wait() returns once all have called it.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const long generation = generation_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      ++generation_;
      released_.notify_all();
    } else {
      released_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable released_;
  int count_, waiting_ = 0;
  long generation_ = 0;
};

// A block of N threads as the shared headers' Block: thread `index`, the block's barrier.
template <int N>
struct Block {
  int index;
  Barrier* barrier;
  int thread() const { return index; }
  static constexpr int threads() { return N; }
  void sync() const { barrier->wait(); }
};

// Deterministic values in [0, 1) from a linear congruential state.
inline double uniform01(std::uint64_t& state) {
  state = state * 6364136223846793005ULL + 1442695040888963407ULL;
  return static_cast<double>(state >> 11) / 9007199254740992.0;
}

// Deterministic values in [-1, 1).
inline double uniform_pm1(std::uint64_t& state) { return 2.0 * uniform01(state) - 1.0; }

}  // namespace host
