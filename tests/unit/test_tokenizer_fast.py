"""``FastTokenizer`` (radixlm/tokenizer/fast.py) against the transformers tokenizer it replaces.

Both are loaded from the same directory — the bundled SentencePiece-style tokenizer
(``LlamaTokenizer``), the GPT-2 byte-level BPE (``TokenizersBackend``, tests/fixtures/gpt2) and
variants of them written to tmp_path — and compared on the backend's serialized state and on
everything RadixLM calls: encode / decode / the vocabulary / special tokens / chat template.
Configs the fast path does not reproduce must load the transformers class instead.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixlm.config import BUNDLED_MODEL
from radixlm.sampling_params import SamplingParams
from radixlm.tokenizer import load_tokenizer
from radixlm.tokenizer.fast import FastTokenizer
from radixlm.tokenizer.fast_loader import unsupported_reason
from radixlm.tokenizer.output_text import OutputText

GPT2 = str(Path(__file__).resolve().parents[1] / "fixtures" / "gpt2")
STORIES = str(BUNDLED_MODEL)

TEXTS = [
    "",
    " ",
    "Hello world",
    " Hello world",
    "   leading spaces and trailing   ",
    "Once upon a time, there was a little girl named Lily.",
    "She said: \"Don't go!\" -- and then... it's over?! (yes) [no] {maybe}",
    "tabs\tand\t\tnewlines\n\n\nand\r\nCRLF \n \t mixed",
    "multiple     spaces      here",
    "numbers 0 1 42 3.14159 -7 1e10 1,000,000",
    "def f(x):\n    return x ** 2  # code\n",
    '{"key": [1, 2, {"nested": null}], "s": "v"}',
    "naïve café résumé Ångström façade",
    "日本語のテキストと中文文本",
    "Привет, мир! Γειά σου κόσμε",
    "مرحبا بالعالم",
    "emoji 😀🎉👍🏽 👨‍👩‍👧‍👦 🇺🇸 ❤️",
    "combining e\u0301 and zero\u200bwidth",
    "\x00\x01 control \x7f",
    "▁already▁metaspace ▁",
    "<0x41> <unk> byte-looking",
    "<s>",
    "</s>",
    "<s>Hello</s>",
    "a<s>b</s>c",
    " <s> spaced </s> ",
    "<|endoftext|>",
    "Hello<|endoftext|>world",
    " <|endoftext|> <|endoftext|><|endoftext|>",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext",
    "x" * 300,
]

ATTRS = [
    *(
        f"{n}_token{s}"
        for n in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
        for s in ("", "_id")
    ),
    "all_special_tokens",
    "all_special_ids",
    "special_tokens_map",
    "extra_special_tokens",
    "extra_special_tokens_ids",
    "chat_template",
    "vocab_size",
    "clean_up_tokenization_spaces",
    "model_max_length",
    "padding_side",
    "truncation_side",
    "split_special_tokens",
    "add_bos_token",
    "add_eos_token",
    "is_fast",
    "name_or_path",
]
DECODE_OPTIONS = [
    {"skip_special_tokens": skip, "spaces_between_special_tokens": spaces}
    for skip in (False, True)
    for spaces in (False, True)
] + [{"clean_up_tokenization_spaces": c} for c in (None, False, True)]


def load_pair(path: str):
    fast = load_tokenizer(path)
    ref = load_tokenizer(path, allow_fast=False)
    assert isinstance(fast, FastTokenizer), unsupported_reason(path)
    assert not isinstance(ref, FastTokenizer)
    return fast, ref


def assert_equivalent(fast, ref, texts=TEXTS, all_single_ids: bool = True) -> None:
    """Everything RadixLM uses gives the same answer on both."""
    # The Rust tokenizer itself: model, normalizer, pre-tokenizer, decoder, post-processor and
    # added tokens (with their flags), as transformers built them.
    assert json.loads(fast.backend_tokenizer.to_str()) == json.loads(ref.backend_tokenizer.to_str())
    for name in ATTRS:
        assert getattr(fast, name) == getattr(ref, name), name
    assert fast.get_vocab() == ref.get_vocab()
    assert len(fast) == len(ref)
    assert fast.get_added_vocab() == ref.get_added_vocab()
    assert {i: repr(t) for i, t in fast.added_tokens_decoder.items()} == {
        i: repr(t) for i, t in ref.added_tokens_decoder.items()
    }

    special = list(ref.get_added_vocab().values()) + ref.all_special_ids
    for text in texts + ref.all_special_tokens + [f"a{s}b" for s in special_strings(ref)]:
        for add in (True, False):
            assert fast.encode(text, add_special_tokens=add) == ref.encode(
                text, add_special_tokens=add
            ), (text, add)
        assert fast.encode(text) == ref.encode(text), text
        assert fast.tokenize(text) == ref.tokenize(text), text

    n = len(ref)
    ids = list(range(n + 3))  # past the end too: both give None
    for skip in (False, True):
        assert fast.convert_ids_to_tokens(
            ids, skip_special_tokens=skip
        ) == ref.convert_ids_to_tokens(ids, skip_special_tokens=skip)
    for i in [0, 1, 2, n - 1, n, n + 5, *special]:
        assert fast.convert_ids_to_tokens(i) == ref.convert_ids_to_tokens(i)
    tokens = [ref.convert_ids_to_tokens(i) for i in range(n)] + ["not-a-token-zzq", ""]
    assert fast.convert_tokens_to_ids(tokens) == ref.convert_tokens_to_ids(tokens)
    assert fast.convert_tokens_to_ids("not-a-token-zzq") == ref.convert_tokens_to_ids(
        "not-a-token-zzq"
    )
    for text in texts[:12]:
        toks = ref.tokenize(text)
        assert fast.convert_tokens_to_string(toks) == ref.convert_tokens_to_string(toks)

    rng = random.Random(0)
    pool = list(range(n)) + special * 20  # special ids often, next to each other too
    seqs = [[rng.choice(pool) for _ in range(rng.randint(0, 40))] for _ in range(300)]
    seqs += [ref.encode(t) for t in texts] + [special, special[::-1], [n - 1, n, n + 1]]
    for opts in DECODE_OPTIONS:
        for seq in seqs:
            assert fast.decode(seq, **opts) == ref.decode(seq, **opts), (seq, opts)
        singles = range(n) if all_single_ids else sorted(set(special) | set(range(0, n, 97)))
        assert [fast.decode([i], **opts) for i in singles] == [
            ref.decode([i], **opts) for i in singles
        ], opts
        assert fast.decode(seqs[:5], **opts) == ref.decode(seqs[:5], **opts)  # batched
    assert fast.decode(special[0]) == ref.decode(special[0])  # a bare int
    assert fast.batch_decode(seqs[:5]) == ref.batch_decode(seqs[:5])


def special_strings(tok) -> list[str]:
    return sorted(set(tok.all_special_tokens) | set(tok.get_added_vocab()))


@pytest.fixture(scope="module", params=["stories260K", "gpt2"])
def pair(request):
    return load_pair({"stories260K": STORIES, "gpt2": GPT2}[request.param])


def test_bundled_and_gpt2_match_transformers(pair) -> None:
    fast, ref = pair
    assert fast.chat_template is None and ref.chat_template is None
    assert_equivalent(fast, ref)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80), data=st.data())
def test_random_text_and_ids_match(pair, text: str, data) -> None:
    fast, ref = pair
    for add in (True, False):
        assert fast.encode(text, add_special_tokens=add) == ref.encode(text, add_special_tokens=add)
    ids = data.draw(st.lists(st.integers(0, len(ref) - 1), max_size=30))
    for skip in (False, True):
        assert fast.decode(ids, skip_special_tokens=skip) == ref.decode(
            ids, skip_special_tokens=skip
        )


def test_detokenizer_streams_match(pair) -> None:
    """The incremental detokenizer (stop strings, streaming) sees no difference."""
    fast, ref = pair
    rng = random.Random(1)
    sampling = SamplingParams(stop=("the",), skip_special_tokens=False)
    for _ in range(20):
        prompt = ref.encode("Once upon a time")
        out = [rng.randrange(len(ref)) for _ in range(30)]
        texts = []
        for tok in (fast, ref):
            ot = OutputText(tok, prompt, sampling)
            for k in range(0, 30, 3):
                ot.add(out[k : k + 3], None)
            texts.append(ot.text)
        assert texts[0] == texts[1]


def test_constrained_vocabulary_matches(pair) -> None:
    """The grammar backend's byte view of the vocabulary (radixlm/constrained/vocabulary.py)."""
    from radixlm.constrained.vocabulary import build_token_vocabulary

    fast, ref = pair
    a, b = build_token_vocabulary(fast), build_token_vocabulary(ref)
    assert (a.kind, a.eos_token_ids, a.token_bytes) == (b.kind, b.eos_token_ids, b.token_bytes)


