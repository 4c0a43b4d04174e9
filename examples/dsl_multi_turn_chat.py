"""Multi-turn chat with ``sgl.system`` / ``sgl.user`` / ``sgl.assistant``, then streaming.

    python examples/dsl_multi_turn_chat.py                       # bundled model, in-process
    python examples/dsl_multi_turn_chat.py --url http://127.0.0.1:30000

Role blocks are rendered by the frontend's chat template (picked from the model path; the demo
model gets ``default``: ``SYSTEM:`` / ``USER:`` / ``ASSISTANT:`` lines) and recorded as
OpenAI-style ``s.messages()``. Each turn's prompt is the whole conversation so far, which the
radix cache already holds. ``run(stream=True)`` returns at once; ``s.text_iter("var")`` yields a
variable's text as it is generated (``text_iter()`` without a name streams the whole text).
"""

from __future__ import annotations

from _dsl_cli import print_trace_heads, run_example

import radixlm_lang as sgl


@sgl.function
def chat(s, questions):
    s += sgl.system("You tell short, happy stories to children.")
    for i, q in enumerate(questions):
        s += sgl.user(q)
        s += sgl.assistant(sgl.gen(f"answer{i}", max_tokens=32, stop="\n"))


@sgl.function
def story(s, request):
    s += sgl.user(request)
    with s.assistant():  # the same as s += sgl.assistant(...), as a block
        s += "Once upon a time," + sgl.gen("story", max_tokens=48)


def run(backend):
    questions = ["Tell me about a dog.", "What did the dog eat?", "Where did it sleep?"]
    st = chat.run(questions=questions, temperature=0.7, top_p=0.9, backend=backend)
    for m in st.messages():
        print(f"{m['role']:>9}: {m['content']}")
    print_trace_heads(st, "trace (every turn reuses the conversation before it):")

    print("\nstreaming: Once upon a time,", end="", flush=True)
    streamed = story.run(
        request="A story about a frog.", stream=True, temperature=0.7, backend=backend
    )
    chunks = []
    for chunk in streamed.text_iter("story"):
        chunks.append(chunk)
        print(chunk, end="", flush=True)
    print(f"\n({len(chunks)} chunks)")
    return st, streamed, chunks


def main(argv: list[str] | None = None):
    return run_example(__doc__, run, argv)


if __name__ == "__main__":
    main()
