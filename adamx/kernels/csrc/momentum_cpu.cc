// adamx: the Lion step and the SGD-with-momentum step as one pass over memory, for XLA on CPU.
//
// Two XLA FFI handlers (called through jax.ffi.ffi_call, see adamx/kernels/_fused_momentum.py),
// each updating any number of float32 leaves in a single call. Per element they read p, g
// and the one state tensor (Lion's m, SGD's buffer b) once and write p and the state (in
// place: the outputs alias the donated inputs), 20 bytes per element, computing the
// operations of the XLA path in the same order, each rounded as float32:
//
//   Lion (AdamxLionStep; scalars -lr, w1 = 1 - b1, w2 = 1 - b2, wd):
//     c = m + w1 * (g - m)
//     s = sign(c)                       (+1, -1, or c itself: +-0 and NaN as jnp.sign)
//     d = s + wd * p                    (decayed leaves: decoupled decay)
//     p = p + (-lr) * d
//     m = m + w2 * (g - m)
//
//   SGD (AdamxSgdStep; scalars -lr, mu, w = 1 - dampening, wd, first = (count == 0)):
//     g = -g                            (maximize)
//     g = g + wd * p                    (coupled L2)
//     b = first ? g : b * mu + w * g
//     d = g + mu * b  (nesterov),  b  (heavy ball);   d = g where mu == 0
//     p = p + (-lr) * d
//
// The scalars arrive as a float32 operand computed by the jitted program (schedules and
// traced hyperparameters need no recompilation); `first` and `mu == 0` are read from it
// when the call runs and pick the loop. Work is cut into chunks and spread over XLA's
// intra-op thread pool (pool.h), as in adam_cpu.cc.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using adamx::Failed;
using adamx::kChunk;

struct Leaf {
  const float* p;
  const float* g;
  float* m;    // the state (Lion's m, SGD's buffer), updated in place
  float* out;  // the new params; the same buffer as p when the params were donated
  int64_t size;
};

// --------------------------------------------------------------------------------- Lion
struct LionScalars {
  float neg_lr, w1, w2, wd;
};
constexpr int64_t kLionScalars = 4;

inline float Sign(float c) { return c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : c); }

template <bool kDecay>
void LionLoop(const Leaf& leaf, int64_t lo, int64_t hi, const LionScalars& s) {
  const float* pp = leaf.p;
  const float* gp = leaf.g;
  float* mp = leaf.m;
  float* out = leaf.out;
#pragma GCC ivdep
  for (int64_t i = lo; i < hi; ++i) {
    const float p = pp[i];
    const float g = gp[i];
    const float m = mp[i];
    const float c = m + s.w1 * (g - m);
    float d = Sign(c);
    if (kDecay) d = d + s.wd * p;
    const float u = s.neg_lr * d;
    out[i] = p + u;
    mp[i] = m + s.w2 * (g - m);
  }
}

// ---------------------------------------------------------------------------------- SGD
struct SgdScalars {
  float neg_lr, mu, w, wd, first;
};
constexpr int64_t kSgdScalars = 5;

// How the direction is read from the new buffer.
enum Direction : int { kHeavyBall = 0, kNesterov = 1, kGradient = 2 };

template <bool kMaximize, bool kDecay, bool kFirst, int kDirection>
void SgdLoop(const Leaf& leaf, int64_t lo, int64_t hi, const SgdScalars& s) {
  const float* pp = leaf.p;
  const float* gp = leaf.g;
  float* bp = leaf.m;
  float* out = leaf.out;
#pragma GCC ivdep
  for (int64_t i = lo; i < hi; ++i) {
    const float p = pp[i];
    float g = gp[i];
    if (kMaximize) g = -g;
    if (kDecay) g = g + s.wd * p;
    const float b = kFirst ? g : bp[i] * s.mu + s.w * g;
    float d = b;
    if (kDirection == kNesterov) d = g + s.mu * b;
    if (kDirection == kGradient) d = g;
    const float u = s.neg_lr * d;
    out[i] = p + u;
    bp[i] = b;
  }
}

// ------------------------------------------------------------------------ the common part
struct Chunk {
  int32_t leaf;
  int64_t lo, hi;
};

// Everything a worker needs, shared by the caller and the pool tasks.
template <class S>
struct Job {
  using Fn = void (*)(const Leaf&, int64_t, int64_t, const S&);
  std::vector<Leaf> leaves;
  std::vector<Chunk> chunks;
  std::vector<Fn> fns;  // per leaf (decayed or not)
  S s;
  std::atomic<size_t> next{0};

  void Work() {
    for (size_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks.size();
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      const Chunk& k = chunks[c];
      fns[k.leaf](leaves[k.leaf], k.lo, k.hi, s);
    }
  }
};

