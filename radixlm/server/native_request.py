"""The native ``/generate`` body → scheduler requests: the field check, the cheap limits that
need no tokenizing, and ``require_reasoning``. Pure (no I/O); the tokenizer manager calls it,
from a worker thread for long prompts.

Invariant: a body is either turned whole into requests or refused with a RequestError naming
the field; nothing is queued here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radixlm.entrypoints.request import build_requests
from radixlm.errors import RequestError
from radixlm.server.server_errors import check_model

# The native /generate body covers SGLang's GenerateReqInput field by field, as of this release
# (tests/fixtures/sglang_schema.json lists every field with its default and its kind here).
SGLANG_VERSION = "0.5.23"

# Honoured: served as SGLang serves them. ``model`` is not SGLang's (sglang-router forwards it).
GENERATE_FIELDS = {
    "text", "input_ids", "sampling_params", "rid", "return_logprob", "logprob_start_len",
    "top_logprobs_num", "return_text_in_logprobs", "stream", "cache_salt", "extra_key",
    "require_reasoning", "model",
}  # fmt: skip

# Accepted at their default value only (features not built here): name -> SGLang's default.
# What counts as the default: see ``at_default``; anything else is a 400 naming the field.
DEFAULT_ONLY: dict[str, Any] = {
    **dict.fromkeys(
        "session_id input_embeds image_data video_data audio_data mm_hashes mm_content_hashes "
        "video_config watermark token_ids_logprob return_sampling_mask sampling_logprobs_mode "
        "modalities session_params lora_path lora_id custom_logit_processor "
        "positional_embed_overrides bootstrap_host bootstrap_port bootstrap_room "
        "bootstrap_pair_key decode_tp_size routed_dp_rank data_parallel_rank "
        "disagg_prefill_dp_rank routing_key conversation_id max_thinking_tokens priority "
        "custom_labels external_trace_header encoder_urls max_dynamic_patch min_dynamic_patch "
        "image_max_dynamic_patch video_max_dynamic_patch images_config mm_processor_kwargs "
        "multi_item_delimiter_indices token_indices_to_pool kv_hints".split()
    ),
    **dict.fromkeys(
        "use_audio_in_video return_flat_raw_top_logprobs return_flat_raw_output_top_logprobs "
        "return_flat_raw_top_logprobs_b64 return_hidden_states return_routed_experts "
        "return_indexer_topk background no_logs return_bytes return_entropy "
        "return_prompt_token_ids".split(),
        False,
    ),
    "log_metrics": True,
    "routed_experts_start_len": 0,
}
NULL_ONLY_FIELDS = frozenset(DEFAULT_ONLY)  # (the name predates the non-null defaults)

# Always refused, whatever the value: name -> why.
_INTERNAL = "it is set by SGLang's own HTTP server and tokenizer manager, never by a client"
REFUSED_FIELDS: dict[str, str] = dict.fromkeys(
    ("http_worker_ipc", "received_time", "need_wait_for_mm_inputs", "num_items_assigned"),
    _INTERNAL,
)


def at_default(value: Any, default: Any) -> bool:
    """Whether ``value`` means SGLang's ``default``: null; the default itself (same JSON type:
    ``0`` is not ``false``); for a null default also an empty string, list or object; or a
    list of such values, one per prompt of a batch (``"lora_path": [null, null]``)."""
    if value is None:
        return True
    if default is None:
        if isinstance(value, list):
            return all(v is None for v in value)
        return value in ("", {})
    if isinstance(value, list):
        return all(v is None or _same(v, default) for v in value)
    return _same(value, default)


def _same(value: Any, default: Any) -> bool:
    return type(value) is type(default) and value == default


def check_generate_fields(
    obj: dict[str, Any], models: tuple[frozenset[str], list[str]] | None = None
) -> None:
    """The field check: unknown names, SGLang's refused fields, its default-only fields set to
    something else, and ``model``."""
    known = GENERATE_FIELDS | NULL_ONLY_FIELDS | REFUSED_FIELDS.keys()
    unknown = sorted(k for k in obj if k not in known)
    if unknown:
        raise RequestError(
            f"unknown field(s) {unknown}; valid fields: {', '.join(sorted(GENERATE_FIELDS))}"
        )
    for k in sorted(obj.keys() & REFUSED_FIELDS.keys()):
        raise RequestError(f"field {k!r} is not accepted: {REFUSED_FIELDS[k]}")
    for k in sorted(obj.keys() & NULL_ONLY_FIELDS):
        if not at_default(obj[k], DEFAULT_ONLY[k]):
            raise RequestError(
                f"field {k!r} is not supported by this server (it is SGLang's; only its "
                f"default, {json.dumps(DEFAULT_ONLY[k])}, is accepted)"
            )
    accepted, served = models if models is not None else (None, ())
    check_model(obj.get("model"), accepted, served)


# Text prompts longer than this are tokenized in a worker thread, so that /health and the other
# routes keep answering while a huge prompt is encoded (the Rust tokenizer releases the GIL).
OFF_LOOP_CHARS = 65_536


@dataclass(frozen=True)
class NativeLimits:
    tokenizer: Any
    vocab_size: int
    context_length: int
    max_token_chars: int  # the longest token's text (vocabulary form: never shorter than decoded)
    max_n: int
    reasoning: Any  # radixlm.server.tool_setup.ReasoningSetup | None
    # (accepted, served) names for a ``model`` field, the OpenAI routes' rule (None: any string)
    models: tuple[frozenset[str], list[str]] | None = None

    @classmethod
    def for_server(
        cls,
        tokenizer: Any,
        vocab_size: int,
        context_length: int,
        max_n: int,
        reasoning: Any,
        models: tuple[frozenset[str], list[str]] | None = None,
    ) -> NativeLimits:
        longest = max((len(t) for t in tokenizer.get_vocab()), default=1) if tokenizer else 1
        return cls(tokenizer, vocab_size, context_length, longest, max_n, reasoning, models)


def prompt_chars(obj: Any, limits: NativeLimits) -> int:
    """Characters of the text prompts; a 400 at once, before any tokenizing, for a prompt too
    long to fit the context whatever it tokenizes to (every token covers at most
    ``max_token_chars`` characters)."""
    text = obj.get("text") if isinstance(obj, dict) else None
    prompts = [text] if isinstance(text, str) else text if isinstance(text, list) else []
    lengths = [len(p) for p in prompts if isinstance(p, str)]
    limit = limits.context_length * limits.max_token_chars
    if lengths and max(lengths) > limit:
        raise RequestError(
            f"the prompt has {max(lengths)} characters, more than {limits.context_length} tokens "
            f"(the context length) can hold with this tokenizer (at most {limit}); shorten it"
        )
    return sum(lengths)


def reasoning_markers(require_reasoning: bool | None, reasoning: Any) -> tuple[int, int] | None:
    """``require_reasoning``: the constraint applies after the model's reasoning."""
    if not require_reasoning:
        return None
    if reasoning is None:
        raise RequestError(
            "require_reasoning needs a server started with --reasoning-parser (deepseek-r1 | qwen3)"
        )
    if reasoning.marker_ids is None:
        fmt = reasoning.fmt
        raise RequestError(
            f"require_reasoning: {fmt.start!r} / {fmt.end!r} are not single tokens of this "
            "model's tokenizer, so a constraint cannot start where the reasoning ends"
        )
    return reasoning.marker_ids


