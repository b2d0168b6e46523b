// splatfacto's training loss in four kernels: L1 + SSIM forward, then the gradient with respect to the render.
//
// Images are [H, W, 3] float32, contiguous (HWC: what the rasterizer returns, no layout conversion). With
// X = ground truth, Y = render, w the 11-tap Gaussian window (sigma 1.5, normalised), G the separable valid
// filter (output [Hv, Wv] = [H - 10, W - 10] per channel), exactly pytorch_msssim's SSIM (K1 0.01, K2 0.03,
// data range 1):
//
//   mu_x = G X, mu_y = G Y, s_xx = G X^2 - mu_x^2, s_yy = G Y^2 - mu_y^2, s_xy = G XY - mu_x mu_y
//   A = 2 mu_x mu_y + C1, B = mu_x^2 + mu_y^2 + C1, C = 2 s_xy + C2, D = s_xx + s_yy + C2
//   S = (A / B)(C / D),   ssim = mean over channels and valid positions of S,   C1 = 0.01^2, C2 = 0.03^2
//   l1 = mean |Y - X|,   mse = mean (Y - X)^2   (over all H W 3 values)
//
// Backward (only Y needs a gradient), with the partials of S at each valid position
//
//   dS/dmu_y  = (C / D)(2 mu_x - 2 mu_y A / B) / B + (A / B)(2 mu_y C / D - 2 mu_x) / D
//   dS/dG(YY) = -(A / B) C / D^2,    dS/dG(XY) = 2 (A / B) / D
//
// and G^T the transposed (full) filter:
//   dssim/dY = [G^T(dS/dmu_y) + 2 Y G^T(dS/dG(YY)) + X G^T(dS/dG(XY))] / (3 Hv Wv),   dl1/dY = sign(Y - X) / (3 H W)
//
// Kernels: (1) per pixel, |d| and d^2 sums and, for x < Wv, the horizontal window sums of X, Y, X^2, Y^2, XY;
// (2) per valid position, the vertical sums, S (summed) and the three partials; (3) the vertical transposed
// filter of the partials; (4) the horizontal one, giving the gradient. Sums are reduced per block and added
// in double precision.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace argp_ns {
namespace {

constexpr int kWin = 11;
constexpr int kHalo = kWin - 1;
constexpr int kThreads = 256;
constexpr float kC1 = 0.01f * 0.01f;
constexpr float kC2 = 0.03f * 0.03f;

struct Window {
  float w[kWin];
};

__device__ __forceinline__ float block_sum(float v, float* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? shared[threadIdx.x] : 0.0f;
  if (warp == 0)
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;  // valid in thread 0
}

// (1) One thread per pixel (y, x): L1 and squared-error sums; horizontal window sums into rows[5][H][Wv][3].
__global__ void rows_kernel(const float* __restrict__ X, const float* __restrict__ Y, float* __restrict__ rows,
                            double* __restrict__ acc, int H, int W, int Wv, Window win) {
  __shared__ float shared[32];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  float l1 = 0.0f, se = 0.0f;
  if (i < H * W) {
    const int y = i / W, x = i % W;
    const float* xp = X + static_cast<int64_t>(i) * 3;
    const float* yp = Y + static_cast<int64_t>(i) * 3;
    for (int c = 0; c < 3; ++c) {
      const float d = yp[c] - xp[c];
      l1 += fabsf(d);
      se += d * d;
    }
    if (x < Wv) {
      const int64_t plane = static_cast<int64_t>(H) * Wv * 3;
      const int64_t o = (static_cast<int64_t>(y) * Wv + x) * 3;
      for (int c = 0; c < 3; ++c) {
        float mx = 0.f, my = 0.f, xx = 0.f, yy = 0.f, xy = 0.f;
        for (int t = 0; t < kWin; ++t) {
          const float a = xp[t * 3 + c], b = yp[t * 3 + c], g = win.w[t];
          mx += g * a;
          my += g * b;
          xx += g * (a * a);
          yy += g * (b * b);
          xy += g * (a * b);
        }
        rows[o + c] = mx;
        rows[plane + o + c] = my;
        rows[2 * plane + o + c] = xx;
        rows[3 * plane + o + c] = yy;
        rows[4 * plane + o + c] = xy;
      }
    }
  }
  l1 = block_sum(l1, shared);
  __syncthreads();
  se = block_sum(se, shared);
  if (threadIdx.x == 0) {
    atomicAdd(acc, static_cast<double>(l1));
    atomicAdd(acc + 1, static_cast<double>(se));
  }
}

// (2) One thread per valid position (yv, xv): vertical sums, S summed into acc[2], partials into parts[3][Hv][Wv][3].
__global__ void ssim_kernel(const float* __restrict__ rows, float* __restrict__ parts, double* __restrict__ acc,
                            int H, int Hv, int Wv, Window win, bool grad) {
  __shared__ float shared[32];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  float s_sum = 0.0f;
  if (i < Hv * Wv) {
    const int yv = i / Wv, xv = i % Wv;
    const int64_t plane = static_cast<int64_t>(H) * Wv * 3;
    const int64_t vplane = static_cast<int64_t>(Hv) * Wv * 3;
    for (int c = 0; c < 3; ++c) {
      float m[5] = {0.f, 0.f, 0.f, 0.f, 0.f};
      for (int t = 0; t < kWin; ++t) {
        const int64_t o = (static_cast<int64_t>(yv + t) * Wv + xv) * 3 + c;
        const float g = win.w[t];
        for (int q = 0; q < 5; ++q) m[q] += g * rows[q * plane + o];
      }
      const float mx = m[0], my = m[1];
      const float sxx = m[2] - mx * mx, syy = m[3] - my * my, sxy = m[4] - mx * my;
      const float A = 2.f * mx * my + kC1, B = mx * mx + my * my + kC1;
      const float C = 2.f * sxy + kC2, D = sxx + syy + kC2;
      const float l = A / B, cs = C / D;
      s_sum += l * cs;
      if (grad) {
        const int64_t o = (static_cast<int64_t>(yv) * Wv + xv) * 3 + c;
        parts[o] = cs * (2.f * mx - 2.f * my * l) / B + l * (2.f * my * cs - 2.f * mx) / D;
        parts[vplane + o] = -l * cs / D;
        parts[2 * vplane + o] = 2.f * l / D;
      }
    }
  }
  s_sum = block_sum(s_sum, shared);
  if (threadIdx.x == 0) atomicAdd(acc + 2, static_cast<double>(s_sum));
}

// Loss = (1 - lambda) l1 + lambda (1 - ssim); out = [loss, l1, ssim, mse].
__global__ void finish_kernel(const double* __restrict__ acc, float* __restrict__ out, double n_all, double n_valid,
                              float lambda) {
  const float l1 = static_cast<float>(acc[0] / n_all);
  const float ssim = static_cast<float>(acc[2] / n_valid);
  out[0] = (1.f - lambda) * l1 + lambda * (1.f - ssim);
  out[1] = l1;
  out[2] = ssim;
  out[3] = static_cast<float>(acc[1] / n_all);
}

// (3) One thread per (y, xv): vertical transposed filter of the three partials into cols[3][H][Wv][3].
__global__ void cols_bwd_kernel(const float* __restrict__ parts, float* __restrict__ cols, int H, int Hv, int Wv,
                                Window win) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= H * Wv) return;
  const int y = i / Wv, xv = i % Wv;
  const int64_t vplane = static_cast<int64_t>(Hv) * Wv * 3;
  const int64_t plane = static_cast<int64_t>(H) * Wv * 3;
  float s[9] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int t = 0; t < kWin; ++t) {
    const int yv = y - t;
    if (yv < 0 || yv >= Hv) continue;
    const int64_t o = (static_cast<int64_t>(yv) * Wv + xv) * 3;
    const float g = win.w[t];
    for (int q = 0; q < 3; ++q)
      for (int c = 0; c < 3; ++c) s[q * 3 + c] += g * parts[q * vplane + o + c];
  }
  const int64_t o = (static_cast<int64_t>(y) * Wv + xv) * 3;
  for (int q = 0; q < 3; ++q)
    for (int c = 0; c < 3; ++c) cols[q * plane + o + c] = s[q * 3 + c];
}