// Reads the leaves (p, g, state in; p, state out, per leaf), checks their sizes, copies the
// state into its output where XLA did not alias the two, and runs the job: `pick(i)` is
// leaf i's loop.
template <class S, class Pick>
ffi::Future Run(ffi::ThreadPool pool, std::shared_ptr<Job<S>> job, ffi::RemainingArgs args,
                ffi::RemainingRets rets, ffi::Span<const int64_t> decay_mask, Pick pick,
                const char* who) {
  const size_t n = args.size() / 3;
  if (args.size() != 3 * n || rets.size() != 2 * n || decay_mask.size() != n) {
    return Failed(ffi::Error::InvalidArgument(std::string(who) + ": wrong operand count"));
  }
  job->leaves.reserve(n);
  job->fns.reserve(n);
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    auto p = args.get<ffi::Buffer<ffi::F32>>(3 * i);
    auto g = args.get<ffi::Buffer<ffi::F32>>(3 * i + 1);
    auto m = args.get<ffi::Buffer<ffi::F32>>(3 * i + 2);
    auto out = rets.get<ffi::Buffer<ffi::F32>>(2 * i);
    auto mo = rets.get<ffi::Buffer<ffi::F32>>(2 * i + 1);
    if (!p.has_value()) return Failed(p.error());
    if (!g.has_value()) return Failed(g.error());
    if (!m.has_value()) return Failed(m.error());
    if (!out.has_value()) return Failed(out.error());
    if (!mo.has_value()) return Failed(mo.error());
    const size_t size = g->element_count();
    if (p->element_count() != size || m->element_count() != size ||
        (*out)->element_count() != size || (*mo)->element_count() != size) {
      return Failed(ffi::Error::InvalidArgument(std::string(who) + ": leaf sizes differ"));
    }
    // The state is updated in place: copy it into its output first if XLA did not alias
    // the buffers (it aliases them whenever the state was donated).
    float* m_out = (*mo)->typed_data();
    if (m_out != m->typed_data()) std::copy_n(m->typed_data(), size, m_out);
    const auto n_i = static_cast<int64_t>(size);
    job->leaves.push_back(Leaf{p->typed_data(), g->typed_data(), m_out, (*out)->typed_data(), n_i});
    job->fns.push_back(pick(decay_mask[i] != 0));
    total += n_i;
  }
  for (size_t i = 0; i < n; ++i) {
    const int64_t size = job->leaves[i].size;
    for (int64_t lo = 0; lo < size; lo += kChunk) {
      job->chunks.push_back(Chunk{static_cast<int32_t>(i), lo, std::min(size, lo + kChunk)});
    }
  }
  const auto chunks = static_cast<int64_t>(job->chunks.size());
  return adamx::RunChunks(pool, std::move(job), chunks, total);
}

ffi::Future LionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                     ffi::RemainingArgs args, ffi::RemainingRets rets,
                     ffi::Span<const int64_t> decay_mask) {
  if (scalars.element_count() != kLionScalars) {
    return Failed(ffi::Error::InvalidArgument("adamx lion kernel: wrong scalar count"));
  }
  const float* sc = scalars.typed_data();
  auto job = std::make_shared<Job<LionScalars>>();
  job->s = LionScalars{sc[0], sc[1], sc[2], sc[3]};
  auto pick = [](bool decayed) { return decayed ? &LionLoop<true> : &LionLoop<false>; };
  return Run(pool, std::move(job), args, rets, decay_mask, pick, "adamx lion kernel");
}

using SgdFn = Job<SgdScalars>::Fn;

template <bool kMaximize, bool kDecay, bool kFirst>
SgdFn PickDirection(int direction) {
  switch (direction) {
    case kNesterov:
      return &SgdLoop<kMaximize, kDecay, kFirst, kNesterov>;
    case kGradient:
      return &SgdLoop<kMaximize, kDecay, kFirst, kGradient>;
    default:
      return &SgdLoop<kMaximize, kDecay, kFirst, kHeavyBall>;
  }
}

template <bool kMaximize, bool kDecay>
SgdFn PickFirst(bool first, int direction) {
  return first ? PickDirection<kMaximize, kDecay, true>(direction)
               : PickDirection<kMaximize, kDecay, false>(direction);
}

template <bool kMaximize>
SgdFn PickDecay(bool decay, bool first, int direction) {
  return decay ? PickFirst<kMaximize, true>(first, direction)
               : PickFirst<kMaximize, false>(first, direction);
}

ffi::Future SgdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars, ffi::RemainingArgs args,
                    ffi::RemainingRets rets, bool maximize, bool nesterov,
                    ffi::Span<const int64_t> decay_mask) {
  if (scalars.element_count() != kSgdScalars) {
    return Failed(ffi::Error::InvalidArgument("adamx sgd kernel: wrong scalar count"));
  }
  const float* sc = scalars.typed_data();
  auto job = std::make_shared<Job<SgdScalars>>();
  job->s = SgdScalars{sc[0], sc[1], sc[2], sc[3], sc[4]};
  const bool first = job->s.first != 0.0f;
  const int direction = job->s.mu == 0.0f ? kGradient : (nesterov ? kNesterov : kHeavyBall);
  auto pick = [=](bool decayed) {
    return maximize ? PickDecay<true>(decayed, first, direction)
                    : PickDecay<false>(decayed, first, direction);
  };
  return Run(pool, std::move(job), args, rets, decay_mask, pick, "adamx sgd kernel");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxLionStep, LionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("decay_mask"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxSgdStep, SgdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<bool>("maximize")
                                  .Attr<bool>("nesterov")
                                  .Attr<ffi::Span<const int64_t>>("decay_mask"));