def parse_generate(
    obj: Any,
    limits: NativeLimits,
    check_schema: Callable[[str], None] | None = None,
):
    """``(requests, metas, is_batch)`` of a ``/generate`` body (request ids as the client gave
    them; the tokenizer manager makes them unique); ``check_schema``: the strict JSON-schema check (``--json-schema-unenforced reject``)."""
    if not isinstance(obj, dict):
        raise RequestError("the request body must be a JSON object")
    check_generate_fields(obj, limits.models)
    for k in ("return_text_in_logprobs", "stream", "require_reasoning"):
        if obj.get(k) is not None and not isinstance(obj[k], bool):
            raise RequestError(f"{k} must be true or false, got {obj[k]!r}")
    requests, metas, is_batch = build_requests(
        text=obj.get("text"),
        input_ids=obj.get("input_ids"),
        sampling_params=obj.get("sampling_params"),
        rid=obj.get("rid"),
        return_logprob=obj.get("return_logprob"),
        logprob_start_len=obj.get("logprob_start_len"),
        top_logprobs_num=obj.get("top_logprobs_num"),
        return_text_in_logprobs=bool(obj.get("return_text_in_logprobs")),
        stream=bool(obj.get("stream")),
        tokenizer=limits.tokenizer,
        vocab_size=limits.vocab_size,
        cache_salt=obj.get("cache_salt"),
        extra_key=obj.get("extra_key"),
        reasoning_markers=reasoning_markers(obj.get("require_reasoning"), limits.reasoning),
        max_n=limits.max_n,
    )
    for r in requests:
        if len(r.input_ids) >= limits.context_length:
            raise RequestError(
                f"the prompt has {len(r.input_ids)} tokens but this server accepts at most "
                f"{limits.context_length - 1} (context length {limits.context_length}); "
                "shorten the prompt"
            )
        if check_schema is not None and r.sampling.json_schema is not None:
            check_schema(r.sampling.json_schema)
    return requests, metas, is_batch
