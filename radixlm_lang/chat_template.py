"""Client-side chat templates: how the interpreter renders role blocks into prompt text.

A ``ChatTemplate`` maps each role to a (prefix, suffix) pair; its ``stop_str`` are always added
to every gen's stop strings; ``default_system_prompt`` (if any) is inserted before the first
non-system role. The registry is keyed by name; ``get_chat_template_by_model_path`` picks one by
substring tests on the lower-cased model path and falls back to ``default``. This is independent
of the server's Hugging Face (Jinja) templates: the frontend renders roles itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any


class ChatTemplateStyle(Enum):
    PLAIN = auto()
    LLAMA2 = auto()  # the system prompt is merged into the first [INST] block


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    default_system_prompt: str | None
    role_prefix_and_suffix: dict[str, tuple[str, str]]
    stop_str: tuple[str, ...] = ()
    image_token: str = "<image>"
    style: ChatTemplateStyle = ChatTemplateStyle.PLAIN

    def get_prefix_and_suffix(
        self, role: str, hist_messages: list[dict[str, Any]]
    ) -> tuple[str, str]:
        """The (prefix, suffix) of ``role`` given the messages already rendered."""
        prefix, suffix = self.role_prefix_and_suffix.get(role, ("", ""))
        if self.style is ChatTemplateStyle.LLAMA2:
            if role == "system" and not hist_messages:
                # The system block opens the first [INST]; the first user turn continues it.
                user_prefix = self.role_prefix_and_suffix.get("user", ("", ""))[0]
                return user_prefix + prefix, suffix
            if role == "user" and len(hist_messages) == 1 and hist_messages[0]["role"] == "system":
                return "", suffix
        return prefix, suffix


_TEMPLATES: dict[str, ChatTemplate] = {}
_MATCHERS: list[Callable[[str], str | None]] = []


def register_chat_template(template: ChatTemplate) -> None:
    _TEMPLATES[template.name] = template


def register_chat_template_matching_function(fn: Callable[[str], str | None]) -> None:
    _MATCHERS.append(fn)


def get_chat_template(name: str) -> ChatTemplate:
    try:
        return _TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; known: {sorted(_TEMPLATES)}") from None


def get_chat_template_by_model_path(model_path: str) -> ChatTemplate:
    path = model_path.lower()
    for match in _MATCHERS:
        name = match(path)
        if name is not None:
            return get_chat_template(name)
    return get_chat_template("default")


def _chatml_roles() -> dict[str, tuple[str, str]]:
    return {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ("system", "user", "assistant")}


def _llama3_roles() -> dict[str, tuple[str, str]]:
    return {
        r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>")
        for r in ("system", "user", "assistant")
    }


for _t in (
    ChatTemplate(
        "default",
        None,
        {"system": ("SYSTEM:", "\n"), "user": ("USER:", "\n"), "assistant": ("ASSISTANT:", "\n")},
    ),
    ChatTemplate(
        "claude",
        None,
        {"system": ("", ""), "user": ("\n\nHuman: ", ""), "assistant": ("\n\nAssistant:", "")},
    ),
    ChatTemplate("chatml", None, _chatml_roles(), stop_str=("<|im_end|>",)),
    ChatTemplate("qwen", "You are a helpful assistant.", _chatml_roles(), stop_str=("<|im_end|>",)),
    ChatTemplate(
        "qwen2-vl",
        "You are a helpful assistant.",
        _chatml_roles(),
        stop_str=("<|im_end|>",),
        image_token="<|vision_start|><|image_pad|><|vision_end|>",
    ),
    ChatTemplate(
        "vicuna_v1.1",
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        {"system": ("", " "), "user": ("USER:", " "), "assistant": ("ASSISTANT:", "</s>")},
        image_token=" <image>\n",
    ),
    ChatTemplate(
        "llama-2-chat",
        None,
        {
            "system": ("<<SYS>>\n", "\n<</SYS>>\n\n"),
            "user": ("[INST] ", " [/INST]"),
            "assistant": ("", " </s><s>"),
        },
        style=ChatTemplateStyle.LLAMA2,
    ),
    ChatTemplate(
        "llama-3-instruct",
        None,
        _llama3_roles(),
        stop_str=("<|eot_id|>",),
        image_token="<|image|>",
    ),
    ChatTemplate(
        "mistral",
        None,
        {
            "system": ("[SYSTEM_PROMPT] ", " [/SYSTEM_PROMPT]"),
            "user": ("[INST] ", " [/INST]"),
            "assistant": ("", " </s><s>"),
        },
        stop_str=("</s>",),
        image_token="[IMG]",
    ),
    ChatTemplate(
        "gemma-it",
        None,
        {
            "system": ("", ""),
            "user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
            "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n"),
        },
        stop_str=("<end_of_turn>",),
    ),
    ChatTemplate(
        "deepseek-v3",
        None,
        {
            "system": ("", ""),
            "user": ("<｜User｜>", ""),
            "assistant": ("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
        },
        stop_str=("<｜end▁of▁sentence｜>",),
    ),
    ChatTemplate(
        "yi-1.5",
        None,
        {
            "system": ("", ""),
            "user": ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
            "assistant": ("", "<|im_end|>\n"),
        },
        stop_str=("<|im_end|>",),
    ),
):
    register_chat_template(_t)


def _match_by_path(path: str) -> str | None:
    """Substring rules, most specific first (the path is already lower-cased)."""
    chat = any(k in path for k in ("chat", "instruct", "-it"))
    if "qwen" in path and "vl" in path:
        return "qwen2-vl"
    if "qwen" in path and chat:
        return "qwen"
    if ("llama-3" in path or "llama3" in path) and "instruct" in path:
        return "llama-3-instruct"
    if "llama-2" in path and "chat" in path:
        return "llama-2-chat"
    if ("mistral" in path or "mixtral" in path) and "instruct" in path:
        return "mistral"
    if "vicuna" in path or "llava-v1.5" in path:
        return "vicuna_v1.1"
    if "gemma" in path and chat:
        return "gemma-it"
    if "deepseek-v3" in path or "deepseek-r1" in path:
        return "deepseek-v3"
    if "yi-1.5" in path and "chat" in path:
        return "yi-1.5"
    if any(k in path for k in ("chatml", "hermes", "tinyllama")):
        return "chatml"
    return None


register_chat_template_matching_function(_match_by_path)