def test_apply_chat_template_is_delegated() -> None:
    fast, ref = load_pair(STORIES)
    template = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}"
    fast.chat_template = ref.chat_template = template
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    for tokenize in (False, True):
        assert fast.apply_chat_template(msgs, tokenize=tokenize) == ref.apply_chat_template(
            msgs, tokenize=tokenize
        )


def test_fast_path_does_not_import_transformers() -> None:
    code = (
        "import sys; from radixlm.tokenizer import load_tokenizer;"
        f"t = load_tokenizer({GPT2!r}); print(type(t).__name__, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["FastTokenizer", "False"]


def test_encode_rejects_batches() -> None:
    fast = load_tokenizer(GPT2)
    with pytest.raises(TypeError):
        fast.encode(["a", "b"])


# ---- variants written to tmp_path ------------------------------------------------------------
def make_dir(tmp_path: Path, src: str, config: dict, tokenizer_json=None, extra_files=None) -> str:
    d = tmp_path / "tok"
    d.mkdir()
    if tokenizer_json is None:
        shutil.copy(Path(src) / "tokenizer.json", d / "tokenizer.json")
    else:
        (d / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    for name, text in (extra_files or {}).items():
        (d / name).write_text(text)
    return str(d)


def base_config(src: str) -> dict:
    return json.loads((Path(src) / "tokenizer_config.json").read_text())


def tok_json(src: str) -> dict:
    return json.loads((Path(src) / "tokenizer.json").read_text())


AT = {"__type": "AddedToken", "single_word": False, "normalized": False, "special": True}

VARIANTS = {
    # New special tokens (ids past the vocabulary), a base-vocabulary word made special, a
    # serialized AddedToken with lstrip, a chat template and other stored settings.
    "gpt2-new-specials": (
        GPT2,
        {
            "tokenizer_class": "TokenizersBackend",
            "bos_token": "<|endoftext|>",
            "eos_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "hello",
            "sep_token": {**AT, "content": "<|sep|>", "lstrip": True, "rstrip": False},
            "extra_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
            "clean_up_tokenization_spaces": True,
            "model_max_length": 1024,
            "padding_side": "left",
            "add_bos_token": True,
            "use_fast": True,
        },
        None,
    ),
    # The config's added_tokens_decoder (not the file's) is what gets (re-)added.
    "gpt2-added-tokens-decoder": (
        GPT2,
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": "<|endoftext|>",
            "added_tokens_decoder": {
                "50256": {
                    "content": "<|endoftext|>",
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                },
                "50257": {
                    "content": "<tool>",
                    "lstrip": False,
                    "normalized": True,
                    "rstrip": True,
                    "single_word": False,
                    "special": False,
                },
            },
            "additional_special_tokens": ["<tool>"],
        },
        None,
    ),
    # A named special token declared non-special in added_tokens_decoder becomes special.
    "gpt2-non-special-named": (
        GPT2,
        {
            "tokenizer_class": "TokenizersBackend",
            "pad_token": "<tool>",
            "added_tokens_decoder": {
                "50257": {
                    "content": "<tool>",
                    "lstrip": False,
                    "normalized": True,
                    "rstrip": False,
                    "single_word": False,
                    "special": False,
                },
            },
        },
        None,
    ),
    # GPT2Tokenizer rebuilds the backend from vocab + merges (and drops the normalizer).
    "gpt2-class": (GPT2, {"tokenizer_class": "GPT2Tokenizer", "errors": "replace"}, None),
    "gpt2-class-prefix-space": (
        GPT2,
        {"tokenizer_class": "GPT2TokenizerFast", "add_prefix_space": True, "pad_token": "<|pad|>"},
        None,
    ),
    "gpt2-no-post-processor": (
        GPT2,
        {"tokenizer_class": "TokenizersBackend", "eos_token": "<|endoftext|>"},
        {"post_processor": None},
    ),
    "stories-legacy": (STORIES, {"legacy": True}, None),
    "stories-no-prefix-space": (STORIES, {"add_prefix_space": False}, None),
    "stories-added-tokens-decoder": (
        STORIES,
        {
            "tokenizer_class": "LlamaTokenizerFast",
            "added_tokens_decoder": {
                str(i): {
                    "content": c,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for i, c in enumerate(["<unk>", "<s>", "</s>"])
            },
            "chat_template": [
                {"name": "default", "template": "{{ bos_token }}x"},
                {"name": "tool_use", "template": "y"},
            ],
        },
        None,
    ),
    # Class defaults fill missing named tokens (LlamaTokenizer: <unk>, <s>, </s>).
    "stories-class-defaults": (
        STORIES,
        {"tokenizer_class": "LlamaTokenizer", "pad_token": "<pad>", "bos_token": None},
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_match_transformers(tmp_path: Path, name: str) -> None:
    src, config, json_patch = VARIANTS[name]
    if src == STORIES and "tokenizer_class" not in config:
        config = {**base_config(STORIES), **config}
    data = None
    if json_patch:
        data = {**tok_json(src), **json_patch}
    fast, ref = load_pair(make_dir(tmp_path, src, config, data))
    texts = TEXTS + ["hello there", "<|sep|>  x", "a <tool> b", "<pad>", "<|pad|>"]
    assert_equivalent(fast, ref, texts, all_single_ids=src == STORIES)


def test_chat_template_file_wins(tmp_path: Path) -> None:
    config = {"tokenizer_class": "TokenizersBackend", "chat_template": "from config"}
    path = make_dir(tmp_path, GPT2, config, extra_files={"chat_template.jinja": "{{ x }} file"})
    fast, ref = load_pair(path)
    assert fast.chat_template == ref.chat_template == "{{ x }} file"


def _big_vocab_json() -> dict:
    """A BPE with > 100k tokens (transformers' Mistral-regex check threshold)."""
    vocab = {f"t{i}": i for i in range(100_050)}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }


def test_large_vocab_non_mistral_matches(tmp_path: Path) -> None:
    config = {"tokenizer_class": "TokenizersBackend", "eos_token": "t7", "unk_token": "t0"}
    path = make_dir(
        tmp_path,
        GPT2,
        config,
        _big_vocab_json(),
        {"config.json": json.dumps({"model_type": "llama"})},
    )
    fast, ref = load_pair(path)
    assert_equivalent(fast, ref, ["t1 t2  t99999", "t100049 x t7", ""], all_single_ids=False)


# ---- fallbacks -------------------------------------------------------------------------------
GPT2_CFG = {"tokenizer_class": "TokenizersBackend", "eos_token": "<|endoftext|>"}

FALLBACKS = {
    "unknown-key": ({**GPT2_CFG, "do_lower_case": True}, None, {}, "do_lower_case"),
    "split-special": ({**GPT2_CFG, "split_special_tokens": True}, None, {}, "split_special"),
    "truncation": (
        GPT2_CFG,
        {
            "truncation": {
                "direction": "Right",
                "max_length": 8,
                "strategy": "LongestFirst",
                "stride": 0,
            }
        },
        {},
        "truncation",
    ),
    "legacy-special-map": (
        GPT2_CFG,
        None,
        {"special_tokens_map.json": json.dumps({"pad_token": "<|pad|>"})},
        "special_tokens_map.json",
    ),
    "custom-token-key": ({**GPT2_CFG, "image_token": "<|endoftext|>"}, None, {}, "image_token"),
    "mistral-large-vocab": (
        {"tokenizer_class": "TokenizersBackend", "unk_token": "t0"},
        "big",
        {"config.json": json.dumps({"model_type": "mistral"})},
        "Mistral",
    ),
}


@pytest.mark.parametrize("name", sorted(FALLBACKS))
def test_unsupported_configs_load_transformers(tmp_path: Path, name: str) -> None:
    config, json_patch, files, reason = FALLBACKS[name]
    data = None
    if json_patch == "big":
        data = _big_vocab_json()
    elif json_patch:
        data = {**tok_json(GPT2), **json_patch}
    path = make_dir(tmp_path, GPT2, config, data, files)
    assert reason in (unsupported_reason(path) or "")
    tok = load_tokenizer(path)
    assert not isinstance(tok, FastTokenizer)
    assert type(tok).__name__ == "TokenizersBackend"


@pytest.mark.parametrize(
    "config, reason",
    [
        ({"eos_token": "<|endoftext|>"}, "tokenizer_class None"),
        ({"tokenizer_class": "BertTokenizer"}, "BertTokenizer"),
        ({**GPT2_CFG, "auto_map": {"AutoTokenizer": ["x.Tok", None]}}, "auto_map"),
        ({"tokenizer_class": "LlamaTokenizer"}, "byte-level"),  # GPT-2's json under Llama
        ({**GPT2_CFG, "backend": "sentencepiece"}, "backend"),
        ({**GPT2_CFG, "bos_token": {"content": "<s>"}}, "bos_token"),
    ],
)
def test_unsupported_reasons(tmp_path: Path, config: dict, reason: str) -> None:
    assert reason in (unsupported_reason(make_dir(tmp_path, GPT2, config)) or "")


def test_missing_files_are_unsupported(tmp_path: Path) -> None:
    assert unsupported_reason(str(tmp_path)) == "no tokenizer.json + tokenizer_config.json"
