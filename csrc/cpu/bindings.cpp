// Python bindings of the CPU kernels (module `radixlm_cpu`, built by radixlm/kernels/cpu.py).
#include <torch/extension.h>

#include "kernels.h"
#include "vec.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "RadixLM CPU kernels (AVX-512); each has a torch reference in radixlm/kernels/reference.py";
  m.attr("avx512") = bool(RADIXLM_AVX512);
#if defined(__AVX512BF16__)
  m.attr("avx512_bf16") = true;
#else
  m.attr("avx512_bf16") = false;
#endif
  m.def("pack_linear_weight", &radixlm::pack_linear_weight, "pack W [N, K] into 32-feature tiles");
  m.def("linear_packed", &radixlm::linear_packed, "x @ W^T with a packed W");
  m.def("decode_attention", &radixlm::decode_attention, "paged decode attention from the KV pools");
  m.def("extend_attention", &radixlm::extend_attention, "paged causal extend attention from the KV pools");
  m.def("set_kv_", &radixlm::set_kv_, "write new tokens' K/V rows into the pools");
  m.def("add_rmsnorm", &radixlm::add_rmsnorm, "residual add + RMSNorm");
  m.def("rope_", &radixlm::rope_, "rotary embedding in place (rotate-half)");
  m.def("silu_mul", &radixlm::silu_mul, "silu(gate) * up");
  radixlm::bind_decoder(m);
}
