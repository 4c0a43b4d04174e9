"""``OpenAI``: run DSL programs on any OpenAI-compatible API through the ``openai`` SDK.

Chat models get the program's ``messages`` (so a ``gen`` must come right after an assistant
role begins); completion models get its text. Sampling maps through
``SamplingParams.to_openai()``. ``regex`` / ``json_schema`` (and ``dtype``) have no OpenAI
field: they go as ``extra_body`` to servers that accept SGLang's extras (RadixLM, SGLang; on by
default when ``base_url`` is given) and are otherwise ignored with a warning. ``select`` scores
the choices with ``echo=True, logprobs=1, max_tokens=0`` on completion models.

The ``openai`` package is imported when a backend is built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from radixlm_lang.backend.base import Backend, ChoicesDecision, Prompt
from radixlm_lang.chat_template import get_chat_template_by_model_path
from radixlm_lang.choices import heal_and_normalize, token_length_normalized
from radixlm_lang.tools import ToolOutput, ToolsUnsupportedError

logger = logging.getLogger(__name__)

# OpenAI's own models that take the completions API (every other name: chat).
COMPLETION_MODEL_PREFIXES = ("gpt-3.5-turbo-instruct", "davinci", "babbage")


class ChatPositionError(RuntimeError):
    """A chat-model ``gen`` that does not directly follow the start of an assistant turn."""


class OpenAI(Backend):
    """``OpenAI(model_name, base_url=None, api_key=None, is_chat_model=None,
    chat_template=None, sglang_extras=None, **client_kwargs)``.

    ``is_chat_model=None`` guesses from the name (OpenAI's instruct/base models are completion
    models). ``sglang_extras`` (default: ``base_url is not None``) sends ``regex`` /
    ``json_schema`` as ``extra_body``.
    """

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        is_chat_model: bool | None = None,
        chat_template: Any = None,
        sglang_extras: bool | None = None,
        **client_kwargs: Any,
    ) -> None:
        import openai

        self.model_name = model_name
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, **client_kwargs)
        if is_chat_model is None:
            is_chat_model = not model_name.startswith(COMPLETION_MODEL_PREFIXES)
        self.is_chat_model = is_chat_model
        self.sglang_extras = base_url is not None if sglang_extras is None else sglang_extras
        self.chat_template = chat_template or get_chat_template_by_model_path(model_name)

    def get_model_name(self) -> str:
        return self.model_name

    def get_chat_template(self) -> Any:
        return self.chat_template

    # ---- generation ------------------------------------------------------------------------
    def _request(self, prompt: Prompt, params: Any) -> dict[str, Any]:
        """Keyword arguments of ``completions.create`` / ``chat.completions.create``."""
        kwargs: dict[str, Any] = {"model": self.model_name, **params.to_openai()}
        native = params.to_native()  # regex here includes dtype's regex
        extras = {k: native[k] for k in ("regex", "json_schema") if native.get(k) is not None}
        if extras:
            if self.sglang_extras:
                kwargs["extra_body"] = extras
            else:
                logger.warning(
                    "%s is ignored by the OpenAI backend (pass sglang_extras=True for a "
                    "RadixLM/SGLang server)",
                    "/".join(extras),
                )
        if self.is_chat_model:
            prefix = self.chat_template.role_prefix_and_suffix["assistant"][0]
            if not prompt.text.endswith(prefix):
                raise ChatPositionError(
                    "with a chat model, sgl.gen must come right after sgl.assistant begins "
                    "(e.g. s += sgl.assistant(sgl.gen('answer'))); text in the assistant "
                    "turn before the gen cannot be sent"
                )
            kwargs["messages"] = prompt.messages
        else:
            kwargs["prompt"] = prompt.text
        return kwargs

    def _create(self, kwargs: dict[str, Any], stream: bool = False) -> Any:
        api = self.client.chat.completions if self.is_chat_model else self.client.completions
        return api.create(**kwargs, stream=stream)

    def generate(self, prompt: Prompt, params: Any) -> tuple[Any, dict[str, Any]]:
        """The text (a list of texts when ``n > 1``, as SGLang) and its meta_info."""
        resp = self._create(self._request(prompt, params))
        if self.is_chat_model:
            texts = [c.message.content or "" for c in resp.choices]
        else:
            texts = [c.text for c in resp.choices]
        meta = {
            "id": resp.id,
            "finish_reason": resp.choices[0].finish_reason,
            "prompt_tokens": resp.usage.prompt_tokens if resp.usage else None,
            "completion_tokens": resp.usage.completion_tokens if resp.usage else None,
        }
        return (texts[0] if len(texts) == 1 else texts), meta

    def generate_tools(self, prompt: Prompt, params: Any, tools: Any) -> ToolOutput:
        """A chat completion with the gen's ``tools`` / ``tool_choice`` /
        ``parallel_tool_calls`` as given; the calls are read from ``message.tool_calls``."""
        if not self.is_chat_model:
            raise ToolsUnsupportedError(
                f"{self.model_name!r} is used as a completion model; tool calls need the chat "
                "API (is_chat_model=True)"
            )
        kwargs = self._request(prompt, params)
        if kwargs.get("n", 1) != 1:
            raise ValueError("a gen with tools takes n=1")
        kwargs.update(tools.body)
        resp = self._create(kwargs)
        choice = resp.choices[0]
        msg = choice.message
        calls = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in msg.tool_calls or []
        ]
        meta = {
            "id": resp.id,
            "finish_reason": choice.finish_reason,
            "prompt_tokens": resp.usage.prompt_tokens if resp.usage else None,
            "completion_tokens": resp.usage.completion_tokens if resp.usage else None,
        }
        content = msg.content or ""
        return ToolOutput(content, content, calls, meta)

    def generate_stream(self, prompt: Prompt, params: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        kwargs = self._request(prompt, params)
        if kwargs.get("n", 1) != 1:
            raise ValueError("streaming supports n=1 only")
        for chunk in self._create(kwargs, stream=True):
            if not chunk.choices:
                continue
            c = chunk.choices[0]
            delta = (c.delta.content if self.is_chat_model else c.text) or ""
            yield delta, {"id": chunk.id, "finish_reason": c.finish_reason}

    # ---- select ----------------------------------------------------------------------------
    def _prompt_logprobs(self, texts: list[str]) -> list[list[list[Any]]]:
        """``[[logprob, None, token_text], ...]`` for every token of each text (echo)."""
        import openai

        try:
            resp = self.client.completions.create(
                model=self.model_name,
                prompt=texts,
                echo=True,
                logprobs=1,
                max_tokens=0,
                temperature=0,
            )
        except openai.BadRequestError as e:
            raise NotImplementedError(
                f"select needs prompt logprobs (echo=True, logprobs=1, max_tokens=0), which "
                f"this server refused: {e}"
            ) from e
        out: list[list[list[Any]]] = [[] for _ in texts]
        for c in resp.choices:
            lp = c.logprobs
            if lp is None or lp.token_logprobs is None:
                raise NotImplementedError("select needs prompt logprobs; the server sent none")
            out[c.index] = [[v, None, t] for v, t in zip(lp.token_logprobs, lp.tokens)]
        return out

    def select(
        self, prompt: Prompt, choices: list[str], temperature: float, choices_method: Any = None
    ) -> ChoicesDecision:
        """Like the native backends (§1.9) with token texts from echoed logprobs: learn the
        prompt's token count P, score each ``prompt + choice`` from P - 2, heal, normalize."""
        method = choices_method if choices_method is not None else token_length_normalized
        if self.is_chat_model:
            raise NotImplementedError(
                "select needs the logprobs of given text, which chat APIs do not return; use a "
                "completion model (is_chat_model=False) or a native backend (RuntimeEndpoint)"
            )
        if getattr(method, "requires_unconditional_logprobs", False):
            raise NotImplementedError(
                "unconditional_likelihood_normalized needs token ids; use a native backend"
            )
        if temperature > 1e-5:
            raise ValueError(f"select needs temperature 0, got {temperature}")
        prompt_len = len(self._prompt_logprobs([prompt.text])[0])
        scored = self._prompt_logprobs([prompt.text + c for c in choices])
        start = max(prompt_len - 2, 0)
        input_lps, normalized = heal_and_normalize(prompt.text, [s[start:] for s in scored])
        return method(
            choices=choices,
            normalized_prompt_logprobs=normalized,
            input_token_logprobs=input_lps,
            output_token_logprobs=[[] for _ in choices],
            unconditional_token_logprobs=None,
        )