// (4) One thread per pixel: horizontal transposed filter, then dLoss/dY.
__global__ void rows_bwd_kernel(const float* __restrict__ X, const float* __restrict__ Y,
                                const float* __restrict__ cols, const float* __restrict__ grad_out,
                                float* __restrict__ dY, int H, int W, int Wv, Window win, float w_l1, float w_ssim) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= H * W) return;
  const int y = i / W, x = i % W;
  const int64_t plane = static_cast<int64_t>(H) * Wv * 3;
  float s[9] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int t = 0; t < kWin; ++t) {
    const int xv = x - t;
    if (xv < 0 || xv >= Wv) continue;
    const int64_t o = (static_cast<int64_t>(y) * Wv + xv) * 3;
    const float g = win.w[t];
    for (int q = 0; q < 3; ++q)
      for (int c = 0; c < 3; ++c) s[q * 3 + c] += g * cols[q * plane + o + c];
  }
  const float go = grad_out[0];
  for (int c = 0; c < 3; ++c) {
    const int64_t o = static_cast<int64_t>(i) * 3 + c;
    const float a = X[o], b = Y[o], d = b - a;
    const float sign = d > 0.f ? 1.f : (d < 0.f ? -1.f : 0.f);
    const float dssim = s[c] + 2.f * b * s[3 + c] + a * s[6 + c];
    dY[o] = go * (w_l1 * sign - w_ssim * dssim);
  }
}

