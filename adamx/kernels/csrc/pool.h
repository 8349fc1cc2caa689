// What both adamx kernels share: ready and failed futures, and running a job's chunks on
// XLA's intra-op thread pool with the caller's thread helping.
#ifndef ADAMX_KERNELS_POOL_H_
#define ADAMX_KERNELS_POOL_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace adamx {

namespace ffi = xla::ffi;

// 64 Ki elements (256 KiB per float32 stream) per chunk: large enough that claiming a chunk
// costs nothing, small enough to balance two to a few dozen threads on ~1e6-element leaves.
constexpr int64_t kChunk = int64_t{1} << 16;
// Below this many elements in all, a call runs on the caller's thread alone.
constexpr int64_t kSerialBelow = int64_t{1} << 17;

inline ffi::Future Ready() {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetAvailable();
  return future;
}

inline ffi::Future Failed(ffi::Error error) {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetError(std::move(error));
  return future;
}

// Runs `job->Work()` (which claims chunks until none is left) on the caller's thread and on
// up to `pool.num_threads()` pool tasks, no more tasks than chunks beyond the caller's
// first; the future completes when the last of them finishes. Below `kSerialBelow`
// elements in all (`total`), on the caller's thread alone.
template <class Job>
ffi::Future RunChunks(ffi::ThreadPool pool, std::shared_ptr<Job> job, int64_t chunks,
                      int64_t total) {
  const int64_t tasks = std::min<int64_t>(pool.num_threads(), chunks - 1);
  if (total < kSerialBelow || tasks <= 0) {
    job->Work();
    return Ready();
  }
  ffi::CountDownPromise done(tasks + 1);
  ffi::Future future(done);
  for (int64_t t = 0; t < tasks; ++t) {
    pool.Schedule([job, done]() mutable {
      job->Work();
      done.CountDown();
    });
  }
  job->Work();
  done.CountDown();
  return future;
}

}  // namespace adamx

#endif  // ADAMX_KERNELS_POOL_H_
