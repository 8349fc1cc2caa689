// Adam's per-element arithmetic, shared by both adamx kernels: the scalars adamx/kernels/_fused.py
// passes and the float32 formula, operation by operation (built with -ffp-contract=off, so
// each operation is rounded as float32 and the result equals adamx._fused.formula in NumPy).
#ifndef ADAMX_KERNELS_ADAM_MATH_H_
#define ADAMX_KERNELS_ADAM_MATH_H_

#include <cmath>
#include <cstdint>

namespace adamx {

// Indices into the scalar operand; adamx/kernels/_fused.py writes them in this order.
enum Scalar : int {
  kNegLr = 0,   // -lr
  kW1 = 1,      // 1 - b1
  kB2 = 2,      // b2
  kW2 = 3,      // 1 - b2
  kBc1 = 4,     // 1 - b1**t
  kErBc2 = 5,   // eps_root * (1 - b2**t)
  kSqBc2 = 6,   // sqrt(1 - b2**t)
  kEps = 7,     // eps
  kWd = 8,      // weight decay
  kNumScalars = 9,
};

struct Scalars {
  float neg_lr, w1, b2, w2, bc1, er_bc2, sq_bc2, eps, wd;
};

inline Scalars ReadScalars(const float* sc) {
  return Scalars{sc[kNegLr], sc[kW1],   sc[kB2],  sc[kW2], sc[kBc1],
                 sc[kErBc2], sc[kSqBc2], sc[kEps], sc[kWd]};
}

// One element: updates m and v in place and returns the new parameter. kDecay: 0 none,
// 1 coupled (L2, into the gradient), 2 decoupled (AdamW).
template <int kDecay, bool kMaximize>
inline float AdamElement(float p, float g, float& m, float& v, const Scalars& s) {
  if (kMaximize) g = -g;
  if (kDecay == 1) g = g + s.wd * p;
  m = m + s.w1 * (g - m);
  v = s.b2 * v + (s.w2 * g) * g;
  float d = (m / s.bc1) / (std::sqrt(v + s.er_bc2) / s.sq_bc2 + s.eps);
  if (kDecay == 2) d = d + s.wd * p;
  const float u = s.neg_lr * d;
  return p + u;
}

}  // namespace adamx

#endif  // ADAMX_KERNELS_ADAM_MATH_H_
