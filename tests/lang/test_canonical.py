"""The three canonical SGLang programs (§1.10), ported by changing the import, on the mock."""

from __future__ import annotations

import pytest

import radixlm_lang as sgl


def test_two_turn_qa() -> None:
    backend = sgl.MockBackend(["A radix tree.", "Prefix reuse."], chat_template="llama-3-instruct")

    @sgl.function
    def two_turn_qa(s, q1, q2):
        s += sgl.system("You answer briefly.")
        s += sgl.user(q1)
        s += sgl.assistant(sgl.gen("a1", max_tokens=128))
        s += sgl.user(q2)
        s += sgl.assistant(sgl.gen("a2", max_tokens=128, stop="\n\n"))

    st = two_turn_qa.run(q1="What?", q2="Why?", backend=backend)
    assert st["a2"] == "Prefix reuse."
    roles = [m["role"] for m in st.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert backend.calls[1].params.stop == ("\n\n", "<|eot_id|>")


def test_expand_tips_batch() -> None:
    backend = sgl.MockBackend(lambda p, params: "tip" if params.max_new_tokens == 16 else "more")

    @sgl.function
    def expand_tips(s, topic):
        s += (
            "Give two tips about "
            + topic
            + ".\n1. "
            + sgl.gen("t1", max_tokens=16, stop="\n")
            + "\n2. "
            + sgl.gen("t2", max_tokens=16, stop="\n")
            + "\n"
        )
        branches = s.fork(2)
        for i, b in enumerate(branches):
            b += f"Explain tip {i + 1} in one paragraph: " + sgl.gen("detail", max_tokens=128)
        branches.join()
        s += "Summary: " + sgl.gen("summary", max_tokens=64)

    states = expand_tips.run_batch(
        [{"topic": "sleep"}, {"topic": "focus"}], num_threads=8, progress_bar=True, backend=backend
    )
    assert [s["detail"] for s in states] == [["more", "more"]] * 2
    assert all(s.error() is None and s.text().endswith("Summary: more") for s in states)
    assert len(backend.calls_of("cache_prefix")) == 2  # one per fork; the prefix is too short
    with pytest.raises(TypeError, match="unknown"):
        expand_tips.run_batch([{"topic": "x"}], backend=backend, bogus=1)


def test_classify_and_extract_streaming() -> None:
    backend = sgl.MockBackend(["4", '{"summary": "good"}'], chat_template="chatml")

    @sgl.function
    def classify_and_extract(s, review):
        s += sgl.user("Review: " + review + "\nIs it positive or negative?")
        s += sgl.assistant(sgl.select("label", choices=["positive", "negative"]))
        with s.user():
            s += "Give the star rating (1-5) as an integer and a JSON summary."
        with s.assistant():
            s += "Rating: " + sgl.gen_int("stars") + "\n"
            s += sgl.gen("info", max_tokens=128, regex=r'\{"summary": "[\w\s,.]{1,80}"\}')

    st = classify_and_extract.run(review="Great battery.", stream=True, backend=backend)
    assert "".join(st.text_iter("info")) == '{"summary": "good"}'
    assert (st["label"], st["stars"]) == ("positive", "4")
    assert backend.calls[-1].params.to_native()["regex"].startswith(r"\{")
