"""``OutputText`` with the bundled SentencePiece tokenizer (512 tokens, byte fallback).

Proves, feeding the output ids one at a time as a stream would: the visible text only ever
grows (each visible text is a prefix of the next and of the final text) and the ``take_delta``
increments concatenate to the final text; while the request runs with stop strings the last
``max(len(stop)) - 1`` characters are held back; at the finish a matched stop string is cut
(kept under ``no_stop_trim``), a matched stop token's text is dropped, and ``length`` keeps
everything; multi-byte characters split across byte-fallback tokens never show U+FFFD early and
end up as ``tokenizer.decode`` renders them. A stop string that already occurred while
``min_new_tokens`` suppressed stops is not the one cut at.
"""

from __future__ import annotations

from typing import Any

import pytest

from radixlm.config import BUNDLED_MODEL
from radixlm.sampling_params import SamplingParams
from radixlm.tokenizer import load_tokenizer
from radixlm.tokenizer.output_text import OutputText

FFFD = "\ufffd"
EOS = 2
LENGTH = {"type": "length", "length": 0}


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer(BUNDLED_MODEL)


def split(tok: Any, text: str, prompt: str) -> tuple[list[int], list[int]]:
    """Encode ``prompt + text`` (with BOS); return (prompt ids, output ids)."""
    ids = tok.encode(prompt + text)
    n = len(tok.encode(prompt))
    assert tok.encode(prompt) == ids[:n], "prompt must tokenize the same inside the full text"
    return ids[:n], ids[n:]


def reference(tok: Any, prompt_ids: list[int], output_ids: list[int]) -> str:
    """How the tokenizer renders the output after the prompt."""
    head = tok.decode(prompt_ids, skip_special_tokens=True)
    full = tok.decode(prompt_ids + output_ids, skip_special_tokens=True)
    assert full.startswith(head)
    return full[len(head) :]


def stream(
    tok: Any,
    prompt_ids: list[int],
    output_ids: list[int],
    sampling: SamplingParams,
    finish: dict[str, Any],
) -> tuple[OutputText, list[str], list[str]]:
    """Feed ids one per ``add``, the finish reason with the last; return (state, visible texts
    after every add, deltas), checking the monotonic-visible and delta invariants on the way."""
    ot = OutputText(tok, prompt_ids, sampling)
    visibles, deltas = [], []
    for k, i in enumerate(output_ids):
        ot.add([i], finish if k == len(output_ids) - 1 else None)
        visibles.append(ot.visible())
        deltas.append(ot.take_delta())
    final = ot.visible()
    assert ot.finished
    assert final == ot.text
    for a, b in zip(visibles, visibles[1:]):
        assert b.startswith(a), (a, b)
    assert all(final.startswith(v) for v in visibles)
    assert "".join(deltas) == final
    assert ot.take_delta() == ""
    return ot, visibles, deltas


PROMPT = "Once upon a time,"
STORY = " there was a girl who was happy."


def test_no_stops_streams_every_token_and_ends_as_decode(tok: Any) -> None:
    p, o = split(tok, STORY, PROMPT)
    ot, visibles, deltas = stream(tok, p, o, SamplingParams(), LENGTH)
    assert ot.text == STORY == reference(tok, p, o)
    # No hold-back without stop strings: each token shows as soon as it is decoded.
    assert visibles[:4] == [" there", " there was", " there was a", " there was a g"]
    assert deltas[:4] == [" there", " was", " a", " g"]


def test_holdback_is_longest_stop_minus_one_while_running(tok: Any) -> None:
    p, o = split(tok, STORY, PROMPT)
    sp = SamplingParams(stop=("xyz", "nothing"))  # longest 7 → hold back 6 characters
    ot = OutputText(tok, p, sp)
    seen = []
    for i in o:
        ot.add([i], None)
        assert ot.visible() == ot.text[: max(0, len(ot.text) - 6)]
        seen.append(ot.visible())
    assert ot.text == STORY
    assert seen[:3] == ["", " the", " there"]
    assert ot.visible() == " there was a girl who was "  # "happy." held back
    ot.add([], LENGTH)
    assert ot.visible() == STORY  # the finish releases the hold-back


def test_stop_string_is_cut_at_finish(tok: Any) -> None:
    p, o = split(tok, STORY, PROMPT)
    # "girl" completes with the token "l" (o[5]): the scheduler finishes there.
    assert reference(tok, p, o[:6]) == " there was a girl"
    sp = SamplingParams(stop=("girl", "dog"))
    ot, visibles, _ = stream(tok, p, o[:6], sp, {"type": "stop", "matched": "girl"})
    assert ot.text == " there was a "
    assert visibles[-2] == " there was a "  # " there was a gir" less 3 held back


def test_stop_string_cut_with_all_tokens_in_one_chunk(tok: Any) -> None:
    p, o = split(tok, STORY, PROMPT)
    ot = OutputText(tok, p, SamplingParams(stop=("girl",)))
    ot.add(o[:6], {"type": "stop", "matched": "girl"})
    assert ot.visible() == " there was a "
    assert ot.take_delta() == " there was a "


