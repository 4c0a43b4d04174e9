// The kernels of radixlm_cpu, as the bindings and the fused decoder call them. Each has a torch
// reference with the same semantics in radixlm/kernels/reference.py.
#pragma once

#include <torch/extension.h>

#include <string>
#include <vector>

namespace radixlm {

// linear.cpp
at::Tensor pack_linear_weight(const at::Tensor& weight, const std::string& kind);
at::Tensor linear_packed(const at::Tensor& x, const at::Tensor& packed, int64_t N,
                         const std::string& kind, const c10::optional<at::Tensor>& scales,
                         const c10::optional<at::Tensor>& bias);
// attention.cpp
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                            const at::Tensor& table, const at::Tensor& rows, const at::Tensor& lens,
                            double scale, int64_t window);
// extend_attention.cpp
at::Tensor extend_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                            const at::Tensor& table, const at::Tensor& starts, const at::Tensor& prefix,
                            const at::Tensor& ext, double scale, int64_t window);
void set_kv_(at::Tensor& k_pool, at::Tensor& v_pool, const at::Tensor& slots, const at::Tensor& k,
             const at::Tensor& v);
// elementwise.cpp
std::vector<at::Tensor> add_rmsnorm(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                    const at::Tensor& weight, double eps);
void rope_(const at::Tensor& positions, at::Tensor& q, at::Tensor& k, const at::Tensor& cos,
           const at::Tensor& sin);
at::Tensor silu_mul(const at::Tensor& gate_up);
// decoder.cpp
void bind_decoder(py::module_& m);

}  // namespace radixlm
