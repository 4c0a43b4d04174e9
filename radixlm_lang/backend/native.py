"""``NativeBackend``: every DSL operation expressed as SGLang-native ``/generate`` bodies.

The HTTP endpoint and the in-process engine differ only in how a body is delivered, so this
class turns ``gen`` / ``select`` / ``cache_prefix`` into bodies once, and subclasses implement
two transports: ``_call(body)`` (one result dict, or a list for a batch) and ``_stream(body)``
(result dicts whose ``text`` is cumulative, as the native API streams them).

``select`` follows SGLang's ``RuntimeEndpoint`` exactly (SGLang's frontend, §1.9 of the spec):
prefill the prompt to learn its token count ``P``; score every ``prompt + choice`` in one batch
from ``max(P - 2, 0)`` (two tokens early, so re-tokenization at the boundary — "token healing" —
is scored too); drop the first scored token when it still belongs to the prompt; optionally a
third call scores the choice tokens without context for ``unconditional_likelihood_normalized``.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

from radixlm_lang.backend.base import Backend, ChoicesDecision, Prompt
from radixlm_lang.chat_template import get_chat_template, get_chat_template_by_model_path
from radixlm_lang.choices import heal_and_normalize, token_length_normalized
from radixlm_lang.global_config import global_config
from radixlm_lang.tools import ChatToolRenderer, ToolOutput, ToolsUnsupportedError

logger = logging.getLogger(__name__)


class SelectError(ValueError):
    """``select`` was called with arguments the scoring method cannot handle."""


class NativeBackend(Backend):
    """A backend whose requests are native ``/generate`` bodies (see the module docstring).

    Subclasses implement ``_call`` / ``_stream`` plus ``flush_cache`` / ``get_server_info``,
    and set ``model_path`` and ``chat_template_name`` (the template comes from the name, else
    from the model path).
    """

    model_path: str = ""
    chat_template_name: str | None = None
    _chat_template: Any = None

    def get_model_name(self) -> str:
        return self.model_path

    def get_chat_template(self) -> Any:
        if self._chat_template is None:
            if self.chat_template_name:
                self._chat_template = get_chat_template(self.chat_template_name)
            else:
                self._chat_template = get_chat_template_by_model_path(self.model_path)
        return self._chat_template

    @abstractmethod
    def _call(self, body: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        """Run one ``/generate`` body to completion: a dict, or a list for a batch body."""

    @abstractmethod
    def _stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Run a ``/generate`` body (``stream`` already set) yielding cumulative results."""

    def tool_renderer(self) -> ChatToolRenderer:
        """The model's chat template, tokenizer and tool-call format, for gens with tools
        (subclasses resolve them as the server does)."""
        raise ToolsUnsupportedError(
            f"{type(self).__name__} has no chat template to render tools with"
        )

    # ---- bodies ------------------------------------------------------------------------------
    def build_body(self, prompt: Prompt, params: Any) -> dict[str, Any]:
        """The ``/generate`` body of one ``gen``: text, sampling params, logprob fields, image."""
        sp = {
            "skip_special_tokens": global_config.skip_special_tokens_in_output,
            "spaces_between_special_tokens": global_config.spaces_between_special_tokens_in_out,
            **params.to_native(),  # dtype is already a regex there
        }
        body = {"text": prompt.text, "sampling_params": sp, **params.logprob_kwargs()}
        self._add_image(body, prompt)
        return body

    @staticmethod
    def _add_image(body: dict[str, Any], prompt: Prompt, copies: int | None = None) -> None:
        """Attach the prompt's image (the native API takes one per request)."""
        if not prompt.images:
            return
        if len(prompt.images) > 1:
            raise ValueError(
                f"the native API takes one image per request, but the prompt has "
                f"{len(prompt.images)}; split the program or use an OpenAI chat backend"
            )
        image = prompt.images[0]
        body["image_data"] = image if copies is None else [image] * copies

    # ---- Backend -----------------------------------------------------------------------------
    def generate(self, prompt: Prompt, params: Any) -> tuple[str, dict[str, Any]]:
        out = self._call(self.build_body(prompt, params))
        out = _single(out)
        return out["text"], out["meta_info"]

    def generate_tools(self, prompt: Prompt, params: Any, tools: Any) -> ToolOutput:
        """The chat-completions path for a tool gen: ``prompt.messages`` rendered with the tools
        and tokenized like ``render_chat``, sent as ``input_ids`` with the template's stops and
        the format's grammar (``ebnf``), the output parsed by the format."""
        if prompt.images:
            raise ValueError("a gen with tools cannot be sent with images on a native backend")
        renderer = self.tool_renderer()
        ids, text = renderer.render(prompt.messages, tools)
        sp = {
            "skip_special_tokens": global_config.skip_special_tokens_in_output,
            "spaces_between_special_tokens": global_config.spaces_between_special_tokens_in_out,
            **params.to_native(),
        }
        renderer.constrain(sp, tools)
        body = {"input_ids": ids, "sampling_params": sp, **params.logprob_kwargs()}
        out = _single(self._call(body))
        return renderer.parse(out["text"], out["meta_info"], tools, text)

    def generate_stream(self, prompt: Prompt, params: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (delta, meta_info); deltas are cut from the server's cumulative text."""
        body = self.build_body(prompt, params)
        body["stream"] = True
        sent = 0
        for chunk in self._stream(body):
            if "error" in chunk:
                raise RuntimeError(f"generation failed mid-stream: {chunk['error']}")
            text = chunk.get("text", "")
            delta, sent = text[sent:], max(sent, len(text))
            yield delta, chunk.get("meta_info", {})

    def cache_prefix(self, text: str) -> None:
        self.prefill(Prompt(text))

    def prefill(self, prompt: Prompt) -> dict[str, Any]:
        """Prefill ``prompt`` (caching it) and return its ``meta_info``."""
        body: dict[str, Any] = {"text": prompt.text, "sampling_params": {"max_new_tokens": 0}}
        self._add_image(body, prompt)
        return _single(self._call(body))["meta_info"]

    def select(
        self,
        prompt: Prompt,
        choices: list[str],
        temperature: float,
        choices_method: Any = None,
    ) -> ChoicesDecision:
        """Pick one of ``choices`` by the logprobs the model gives ``prompt + choice``."""
        if temperature > 1e-5:
            raise SelectError(
                f"select scores choices by likelihood and needs temperature 0, got {temperature}"
            )
        if not choices:
            raise SelectError("select needs at least one choice")
        method = choices_method if choices_method is not None else token_length_normalized

        # 1. Prefill the shared prompt once (the scoring batch then hits the cache) and learn P.
        prefill_meta = self.prefill(prompt)
        prompt_len = prefill_meta["prompt_tokens"]

        # 2. Score every choice in one batch, from two tokens before the boundary.
        body: dict[str, Any] = {
            "text": [prompt.text + c for c in choices],
            "sampling_params": {"max_new_tokens": 0, "temperature": 0},
            "return_logprob": True,
            "return_text_in_logprobs": True,
            "logprob_start_len": max(prompt_len - 2, 0),
        }
        self._add_image(body, prompt, copies=len(choices))
        results = _batch(self._call(body), len(choices))
        input_lps = [list(r["meta_info"]["input_token_logprobs"]) for r in results]
        output_lps = [list(r["meta_info"].get("output_token_logprobs") or []) for r in results]

        # 3. Token healing: a first scored token that is still a suffix of the prompt did not
        #    merge with the choice; it is dropped and the mean corrected.
        input_lps, normalized = heal_and_normalize(prompt.text, input_lps)

        # 4. The choice tokens without context, for unconditional_likelihood_normalized.
        unconditional = None
        if getattr(method, "requires_unconditional_logprobs", False):
            uncond_body = {
                "input_ids": [[e[1] for e in entries] for entries in input_lps],
                "sampling_params": {"max_new_tokens": 0},
                "return_logprob": True,
                "logprob_start_len": 0,
            }
            uncond = _batch(self._call(uncond_body), len(choices))
            unconditional = [list(r["meta_info"]["input_token_logprobs"]) for r in uncond]

        decision = method(
            choices=choices,
            normalized_prompt_logprobs=normalized,
            input_token_logprobs=input_lps,
            output_token_logprobs=output_lps,
            unconditional_token_logprobs=unconditional,
        )
        # NOTE: not in SGLang's select meta_info; the prompt prefill's counts let callers (and the
        # debug trace) see how much of the prompt the prefix cache served.
        for key in ("prompt_tokens", "cached_tokens"):
            decision.meta_info.setdefault(key, prefill_meta.get(key))
        return decision


def _single(out: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    if isinstance(out, list):
        if len(out) != 1:
            raise RuntimeError(f"expected one result, the backend returned {len(out)}")
        return out[0]
    return out


def _batch(out: dict[str, Any] | list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    results = out if isinstance(out, list) else [out]
    if len(results) != n:
        raise RuntimeError(f"expected {n} results, the backend returned {len(results)}")
    return results
