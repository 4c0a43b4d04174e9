"""Jump-forward: append a grammar's forced continuation without sampling it token by token.

When every output the grammar accepts continues with the same bytes (``{"name": "`` after
the opening brace of a schema), those bytes are appended at once. The text is re-tokenized —
prompt text + output text + forced text — because the forced bytes may merge with the tokens
before them; the jump is skipped unless the prompt's tokens (and any output tokens already
streamed to the client) stay exactly the same. The request then extends the new tokens in one
forward, its unchanged prefix being a radix-cache hit.
"""

from __future__ import annotations

from typing import Any


def retokenize_with_forced(
    tokenizer: Any,
    prompt_ids: list[int],
    output_ids: list[int],
    forced: bytes,
    keep_output: int,
) -> list[int] | None:
    """The output ids after appending ``forced``, or None if the jump must be skipped.

    ``keep_output``: output tokens that must not change (already sent to a stream).
    """
    try:
        forced_text = forced.decode("utf-8")
    except UnicodeDecodeError:
        return None  # ends inside a character: let sampling produce it
    text = tokenizer.decode(
        prompt_ids + output_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    ids = tokenizer.encode(text + forced_text, add_special_tokens=False)
    n = len(prompt_ids)
    if ids[:n] != prompt_ids:
        return None
    new_output = ids[n:]
    if new_output[:keep_output] != output_ids[:keep_output] or len(new_output) <= keep_output:
        return None
    return new_output
