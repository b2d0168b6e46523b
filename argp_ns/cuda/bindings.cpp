// Python binding of the score pass: checks shapes, dtypes and devices, then launches the kernel.
#include <torch/extension.h>

#include "score_pass.h"

namespace {

void check(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

at::Tensor score_pass(at::Tensor keep, at::Tensor sum_w, at::Tensor max_w, at::Tensor hits, at::Tensor sum_opacity,
                      at::Tensor recovery_score, at::Tensor wins, at::Tensor sum_score, at::Tensor means2d,
                      at::Tensor conics, at::Tensor opacities, at::Tensor colors, at::Tensor gt, at::Tensor background,
                      at::Tensor tile_start, at::Tensor tile_end, at::Tensor flatten_ids, at::Tensor rec_start,
                      at::Tensor rec_score, at::Tensor rec_id, int64_t cam_offset, int64_t width, int64_t height,
                      int64_t tile_w, int64_t tile_h, int64_t base, int64_t distance, int64_t colour, double k_p,
                      double k_c, int64_t k, bool recovery) {
  const int64_t n = means2d.size(0);
  const int64_t n_tiles = tile_w * tile_h;
  TORCH_CHECK(1 <= k && k <= argp_ns::kMaxK, "k must be in [1, ", argp_ns::kMaxK, "], got ", k);
  TORCH_CHECK(0 <= base && base < 5 && 0 <= distance && distance < 2 && 0 <= colour && colour < 4,
              "invalid score factors");
  check(means2d, "means2d", at::kFloat, {n, 2});
  check(conics, "conics", at::kFloat, {n, 3});
  check(opacities, "opacities", at::kFloat, {n});
  check(colors, "colors", at::kFloat, {n, 3});
  check(gt, "gt", at::kFloat, {height, width, 3});
  check(background, "background", at::kFloat, {3});
  check(tile_start, "tile_start", at::kInt, {n_tiles});
  check(tile_end, "tile_end", at::kInt, {n_tiles});
  check(flatten_ids, "flatten_ids", at::kInt, {flatten_ids.numel()});
  check(keep, "keep", at::kBool, {n});
  check(sum_w, "sum_w", at::kDouble, {n});
  check(max_w, "max_w", at::kFloat, {n});
  check(hits, "hits", at::kLong, {n});
  check(sum_opacity, "sum_opacity", at::kDouble, {n});
  check(recovery_score, "recovery", at::kDouble, {n});
  check(wins, "wins", at::kLong, {n});
  check(sum_score, "sum_score", at::kDouble, {n});
  if (rec_start.numel() > 0) {
    check(rec_start, "rec_start", at::kLong, {n_tiles});
    check(rec_score, "rec_score", at::kFloat, {rec_score.numel()});
    check(rec_id, "rec_id", at::kInt, {rec_score.numel()});
  }
  for (const at::Tensor* t : {&conics, &opacities, &colors, &gt, &background, &tile_start, &tile_end, &flatten_ids,
                              &keep, &sum_w, &max_w, &hits, &sum_opacity, &recovery_score, &wins, &sum_score}) {
    TORCH_CHECK(t->device() == means2d.device(), "all tensors must be on one device");
  }

  argp_ns::ScorePassArgs a;
  a.means2d = means2d;
  a.conics = conics;
  a.opacities = opacities;
  a.colors = colors;
  a.gt = gt;
  a.background = background;
  a.tile_start = tile_start;
  a.tile_end = tile_end;
  a.flatten_ids = flatten_ids;
  a.keep = keep;
  a.sum_w = sum_w;
  a.max_w = max_w;
  a.hits = hits;
  a.sum_opacity = sum_opacity;
  a.recovery_score = recovery_score;
  a.wins = wins;
  a.sum_score = sum_score;
  a.covered = at::zeros({height, width}, means2d.options().dtype(at::kBool));
  a.rec_start = rec_start;
  a.rec_score = rec_score;
  a.rec_id = rec_id;
  a.cam_offset = static_cast<int>(cam_offset);
  a.width = static_cast<int>(width);
  a.height = static_cast<int>(height);
  a.tile_w = static_cast<int>(tile_w);
  a.tile_h = static_cast<int>(tile_h);
  a.base = static_cast<int>(base);
  a.distance = static_cast<int>(distance);
  a.colour = static_cast<int>(colour);
  a.k_p = static_cast<float>(k_p);
  a.k_c = static_cast<float>(k_c);
  a.k = static_cast<int>(k);
  a.recovery = recovery;
  argp_ns::launch_score_pass(a);
  return a.covered;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "argp_ns score pass: per-pixel scores over gsplat's tile lists (see argp_ns/cuda/__init__.py)";
  m.def("score_pass", &score_pass, "Score one camera into the per-Gaussian totals; returns covered [H, W] bool",
        py::arg("keep"), py::arg("sum_w"), py::arg("max_w"), py::arg("hits"), py::arg("sum_opacity"),
        py::arg("recovery_score"), py::arg("wins"), py::arg("sum_score"), py::arg("means2d"), py::arg("conics"),
        py::arg("opacities"), py::arg("colors"), py::arg("gt"), py::arg("background"), py::arg("tile_start"),
        py::arg("tile_end"), py::arg("flatten_ids"), py::arg("rec_start"), py::arg("rec_score"), py::arg("rec_id"),
        py::arg("cam_offset"), py::arg("width"), py::arg("height"), py::arg("tile_w"), py::arg("tile_h"),
        py::arg("base"), py::arg("distance"), py::arg("colour"), py::arg("k_p"), py::arg("k_c"), py::arg("k"),
        py::arg("recovery"));
}
