"""Loading a ``FastTokenizer`` (``fast.py``): the checks that decide when it may replace the
transformers class, and the rebuild of the backend exactly as transformers 5 does it.

When it is used — :func:`load_fast_tokenizer` returns one only if ALL of these hold, else None
and ``load_tokenizer`` loads the transformers class as before (:func:`unsupported_reason` says
which condition failed):

- the directory has ``tokenizer.json`` and ``tokenizer_config.json``, and no
  ``additional_chat_templates/``; with no ``added_tokens_decoder`` in the config, also no legacy
  ``special_tokens_map.json`` / ``added_tokens.json`` (transformers would merge them);
- ``tokenizer_class`` is ``TokenizersBackend`` / ``PreTrainedTokenizerFast``, ``LlamaTokenizer``
  (``...Fast``) or ``GPT2Tokenizer`` (``...Fast``) — the class ``load_tokenizer`` would load;
  no ``auto_map`` (custom code);
- every config key is one this module reproduces or one transformers stores without effect on
  the API of ``fast.py`` (``_HANDLED_KEYS`` / ``_INERT_KEYS``); ``split_special_tokens`` is false;
  special tokens are strings or serialized ``AddedToken`` s; no model-specific ``*_token`` keys;
- ``tokenizer.json`` has a BPE model and no truncation / padding; for ``LlamaTokenizer`` it is
  not byte-level (the direct class then rebuilds it as SentencePiece-style, unlike AutoTokenizer);
- with more than 100k tokens, ``config.json`` does not trigger transformers' Mistral-regex check.

What it reproduces (transformers 5, ``<Class>.from_pretrained(path)``): the same Rust tokenizer,
built by the same steps — for ``TokenizersBackend`` the file as is; for ``LlamaTokenizer`` and
``GPT2Tokenizer`` the backend that class's ``__init__`` rebuilds from the file's vocab and merges
(Llama: ``Metaspace`` pre-tokenizer with prepend scheme ``first``, or ``always`` with
``legacy=true``, ``never`` with ``add_prefix_space=false``; byte-fallback decoder), keeping the
file's post-processor; then ``add_bos_token`` / ``add_eos_token`` ignored (tokenizer.json wins),
a missing post-processor replaced by ``$A:0``, and the added tokens and special tokens re-added
exactly as ``TokenizersBackend.__init__`` adds them. The API on top of it is ``fast.py``'s.
``tests/unit/test_tokenizer_fast.py`` checks all of it against transformers.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from radixlm.tokenizer.fast import SPECIAL_TOKENS, FastTokenizer

logger = logging.getLogger(__name__)

VERY_LARGE_INTEGER = int(1e30)  # transformers' default model_max_length

# tokenizer_class -> (kind, __init__ defaults of the named special tokens, class padding_side)
_BACKEND = ("backend", {}, "right")
_LLAMA = ("llama", {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}, "left")
_GPT2 = ("gpt2", dict.fromkeys(("unk_token", "bos_token", "eos_token"), "<|endoftext|>"), "right")
_CLASSES: dict[str, tuple[str, dict[str, str], str]] = {
    "TokenizersBackend": _BACKEND,
    "PreTrainedTokenizerFast": _BACKEND,
    "LlamaTokenizer": _LLAMA,
    "LlamaTokenizerFast": _LLAMA,
    "GPT2Tokenizer": _GPT2,
    "GPT2TokenizerFast": _GPT2,
}
# Config keys whose effect this module reproduces.
_HANDLED_KEYS = {
    *SPECIAL_TOKENS,
    *"tokenizer_class added_tokens_decoder extra_special_tokens additional_special_tokens".split(),
    *"chat_template clean_up_tokenization_spaces model_max_length padding_side".split(),
    *"truncation_side split_special_tokens legacy add_prefix_space backend init_inputs".split(),
}
# Config keys transformers drops (add_bos/eos_token: tokenizer.json wins; file paths: the
# directory's files win) or only stores, with no effect on the API above.
_INERT_KEYS = {
    *"add_bos_token add_eos_token is_local local_files_only name_or_path verbose".split(),
    *"use_default_system_prompt errors spaces_between_special_tokens sp_model_kwargs".split(),
    *"processor_class use_fast tokenizer_file vocab_file merges_file model_input_names".split(),
}
_MISTRAL_TYPES = ("mistral", "mistral3", "voxtral", "ministral", "pixtral")


def _is_added_token_dict(v: Any) -> bool:
    return isinstance(v, dict) and v.get("__type") == "AddedToken"


def _as_token(v: Any) -> Any:
    """transformers' ``convert_added_tokens``: a serialized AddedToken becomes one."""
    if _is_added_token_dict(v):
        return AddedToken(**{k: x for k, x in v.items() if k != "__type"})
    return v


class _Unsupported(Exception):
    """The fast path does not reproduce this tokenizer; the message says why."""


def unsupported_reason(path: str) -> str | None:
    """Why ``path`` needs the transformers tokenizer (None: the fast path reproduces it)."""
    result = _load(path)
    return result if isinstance(result, str) else None


