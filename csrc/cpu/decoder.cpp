// The decode step of a Llama-family decoder stack in one call: embedding lookup, every layer
// (residual add + RMSNorm, qkv, optional per-head q/k RMSNorm, RoPE, K/V write, paged decode
// attention, o_proj, residual add + RMSNorm, gate_up, SiLU·mul, down) and the final norm.
//
// It composes the kernels of linear.cpp, attention.cpp and elementwise.cpp in the order and
// with the arguments of the module path (radixlm/models/llama.py running on those kernels), so
// its output is the module path's, bit for bit; it exists only to take the ~100 Python module
// calls and tensor views of a step off the critical path (they cost as much as the attention
// and norms themselves at batch 1). The weights are registered once after load; the KV pools
// and the step's metadata are passed with each call. The GIL is released while it runs.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "kernels.h"

namespace radixlm {

namespace {

struct Linear {
  at::Tensor packed;
  int64_t out_features;
  std::string kind;
  c10::optional<at::Tensor> scales, bias;

  at::Tensor operator()(const at::Tensor& x) const {
    return linear_packed(x, packed, out_features, kind, scales, bias);
  }
};

struct Layer {
  at::Tensor input_norm, post_norm;
  c10::optional<at::Tensor> q_norm, k_norm;
  Linear qkv, o, gate_up, down;
  int64_t window;
};

}  // namespace

class DecoderStack {
 public:
  DecoderStack(at::Tensor embed, at::Tensor final_norm, at::Tensor cos, at::Tensor sin, int64_t num_heads,
               int64_t num_kv_heads, int64_t head_dim, double eps, double scaling)
      : embed_(std::move(embed)),
        final_norm_(std::move(final_norm)),
        cos_(std::move(cos)),
        sin_(std::move(sin)),
        H_(num_heads),
        KVH_(num_kv_heads),
        D_(head_dim),
        eps_(eps),
        scaling_(scaling) {}

  // Layers are added in order; a linear is (packed, out_features, kind, scales, bias).
  void add_layer(at::Tensor input_norm, at::Tensor post_norm, c10::optional<at::Tensor> q_norm,
                 c10::optional<at::Tensor> k_norm, const py::tuple& qkv, const py::tuple& o,
                 const py::tuple& gate_up, const py::tuple& down, int64_t window) {
    layers_.push_back(Layer{std::move(input_norm), std::move(post_norm), std::move(q_norm), std::move(k_norm),
                            linear(qkv), linear(o), linear(gate_up), linear(down), window});
  }

  // Hidden states after the final norm, [B, hidden], for one new token per request.
  //   input_ids, positions, slots: [B] int64; table [R, C] int32, rows/lens [B] int64 (see
  //   attention.cpp); k_pools/v_pools: one [S, KVH, D] pool per layer, the model's dtype.
  at::Tensor decode(const at::Tensor& input_ids, const at::Tensor& positions, const at::Tensor& slots,
                    const at::Tensor& table, const at::Tensor& rows, const at::Tensor& lens,
                    std::vector<at::Tensor> k_pools, std::vector<at::Tensor> v_pools) const {
    TORCH_CHECK(k_pools.size() == layers_.size() && v_pools.size() == layers_.size(), "one KV pool per layer");
    const int64_t B = input_ids.size(0);
    const int64_t q_size = H_ * D_, kv_size = KVH_ * D_;
    at::Tensor x = at::index_select(embed_, 0, input_ids);  // [B, hidden]
    c10::optional<at::Tensor> residual;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& L = layers_[i];
      std::vector<at::Tensor> nr = add_rmsnorm(x, residual, L.input_norm, eps_);
      residual = nr[1];
      at::Tensor qkv = L.qkv(nr[0]);  // [B, q + 2 kv]
      at::Tensor q = qkv.narrow(1, 0, q_size).view({B, H_, D_});
      at::Tensor k = qkv.narrow(1, q_size, kv_size).view({B, KVH_, D_});
      at::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size).view({B, KVH_, D_});
      if (L.q_norm.has_value()) {  // Qwen3: RMSNorm over each head (torch path: RMSNorm.forward)
        q = add_rmsnorm(q.reshape({B * H_, D_}), c10::nullopt, *L.q_norm, eps_)[0].view({B, H_, D_});
        k = add_rmsnorm(k.reshape({B * KVH_, D_}), c10::nullopt, *L.k_norm, eps_)[0].view({B, KVH_, D_});
      }
      rope_(positions, q, k, cos_, sin_);
      set_kv_(k_pools[i], v_pools[i], slots, k, v);
      at::Tensor attn = decode_attention(q, k_pools[i], v_pools[i], table, rows, lens, scaling_, L.window);
      at::Tensor h = L.o(attn.view({B, q_size}));
      nr = add_rmsnorm(h, residual, L.post_norm, eps_);
      residual = nr[1];
      x = L.down(silu_mul(L.gate_up(nr[0])));
    }
    return add_rmsnorm(x, residual, final_norm_, eps_)[0];
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

 private:
  static Linear linear(const py::tuple& t) {
    TORCH_CHECK(t.size() == 5, "a linear is (packed, out_features, kind, scales, bias)");
    return Linear{t[0].cast<at::Tensor>(), t[1].cast<int64_t>(), t[2].cast<std::string>(),
                  t[3].cast<c10::optional<at::Tensor>>(), t[4].cast<c10::optional<at::Tensor>>()};
  }

  at::Tensor embed_, final_norm_, cos_, sin_;
  int64_t H_, KVH_, D_;
  double eps_, scaling_;
  std::vector<Layer> layers_;
};

void bind_decoder(py::module_& m) {
  py::class_<DecoderStack>(m, "DecoderStack", "a Llama-family decode step in one call (decoder.cpp)")
      .def(py::init<at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t, int64_t, int64_t, double, double>(),
           py::arg("embed"), py::arg("final_norm"), py::arg("cos"), py::arg("sin"), py::arg("num_heads"),
           py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("eps"), py::arg("scaling"))
      .def("add_layer", &DecoderStack::add_layer)
      .def("decode", &DecoderStack::decode, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_layers", &DecoderStack::num_layers);
}

}  // namespace radixlm
