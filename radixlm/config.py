"""Engine / server options: one frozen dataclass shared by ``Engine(**options)`` and the CLI.

Every field is a server flag in snake_case (``--max-total-tokens`` ↔ ``max_total_tokens``) with
its help text in the field metadata, so the CLI parser is generated from this class. Values that
depend only on the options are derived once in :meth:`EngineConfig.resolve`; values that depend
on the loaded model (context length, KV pool size) are derived by the model runner and reported
in :class:`radixlm.engine.model_runner.PoolLimits`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any

from radixlm.errors import ConfigError

BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "assets", "stories260K")

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULE_POLICIES = ("lpm", "fcfs", "lof", "random", "dfs-weight")
ATTENTION_BACKENDS = ("auto", "torch_native", "cpu_native", "triton", "flashinfer")
CPU_KERNELS = ("auto", "native", "torch")
QUANTIZATIONS = ("none", "w8a16")
GRAMMAR_BACKENDS = ("auto", "llguidance", "outlines", "xgrammar", "none")


def option(
    default: Any,
    help: str,
    choices: tuple[str, ...] | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A config field that is also a CLI flag (``aliases``: more flag names, e.g. ``--tp``)."""
    return field(default=default, metadata={"help": help, "choices": choices, "aliases": aliases})


@dataclass(frozen=True)
class EngineConfig:
    """All runtime options. Build with :meth:`from_options`; never mutate (use ``replace``)."""

    model_path: str | None = option(
        None,
        "HF checkpoint directory, or a Hugging Face Hub id (org/name: fetched through the local "
        "cache; HF_HUB_OFFLINE=1 uses the cache only); default: the bundled stories260K demo "
        "model",
    )
    tokenizer_path: str | None = option(None, "tokenizer directory or Hub id; default: model_path")
    revision: str | None = option(
        None, "Hub branch, tag or commit of a model_path that is a Hub id; default: main"
    )
    download_dir: str | None = option(
        None, "Hugging Face cache directory for Hub models; default: HF_HUB_CACHE / ~/.cache"
    )
    trust_remote_code: bool = option(
        False,
        "accepted for compatibility; no checkpoint code is ever run (the supported "
        "architectures are built in, others are an error that lists them)",
    )
    dtype: str = option(
        "auto", "weight/activation dtype; auto = checkpoint dtype (fp32 → bf16 on CUDA)", DTYPES
    )
    device: str = option("auto", "device to run on; auto = cuda if available else cpu", DEVICES)
    tp_size: int = option(
        1,
        "tensor-parallel ranks; only 1 for now (multi-rank serving is not built yet, and a "
        "larger value is refused rather than ignored)",
        aliases=("--tp",),
    )
    dp_size: int = option(
        1,
        "data-parallel replicas; only 1 for now (a larger value is refused rather than ignored; "
        "run several servers behind sglang-router meanwhile)",
        aliases=("--dp",),
    )
    attention_backend: str = option(
        "auto",
        "attention kernels; auto = flashinfer if installed, else triton, on CUDA; on CPU "
        "cpu_native (csrc/cpu) when the native kernels are in use, else torch_native",
        ATTENTION_BACKENDS,
    )
    cpu_kernels: str = option(
        "auto",
        "native CPU kernels (csrc/cpu: prepacked GEMM, paged decode attention, fused norm/RoPE/"
        "SiLU), built once per machine; auto = use them when they build on this CPU (AVX-512), "
        "else the torch path with a warning; native = require them; torch = never",
        CPU_KERNELS,
    )
    quantization: str = option(
        "none",
        "weight-only quantization; w8a16 = int8 weights with per-output-channel scales computed "
        "at load from the checkpoint, activations in --dtype (CPU, needs the native kernels)",
        QUANTIZATIONS,
    )
    cuda_graph_max_bs: int = option(
        256, "largest decode batch replayed from a captured CUDA graph (padded to captured sizes)"
    )
    disable_cuda_graph: bool = option(False, "run decode batches eagerly on CUDA (no CUDA graphs)")
    load_format: str = option(
        "auto",
        "auto = read the checkpoint's safetensors; dummy = random weights drawn on the device "
        "(benchmarking a model shape from its config.json alone)",
        ("auto", "dummy"),
    )
    context_length: int | None = option(
        None, "max tokens per request (prompt + output); default: from config.json"
    )
    max_total_tokens: int | None = option(
        None, "KV pool size in tokens; default: from the memory budget"
    )
    mem_fraction_static: float | None = option(
        None,
        "share of device memory (RAM on CPU) for weights + KV pool; default 0.85 on CUDA, 0.2 on CPU",
    )
    max_running_requests: int | None = option(
        None, "max requests decoding at once; default: derived from the pool"
    )
    max_n: int = option(
        64,
        "most samples one request may ask for (n); a larger n is a 400 (it would queue n requests)",
    )
    max_prefill_tokens: int = option(16384, "max new prompt tokens in one prefill batch")
    chunked_prefill_size: int | None = option(
        None,
        "max new prompt tokens per step (longer prompts span steps); -1 disables; "
        "default 8192 on CUDA, 2048 on CPU",
    )
    schedule_policy: str = option("lpm", "waiting-queue order", SCHEDULE_POLICIES)
    schedule_aging_tokens_per_pass: int = option(
        32,
        "lpm/dfs-weight: each scheduling pass a request waits counts as this many matched "
        "tokens, so only requests arriving within longest_match // N + 1 passes can overtake a "
        "cache miss (no starvation); 0 disables",
    )
    schedule_conservativeness: float = option(
        1.0, "scales the reserved decode room; >1 retracts less, admits less"
    )
    disable_radix_cache: bool = option(False, "never share KV between requests")
    disable_overlap_schedule: bool = option(
        False,
        "run each batch's forward on the scheduler thread instead of overlapping it with "
        "scheduling the next batch (overlap is the default on CUDA)",
    )
    enable_overlap_schedule: bool = option(
        False,
        "overlap scheduling on CPU too (off by default there: the forward and the scheduler "
        "share the cores, measured 0.84x in bench/results/serving_*)",
    )
    stream_interval: int = option(1, "emit streamed output every N decode steps")
    grammar_backend: str = option(
        "auto",
        "constrained decoding backend: auto (per spec, the first backend that enforces it "
        "exactly: llguidance for JSON schema, outlines-core for regex), llguidance, outlines "
        "(outlines-core DFAs), xgrammar (pip install 'radixlm[xgrammar]'), none",
        GRAMMAR_BACKENDS,
    )
    grammar_compile_timeout: float = option(
        30.0,
        "seconds a grammar may take to compile (time queued for a worker not counted) before "
        "the compile is killed and the request fails with a 400",
    )
    grammar_compile_workers: int = option(
        2, "worker processes that compile grammars (one slow compile holds only one of them)"
    )
    grammar_compile_memory_mb: int = option(
        4096, "address-space limit of each grammar compile worker (MB); 0 = no limit"
    )
    grammar_max_spec_chars: int = option(
        262_144, "longest regex / JSON schema accepted (characters); longer ones are a 400"
    )
    constrained_json_whitespace_pattern: str | None = option(
        None,
        "regex for the whitespace JSON schemas allow between tokens; default: none, the compact "
        'layout of json.dumps(separators=(",", ":")), so jump-forward appends long forced runs',
    )
    json_schema_unenforced: str = option(
        "ignore",
        "JSON schema keywords no grammar backend enforces (uniqueItems, not, …): ignore them "
        "(decode the rest exactly; the response names them) or reject such schemas with a 400",
        ("ignore", "reject"),
    )
    disable_jump_forward: bool = option(
        False, "sample forced grammar continuations token by token instead of appending them"
    )
    random_seed: int = option(0, "seed of the sampler for requests without sampling_seed")
    skip_tokenizer_init: bool = option(
        False, "do not load a tokenizer; requests must pass input_ids"
    )
    num_threads: int | None = option(None, "torch CPU threads; default: torch's choice")
    disable_adaptive_threads: bool = option(
        False,
        "CPU decode: keep --num-threads fixed. By default every 400 decode steps try one "
        "thread fewer (or back) for 8 steps and keep the faster, so a core taken by another "
        "process slows decode in proportion instead of stalling every parallel region",
    )
    log_level: str = option(
        "info", "logging level of entry points", ("debug", "info", "warning", "error")
    )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_options(cls, **options: Any) -> EngineConfig:
        """Build a resolved config; unknown options raise :class:`ConfigError` listing valid ones."""
        valid = set(cls.field_names())
        unknown = sorted(k for k in options if k not in valid)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown}; valid options are: {', '.join(sorted(valid))}"
            )
        return cls(**options).resolve()

    def replace(self, **changes: Any) -> EngineConfig:
        return dataclasses.replace(self, **changes).resolve()

    def resolve(self) -> EngineConfig:
        """Validate every field and derive option-only defaults. Idempotent."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            check_type(f.name, str(f.type), value)
            if choices and value not in choices:
                raise ConfigError(f"{f.name}={value!r} is invalid; choose one of {list(choices)}")
        for name in (
            "max_total_tokens",
            "max_running_requests",
            "context_length",
            "num_threads",
            "max_n",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_prefill_tokens < 1:
            raise ConfigError(f"max_prefill_tokens must be >= 1, got {self.max_prefill_tokens}")
        chunk = self.chunked_prefill_size
        if chunk is not None and chunk != -1 and chunk < 1:
            raise ConfigError("chunked_prefill_size must be >= 1, or -1 to disable chunking")
        if self.stream_interval < 1:
            raise ConfigError(f"stream_interval must be >= 1, got {self.stream_interval}")
        if self.schedule_aging_tokens_per_pass < 0:
            raise ConfigError("schedule_aging_tokens_per_pass must be >= 0 (0 disables aging)")
        if self.grammar_compile_timeout <= 0:
            raise ConfigError("grammar_compile_timeout must be > 0")
        if self.grammar_compile_workers < 1:
            raise ConfigError("grammar_compile_workers must be >= 1")
        if self.grammar_compile_memory_mb < 0:
            raise ConfigError("grammar_compile_memory_mb must be >= 0 (0 = no limit)")
        if self.grammar_max_spec_chars < 1:
            raise ConfigError("grammar_max_spec_chars must be >= 1")
        if self.schedule_conservativeness <= 0:
            raise ConfigError("schedule_conservativeness must be > 0")
        if self.disable_overlap_schedule and self.enable_overlap_schedule:
            raise ConfigError(
                "pass at most one of disable_overlap_schedule / enable_overlap_schedule"
            )
        if self.mem_fraction_static is not None and not 0 < self.mem_fraction_static < 1:
            raise ConfigError(
                f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}"
            )

        changes: dict[str, Any] = {}
        if self.model_path is None:
            changes["model_path"] = BUNDLED_MODEL
        model_path = changes.get("model_path", self.model_path)
        if not os.path.isdir(model_path):  # a Hub id: a local snapshot from here on
            from radixlm.models.hub import resolve_model_path

            model_path = changes["model_path"] = resolve_model_path(
                model_path, self.revision, self.download_dir
            )
        if self.tokenizer_path is None:
            changes["tokenizer_path"] = model_path
        elif not os.path.isdir(self.tokenizer_path):
            from radixlm.models.hub import resolve_model_path

            changes["tokenizer_path"] = resolve_model_path(
                self.tokenizer_path, None, self.download_dir
            )
        if self.device == "auto":
            changes["device"] = _default_device()
        device = changes.get("device", self.device)
        if device == "cuda" and not _cuda_available():
            raise ConfigError("device='cuda' requested but torch.cuda.is_available() is False")
        for name in ("tp_size", "dp_size"):
            if getattr(self, name) != 1:
                raise ConfigError(
                    f"{name}={getattr(self, name)}: this server runs one rank and one replica "
                    f"(tensor and data parallelism are not built yet); pass {name} 1, or run "
                    "several servers behind sglang-router"
                )
        if self.cuda_graph_max_bs < 1:
            raise ConfigError(f"cuda_graph_max_bs must be >= 1, got {self.cuda_graph_max_bs}")
        if self.quantization != "none" and (device != "cpu" or self.cpu_kernels == "torch"):
            raise ConfigError(
                f"quantization={self.quantization} runs on the native CPU kernels only "
                f"(device=cpu, cpu_kernels auto or native); got device={device}, "
                f"cpu_kernels={self.cpu_kernels}"
            )
        if self.attention_backend == "cpu_native" and (
            device != "cpu" or self.cpu_kernels == "torch"
        ):
            raise ConfigError(
                "attention_backend=cpu_native needs device=cpu and the native kernels"
            )
        if self.attention_backend == "auto":
            changes["attention_backend"] = _default_attention_backend(device, self.cpu_kernels)
        elif (
            self.attention_backend in ("triton", "flashinfer")
            and device != "cuda"
            and not (
                # Triton's interpreter runs the kernels on CPU tensors (slowly): tests only
                self.attention_backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
            )
        ):
            raise ConfigError(
                f"attention_backend={self.attention_backend!r} needs device='cuda'; "
                "use torch_native (or auto) on CPU"
            )
        if self.mem_fraction_static is None:
            changes["mem_fraction_static"] = 0.85 if device == "cuda" else 0.2
        if chunk is None:
            # NOTE: on CPU a 2048-token chunk keeps prefill activations (and so peak RSS) small
            # at no measurable throughput cost; GPUs want larger chunks to fill the device.
            chunk = changes["chunked_prefill_size"] = 8192 if device == "cuda" else 2048
        if chunk != -1 and chunk > self.max_prefill_tokens:
            changes["max_prefill_tokens"] = chunk
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def overlap_schedule(self) -> bool:
        """Whether batch N+1 is scheduled while batch N runs (resolved config only)."""
        if self.disable_overlap_schedule:
            return False
        return self.enable_overlap_schedule or self.device == "cuda"

    @property
    def chunk_size(self) -> int | None:
        """Chunked prefill size, or None when chunking is disabled."""
        return None if self.chunked_prefill_size == -1 else self.chunked_prefill_size


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
}


def check_type(name: str, annotation: str, value: Any) -> None:
    """Check ``value`` against a field annotation such as ``"int | None"``."""
    parts = [p.strip() for p in annotation.split("|")]
    if value is None and "None" in parts:
        return
    base = next(p for p in parts if p != "None")
    ok = isinstance(value, _TYPES[base]) and (base == "bool" or not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{name} must be of type {base}, got {value!r}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _default_attention_backend(device: str, cpu_kernels: str) -> str:
    """flashinfer if importable, else triton if importable, on CUDA; on CPU cpu_native unless
    the native kernels are off (the model runner falls back to torch_native if they fail to
    build); torch_native otherwise."""
    if device != "cuda":
        return "torch_native" if cpu_kernels == "torch" else "cpu_native"
    import importlib.util

    for name in ("flashinfer", "triton"):
        if importlib.util.find_spec(name) is not None:
            return name
    return "torch_native"


def _default_device() -> str:
    return "cuda" if _cuda_available() else "cpu"
