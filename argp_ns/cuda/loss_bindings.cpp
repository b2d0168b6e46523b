// Python binding of the fused L1 + SSIM loss (see fused_loss.cu): checks inputs, then launches the kernels.
#include <torch/extension.h>

#include <vector>

namespace argp_ns {
std::vector<at::Tensor> fused_loss_forward(const at::Tensor& gt, const at::Tensor& render, const at::Tensor& window,
                                           double lambda, bool grad);
at::Tensor fused_loss_backward(const at::Tensor& gt, const at::Tensor& render, const at::Tensor& parts,
                               const at::Tensor& window, const at::Tensor& grad_out, double lambda);
}  // namespace argp_ns

namespace {

void check_image(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == 3 && t.size(2) == 3, name, " must be [H, W, 3], got ", t.sizes());
  TORCH_CHECK(t.sizes() == like.sizes() && t.device() == like.device(), name, " must match the render");
  TORCH_CHECK(t.size(0) >= 11 && t.size(1) >= 11, name, " must be at least 11x11 (the SSIM window)");
}

std::vector<at::Tensor> forward(const at::Tensor& gt, const at::Tensor& render, const at::Tensor& window,
                                double lambda, bool grad) {
  check_image(render, "render", render);
  check_image(gt, "gt", render);
  return argp_ns::fused_loss_forward(gt, render, window, lambda, grad);
}

at::Tensor backward(const at::Tensor& gt, const at::Tensor& render, const at::Tensor& parts, const at::Tensor& window,
                    const at::Tensor& grad_out, double lambda) {
  check_image(render, "render", render);
  check_image(gt, "gt", render);
  TORCH_CHECK(parts.is_cuda() && parts.is_contiguous() && parts.dim() == 4 && parts.size(0) == 3,
              "parts must be the forward's [3, H-10, W-10, 3] partials");
  TORCH_CHECK(grad_out.is_cuda() && grad_out.scalar_type() == at::kFloat && grad_out.numel() == 1,
              "grad_out must be one float32 CUDA value");
  return argp_ns::fused_loss_backward(gt, render, parts, window, grad_out, lambda);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "argp_ns fused training loss: (1 - lambda) L1 + lambda (1 - SSIM) and its gradient (fused_loss.cu)";
  m.def("forward", &forward, "[loss, l1, ssim, mse] and the SSIM partials", py::arg("gt"), py::arg("render"),
        py::arg("window"), py::arg("lam"), py::arg("grad"));
  m.def("backward", &backward, "dLoss/drender", py::arg("gt"), py::arg("render"), py::arg("parts"),
        py::arg("window"), py::arg("grad_out"), py::arg("lam"));
}
