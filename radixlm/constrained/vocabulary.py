"""The byte view of a tokenizer's vocabulary that grammar FSMs are built over.

A grammar constrains *bytes*; a model emits *token ids*. ``TokenVocabulary`` maps every id to
the exact bytes it contributes to the output, for the two tokenizer families in use:

- byte-level BPE (GPT-2, Llama 3, Qwen): every token string is written in the GPT-2
  "bytes → printable unicode" alphabet; invert that table to get the raw bytes.
- SentencePiece with byte fallback (Llama 2, Mistral, stories260K): ``▁`` is a space and
  ``<0xAB>`` is the single byte 0xAB; any other piece is its UTF-8 text.

Invariants:
- ``token_bytes[i] is None`` for every id that must never be allowed by a grammar: special
  tokens, the EOS ids (allowed only in final states, by the matcher), ids whose bytes are
  empty, and ids in ``[len(tokenizer), vocab_size)`` (padding rows of the model).
- ``eos_token_ids`` is non-empty; the first one is the tokenizer's primary EOS.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from radixlm.errors import ConfigError

logger = logging.getLogger(__name__)

BYTE_LEVEL = "byte_level"
SENTENCEPIECE = "sentencepiece"

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode``: printable bytes map to themselves, the other
    68 bytes (controls, space, 0x7F-0xA0, 0xAD) to U+0100, U+0101, ... in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    shifted = [b for b in range(256) if chr(b) not in table]
    for n, b in enumerate(shifted):
        table[chr(0x100 + n)] = b
    return table


class TokenVocabulary:
    """Bytes of each token id plus the EOS ids; see the module docstring for the invariants."""

    def __init__(
        self,
        token_bytes: Sequence[bytes | None],
        eos_token_ids: Iterable[int],
        kind: str = "custom",
    ) -> None:
        self.kind = kind
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos_token_ids))
        if not self.eos_token_ids:
            raise ConfigError("constrained decoding needs at least one EOS token id")
        eos = set(self.eos_token_ids)
        # NOTE: EOS ids and empty tokens are dropped here, so no caller has to re-check them: an
        # empty token would be allowed in every state and let a grammar loop without progress.
        self.token_bytes: list[bytes | None] = [
            None if (i in eos or not b) else bytes(b) for i, b in enumerate(token_bytes)
        ]
        self._ids_by_bytes: dict[bytes, list[int]] | None = None

    @property
    def size(self) -> int:
        """Number of ids described (``len(token_bytes)``); ids at or above it are never allowed."""
        return len(self.token_bytes)

    @property
    def ids_by_bytes(self) -> dict[bytes, list[int]]:
        """Allowed-able ids grouped by their bytes (several ids can share bytes, e.g. ``a`` and
        ``<0x61>`` in SentencePiece). Built on first use."""
        if self._ids_by_bytes is None:
            groups: dict[bytes, list[int]] = {}
            for i, b in enumerate(self.token_bytes):
                if b is not None:
                    groups.setdefault(b, []).append(i)
            self._ids_by_bytes = groups
        return self._ids_by_bytes

    def decode(self, token_ids: Iterable[int]) -> bytes:
        """Concatenated bytes of ``token_ids`` (EOS and special ids contribute nothing)."""
        return b"".join(self.token_bytes[i] or b"" for i in token_ids)


def detect_kind(tokenizer: Any) -> str:
    """``BYTE_LEVEL`` or ``SENTENCEPIECE`` from the tokenizer's decoder, else from its vocabulary.

    Raises ``ConfigError`` for any other kind of tokenizer.
    """
    decoders = _decoder_types(tokenizer)
    if "ByteLevel" in decoders:
        return BYTE_LEVEL
    if decoders & {"ByteFallback", "Metaspace"}:
        return SENTENCEPIECE
    if hasattr(tokenizer, "sp_model"):  # a slow SentencePiece tokenizer
        return SENTENCEPIECE
    # NOTE: the decoder is missing or unfamiliar; fall back to what the vocabulary looks like.
    vocab = tokenizer.get_vocab()
    if all(f"<0x{b:02X}>" in vocab for b in range(256)):
        return SENTENCEPIECE
    if all(c in vocab for c in unicode_to_byte()):
        return BYTE_LEVEL
    raise ConfigError(
        f"constrained decoding does not support the tokenizer {type(tokenizer).__name__} "
        f"(decoder {sorted(decoders) or 'unknown'}): only byte-level BPE (GPT-2 style) and "
        "SentencePiece with byte fallback are supported; start the server with "
        "--grammar-backend none to serve this model without grammars"
    )


def _decoder_types(tokenizer: Any) -> set[str]:
    """Types of the fast tokenizer's decoder, flattening ``Sequence`` decoders."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    found: set[str] = set()
    stack = [decoder]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found.add(str(node.get("type")))
            stack.extend(node.get("decoders") or [])
    return found


def build_token_vocabulary(
    tokenizer: Any,
    vocab_size: int | None = None,
    eos_token_ids: Sequence[int] | None = None,
) -> TokenVocabulary:
    """The byte view of a Hugging Face tokenizer.

    ``vocab_size`` is the number of rows of the model's logits (default: ``len(tokenizer)``);
    ids at or above ``len(tokenizer)`` get no bytes. ``eos_token_ids`` default to the
    tokenizer's EOS. Special tokens never get bytes.
    """
    kind = detect_kind(tokenizer)
    num_tokens = len(tokenizer)
    size = num_tokens if vocab_size is None else vocab_size
    eos = list(eos_token_ids or [])
    if not eos and tokenizer.eos_token_id is not None:
        eos = [int(tokenizer.eos_token_id)]
    special = set(tokenizer.all_special_ids)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special.update(i for i, tok in added.items() if getattr(tok, "special", False))

    to_byte = unicode_to_byte()
    token_bytes: list[bytes | None] = [None] * size
    unmapped = 0
    for piece, i in tokenizer.get_vocab().items():
        if i >= min(size, num_tokens) or i in special:
            continue
        if i in added:  # an added, non-special token: its content is plain text
            token_bytes[i] = piece.encode("utf-8")
        elif kind == BYTE_LEVEL:
            try:
                token_bytes[i] = bytes(to_byte[c] for c in piece)
            except KeyError:
                unmapped += 1
        else:
            m = _BYTE_PIECE.fullmatch(piece)
            token_bytes[i] = bytes([int(m.group(1), 16)]) if m else piece.replace("▁", " ").encode()
    if unmapped:
        logger.warning("%d tokens are outside the byte-level alphabet; never allowed", unmapped)
    return TokenVocabulary(token_bytes, eos, kind)
