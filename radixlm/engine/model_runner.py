"""``ModelRunner``: owns the model, the KV memory and the attention backend; runs one step.

Sizing (logged once at start-up): the KV pool holds ``max_total_tokens`` tokens, either as
configured or derived from the memory budget divided by the per-token KV bytes, capped at
``max_running_requests × context_len`` (more could never be used). The budget is
``mem_fraction_static × RAM − weights`` on CPU; on CUDA it is the free device memory after the
weights are loaded minus ``(1 − mem_fraction_static) × device memory``, kept for activations,
CUDA graphs and workspaces (so memory other processes hold is accounted for).

On CUDA, decode batches of up to ``cuda_graph_max_bs`` requests replay captured CUDA graphs
(:mod:`radixlm.engine.cuda_graph_runner`) when the attention backend supports it.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, replace

import torch

from radixlm.attention import create_attention_backend
from radixlm.config import EngineConfig
from radixlm.engine.cuda_graph_runner import CudaGraphRunner, GraphOps
from radixlm.engine.forward_batch import ForwardBatch
from radixlm.engine.thread_tuner import ThreadTuner
from radixlm.errors import ConfigError
from radixlm.mem.kv_pool import TokenToKVPool
from radixlm.mem.req_to_token import ReqToTokenPool
from radixlm.models.loader import load_model
from radixlm.models.model_config import ModelConfig, load_model_config

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Rows of logits materialised at once: bounds memory for long prompt-logprob requests.
LOGITS_CHUNK = 1024


@dataclass(frozen=True)
class PoolLimits:
    """Capacities derived from the model and the memory budget."""

    max_total_tokens: int  # KV pool slots (excluding the padding slot)
    max_running_requests: int
    context_len: int  # model positions available to one request
    max_req_len: int  # prompt + output tokens one request may reach (fits in the pool alone)
    kv_bytes_per_token: int
    weight_bytes: int


def resolve_dtype(name: str, checkpoint_dtype: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    dtype = _DTYPES.get(checkpoint_dtype.replace("torch.", ""), torch.float32)
    if device.type == "cuda" and dtype == torch.float32:
        return torch.bfloat16
    return dtype


def _kv_budget(device: torch.device, fraction: float, weight_bytes: int) -> float:
    """Bytes the KV pool may take (see the module docstring); called after the weights load."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free - total * (1 - fraction)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram * fraction - weight_bytes


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        threads = torch.get_num_threads()
        self.thread_tuner = (
            ThreadTuner(threads)
            if self.device.type == "cpu" and not config.disable_adaptive_threads and threads >= 2
            else None
        )
        self.model_config: ModelConfig = load_model_config(config.model_path)
        mc = self.model_config
        self.dtype = resolve_dtype(config.dtype, mc.checkpoint_dtype, self.device)
        context_len = config.context_length or mc.max_position_embeddings
        self.model = load_model(
            mc,
            config.model_path,
            self.dtype,
            self.device,
            context_len,
            config.load_format,
            config.random_seed,
        )
        self.kernels = self._use_native_kernels()
        # Parameters and buffers: packed linears keep their weights as buffers.
        weight_bytes = sum(
            t.numel() * t.element_size()
            for t in itertools.chain(self.model.parameters(), self.model.buffers())
        )
        self.limits = self._size_pools(context_len, weight_bytes)
        lim = self.limits
        self.req_to_token_pool = ReqToTokenPool(
            lim.max_running_requests, lim.max_req_len, self.device
        )
        self.kv_pool = TokenToKVPool(
            lim.max_total_tokens,
            mc.num_layers,
            mc.num_kv_heads,
            mc.head_dim,
            self.dtype,
            self.device,
        )
        self.attn_backend = self._create_backend()
        self.graph_runner: CudaGraphRunner | None = None
        self.graph_mb = 0.0
        logger.info(
            "model %s loaded: %s, %.1f MB weights, dtype %s, device %s",
            mc.architecture,
            config.model_path,
            weight_bytes / 2**20,
            str(self.dtype).replace("torch.", ""),
            self.device,
        )
        logger.info(
            "KV pool: %d tokens (%.1f MB), max_running_requests %d, context %d, attention %s",
            lim.max_total_tokens,
            lim.max_total_tokens * lim.kv_bytes_per_token / 2**20,
            lim.max_running_requests,
            lim.max_req_len,
            self.config.attention_backend,
        )
        if self.device.type == "cuda" and not config.disable_cuda_graph:
            if self.attn_backend.supports_cuda_graph:
                self.init_cuda_graphs()
            else:
                logger.info("CUDA graphs off: %s cannot be captured", config.attention_backend)

    def _use_native_kernels(self):
        """Load the native CPU kernels and move the model onto them (radixlm.layers.native), or
        return None: not on CPU, ``cpu_kernels=torch``, or (``auto``) they cannot be built here,
        in which case the loader has warned once and attention falls back to torch_native."""
        cfg = self.config
        if self.device.type != "cpu" or cfg.cpu_kernels == "torch":
            return None
        from radixlm.kernels.cpu import load_cpu_kernels
        from radixlm.layers.native import use_native_kernels

        required = cfg.cpu_kernels == "native" or cfg.quantization != "none"
        kernels = load_cpu_kernels(required=required)
        quantization = None if cfg.quantization == "none" else cfg.quantization
        if kernels is None or not use_native_kernels(self.model, kernels, self.dtype, quantization):
            if cfg.attention_backend == "cpu_native":
                self.config = replace(cfg, attention_backend="torch_native")
            return None
        return kernels

    def _create_backend(self):
        """The configured backend, or torch_native (with a warning naming the reason) when it
        cannot serve this model, e.g. a head_dim its kernels do not support."""
        cfg, mc = self.config, self.model_config
        layers = self.model.attention_layers()
        extra = {"kernels": self.kernels} if cfg.attention_backend == "cpu_native" else {}
        try:
            return create_attention_backend(
                cfg.attention_backend, head_dim=mc.head_dim, layers=layers, **extra
            )
        except ConfigError as e:
            if cfg.attention_backend == "torch_native":
                raise
            logger.warning(
                "attention_backend=%s cannot serve this model: %s; falling back to torch_native",
                cfg.attention_backend,
                e,
            )
            self.config = cfg = replace(cfg, attention_backend="torch_native")
            return create_attention_backend("torch_native")

    def init_cuda_graphs(self, ops: GraphOps | None = None, max_bs: int | None = None) -> None:
        """Capture decode graphs (``ops``: CUDA graphs by default; tests pass a CPU stand-in)."""
        cap = min(max_bs or self.config.cuda_graph_max_bs, self.limits.max_running_requests)
        self.graph_runner = CudaGraphRunner(self, cap, ops)
        self.graph_mb = self.graph_runner.capture()

    def _size_pools(self, context_len: int, weight_bytes: int) -> PoolLimits:
        mc, cfg = self.model_config, self.config
        per_token = TokenToKVPool.bytes_per_token(
            mc.num_layers, mc.num_kv_heads, mc.head_dim, self.dtype
        )
        default_running = 2048 if self.device.type == "cuda" else 256
        running_cap = cfg.max_running_requests or default_running
        if cfg.max_total_tokens is not None:
            total = cfg.max_total_tokens
        else:
            budget = _kv_budget(self.device, cfg.mem_fraction_static, weight_bytes)
            if budget <= per_token * 16:
                raise ConfigError(
                    f"mem_fraction_static={cfg.mem_fraction_static} leaves no room for the KV pool "
                    f"after {weight_bytes / 2**20:.0f} MB of weights; raise it or set max_total_tokens"
                )
            total = min(int(budget // per_token), running_cap * context_len)
        if total < 2:
            raise ConfigError(f"max_total_tokens must be at least 2, got {total}")
        running = cfg.max_running_requests or max(1, min(default_running, total // 2))
        return PoolLimits(
            max_total_tokens=total,
            max_running_requests=running,
            context_len=context_len,
            max_req_len=min(context_len, total),
            kv_bytes_per_token=per_token,
            weight_bytes=weight_bytes,
        )

    @property
    def vocab_size(self) -> int:
        return self.model_config.vocab_size

    @torch.inference_mode()
    def prepare(self, fb: ForwardBatch) -> None:
        """Build the attention metadata of ``fb`` from the memory pools.

        NOTE: the metadata is a snapshot (slot indices are copied out of ``req_to_token``), so a
        batch prepared by the scheduler thread may run later on the forward thread while the
        scheduler already rewrites rows for the next batch (overlap scheduling).
        """
        self.attn_backend.init_forward_metadata(fb)

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        """Run the model on ``fb``; writes the new KV and returns hidden states ``[T, hidden]``."""
        if fb.attn_metadata is None:
            self.prepare(fb)
        if self.graph_runner is not None and self.graph_runner.can_run(fb):
            return self.graph_runner.replay(fb)
        tuner = self.thread_tuner
        if tuner is None:
            return self.model(fb, self.attn_backend)
        # NOTE: set on the thread that runs the forward: OpenMP's thread count is per thread.
        # Prefill runs at the chosen count (never at a probe's), and is not timed.
        if fb.mode.is_extend():
            torch.set_num_threads(tuner.current)
            return self.model(fb, self.attn_backend)
        torch.set_num_threads(tuner.threads)
        start = time.perf_counter()
        out = self.model(fb, self.attn_backend)
        tuner.record(time.perf_counter() - start)
        return out

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def token_logprobs(
        self, hidden: torch.Tensor, targets: torch.Tensor, top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Logprob of ``targets[i]`` given row ``hidden[i]`` (+ top-k), in bounded-size chunks."""
        vals, top_v, top_i = [], [], []
        for s in range(0, hidden.shape[0], LOGITS_CHUNK):
            lp = torch.log_softmax(self.compute_logits(hidden[s : s + LOGITS_CHUNK]), dim=-1)
            vals.append(lp.gather(1, targets[s : s + LOGITS_CHUNK, None]).squeeze(1))
            if top_k > 0:
                v, i = lp.topk(min(top_k, lp.shape[1]), dim=-1)
                top_v.append(v)
                top_i.append(i)
        if top_k > 0:
            return torch.cat(vals), torch.cat(top_v), torch.cat(top_i)
        return torch.cat(vals), None, None
