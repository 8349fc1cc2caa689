// adamx: the Adam / AdamW step as one pass over memory, for XLA on CPU.
//
// An XLA FFI handler (called through jax.ffi.ffi_call, see adamx/kernels/_fused.py) that updates
// any number of float32 leaves in a single call. Per element it reads p, g, m, v once and
// writes p, m, v (in place: the outputs alias the donated inputs), 28 bytes per element,
// computing the operations of the XLA path in the same order, each rounded as float32:
//
//   g = -g                              (maximize)
//   g = g + wd * p                      (decay mode 1: coupled L2)
//   m = m + w1 * (g - m)                (w1 = 1 - b1)
//   v = b2 * v + (w2 * g) * g           (w2 = 1 - b2)
//   d = (m / bc1) / (sqrt(v + eps_root * bc2) / sqrt(bc2) + eps)
//   d = d + wd * p                      (decay mode 2: decoupled, AdamW)
//   u = -lr * d;  p = p + u
//
// The scalars (lr, bias corrections, ...) arrive as a float32 operand computed by the
// jitted program, so schedules and traced hyperparameters need no recompilation. Work is
// cut into chunks of whole cache lines and spread over XLA's intra-op thread pool; the
// handler returns a future that completes when the last chunk is done.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "adam_math.h"
#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using adamx::kNumScalars;
using adamx::Scalars;

struct Leaf {
  const float* p;
  const float* g;
  float* m;
  float* v;
  float* out;  // the new params; the same buffer as p when the params were donated
  int64_t size;
};

template <int kDecay, bool kMaximize>
void Step(const Leaf& leaf, int64_t lo, int64_t hi, const Scalars& s) {
  // out[i] may be p[i] (in place); every iteration reads its own elements
  // before writing them, so there is no dependence between iterations.
  const float* pp = leaf.p;
  const float* gp = leaf.g;
  float* mp = leaf.m;
  float* vp = leaf.v;
  float* out = leaf.out;
#pragma GCC ivdep
  for (int64_t i = lo; i < hi; ++i) {
    float m = mp[i];
    float v = vp[i];
    out[i] = adamx::AdamElement<kDecay, kMaximize>(pp[i], gp[i], m, v, s);
    mp[i] = m;
    vp[i] = v;
  }
}

using StepFn = void (*)(const Leaf&, int64_t, int64_t, const Scalars&);

template <bool kMaximize>
StepFn PickDecay(int decay) {
  switch (decay) {
    case 1:
      return &Step<1, kMaximize>;
    case 2:
      return &Step<2, kMaximize>;
    default:
      return &Step<0, kMaximize>;
  }
}

StepFn Pick(int decay, bool maximize) {
  return maximize ? PickDecay<true>(decay) : PickDecay<false>(decay);
}

struct Chunk {
  int32_t leaf;
  int64_t lo, hi;
};

// Everything a worker needs, shared by the caller and the pool tasks.
struct Job {
  std::vector<Leaf> leaves;
  std::vector<Chunk> chunks;
  std::vector<StepFn> fns;  // per leaf (decayed or not)
  Scalars s;
  std::atomic<size_t> next{0};

  void Work() {
    for (size_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks.size();
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      const Chunk& k = chunks[c];
      fns[k.leaf](leaves[k.leaf], k.lo, k.hi, s);
    }
  }
};

using adamx::Failed;
using adamx::kChunk;

