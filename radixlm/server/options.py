"""``ServerConfig``: the options of the HTTP server (``radixlm serve``) on top of
:class:`radixlm.config.EngineConfig`, one field per flag (the CLI parser is generated from it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from radixlm.config import check_type, option
from radixlm.errors import ConfigError


@dataclass(frozen=True)
class ServerConfig:
    """Options of the HTTP server (``radixlm serve``) on top of :class:`EngineConfig`."""

    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(30000, "port to listen on")
    api_key: str | None = option(
        None, "require 'Authorization: Bearer <key>' on every route except /health*"
    )
    served_model_name: str | None = option(
        None,
        "the model's name on the OpenAI routes, or comma-separated aliases (the first is the one "
        "reported); a request naming another model is a 404 model_not_found. Default: the Hub "
        "id (org/name) of a Hub model, else the model directory's name. The model path, and "
        "'default', are always accepted",
    )
    admin_api_key: str | None = option(
        None,
        "key for the admin routes /abort_request and /flush_cache ('Authorization: Bearer "
        "<key>'); without it those routes answer loopback clients only",
    )
    api_key_file: str | None = option(
        None,
        "file of API keys, one 'KEY TENANT' per line ('#' comments): every route except "
        "/health* needs one of them, and each tenant's requests get their own prefix-cache "
        "namespace and their own counters in /metrics",
    )
    chat_template: str | None = option(
        None,
        "chat template for /v1/chat/completions: a name (chatml, llama-2-chat, "
        "llama-3-instruct, mistral, qwen, plain) or a Jinja file; default: the tokenizer's",
    )
    tool_call_parser: str | None = option(
        None,
        "how the model writes tool calls: hermes (Hermes/Qwen2.5/Qwen3), llama3_json, mistral; "
        "default: the one the chat template implies (requests with tools get a 400 if none)",
    )
    reasoning_parser: str | None = option(
        None,
        "split <think>...</think> reasoning from the answer in chat responses "
        "(reasoning_content): deepseek-r1 or qwen3; constraints then apply after the reasoning",
    )
    max_request_bytes: int = option(
        16 * 1024 * 1024, "largest request body accepted (bytes); a larger one is a 413"
    )
    enable_metrics: bool = option(False, "serve Prometheus metrics at /metrics")
    metrics_compat: str = option(
        "radixlm",
        "metric name prefix: radixlm (radixlm:...) or sglang (sglang:..., SGLang's names, so "
        "its Grafana dashboards work unchanged)",
        ("radixlm", "sglang"),
    )
    decode_log_interval: int = option(40, "log one batch-statistics line every N scheduler steps")
    watchdog_timeout: float = option(
        300.0, "seconds without a scheduler heartbeat before the server declares it hung and exits"
    )
    health_check_timeout: float = option(20.0, "seconds /health_generate waits for its token")
    graceful_shutdown_timeout: float = option(
        20.0,
        "on SIGTERM or SIGINT: stop accepting, let in-flight requests finish for this many "
        "seconds, then end each stream with an error event and each other request with a 503",
    )
    read_timeout: float = option(
        30.0,
        "seconds a client may take to send a request's headers, and again its body; a stalled "
        "connection is closed (a stalled body gets a 408)",
    )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def resolve(self) -> ServerConfig:
        for f in fields(self):
            check_type(f.name, str(f.type), getattr(self, f.name))
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        if self.decode_log_interval < 1:
            raise ConfigError("decode_log_interval must be >= 1")
        for name in ("watchdog_timeout", "health_check_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.graceful_shutdown_timeout < 0:
            raise ConfigError("graceful_shutdown_timeout must be >= 0")
        if self.served_model_name is not None and not self.model_names(""):
            raise ConfigError("served_model_name must name at least one model")
        if self.max_request_bytes < 1024:
            raise ConfigError(f"max_request_bytes must be >= 1024, got {self.max_request_bytes}")
        for name in ("api_key", "admin_api_key"):
            if getattr(self, name) == "":
                raise ConfigError(f"{name} must not be empty (omit it to disable it)")
        if self.api_key_file is not None:
            from radixlm.server.auth import load_api_keys

            load_api_keys(self.api_key_file)  # a bad file fails the start, before loading
        if self.tool_call_parser is not None:
            from radixlm.function_call.formats import get_format

            try:
                get_format(self.tool_call_parser)
            except KeyError as e:
                raise ConfigError(str(e.args[0])) from e
        if self.reasoning_parser is not None:
            from radixlm.reasoning import get_reasoning_format

            try:
                get_reasoning_format(self.reasoning_parser)
            except ValueError as e:
                raise ConfigError(str(e)) from e
        return self

    def model_names(self, model_path: str) -> list[str]:
        """The served names, the reported one first: ``--served-model-name``'s aliases, or
        the model directory's name."""
        if self.served_model_name is not None:
            return [n.strip() for n in self.served_model_name.split(",") if n.strip()]
        from radixlm.models.hub import repo_id_of

        return [repo_id_of(model_path) or os.path.basename(os.path.normpath(model_path))]