inline int blocks(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

Window make_window(const at::Tensor& window) {
  Window win;
  TORCH_CHECK(!window.is_cuda() && window.scalar_type() == at::kFloat && window.numel() == kWin && window.is_contiguous(),
              "window must be a contiguous float32 CPU tensor of ", kWin, " taps");
  const at::Tensor& w = window;
  for (int t = 0; t < kWin; ++t) win.w[t] = w.data_ptr<float>()[t];
  return win;
}

}  // namespace

std::vector<at::Tensor> fused_loss_forward(const at::Tensor& gt, const at::Tensor& render, const at::Tensor& window,
                                           double lambda, bool grad) {
  const at::cuda::CUDAGuard guard(render.device());
  const int H = static_cast<int>(render.size(0)), W = static_cast<int>(render.size(1));
  const int Hv = H - kHalo, Wv = W - kHalo;
  const Window win = make_window(window);
  auto stream = at::cuda::getCurrentCUDAStream();
  auto f = render.options();
  at::Tensor acc = at::zeros({3}, f.dtype(at::kDouble));
  at::Tensor rows = at::empty({5, H, Wv, 3}, f);
  at::Tensor parts = at::empty({grad ? 3 : 0, Hv, Wv, 3}, f);
  at::Tensor out = at::empty({4}, f);
  rows_kernel<<<blocks(static_cast<int64_t>(H) * W), kThreads, 0, stream>>>(
      gt.data_ptr<float>(), render.data_ptr<float>(), rows.data_ptr<float>(), acc.data_ptr<double>(), H, W, Wv, win);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  ssim_kernel<<<blocks(static_cast<int64_t>(Hv) * Wv), kThreads, 0, stream>>>(
      rows.data_ptr<float>(), parts.data_ptr<float>(), acc.data_ptr<double>(), H, Hv, Wv, win, grad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finish_kernel<<<1, 1, 0, stream>>>(acc.data_ptr<double>(), out.data_ptr<float>(), 3.0 * H * W, 3.0 * Hv * Wv,
                                     static_cast<float>(lambda));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, parts};
}

at::Tensor fused_loss_backward(const at::Tensor& gt, const at::Tensor& render, const at::Tensor& parts,
                               const at::Tensor& window, const at::Tensor& grad_out, double lambda) {
  const at::cuda::CUDAGuard guard(render.device());
  const int H = static_cast<int>(render.size(0)), W = static_cast<int>(render.size(1));
  const int Hv = H - kHalo, Wv = W - kHalo;
  const Window win = make_window(window);
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor cols = at::empty({3, H, Wv, 3}, render.options());
  at::Tensor dY = at::empty_like(render);
  cols_bwd_kernel<<<blocks(static_cast<int64_t>(H) * Wv), kThreads, 0, stream>>>(
      parts.data_ptr<float>(), cols.data_ptr<float>(), H, Hv, Wv, win);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const float w_l1 = static_cast<float>((1.0 - lambda) / (3.0 * H * W));
  const float w_ssim = static_cast<float>(lambda / (3.0 * Hv * Wv));
  rows_bwd_kernel<<<blocks(static_cast<int64_t>(H) * W), kThreads, 0, stream>>>(
      gt.data_ptr<float>(), render.data_ptr<float>(), cols.data_ptr<float>(), grad_out.data_ptr<float>(),
      dY.data_ptr<float>(), H, W, Wv, win, w_l1, w_ssim);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dY;
}

}  // namespace argp_ns
