"""Messages between the server's processes (main ↔ scheduler ↔ detokenizer).

Plain dataclasses, encoded explicitly by :mod:`radixlm.server.codec`. Flow:

    main (TokenizerManager) --GenerateReqs / AbortReq / FlushCacheReq / GetStatsReq--> scheduler
    scheduler --BatchOutputs--> detokenizer --BatchTextOutputs--> main
    scheduler --SchedulerReady / RequestRejected / ControlReply / Heartbeat--> main
    detokenizer --DetokenizerReady--> main
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from radixlm.scheduler.io import AbortRequest, AbortRequests, ReqOutput, TokenizedRequest


@dataclass
class GenerateReqs:
    """One HTTP call's requests; the scheduler queues all of them or none."""

    requests: list[TokenizedRequest]


@dataclass
class FlushCacheReq:
    pass


@dataclass
class GetStatsReq:
    top_prefixes: int = 0  # > 0: add the radix tree's summary with this many prefixes


@dataclass
class SchedulerReady:
    """Start-up handshake: the limits the front end validates requests against."""

    max_total_tokens: int
    max_running_requests: int
    context_length: int  # prompt + output tokens one request may reach
    vocab_size: int
    dtype: str
    device: str
    architecture: str
    attention_backend: str = "torch_native"  # the one in use (after any fallback)
    cuda_graph_mb: float = 0.0

    @classmethod
    def from_runner(cls, runner: Any) -> SchedulerReady:
        """What a loaded ``ModelRunner`` reports (the offline engine's server info too)."""
        lim = runner.limits
        return cls(
            max_total_tokens=lim.max_total_tokens,
            max_running_requests=lim.max_running_requests,
            context_length=lim.max_req_len,
            vocab_size=runner.vocab_size,
            dtype=str(runner.dtype).replace("torch.", ""),
            device=str(runner.device),
            architecture=runner.model_config.architecture,
            attention_backend=runner.config.attention_backend,
            cuda_graph_mb=runner.graph_mb,
        )

    def server_info(self) -> dict[str, Any]:
        """The ``get_server_info`` fields these limits answer (SGLang's names)."""
        return {
            "max_total_num_tokens": self.max_total_tokens,
            "max_running_requests": self.max_running_requests,
            "context_length": self.context_length,
            "max_req_input_len": self.context_length - 1,
            "dtype": self.dtype,
            "device": self.device,
            "attention_backend": self.attention_backend,
            "cuda_graph_mb": self.cuda_graph_mb,
        }


@dataclass
class SchedulerFailed:
    message: str


@dataclass
class DetokenizerReady:
    pass


@dataclass
class RequestRejected:
    """The scheduler refused a ``GenerateReqs`` (nothing was queued)."""

    rids: list[str]
    message: str
    status: int = 400


@dataclass
class ControlReply:
    kind: str  # "flush_cache" | "stats"
    ok: bool
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Heartbeat:
    """Sent by the scheduler about once a second, busy or idle: liveness plus gauges."""

    stats: dict[str, Any]


@dataclass
class BatchOutputs:
    outputs: list[ReqOutput]


@dataclass
class BatchTextOutputs:
    """``text_deltas[i]`` is the newly visible text of ``outputs[i]``."""

    outputs: list[ReqOutput]
    text_deltas: list[str]


__all__ = [
    "AbortRequest",
    "AbortRequests",
    "BatchOutputs",
    "BatchTextOutputs",
    "ControlReply",
    "DetokenizerReady",
    "FlushCacheReq",
    "GenerateReqs",
    "GetStatsReq",
    "Heartbeat",
    "RequestRejected",
    "SchedulerFailed",
    "SchedulerReady",
]
