"""Llama-family decoder (Llama 2/3, Mistral, Qwen2 with qkv bias, Qwen3 with q/k norm).

The differences between the four architectures are data in :class:`ModelConfig` (biases,
q/k norm, sliding windows), so one module tree serves all of them. Projections are fused
(``qkv_proj``, ``gate_up_proj``); the weight loader splits HF's separate tensors into them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.attention.base import AttentionBackend
from radixlm.engine.forward_batch import ForwardBatch
from radixlm.layers.norm import RMSNorm
from radixlm.layers.rotary import RotaryEmbedding
from radixlm.models.model_config import ModelConfig


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.scaling = cfg.head_dim**-0.5
        self.sliding_window = cfg.sliding_windows[layer_id]
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.qkv_proj = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.q_size, cfg.hidden_size, bias=cfg.o_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None

    def forward(
        self, x: torch.Tensor, rotary: RotaryEmbedding, fb: ForwardBatch, attn: AttentionBackend
    ) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotary(fb.positions, q, k)
        return self.o_proj(attn.forward(q, k, v, self, fb))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.intermediate = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.kernels = None  # radixlm_cpu module (fused SiLU·mul), set by radixlm.layers.native

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2 * intermediate]
        if self.kernels is not None:
            return self.down_proj(self.kernels.silu_mul(gate_up))
        gate, up = gate_up.split(self.intermediate, dim=-1)
        # In place: the [T, 2 * intermediate] block is the largest activation of a prefill.
        return self.down_proj(F.silu(gate, inplace=True).mul_(up))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer_id)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, x, residual, rotary: RotaryEmbedding, fb: ForwardBatch, attn: AttentionBackend
    ):
        h, residual = self.input_layernorm.forward_with_residual(x, residual)
        h = self.self_attn(h, rotary, fb, attn)
        h, residual = self.post_attention_layernorm.forward_with_residual(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # NOTE: passing ``_weight`` skips nn.Embedding's random init. On the meta device that
        # init (normal_) is decomposed through torch._refs, which imports torch._dynamo (and
        # triton when installed): +70–145 MB of resident memory for nothing.
        self.embed_tokens = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size)
        )
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """``forward`` returns final hidden states ``[T, hidden]``; logits are computed on demand by
    :meth:`compute_logits` only for the rows that need them (sampling and logprob positions)."""

    def __init__(self, cfg: ModelConfig, max_positions: int, device: torch.device | str) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        # fp32 cos/sin tables on the target device, outside the (possibly meta) parameter tree.
        self.rotary = RotaryEmbedding(
            cfg.head_dim, cfg.rope_theta, max_positions, cfg.rope_scaling, device=device
        )
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # The decode step as one native call (radixlm.layers.native.FusedDecoder), set with the
        # native CPU kernels; used when the attention backend exposes pool-reading decode metadata.
        self.fused_decoder = None

    def forward(self, fb: ForwardBatch, attn: AttentionBackend) -> torch.Tensor:
        fused = self.fused_decoder
        if fused is not None and not fb.mode.is_extend() and fused.applies(fb.kv_pool.dtype):
            meta = attn.paged_decode_metadata(fb)
            if meta is not None:
                return fused(fb, *meta)
        x = self.model.embed_tokens(fb.input_ids)
        residual = None
        for layer in self.model.layers:
            x, residual = layer(x, residual, self.rotary, fb, attn)
        x, _ = self.model.norm.forward_with_residual(x, residual)
        return x

    def attention_layers(self) -> list[Attention]:
        """Every attention layer, in order (each is an ``AttentionLayerSpec``)."""
        return [layer.self_attn for layer in self.model.layers]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return F.linear(hidden, self.model.embed_tokens.weight).float()  # [N, vocab] fp32
        return self.lm_head(hidden).float()  # nn.Linear, or PackedLinear (layers.native)

    # name in HF checkpoint -> (our parameter name, shard id) for fused projections
    stacked_params = (
        ("qkv_proj", "q_proj", 0),
        ("qkv_proj", "k_proj", 1),
        ("qkv_proj", "v_proj", 2),
        ("gate_up_proj", "gate_proj", 0),
        ("gate_up_proj", "up_proj", 1),
    )

    def shard_offsets(self, fused: str, shard: int) -> tuple[int, int]:
        """(start, size) of a shard along dim 0 of the fused parameter."""
        cfg = self.config
        if fused == "qkv_proj":
            sizes = [cfg.q_size, cfg.kv_size, cfg.kv_size]
        else:
            sizes = [cfg.intermediate_size, cfg.intermediate_size]
        return sum(sizes[:shard]), sizes[shard]