ffi::Future AdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                     ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t decay,
                     bool maximize, ffi::Span<const int64_t> decay_mask) {
  if (scalars.element_count() != kNumScalars) {
    return Failed(ffi::Error::InvalidArgument("adamx adam kernel: wrong scalar count"));
  }
  const size_t n = args.size() / 4;
  if (args.size() != 4 * n || rets.size() != 3 * n || decay_mask.size() != n) {
    return Failed(ffi::Error::InvalidArgument("adamx adam kernel: wrong operand count"));
  }
  auto job = std::make_shared<Job>();
  const float* sc = scalars.typed_data();
  job->s = adamx::ReadScalars(sc);
  job->leaves.reserve(n);
  job->fns.reserve(n);
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    auto p = args.get<ffi::Buffer<ffi::F32>>(4 * i);
    auto g = args.get<ffi::Buffer<ffi::F32>>(4 * i + 1);
    auto m = args.get<ffi::Buffer<ffi::F32>>(4 * i + 2);
    auto v = args.get<ffi::Buffer<ffi::F32>>(4 * i + 3);
    auto out = rets.get<ffi::Buffer<ffi::F32>>(3 * i);
    auto mo = rets.get<ffi::Buffer<ffi::F32>>(3 * i + 1);
    auto vo = rets.get<ffi::Buffer<ffi::F32>>(3 * i + 2);
    if (!p.has_value()) return Failed(p.error());
    if (!g.has_value()) return Failed(g.error());
    if (!m.has_value()) return Failed(m.error());
    if (!v.has_value()) return Failed(v.error());
    if (!out.has_value()) return Failed(out.error());
    if (!mo.has_value()) return Failed(mo.error());
    if (!vo.has_value()) return Failed(vo.error());
    const int64_t size = g->element_count();
    // m and v are updated in place: copy them into their outputs first if XLA did not
    // alias the buffers (it aliases them whenever the state was donated).
    float* m_out = (*mo)->typed_data();
    float* v_out = (*vo)->typed_data();
    if (m_out != m->typed_data()) std::copy_n(m->typed_data(), size, m_out);
    if (v_out != v->typed_data()) std::copy_n(v->typed_data(), size, v_out);
    if (p->element_count() != size || m->element_count() != size ||
        v->element_count() != size || (*out)->element_count() != size) {
      return Failed(ffi::Error::InvalidArgument("adamx adam kernel: leaf sizes differ"));
    }
    job->leaves.push_back(
        Leaf{p->typed_data(), g->typed_data(), m_out, v_out, (*out)->typed_data(), size});
    job->fns.push_back(Pick(decay_mask[i] != 0 ? static_cast<int>(decay) : 0, maximize));
    total += size;
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

// The same step for leaves whose m and v lie in one flat buffer each (adamx.storage's "flat"
// policy, adamx/kernels/_fused_flat.py): the operands are the scalars, m, v and then p, g of
// each of the n leaves; the results m, v (in place) and the n new params. Leaf i's moments
// start at `offset` plus the sizes of the leaves before it. A flat buffer runs through
// all the calls of a step, each call updating its own stretch of it.
ffi::Future AdamFlatImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scalars,
                         ffi::Buffer<ffi::F32> m, ffi::Buffer<ffi::F32> v, ffi::RemainingArgs args,
                         ffi::ResultBuffer<ffi::F32> m_out, ffi::ResultBuffer<ffi::F32> v_out,
                         ffi::RemainingRets rets, int64_t decay, bool maximize,
                         ffi::Span<const int64_t> decay_mask, int64_t offset) {
  if (scalars.element_count() != kNumScalars) {
    return Failed(ffi::Error::InvalidArgument("adamx adam flat kernel: wrong scalar count"));
  }
  const size_t n = args.size() / 2;
  if (args.size() != 2 * n || rets.size() != n || decay_mask.size() != n) {
    return Failed(ffi::Error::InvalidArgument("adamx adam flat kernel: wrong operand count"));
  }
  const int64_t flat = m.element_count();
  if (v.element_count() != flat || m_out->element_count() != flat ||
      v_out->element_count() != flat || offset < 0) {
    return Failed(ffi::Error::InvalidArgument("adamx adam flat kernel: moment sizes differ"));
  }
  // m and v are updated in place: copy them into their outputs first if XLA did not alias
  // the buffers (it aliases them whenever the state was donated).
  float* mb = m_out->typed_data();
  float* vb = v_out->typed_data();
  if (mb != m.typed_data()) std::copy_n(m.typed_data(), flat, mb);
  if (vb != v.typed_data()) std::copy_n(v.typed_data(), flat, vb);
  auto job = std::make_shared<Job>();
  job->s = adamx::ReadScalars(scalars.typed_data());
  job->leaves.reserve(n);
  job->fns.reserve(n);
  int64_t at = offset;
  for (size_t i = 0; i < n; ++i) {
    auto p = args.get<ffi::Buffer<ffi::F32>>(2 * i);
    auto g = args.get<ffi::Buffer<ffi::F32>>(2 * i + 1);
    auto out = rets.get<ffi::Buffer<ffi::F32>>(i);
    if (!p.has_value()) return Failed(p.error());
    if (!g.has_value()) return Failed(g.error());
    if (!out.has_value()) return Failed(out.error());
    const int64_t size = g->element_count();
    if (p->element_count() != size || (*out)->element_count() != size || at + size > flat) {
      return Failed(ffi::Error::InvalidArgument("adamx adam flat kernel: leaf sizes differ"));
    }
    job->leaves.push_back(
        Leaf{p->typed_data(), g->typed_data(), mb + at, vb + at, (*out)->typed_data(), size});
    job->fns.push_back(Pick(decay_mask[i] != 0 ? static_cast<int>(decay) : 0, maximize));
    at += size;
  }
  for (size_t i = 0; i < n; ++i) {
    const int64_t size = job->leaves[i].size;
    for (int64_t lo = 0; lo < size; lo += kChunk) {
      job->chunks.push_back(Chunk{static_cast<int32_t>(i), lo, std::min(size, lo + kChunk)});
    }
  }
  const auto chunks = static_cast<int64_t>(job->chunks.size());
  return adamx::RunChunks(pool, std::move(job), chunks, at - offset);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxAdamFlatStep, AdamFlatImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .RemainingRets()
                                  .Attr<int64_t>("decay")
                                  .Attr<bool>("maximize")
                                  .Attr<ffi::Span<const int64_t>>("decay_mask")
                                  .Attr<int64_t>("offset"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxAdamStep, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("decay")
                                  .Attr<bool>("maximize")
                                  .Attr<ffi::Span<const int64_t>>("decay_mask"));
