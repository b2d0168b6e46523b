// Host-side interface of the score pass kernel (score_pass.cu); the bindings (bindings.cpp) check the tensors.
#pragma once

#include <ATen/ATen.h>

namespace argp_ns {

constexpr int kMaxK = 32;  // largest per-pixel top-k

// Inputs and outputs of one camera's pass; see argp_ns/cuda/__init__.py for the meaning of each.
struct ScorePassArgs {
  at::Tensor means2d, conics, opacities, colors, gt, background;
  at::Tensor tile_start, tile_end, flatten_ids;
  at::Tensor keep, sum_w, max_w, hits, sum_opacity, recovery_score, wins, sum_score;
  at::Tensor covered;
  at::Tensor rec_start, rec_score, rec_id;  // empty without tile scope
  int cam_offset = 0;
  int width = 0, height = 0, tile_w = 0, tile_h = 0;
  int base = 0, distance = 0, colour = 0;
  float k_p = 1.0f, k_c = 1.0f;
  int k = 1;
  bool recovery = false;
};

void launch_score_pass(const ScorePassArgs& args);

}  // namespace argp_ns