def test_no_stop_trim_keeps_the_stop_and_holds_nothing_back(tok: Any) -> None:
    p, o = split(tok, STORY, PROMPT)
    sp = SamplingParams(stop=("girl",), no_stop_trim=True)
    ot = OutputText(tok, p, sp)
    for i in o[:5]:
        ot.add([i], None)
        assert ot.visible() == ot.text
    ot.add(o[5:6], {"type": "stop", "matched": "girl"})
    assert ot.visible() == " there was a girl"


def test_stop_token_text_is_dropped(tok: Any) -> None:
    p, o = split(tok, STORY, PROMPT)
    # Stop token "▁was" (o[1]): its text in context is " was", leading space included.
    assert tok.convert_ids_to_tokens(o[1]) == "▁was"
    sp = SamplingParams(stop_token_ids=(o[1],))
    ot, _, _ = stream(tok, p, o[:2], sp, {"type": "stop", "matched": o[1]})
    assert ot.text == " there" == reference(tok, p, o[:1])


def test_stop_token_text_is_kept_with_no_stop_trim(tok: Any) -> None:
    p, o = split(tok, STORY, PROMPT)
    sp = SamplingParams(stop_token_ids=(o[1],), no_stop_trim=True)
    ot, _, _ = stream(tok, p, o[:2], sp, {"type": "stop", "matched": o[1]})
    assert ot.text == " there was"


@pytest.mark.parametrize("skip_special", [True, False])
def test_eos_stop_token_is_dropped(tok: Any, skip_special: bool) -> None:
    p, o = split(tok, STORY, PROMPT)
    sp = SamplingParams(skip_special_tokens=skip_special)
    ot, _, _ = stream(tok, p, o + [EOS], sp, {"type": "stop", "matched": EOS})
    assert ot.text == STORY


def test_length_keeps_everything_even_a_partial_stop(tok: Any) -> None:
    p, o = split(tok, STORY, PROMPT)
    # The output ends with "hap", a prefix of the stop string: held back while running,
    # released by the length finish.
    sp = SamplingParams(stop=("happy day",))
    ot, visibles, _ = stream(tok, p, o[:-1], sp, LENGTH)
    assert ot.text == " there was a girl who was happy"
    assert visibles[-2] == " there was a girl"  # " there was a girl who was", 8 held back


def test_abort_keeps_everything(tok: Any) -> None:
    p, o = split(tok, STORY, PROMPT)
    sp = SamplingParams(stop=("was",))
    ot = OutputText(tok, p, sp)
    ot.add(o[:2], None)
    ot.add([], {"type": "abort", "message": "x"})
    assert ot.visible() == " there was"  # "was" was not a scheduler match here


def test_stop_seen_during_min_new_tokens_is_not_the_cut(tok: Any) -> None:
    """With ``min_new_tokens`` the scheduler ignores the first "was" and finishes at the
    second; the text is cut there, and what the stream showed stays a prefix."""
    p, o = split(tok, STORY, PROMPT)
    assert reference(tok, p, o[:10]) == " there was a girl who was"
    sp = SamplingParams(stop=("was",), min_new_tokens=5)
    finish = {"type": "stop", "matched": "was"}
    ot, visibles, _ = stream(tok, p, o[:10], sp, finish)
    assert ot.text == " there was a girl who "
    assert visibles[-2] == " there was a girl w"  # " there was a girl who", 2 held back
    # All tokens in one chunk (a non-streaming request): the same text.
    one = OutputText(tok, p, sp)
    one.add(o[:10], finish)
    assert one.visible() == " there was a girl who "


def test_stop_matched_twice_inside_the_last_token_cuts_at_the_first(tok: Any) -> None:
    p, o = split(tok, " Hello", "Once upon a time")
    assert [tok.convert_ids_to_tokens(i) for i in o] == ["▁He", "ll", "o"]
    # "ll" completes stop "l" twice; the scheduler reports the earliest occurrence.
    ot, _, _ = stream(tok, p, o[:2], SamplingParams(stop=("l",)), {"type": "stop", "matched": "l"})
    assert ot.text == " He"


@pytest.mark.parametrize("stop", [(), ("zzzz",)])
def test_multibyte_characters_never_show_replacement_early(tok: Any, stop: tuple) -> None:
    text = " é日本 ok 本é"
    p, o = split(tok, text, "Hello")
    assert sum(tok.convert_ids_to_tokens(i).startswith("<0x") for i in o) == 9
    ot, visibles, deltas = stream(tok, p, o, SamplingParams(stop=stop), LENGTH)
    assert not any(FFFD in v for v in visibles)
    assert ot.text == text == reference(tok, p, o)
    assert "".join(deltas) == text


def test_multibyte_prompt_context_and_trailing_partial_character(tok: Any) -> None:
    p, o = split(tok, "日本", "Hello é")
    # A length finish after the first byte of "本": the flush renders the incomplete
    # character as U+FFFD (never shown earlier). SentencePiece's own decode of the same ids
    # garbles the whole byte run ("日" included), so that is no reference here.
    ot, visibles, _ = stream(tok, p, o[:4], SamplingParams(), LENGTH)
    assert visibles[:3] == ["", "", "日"]
    assert ot.text.startswith("日") and ot.text[1:] == FFFD * (len(ot.text) - 1) != ""
    assert reference(tok, p, o[:3]) == "日"