def load_fast_tokenizer(path: str) -> FastTokenizer | None:
    """A :class:`FastTokenizer` equivalent to what transformers loads, or None (unsupported)."""
    result = _load(path)
    if isinstance(result, str):
        logger.debug("tokenizer %s: transformers class (%s)", path, result)
        return None
    return result


def _load(path: str) -> FastTokenizer | str:
    try:
        cfg = _check_config(path)
        kind = _CLASSES[cfg["tokenizer_class"]][0]
        tok_file = os.path.join(path, "tokenizer.json")
        if kind == "backend":  # NOTE: not parsed in Python: ~16 MB transient for a 50k BPE
            tok, data = Tokenizer.from_file(tok_file), None
            if type(tok.model).__name__ != "BPE":
                raise _Unsupported(f"{type(tok.model).__name__} model (only BPE is reproduced)")
            if tok.truncation is not None or tok.padding is not None:
                raise _Unsupported("tokenizer.json sets truncation / padding")
        else:
            with open(tok_file, encoding="utf-8") as f:
                data = json.load(f)
            tok = _rebuild(kind, cfg, data)
        return _build(path, cfg, tok, data)
    except _Unsupported as e:
        return str(e)
    except Exception as e:  # malformed files: transformers reports them
        return f"{type(e).__name__}: {e}"


def _check_config(path: str) -> dict[str, Any]:
    """The parsed tokenizer_config.json if the fast path handles it, else _Unsupported."""
    tok_file = os.path.join(path, "tokenizer.json")
    cfg_file = os.path.join(path, "tokenizer_config.json")
    if not (os.path.isfile(tok_file) and os.path.isfile(cfg_file)):
        raise _Unsupported("no tokenizer.json + tokenizer_config.json")
    with open(cfg_file, encoding="utf-8") as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict):
        raise _Unsupported("tokenizer_config.json is not an object")
    cls = cfg.get("tokenizer_class")
    if cls not in _CLASSES:
        raise _Unsupported(f"tokenizer_class {cls!r} is not one the fast path reproduces")
    unknown = sorted(set(cfg) - _HANDLED_KEYS - _INERT_KEYS)
    if unknown:
        raise _Unsupported(f"tokenizer_config.json keys not reproduced: {unknown}")
    if cfg.get("backend", "tokenizers") != "tokenizers":
        raise _Unsupported(f"backend {cfg['backend']!r}")
    if cfg.get("init_inputs"):
        raise _Unsupported("init_inputs")
    if cfg.get("split_special_tokens"):
        raise _Unsupported("split_special_tokens")
    sides = (cfg.get("padding_side", "right"), cfg.get("truncation_side", "right"))
    if not all(s in ("left", "right") for s in sides):
        raise _Unsupported("invalid padding_side / truncation_side")
    for key in SPECIAL_TOKENS:
        v = cfg.get(key)
        if not (v is None or isinstance(v, str) or _is_added_token_dict(v)):
            raise _Unsupported(f"{key} is neither a string nor a serialized AddedToken")
    extra = _extra_tokens(cfg)
    if extra is not None and not (
        isinstance(extra, (list, tuple))
        and all(isinstance(t, str) or _is_added_token_dict(t) for t in extra)
    ):
        raise _Unsupported("extra_special_tokens is not a list of tokens")
    template = cfg.get("chat_template")
    if template is not None and not isinstance(template, (str, list)):
        raise _Unsupported("chat_template is neither a string nor a list")
    if isinstance(template, list) and not all(
        isinstance(t, dict) and {"name", "template"} <= set(t) for t in template
    ):
        raise _Unsupported("chat_template list entries need name and template")
    if os.path.isdir(os.path.join(path, "additional_chat_templates")):
        raise _Unsupported("additional_chat_templates/")
    if "added_tokens_decoder" not in cfg:
        for legacy in ("special_tokens_map.json", "added_tokens.json"):
            if os.path.exists(os.path.join(path, legacy)):
                raise _Unsupported(f"legacy {legacy} without added_tokens_decoder")
    elif not isinstance(cfg["added_tokens_decoder"], dict) or not all(
        isinstance(t, dict) for t in cfg["added_tokens_decoder"].values()
    ):
        raise _Unsupported("added_tokens_decoder is not a map of token objects")
    return cfg


def _extra_tokens(cfg: dict[str, Any]) -> Any:
    """``extra_special_tokens``, or the deprecated ``additional_special_tokens`` when the former
    is missing or empty (``_from_pretrained``'s rename)."""
    extra = cfg.get("extra_special_tokens")
    if "additional_special_tokens" in cfg and not extra:
        extra = cfg["additional_special_tokens"]
    return extra


