"""Typed (pydantic v2) models of the generation routes' request bodies: the documented
contract that ``/openapi.json`` publishes (``server/openapi.py`` attaches them).
:class:`GenerateRequest` (``/generate``, with :class:`SamplingParams`), :class:`CompletionRequest`
(``/v1/completions``), :class:`ChatCompletionRequest` (``/v1/chat/completions``). The response
models live in ``server/api_responses.py``; the top-level ones are re-exported here, so this
module is the whole API contract.

NOTE: these models are documentation, not the validator. Requests are still validated by the
hand-written parsers (``native_request``, ``sampling_params``, ``openai_protocol``,
``chat_messages``, ``function_call.tools``), whose error messages name the field and say what
to fix; the models never run on the request path.

Invariants (``tests/unit/test_api_models.py``): each request model's fields are exactly the
fields its parser reads (``GENERATE_FIELDS`` | ``NULL_ONLY_FIELDS``,
``SamplingParams.valid_keys()``, ``COMPLETION_FIELDS``, ``CHAT_FIELDS``), with the types, ranges
and defaults the parser applies; JSON ``null`` means the default everywhere. The models are
strict like the parsers (``"true"`` is not a boolean, ``1`` is not a string). Rules across
fields or about the served model (exactly one of ``text`` / ``input_ids``, per-prompt list
lengths, token ids inside the vocabulary, ``n`` up to ``--max-n``, the prompt within the
context) are stated in the descriptions only.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic.json_schema import WithJsonSchema

from radixlm.server.api_responses import (  # noqa: F401  (re-exported: the response contract)
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionResponse,
    ErrorResponse,
    GenerateChunk,
    GenerateResponse,
    OpenAIErrorResponse,
)
from radixlm.server.native_request import DEFAULT_ONLY, at_default

# ---- field types -------------------------------------------------------------------------


class _Schema:
    """Adds JSON-schema keywords pydantic cannot derive (``not``, ``additionalProperties``)."""

    def __init__(self, **keywords: Any) -> None:
        self.keywords = keywords

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        schema.update(self.keywords)
        return schema


def _integral(x: Any) -> Any:
    """``2.0`` is the integer 2, as ``sampling_params`` reads it (and JSON Schema's integer)."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _whole(ge: int) -> Any:
    """An int >= ``ge``, or a float with such an integral value (``sampling_params``' ints)."""
    return Annotated[int, Field(ge=ge), BeforeValidator(_integral)]


WholeFrom0, WholeFrom1 = _whole(0), _whole(1)
NonEmptyStr = Annotated[str, Field(min_length=1)]
TokenId = Annotated[int, Field(ge=0, description="a token id (< the vocabulary size)")]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
# SGLang fields of features not built: accepted only as null or empty
EmptyList = Annotated[list[Any], Field(max_length=0)]
EmptyObject = Annotated[dict[str, Any], Field(max_length=0)]
NullOnly = Annotated[
    EmptyList | EmptyObject | None, Field(description="not supported: only null or empty")
]
EmptyStr = Annotated[str, Field(max_length=0)]
# SGLang sampling parameters of features not built: only null or empty
Unbuilt = Annotated[
    EmptyStr | EmptyList | EmptyObject | None,
    Field(description="not supported: only null or empty"),
]
Stop = NonEmptyStr | list[NonEmptyStr]
StopTokenIds = TokenId | list[TokenId]
# token id (decimal; the parser also tolerates surrounding whitespace) -> bias
LogitBias = Annotated[
    dict[
        Annotated[str, Field(pattern=r"^[0-9]+$")],
        Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)],
    ],
    _Schema(additionalProperties=False),
]
JsonSchemaValue = str | dict[str, Any] | bool  # a JSON schema, or its JSON text
Temperature = Annotated[float, Field(ge=0, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


def _not_zero(x: int) -> int:
    if x == 0:
        raise ValueError("top_k must be -1 (whole vocabulary) or >= 1")
    return x


TopK = Annotated[_whole(-1), AfterValidator(_not_zero), _Schema(**{"not": {"const": 0}})]
MinP = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
RepetitionPenalty = Annotated[float, Field(gt=0, le=2, allow_inf_nan=False)]


class _Request(BaseModel):
    """Strict like the parsers: ``"true"`` is not a boolean, ``1`` is not a string."""

    model_config = ConfigDict(strict=True, populate_by_name=True)


class _Open(_Request):
    """An OpenAI object: fields the server does not read are allowed and ignored."""

    model_config = ConfigDict(extra="allow")


# ---- /generate ---------------------------------------------------------------------------
class SamplingParams(_Request):
    """SGLang ``sampling_params``; at most one of ``regex``, ``json_schema``, ``ebnf``."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: WholeFrom0 | None = Field(
        128, description="0: prefill only; capped by the context"
    )
    min_new_tokens: WholeFrom0 | None = Field(0, description="<= max_new_tokens")
    stop: Stop | None = Field(None, description="stop strings (trimmed unless no_stop_trim)")
    stop_token_ids: StopTokenIds | None = None
    temperature: Temperature | None = Field(1.0, description="< 1e-6 is greedy")
    top_p: TopP | None = 1.0
    top_k: TopK | None = Field(-1, description="-1: the whole vocabulary; not 0")
    min_p: MinP | None = 0.0
    frequency_penalty: Penalty | None = 0.0
    presence_penalty: Penalty | None = 0.0
    repetition_penalty: RepetitionPenalty | None = 1.0
    n: WholeFrom1 | None = Field(1, description="samples per prompt (<= --max-n)")
    ignore_eos: bool | None = False
    skip_special_tokens: bool | None = True
    spaces_between_special_tokens: bool | None = True
    no_stop_trim: bool | None = False
    logit_bias: LogitBias | None = Field(None, description="token id -> bias added to its logit")
    sampling_seed: int | None = Field(None, description="reproducible sampling per request")
    stream_interval: WholeFrom1 | None = Field(None, description="tokens per stream chunk")
    regex: str | None = Field(None, description="constrain the output to this regex")
    json_schema: JsonSchemaValue | None = Field(
        None, description="constrain the output to this JSON schema (an object or JSON text)"
    )
    ebnf: str | None = Field(None, description="constrain the output to this grammar")
    structural_tag: Unbuilt = None
    stop_regex: Unbuilt = None
    custom_params: Unbuilt = None
    beam_width: Unbuilt = None
    watermark: Unbuilt = None


# one value for every prompt, or a list with one (nullable) value per prompt
LogprobStart = Annotated[int, Field(ge=-1)]
TopLogprobsNum = Annotated[int, Field(ge=0)]
PerPromptBool = bool | Annotated[list[bool | None], Field(min_length=1)]
PerPromptStart = LogprobStart | Annotated[list[LogprobStart | None], Field(min_length=1)]
PerPromptTop = TopLogprobsNum | Annotated[list[TopLogprobsNum | None], Field(min_length=1)]
PerPromptStr = str | Annotated[list[str | None], Field(min_length=1)]


class _GenerateHonoured(_Request):
    """SGLang-native ``/generate``: exactly one of ``text`` and ``input_ids``. One prompt
    answers an object; a list of prompts, or ``n > 1``, a list. Unknown fields are a 400."""

    model_config = ConfigDict(extra="forbid")

    text: NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1)] | None = Field(
        None, description="a prompt, or a batch of prompts"
    )
    input_ids: TokenIds | Annotated[list[TokenIds], Field(min_length=1)] | None = Field(
        None, description="a tokenized prompt, or a batch of them"
    )
    sampling_params: (
        SamplingParams | Annotated[list[SamplingParams | None], Field(min_length=1)] | None
    ) = Field(None, description="one for all prompts, or one per prompt")
    rid: str | Annotated[list[str], Field(min_length=1)] | None = Field(
        None, description="request id (batches: <rid>_<i>), or one per prompt"
    )
    return_logprob: PerPromptBool | None = False
    logprob_start_len: PerPromptStart | None = Field(
        -1, description="first prompt position with logprobs; -1: none"
    )
    top_logprobs_num: PerPromptTop | None = 0
    return_text_in_logprobs: bool | None = False
    stream: bool | None = Field(False, description="SSE events with cumulative text")
    cache_salt: PerPromptStr | None = Field(None, description="prefix-cache namespace")
    extra_key: PerPromptStr | None = Field(None, description="prefix-cache namespace")
    require_reasoning: bool | None = Field(
        False, description="with --reasoning-parser: the constraint starts after the reasoning"
    )
    model: str | None = Field(
        None, description="as sglang-router passes the client's through: a string"
    )


def _at_default(default: Any) -> Any:
    """A field of SGLang's schema that is not built here: only its default (what
    ``native_request.at_default`` accepts) is valid."""

    def check(value: Any) -> Any:
        if not at_default(value, default):
            raise ValueError(f"not supported: only the default, {json.dumps(default)}")
        return value

    if default is None:
        schema = {"anyOf": [{"type": "null"}, {"const": ""}, {"type": "object", "maxProperties": 0},
                            {"type": "array", "items": {"type": "null"}}]}  # fmt: skip
    else:
        one = {"anyOf": [{"type": "null"}, {"const": default}]}
        schema = {"anyOf": [*one["anyOf"], {"type": "array", "items": one}]}
    note = f"SGLang's; not supported here: only its default ({json.dumps(default)}) is accepted"
    return Annotated[Any, AfterValidator(check), WithJsonSchema({**schema, "description": note})]


GenerateRequest = create_model(
    "GenerateRequest",
    __base__=_GenerateHonoured,
    __module__=__name__,
    __doc__=_GenerateHonoured.__doc__,
    **{name: (_at_default(default), None) for name, default in sorted(DEFAULT_ONLY.items())},
)


# ---- OpenAI requests ---------------------------------------------------------------------
class StreamOptions(_Open):
    include_usage: bool | None = Field(False, description="a last chunk with usage")


class _OpenAIRequest(_Open):
    """Fields both OpenAI routes read. Sampling fields named as natively are validated by the
    engine under the same name; ``model`` must be a served name (else 404)."""

    model: str | None = Field(None, description="a served model name; absent: the served one")
    n: int | None = Field(1, ge=1, description="samples per prompt (<= --max-n)")
    stream: bool | None = False
    stream_options: StreamOptions | None = Field(None, description="only with stream: true")
    rid: str | None = Field(None, description="the response id")
    cache_salt: str | None = Field(None, description="prefix-cache namespace")
    extra_key: str | None = Field(None, description="prefix-cache namespace")
    seed: int | None = Field(None, description="the native sampling_seed")
    stop: Stop | None = None
    min_tokens: int | None = Field(None, ge=0, description="the native min_new_tokens")
    temperature: Temperature | None = 1.0
    top_p: TopP | None = 1.0
    presence_penalty: Penalty | None = 0.0
    frequency_penalty: Penalty | None = 0.0
    logit_bias: LogitBias | None = Field(None, description="token id -> bias added to its logit")
    top_k: TopK | None = -1
    min_p: MinP | None = 0.0
    repetition_penalty: RepetitionPenalty | None = 1.0
    stop_token_ids: StopTokenIds | None = None
    no_stop_trim: bool | None = False
    ignore_eos: bool | None = False
    skip_special_tokens: bool | None = True
    spaces_between_special_tokens: bool | None = True
    regex: str | None = None
    json_schema: JsonSchemaValue | None = None
    ebnf: str | None = None


class CompletionRequest(_OpenAIRequest):
    """``/v1/completions``. Fields not listed are ignored (named in ``X-Ignored-Fields``)."""

    prompt: (
        NonEmptyStr
        | Annotated[list[NonEmptyStr], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    ) = Field(description="a prompt, prompts, token ids, or lists of token ids")
    max_tokens: int | None = Field(16, ge=0, description="null: until the context ends")
    suffix: EmptyStr | None = Field(None, description="not supported: only null or empty")
    best_of: int | None = Field(None, ge=1, description="must equal n")
    echo: bool | None = Field(False, description="prepend the prompt to each choice")
    logprobs: int | None = Field(None, ge=0, le=20, description="top alternatives per token")


class TextPart(_Open):
    type: Literal["text"] = Field(description="only text parts are served")
    text: str


Content = str | list[TextPart]


class FunctionCallParam(_Open):
    name: str
    arguments: str | dict[str, Any] | None = Field(None, description="a JSON object or its text")


class ToolCallParam(_Open):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallParam


class SystemMessage(_Open):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Open):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCallParam] | None = Field(None, description="calls it made ([]: none)")
    function_call: FunctionCallParam | None = Field(None, description="legacy: one call")
    name: str | None = None


class ToolMessage(_Open):
    role: Literal["tool"]
    content: Content
    tool_call_id: str = Field(description="the id of the call this answers")
    name: str | None = None


class FunctionMessage(_Open):
    """The legacy function-result role (a tool message)."""

    role: Literal["function"]
    content: Content
    name: str | None = None
    tool_call_id: str | None = None


ChatMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type", "object") != "object":
        raise ValueError("parameters must be a JSON schema of an object")
    return schema


ObjectSchema = Annotated[
    dict[str, Any],
    AfterValidator(_object_schema),
    _Schema(properties={"type": {"const": "object"}}),
]


class FunctionDefinition(_Open):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="unique among the tools")
    description: str | None = None
    parameters: ObjectSchema | None = Field(
        None, description="a JSON schema of an object; absent: no arguments"
    )
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: FunctionName


class ResponseFormatText(_Open):
    type: Literal["text"]


class ResponseFormatJsonObject(_Open):
    type: Literal["json_object"]


class JsonSchemaFormat(_Open):
    """OpenAI's ``name`` / ``description`` are accepted and not read."""

    schema_: dict[str, Any] = Field(alias="schema", description="the JSON schema")
    strict: bool | None = Field(None, description="true: a 400 unless enforced exactly")


class ResponseFormatJsonSchema(_Open):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema,
    Field(discriminator="type"),
]


class ChatCompletionRequest(_OpenAIRequest):
    """``/v1/chat/completions``. Send either ``tools``/``tool_choice`` or the legacy
    ``functions``/``function_call``; tools cannot be combined with another constraint
    (``response_format``, ``regex``, ``json_schema``, ``ebnf``). Fields not listed are ignored
    (named in ``X-Ignored-Fields``)."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=0, description="absent or null: until the context ends")
    max_completion_tokens: int | None = Field(None, ge=0, description="overrides max_tokens")
    response_format: ResponseFormat | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20, description="needs logprobs: true")
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="default: auto with tools, else none"
    )
    parallel_tool_calls: bool | None = True
    functions: list[FunctionDefinition] | None = Field(None, description="legacy tools")
    function_call: Literal["none", "auto"] | FunctionName | None = Field(
        None, description="legacy tool_choice"
    )
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="template variables")
    continue_final_message: bool | None = Field(
        False, description="continue the last message instead of starting a reply"
    )
    separate_reasoning: bool | None = Field(True, description="with --reasoning-parser")


REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/generate": GenerateRequest,
    "/v1/completions": CompletionRequest,
    "/v1/chat/completions": ChatCompletionRequest,
}
