// The score pass of one camera: per-pixel walks of gsplat's 16x16 tile lists, scoring every contributor.
//
// One block per tile, one thread per pixel; the tile's list is staged in shared memory 256 entries
// at a time. Per pixel p (centre p + 0.5), front to back over the tile list (see argp_ns/scores.py):
//
//   sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,  (dx, dy) = mu - (p + 0.5)
//   vis   = opacity exp(-sigma),  alpha = min(0.999, vis);  skipped when sigma < 0 or alpha < 1/255
//   stop before the first Gaussian with T (1 - alpha) <= 1e-4;  T <- T (1 - alpha) after each contributor
//   w     = alpha T;  score = base * distance * colour  (ScoreSpec; code = 16 colour + 5 distance + base)
//
// Contributors add w, max w, 1, their opacity and their score to the per-Gaussian totals (summed over the
// warp's lanes by shuffles first, one atomic per warp and Gaussian: a tile's pixels mostly share their
// Gaussians, and per-pixel atomics on one address serialise); after its walk each pixel marks its top-k
// scores (ties to the front-most) in keep and adds 1 to their wins (at most k atomics per pixel), in either
// scope; with tile scope each pixel writes, per 256-long batch of the list, the batch's last contributor as a
// record (slot rec_start[tile] + 256 batch + pixel-in-tile), which the Python side ranks per tile; with
// recovery a back-to-front walk adds the ARGP score vis_i (dL/dalpha_i)^2 to recovery, recovering
// T_i = T_{i+1} / (1 - alpha_i) and summing w c behind i.
//
// Every float multiply, add and divide is an explicitly rounded intrinsic (__fmul_rn, __fadd_rn, ...) in
// the order of the PyTorch reference, so that nothing is contracted into an FMA, and expf is the accurate
// one (no fast math): alpha, T and the skip / stop decisions are then bit-identical to the reference on
// the GPU, and so are the hit sets.