def _mistral_check_applies(path: str) -> bool:
    """Whether ``TokenizersBackend._patch_mistral_regex`` would act (warn or patch) here: a
    ``config.json`` whose ``model_type`` is missing or a Mistral one."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        return False
    with open(cfg_path, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    return model_type is None or model_type in _MISTRAL_TYPES


def _rebuild(kind: str, cfg: dict[str, Any], data: dict[str, Any]) -> Tokenizer:
    """The backend ``LlamaTokenizer`` / ``GPT2Tokenizer.__init__`` builds from tokenizer.json
    (``TokenizersBackend.convert_to_native_format`` + the class's ``__init__``)."""
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise _Unsupported(f"{model.get('type')} model (only BPE is reproduced)")
    if kind == "llama" and '"ByteLevel"' in json.dumps(
        [data.get("pre_tokenizer"), data.get("decoder")]
    ):
        raise _Unsupported("byte-level tokenizer.json under LlamaTokenizer")
    minimal = {**data, "model": {**model, "vocab": {}, "merges": []}, "added_tokens": []}
    from_file = Tokenizer.from_str(json.dumps(minimal))
    if from_file.truncation is not None or from_file.padding is not None:
        raise _Unsupported("tokenizer.json sets truncation / padding")
    vocab = model.get("vocab")
    if isinstance(vocab, list):
        vocab = {t[0] if isinstance(t, list) else t: i for i, t in enumerate(vocab)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    if kind == "llama":
        prefix = cfg.get("add_prefix_space")
        prefix = prefix if prefix is not None else True
        scheme = ("always" if cfg.get("legacy", False) else "first") if prefix else "never"
        tok = Tokenizer(
            BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None)
        )
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme=scheme, split=False
        )
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if prefix:
            steps.append(decoders.Strip(content=" ", left=1))
        tok.decoder = decoders.Sequence(steps)
    else:  # gpt2
        tok = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=cfg.get("add_prefix_space", False)
        )
        tok.decoder = decoders.ByteLevel()
    if from_file.post_processor:
        tok.post_processor = from_file.post_processor
    return tok


def _build(
    path: str, cfg: dict[str, Any], tok: Tokenizer, data: dict[str, Any] | None
) -> FastTokenizer:
    """Mirror ``_from_pretrained`` + ``TokenizersBackend.__init__`` on the class's backend."""
    cls_defaults = _CLASSES[cfg["tokenizer_class"]][1]
    # _from_pretrained: added_tokens_decoder from the config, else (legacy) from tokenizer.json
    # (for TokenizersBackend, as the Rust tokenizer read them from that file).
    if "added_tokens_decoder" in cfg:
        decoder = {int(i): AddedToken(**t) for i, t in cfg["added_tokens_decoder"].items()}
    elif data is None:
        decoder = dict(tok.get_added_tokens_decoder())
    else:
        decoder = {
            t["id"]: AddedToken(**{k: v for k, v in t.items() if k != "id"})
            for t in data.get("added_tokens", [])
        }
    by_content = {str(t): t for t in decoder.values()}
    named: dict[str, Any] = {}
    for key in SPECIAL_TOKENS:
        value = _as_token(cfg[key]) if key in cfg else cls_defaults.get(key)
        if key in cfg and value is not None and by_content:
            value = by_content.get(str(value), value)
        named[key] = value
    extra = _extra_tokens(cfg)
    extra = [_as_token(t) for t in extra] if extra is not None else []

    tok.no_truncation()
    update_post_processor = tok.post_processor is None
    tok.encode_special_tokens = False  # split_special_tokens

    # TokenizersBackend.__init__: every added_tokens_decoder entry is (re-)added (its "already
    # present" test compares ids with tokens, so never matches), then the named and extra
    # special tokens the encoder does not know yet.
    to_add = [t for _, t in sorted(decoder.items(), key=lambda x: x[0])]
    encoder = [t.content for _, t in sorted(tok.get_added_tokens_decoder().items())]
    encoder += [str(t) for t in to_add]
    for value in [v for v in named.values() if v is not None] + extra:
        if str(value) not in encoder and value not in to_add:
            to_add.append(value)
    if to_add:
        all_named = [str(t) for t in named.values() if t]
        tokens = []
        for t in to_add:
            if isinstance(t, str):
                t = AddedToken(t, special=True)
            elif not t.special and str(t) in all_named:
                t.special = True
            tokens.append(t)
        tok.add_tokens(tokens)
    if tok.get_vocab_size() > 100_000 and tok.pre_tokenizer is not None:
        if _mistral_check_applies(path):
            raise _Unsupported("transformers' Mistral-regex check applies (vocab > 100k)")
    if update_post_processor or tok.post_processor is None:
        tok.post_processor = processors.TemplateProcessing(
            single="$A:0", pair="$A:0 $B:1", special_tokens=[]
        )

    template = cfg.get("chat_template")
    if isinstance(template, list):
        template = {t["name"]: t["template"] for t in template}
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            template = f.read()
    max_len = cfg.get("model_max_length")
    return FastTokenizer(
        tok,
        named=named,
        extra=extra,
        chat_template=template,
        name_or_path=path,
        model_max_length=max_len if max_len is not None else VERY_LARGE_INTEGER,
        clean_up_tokenization_spaces=cfg.get("clean_up_tokenization_spaces", False),
        padding_side=cfg.get("padding_side", _CLASSES[cfg["tokenizer_class"]][2]),
        truncation_side=cfg.get("truncation_side", "right"),
    )
