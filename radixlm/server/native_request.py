"""The native ``/generate`` body → scheduler requests: the field check, the cheap limits that
need no tokenizing, and ``require_reasoning``. Pure (no I/O); the tokenizer manager calls it,
from a worker thread for long prompts.

Invariant: a body is either turned whole into requests or refused with a RequestError naming
the field; nothing is queued here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radixlm.entrypoints.request import build_requests
from radixlm.errors import RequestError

# Fields of the native /generate body. Accepted only when null (features not built yet).
GENERATE_FIELDS = {
    "text", "input_ids", "sampling_params", "rid", "return_logprob", "logprob_start_len",
    "top_logprobs_num", "return_text_in_logprobs", "stream", "cache_salt", "extra_key",
    "require_reasoning",
}  # fmt: skip
NULL_ONLY_FIELDS = {
    "input_embeds", "image_data", "video_data", "audio_data", "lora_path", "session_params",
    "custom_logit_processor", "return_hidden_states", "token_ids_logprob", "priority",
    "data_parallel_rank", "bootstrap_host", "bootstrap_port", "bootstrap_room", "log_metrics",
    "modalities", "stream_output",
}  # fmt: skip


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

    @classmethod
    def for_server(
        cls, tokenizer: Any, vocab_size: int, context_length: int, max_n: int, reasoning: Any
    ) -> NativeLimits:
        longest = max((len(t) for t in tokenizer.get_vocab()), default=1) if tokenizer else 1
        return cls(tokenizer, vocab_size, context_length, longest, max_n, reasoning)


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
    unknown = sorted(k for k in obj if k not in GENERATE_FIELDS | NULL_ONLY_FIELDS)
    if unknown:
        raise RequestError(
            f"unknown field(s) {unknown}; valid fields: {', '.join(sorted(GENERATE_FIELDS))}"
        )
    for k in NULL_ONLY_FIELDS:
        if obj.get(k) not in (None, [], {}):
            raise RequestError(f"field {k!r} is not supported by this server")
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