#include "score_pass.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace argp_ns {
namespace {

constexpr int kTile = 16;
constexpr int kBlock = kTile * kTile;  // threads per block = pixels per tile = list entries per batch
constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kAlphaMax = 0.999f;
constexpr float kTMin = 1e-4f;
// PyTorch's CUDA kernels divide by a Python scalar as a multiplication by its float reciprocal
constexpr float kThird = static_cast<float>(1.0 / 3.0);

static_assert(sizeof(int64_t) == sizeof(unsigned long long), "hits, wins: atomically added as unsigned long long");

struct ScoreParams {
  const float* means2d;     // [N, 2]
  const float* conics;      // [N, 3]
  const float* opacities;   // [N]
  const float* colors;      // [N, 3]
  const float* gt;          // [H, W, 3]
  const float* background;  // [3]
  const int* tile_start;    // [tile_h * tile_w]
  const int* tile_end;      // [tile_h * tile_w]
  const int* flatten_ids;   // [M], entries cam * N + gaussian
  int cam_offset;
  int width, height, tile_w;
  int base, distance, colour;  // ScoreSpec factor indices
  float k_p, k_c;
  int k;
  bool recovery;
  bool* keep;
  double* sum_w;  // float64 sums: hundreds of thousands of float32 terms per Gaussian over a view set
  float* max_w;
  int64_t* hits;
  double* sum_opacity;
  double* recovery_score;
  int64_t* wins;      // pixels whose top-k holds the Gaussian
  double* sum_score;  // its score summed over the pixels it contributes to
  bool* covered;              // [H, W]
  const int64_t* rec_start;   // [tile_h * tile_w], null without tile scope
  float* rec_score;
  int* rec_id;
};

// One entry of the tile list, staged in shared memory.
struct Splat {
  float mx, my;      // means2d
  float ca, cb, cc;  // conic (a, b, c)
  float opacity;
  float r, g, b;     // colour
  int id;            // local Gaussian id
};

__device__ __forceinline__ void load_splat(const ScoreParams& p, int list_pos, Splat& s) {
  const int id = p.flatten_ids[list_pos] - p.cam_offset;
  s.id = id;
  s.mx = p.means2d[2 * id];
  s.my = p.means2d[2 * id + 1];
  s.ca = p.conics[3 * id];
  s.cb = p.conics[3 * id + 1];
  s.cc = p.conics[3 * id + 2];
  s.opacity = p.opacities[id];
  s.r = p.colors[3 * id];
  s.g = p.colors[3 * id + 1];
  s.b = p.colors[3 * id + 2];
}

// alpha = min(0.999, vis), vis = opacity exp(-sigma) at pixel centre (px, py); false when skipped
// (sigma < 0, alpha < 1/255, or NaN, as the reference's comparisons treat it).
__device__ __forceinline__ bool splat_alpha(const Splat& s, float px, float py, float& dx, float& dy,
                                            float& vis, float& alpha) {
  dx = __fsub_rn(s.mx, px);
  dy = __fsub_rn(s.my, py);
  const float quad = __fadd_rn(__fmul_rn(__fmul_rn(s.ca, dx), dx), __fmul_rn(__fmul_rn(s.cc, dy), dy));
  const float sigma = __fadd_rn(__fmul_rn(0.5f, quad), __fmul_rn(__fmul_rn(s.cb, dx), dy));
  if (!(sigma >= 0.0f)) return false;
  vis = __fmul_rn(s.opacity, expf(-sigma));
  alpha = vis > kAlphaMax ? kAlphaMax : vis;
  return alpha >= kAlphaMin;
}

__device__ __forceinline__ float sum3(float x, float y, float z) { return __fadd_rn(__fadd_rn(x, y), z); }

__device__ __forceinline__ float norm3(float x, float y, float z) {
  return sqrtf(sum3(__fmul_rn(x, x), __fmul_rn(y, y), __fmul_rn(z, z)));
}

// score = base * distance * colour, multiplied in the reference's order (scores.family_score):
// base in {1, opacity, alpha, opacity T, alpha T}; distance exp(-k_p |p + 0.5 - mu|);
// colour cos(c, g) (as (base dot) / max(|c||g|, 1e-8)), 1 - |c - g|_1 / 3 or exp(-k_c |c - g|_1 / 3)
// (the division by 3 as a multiplication by (float)(1/3), as the reference computes it on the GPU).
__device__ float family_score(const ScoreParams& p, const Splat& s, float alpha, float T, float dx, float dy,
                              float gr, float gg, float gb) {
  float score;
  switch (p.base) {
    case 0: score = 1.0f; break;
    case 1: score = s.opacity; break;
    case 2: score = alpha; break;
    case 3: score = __fmul_rn(s.opacity, T); break;
    default: score = __fmul_rn(alpha, T); break;
  }
  if (p.distance == 1) {
    const float dist = sqrtf(__fadd_rn(__fmul_rn(dx, dx), __fmul_rn(dy, dy)));
    score = __fmul_rn(score, expf(__fmul_rn(-p.k_p, dist)));
  }
  if (p.colour == 1) {
    const float dot = sum3(__fmul_rn(s.r, gr), __fmul_rn(s.g, gg), __fmul_rn(s.b, gb));
    const float denom = fmaxf(__fmul_rn(norm3(s.r, s.g, s.b), norm3(gr, gg, gb)), 1e-8f);
    score = __fdiv_rn(__fmul_rn(score, dot), denom);
  } else if (p.colour >= 2) {
    const float l1 = sum3(fabsf(__fsub_rn(s.r, gr)), fabsf(__fsub_rn(s.g, gg)), fabsf(__fsub_rn(s.b, gb)));
    const float factor = p.colour == 2 ? __fsub_rn(1.0f, __fmul_rn(l1, kThird))
                                       : expf(__fmul_rn(__fmul_rn(-p.k_c, l1), kThird));
    score = __fmul_rn(score, factor);
  }
  return score;
}

// Insert (score, id) into a top-k list sorted by score descending; equal scores keep arrival order, so
// a later entry displaces one only with a strictly greater score (a stable descending sort's first k).
__device__ __forceinline__ void topk_insert(float* scores, int* ids, int& n, int k, float score, int id) {
  if (n == k && !(score > scores[k - 1])) return;
  int i = n < k ? n++ : k - 1;
  for (; i > 0 && scores[i - 1] < score; --i) {
    scores[i] = scores[i - 1];
    ids[i] = ids[i - 1];
  }
  scores[i] = score;
  ids[i] = id;
}

constexpr unsigned kFullMask = 0xffffffffu;

// Sum and max over the 32 lanes of a warp (every lane gets the result).
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// The scores are summed in double: unlike the weights they may have both signs (l1 colour of colours > 1).
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v = __dadd_rn(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

__global__ void __launch_bounds__(kBlock) score_pass_kernel(const ScoreParams p) {
  __shared__ Splat batch[kBlock];
  __shared__ int block_last;

  const int tile = blockIdx.y * p.tile_w + blockIdx.x;
  const int tid = threadIdx.y * kTile + threadIdx.x;  // pixel index in the tile, (y % 16) * 16 + x % 16
  const int lane = tid & 31;
  const int x = blockIdx.x * kTile + threadIdx.x;
  const int y = blockIdx.y * kTile + threadIdx.y;
  const bool inside = x < p.width && y < p.height;
  const float px = static_cast<float>(x) + 0.5f;
  const float py = static_cast<float>(y) + 0.5f;
  const int start = p.tile_start[tile];
  const int len = p.tile_end[tile] - start;
  const int n_batches = (len + kBlock - 1) / kBlock;

  float gr = 0.0f, gg = 0.0f, gb = 0.0f;
  if (inside) {
    const float* g = p.gt + 3 * (static_cast<int64_t>(y) * p.width + x);
    gr = g[0];
    gg = g[1];
    gb = g[2];
  }

  float top_score[kMaxK];
  int top_id[kMaxK];
  int n_top = 0;
  float T = 1.0f;
  float cr = 0.0f, cg = 0.0f, cb = 0.0f;  // sum of w c over contributors
  int last = -1;                          // list position of the last contributor
  bool done = !inside;

  // front to back
  for (int b = 0; b < n_batches; ++b) {
    if (__syncthreads_count(done) == kBlock) break;
    const int pos = b * kBlock + tid;
    if (pos < len) load_splat(p, start + pos, batch[tid]);
    __syncthreads();
    int rec_id = -1;
    float rec_score = 0.0f;
    const int n_here = min(kBlock, len - b * kBlock);
    // the lanes of a warp step through the batch together (the loop ends when all of them are done), so
    // that each Gaussian's per-warp contributions are summed by shuffles and added with one atomic each
    for (int j = 0; j < n_here && !__all_sync(kFullMask, done); ++j) {
      const Splat& s = batch[j];
      float w = 0.0f;
      float score = 0.0f;
      bool hit = false;
      float dx, dy, vis, alpha;
      if (!done && splat_alpha(s, px, py, dx, dy, vis, alpha)) {
        const float next_T = __fmul_rn(T, __fsub_rn(1.0f, alpha));
        if (next_T <= kTMin) {
          done = true;
        } else {
          hit = true;
          w = __fmul_rn(alpha, T);
          score = family_score(p, s, alpha, T, dx, dy, gr, gg, gb);
          topk_insert(top_score, top_id, n_top, p.k, score, s.id);
          rec_id = s.id;
          rec_score = score;
          cr = __fadd_rn(cr, __fmul_rn(w, s.r));
          cg = __fadd_rn(cg, __fmul_rn(w, s.g));
          cb = __fadd_rn(cb, __fmul_rn(w, s.b));
          last = b * kBlock + j;
          T = next_T;
        }
      }
      const unsigned hits = __ballot_sync(kFullMask, hit);
      if (hits == 0u) continue;  // uniform over the warp
      const float w_sum = warp_sum(w);
      const float w_max = warp_max(w);
      const double score_sum = warp_sum(static_cast<double>(score));
      if (lane == __ffs(hits) - 1) {
        const int n_hits = __popc(hits);
        atomicAdd(p.sum_w + s.id, static_cast<double>(w_sum));
        atomicMax(reinterpret_cast<int*>(p.max_w + s.id), __float_as_int(w_max));  // w >= 0: int order = float order
        atomicAdd(reinterpret_cast<unsigned long long*>(p.hits + s.id), static_cast<unsigned long long>(n_hits));
        atomicAdd(p.sum_opacity + s.id, static_cast<double>(n_hits) * static_cast<double>(s.opacity));
        atomicAdd(p.sum_score + s.id, score_sum);
      }
    }
    if (p.rec_start != nullptr && rec_id >= 0) {
      const int64_t slot = p.rec_start[tile] + static_cast<int64_t>(b) * kBlock + tid;
      p.rec_id[slot] = rec_id;
      p.rec_score[slot] = rec_score;
    }
  }
  for (int i = 0; i < n_top; ++i) {
    p.keep[top_id[i]] = true;
    atomicAdd(reinterpret_cast<unsigned long long*>(p.wins + top_id[i]), 1ull);
  }
  if (inside) p.covered[static_cast<int64_t>(y) * p.width + x] = last >= 0;
  if (!p.recovery) return;  // uniform over the block

  // back to front: dL/dalpha_i = T_i sum_c m_c (c_ic - B_ic) - T_final / (1 - alpha_i) sum_c m_c bg_c,
  // with T_i B_i = (sum_{j>i} w_j c_j) / (1 - alpha_i) and m_c = 1[0 < C_c < 1] on the rendered colour C
  const float T_final = T;
  const float* bg = p.background;
  const float ren_r = __fadd_rn(cr, __fmul_rn(T_final, bg[0]));
  const float ren_g = __fadd_rn(cg, __fmul_rn(T_final, bg[1]));
  const float ren_b = __fadd_rn(cb, __fmul_rn(T_final, bg[2]));
  const float mr = ren_r > 0.0f && ren_r < 1.0f ? 1.0f : 0.0f;
  const float mg = ren_g > 0.0f && ren_g < 1.0f ? 1.0f : 0.0f;
  const float mb = ren_b > 0.0f && ren_b < 1.0f ? 1.0f : 0.0f;
  const float m_bg = sum3(__fmul_rn(mr, bg[0]), __fmul_rn(mg, bg[1]), __fmul_rn(mb, bg[2]));
  if (tid == 0) block_last = -1;
  __syncthreads();
  if (last >= 0) atomicMax(&block_last, last);
  __syncthreads();
  const int warp_last = warp_max(last);
  float T_behind = T_final;                // transmittance after the current Gaussian
  float sr = 0.0f, sg = 0.0f, sb = 0.0f;  // sum of w c behind the current Gaussian
  for (int b = block_last / kBlock; b >= 0; --b) {
    __syncthreads();
    const int pos = b * kBlock + tid;
    if (pos < len) load_splat(p, start + pos, batch[tid]);
    __syncthreads();
    // the warp walks from its last contributor down; each lane from its own (every entry up to a
    // lane's last contributor that passes the alpha test contributes)
    for (int j = min(warp_last - b * kBlock, kBlock - 1); j >= 0; --j) {
      const Splat& s = batch[j];
      float v = 0.0f;
      bool hit = false;
      float dx, dy, vis, alpha;
      if (b * kBlock + j <= last && splat_alpha(s, px, py, dx, dy, vis, alpha)) {
        const float one_minus = __fsub_rn(1.0f, alpha);
        const float T_i = __fdiv_rn(T_behind, one_minus);
        const float w = __fmul_rn(alpha, T_i);
        const float dl_c = sum3(__fmul_rn(mr, __fsub_rn(__fmul_rn(T_i, s.r), __fdiv_rn(sr, one_minus))),
                                __fmul_rn(mg, __fsub_rn(__fmul_rn(T_i, s.g), __fdiv_rn(sg, one_minus))),
                                __fmul_rn(mb, __fsub_rn(__fmul_rn(T_i, s.b), __fdiv_rn(sb, one_minus))));
        const float dl = __fsub_rn(dl_c, __fmul_rn(__fdiv_rn(T_final, one_minus), m_bg));
        v = __fmul_rn(__fmul_rn(vis, dl), dl);
        hit = true;
        sr = __fadd_rn(sr, __fmul_rn(w, s.r));
        sg = __fadd_rn(sg, __fmul_rn(w, s.g));
        sb = __fadd_rn(sb, __fmul_rn(w, s.b));
        T_behind = T_i;
      }
      const unsigned hits = __ballot_sync(kFullMask, hit);
      if (hits == 0u) continue;  // uniform over the warp
      const float v_sum = warp_sum(v);
      if (lane == __ffs(hits) - 1) atomicAdd(p.recovery_score + s.id, static_cast<double>(v_sum));
    }
  }
}

}  // namespace

void launch_score_pass(const ScorePassArgs& a) {
  const c10::cuda::CUDAGuard guard(a.means2d.device());
  ScoreParams p;
  p.means2d = a.means2d.data_ptr<float>();
  p.conics = a.conics.data_ptr<float>();
  p.opacities = a.opacities.data_ptr<float>();
  p.colors = a.colors.data_ptr<float>();
  p.gt = a.gt.data_ptr<float>();
  p.background = a.background.data_ptr<float>();
  p.tile_start = a.tile_start.data_ptr<int>();
  p.tile_end = a.tile_end.data_ptr<int>();
  p.flatten_ids = a.flatten_ids.data_ptr<int>();
  p.cam_offset = a.cam_offset;
  p.width = a.width;
  p.height = a.height;
  p.tile_w = a.tile_w;
  p.base = a.base;
  p.distance = a.distance;
  p.colour = a.colour;
  p.k_p = a.k_p;
  p.k_c = a.k_c;
  p.k = a.k;
  p.recovery = a.recovery;
  p.keep = a.keep.data_ptr<bool>();
  p.sum_w = a.sum_w.data_ptr<double>();
  p.max_w = a.max_w.data_ptr<float>();
  p.hits = a.hits.data_ptr<int64_t>();
  p.sum_opacity = a.sum_opacity.data_ptr<double>();
  p.recovery_score = a.recovery_score.data_ptr<double>();
  p.wins = a.wins.data_ptr<int64_t>();
  p.sum_score = a.sum_score.data_ptr<double>();
  p.covered = a.covered.data_ptr<bool>();
  const bool tile_scope = a.rec_start.defined() && a.rec_start.numel() > 0;
  p.rec_start = tile_scope ? a.rec_start.data_ptr<int64_t>() : nullptr;
  p.rec_score = tile_scope ? a.rec_score.data_ptr<float>() : nullptr;
  p.rec_id = tile_scope ? a.rec_id.data_ptr<int>() : nullptr;
  const dim3 grid(a.tile_w, a.tile_h);
  const dim3 block(kTile, kTile);
  if (a.tile_w > 0 && a.tile_h > 0) {
    score_pass_kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace argp_ns
