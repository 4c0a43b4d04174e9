"""``FastTokenizer``: a transformers-compatible tokenizer on the Rust ``tokenizers`` package
alone (no transformers import: 34 MB of resident memory for GPT-2 instead of 66 MB).

``fast_loader.py`` decides when it is used and builds it; this module is the object itself:
``encode``, ``decode`` (``skip_special_tokens``; ``spaces_between_special_tokens`` and
``clean_up_tokenization_spaces`` accepted without effect, as in transformers for BPE),
``tokenize``, token/id conversions, ``get_vocab``, ``len()``, ``get_added_vocab``,
``added_tokens_decoder``, the named special tokens and their ids, ``all_special_*``,
``chat_template``, ``backend_tokenizer``; ``apply_chat_template`` delegates to transformers
(loaded on first call). ``tests/unit/test_tokenizer_fast.py`` checks it against transformers.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Tokenizer

# transformers' PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES, in its order.
SPECIAL_TOKENS = tuple(f"{n}_token" for n in "bos eos unk sep pad cls mask".split())


def _ids_list(ids: Any) -> Any:
    """transformers' ``to_py_obj`` for what callers pass: tensors / arrays become lists."""
    return ids.tolist() if hasattr(ids, "tolist") else ids


class FastTokenizer:
    """A transformers-compatible view of one ``tokenizers.Tokenizer`` (see the module docstring
    for what is reproduced). Keeps no per-call state: safe to share between threads."""

    is_fast = True
    split_special_tokens = False
    add_bos_token = False  # transformers ignores the config's flags when tokenizer.json exists
    add_eos_token = False

    def __init__(
        self,
        backend: Tokenizer,
        *,
        named: dict[str, Any],
        extra: list[Any],
        chat_template: str | dict[str, str] | None,
        name_or_path: str,
        model_max_length: int,
        clean_up_tokenization_spaces: bool,
        padding_side: str,
        truncation_side: str,
    ) -> None:
        self._tokenizer = backend
        self._named = named  # SPECIAL_TOKENS name -> str | AddedToken | None
        self._extra = extra  # extra special tokens: str | AddedToken
        self.chat_template = chat_template
        self.name_or_path = name_or_path
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self._transformers: Any = None  # loaded by apply_chat_template only

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        """Delegated to the transformers tokenizer of the same directory, loaded (importing
        transformers) on first use, with this object's ``chat_template``. RadixLM itself renders
        templates without it (``radixlm/server/chat_template.py``)."""
        if self._transformers is None:
            from radixlm.tokenizer import load_tokenizer

            self._transformers = load_tokenizer(self.name_or_path, allow_fast=False)
        self._transformers.chat_template = self.chat_template
        return self._transformers.apply_chat_template(*args, **kwargs)

    # ---- text <-> ids --------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"FastTokenizer.encode takes one string, not {type(text).__name__}")
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).tokens

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        spaces_between_special_tokens: bool = True,
    ) -> str | list[str]:
        """Ids (or a batch of id lists) to text. The last two options are accepted for
        compatibility and ignored, as transformers ignores them for BPE tokenizers."""
        token_ids = _ids_list(token_ids)
        if isinstance(token_ids, dict):
            token_ids = token_ids["input_ids"]
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if token_ids and isinstance(token_ids[0], (list, tuple)):
            return [
                self._tokenizer.decode(s, skip_special_tokens=skip_special_tokens)
                for s in token_ids
            ]
        return self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = False, **kwargs
    ) -> list[str]:
        out = self.decode(sequences, skip_special_tokens, **kwargs)
        return [out] if isinstance(out, str) else out

    # ---- vocabulary ----------------------------------------------------------------------
    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self.get_vocab()

    @property
    def vocab_size(self) -> int:
        """The base vocabulary, without added tokens (``len()`` counts them)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __bool__(self) -> bool:
        return True

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return self._tokenizer.get_added_tokens_decoder()

    def get_added_vocab(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self.added_tokens_decoder.items())}

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return self.get_added_vocab()

    def convert_ids_to_tokens(
        self, ids: int | list[int], skip_special_tokens: bool = False
    ) -> str | None | list[str | None]:
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> Any:
        if isinstance(tokens, str):
            return self._token_id(tokens)
        return [self._token_id(t) for t in tokens]

    def _token_id(self, token: str) -> int | None:
        index = self._tokenizer.token_to_id(token)
        return self.unk_token_id if index is None else index

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        dec = self._tokenizer.decoder
        return dec.decode(tokens) if dec is not None else " ".join(tokens)

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The Rust tokenizer (its normalizer / pre-tokenizer / decoder, ``to_str()``)."""
        return self._tokenizer

    @property
    def decoder(self) -> Any:
        return self._tokenizer.decoder

    # ---- special tokens ------------------------------------------------------------------
    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {k: str(v) for k, v in self._named.items() if v is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        out: list[str] = []
        for t in [v for v in self._named.values() if v is not None] + self._extra:
            if str(t) not in out:
                out.append(str(t))
        return out

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    @property
    def extra_special_tokens(self) -> list[str]:
        return [str(t) for t in self._extra]

    @property
    def extra_special_tokens_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.extra_special_tokens)

    def __repr__(self) -> str:
        return (
            f"FastTokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"special_tokens={self.special_tokens_map})"
        )


def _special_token_properties() -> None:
    """``bos_token`` / ``bos_token_id`` / ... as read-only properties (transformers' getattr)."""
    for name in SPECIAL_TOKENS:

        def token(self: FastTokenizer, _n: str = name) -> str | None:
            v = self._named[_n]
            return None if v is None else str(v)

        def token_id(self: FastTokenizer, _n: str = name) -> int | None:
            v = self._named[_n]
            return None if v is None else self._token_id(str(v))

        setattr(FastTokenizer, name, property(token))
        setattr(FastTokenizer, f"{name}_id", property(token_id))


_special_token_properties()
