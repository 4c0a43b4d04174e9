"""Typed (pydantic v2) models of the generation routes' response bodies and stream events:
the documented contract that ``/openapi.json`` publishes (``server/openapi.py`` attaches them;
the requests are in ``server/api_models.py``).

:class:`GenerateResponse` (``/generate``; a list of them for batches) and its stream event
:class:`GenerateChunk` (built by ``entrypoints/result.py``), :class:`CompletionResponse` /
:class:`CompletionChunk` and :class:`ChatCompletionResponse` / :class:`ChatCompletionChunk`
(built by ``server/openai_results.py``), and the error bodies of both APIs.

Invariant: every response the server sends validates against its model. The models forbid
fields they do not declare, so a field the result builders start sending without a model field
fails the server tests (``tests/server/test_api_responses.py``, the OpenAPI fuzz test). A field
declared with :func:`absent` is left out of the JSON when it does not apply; it is ``null``
only where its type allows it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def absent(description: str) -> Any:
    """A field that is left out of the JSON when it does not apply (not sent as ``null``
    unless its type says so)."""
    return Field(None, description=description, json_schema_extra=_drop_default)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StopReason(_Response):
    type: Literal["stop"]
    matched: int | str | None = Field(
        description="the stop token id or string; null: the constraint completed"
    )


class LengthReason(_Response):
    type: Literal["length"]
    length: int


class AbortReason(_Response):
    type: Literal["abort"]
    message: str | None


FinishReason = Annotated[StopReason | LengthReason | AbortReason, Field(discriminator="type")]
# [logprob, token id, token text (with return_text_in_logprobs) | null]
LogprobEntry = tuple[float | None, int, str | None]


class UnenforcedKeyword(_Response):
    pointer: str
    keyword: str
    reason: str


class ConstraintReport(_Response):
    """How a constraint was enforced and whether the complete output satisfies it."""

    kind: str
    backend: str
    valid: bool | None = Field(description="null: not checked (output cut, or kind unchecked)")
    error: str | None
    unenforced: list[UnenforcedKeyword]


class MetaInfo(_Response):
    id: str
    finish_reason: FinishReason | None = Field(description="null while a stream runs")
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = Field(description="prompt tokens served from the prefix cache")
    e2e_latency: float = absent("seconds; absent until finished")
    constraint: ConstraintReport = absent("absent unless constrained and finished")
    input_token_logprobs: list[LogprobEntry] = absent("absent unless return_logprob")
    output_token_logprobs: list[LogprobEntry] = absent("absent unless return_logprob")
    input_top_logprobs: list[list[LogprobEntry] | None] = absent("absent unless top_logprobs_num")
    output_top_logprobs: list[list[LogprobEntry] | None] = absent("absent unless top_logprobs_num")


class GenerateResponse(_Response):
    """One ``/generate`` result; a batch (or ``n > 1``) answers a list, prompt-major."""

    text: str
    output_ids: list[int]
    meta_info: MetaInfo


class GenerateChunk(GenerateResponse):
    """A ``/generate`` stream event: the result so far, with cumulative ``text``."""

    index: int = absent("the result's position in a batch; absent unless a batch")


class ErrorDetail(_Response):
    message: str = Field(description="what is wrong and how to fix it")
    code: int | str
    type: str = absent("OpenAI error type (body-limit errors)")
    param: str | None = absent("the field to fix (body-limit errors: null)")


class ErrorResponse(_Response):
    """A native route's error (also a stream's last event)."""

    error: ErrorDetail


class OpenAIErrorDetail(_Response):
    message: str
    type: str = Field(description="invalid_request_error (4xx) or server_error (5xx)")
    param: str | None = Field(description="the request field to fix")
    code: int | str = Field(description="the HTTP status, or e.g. model_not_found")


class OpenAIErrorResponse(_Response):
    error: OpenAIErrorDetail


class PromptTokensDetails(_Response):
    cached_tokens: int


class Usage(_Response):
    prompt_tokens: int = Field(description="each distinct prompt counted once")
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CompletionLogprobs(_Response):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(_Response):
    index: int = Field(description="prompt index * n + sample")
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None = Field(description="null while streaming")
    matched_stop: int | str | None
    constraint: ConstraintReport = absent("absent unless constrained (streams: on the last)")


class _Completion(_Response):
    id: str
    created: int
    model: str


class CompletionResponse(_Completion):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(_Completion):
    """A ``/v1/completions`` stream event; with ``include_usage`` the last one has no choices
    and the ``usage``."""

    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage | None = absent("absent unless include_usage (null until the last chunk)")


class FunctionCall(_Response):
    name: str
    arguments: str = Field(description="a JSON object as text")


class ToolCall(_Response):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessageResponse(_Response):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] = absent("absent unless the model called tools")
    function_call: FunctionCall = absent("legacy functions: absent unless called")
    reasoning_content: str | None = absent("absent unless --reasoning-parser")


class TokenLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobWithTop(TokenLogprob):
    top_logprobs: list[TokenLogprob]


class ChatLogprobs(_Response):
    content: list[TokenLogprobWithTop]


ChatFinish = Literal["stop", "length", "tool_calls", "function_call"]


class ChatChoice(_Response):
    index: int
    message: ChatMessageResponse
    logprobs: ChatLogprobs | None
    finish_reason: ChatFinish
    matched_stop: int | str | None
    constraint: ConstraintReport = absent("absent unless constrained")


class ChatCompletionResponse(_Completion):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(_Response):
    name: str = absent("in a call's first delta")
    arguments: str


class ToolCallDelta(_Response):
    index: int
    id: str = absent("in a call's first delta")
    type: Literal["function"] = absent("in a call's first delta")
    function: FunctionCallDelta


class ChatDelta(_Response):
    role: Literal["assistant"] = absent("in each choice's first chunk")
    content: str = absent("new content text")
    reasoning_content: str = absent("new reasoning text")
    tool_calls: list[ToolCallDelta] = absent("a call: name first, then its arguments")
    function_call: FunctionCallDelta = absent("legacy functions")


class ChatChunkChoice(_Response):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: ChatFinish | None
    matched_stop: int | str | None = absent("absent in role and tool-call chunks")
    constraint: ConstraintReport = absent("on a constrained choice's last chunk")


class ChatCompletionChunk(_Completion):
    """A ``/v1/chat/completions`` stream event."""

    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice]
    usage: Usage | None = absent("absent unless include_usage (null until the last chunk)")
