"""Few-shot classification with ``sgl.select``, run over a batch that shares its prefix.

    python examples/dsl_few_shot_select.py                       # bundled model, in-process
    python examples/dsl_few_shot_select.py --url http://127.0.0.1:30000

Every program starts with the same few-shot block. ``run_batch`` traces the program, finds that
constant prefix and prefills it once before the batch, so each item's ``select`` finds it in the
radix cache: ``s.get_meta_info("label")["cached_tokens"]`` reports how many prompt tokens were
reused. ``select`` does not sample: it scores every choice in one batched request, so the label
is always one of the choices, even from a model that only writes children's stories.
"""

from __future__ import annotations

from _dsl_cli import print_trace_heads, run_example

import radixlm_lang as sgl

LABELS = ["happy", "sad"]
FEW_SHOT = (
    "Decide if each sentence is happy or sad.\n"
    "Sentence: Lily got a new red ball and she smiled.\nSentiment: happy\n"
    "Sentence: Tom lost his toy and cried all day.\nSentiment: sad\n"
    "Sentence: The sun was warm and the birds sang.\nSentiment: happy\n"
    "Sentence: The dog was sick and could not play.\nSentiment: sad\n"
)
SENTENCES = {  # sentence -> the expected label
    "Mom gave Sue a big hug and a cake.": "happy",
    "The rain broke the little boat.": "sad",
    "Ben and his friend played in the park.": "happy",
    "The cat was alone and hungry.": "sad",
    "Amy found a shiny coin on the road.": "happy",
    "The tree fell on the small house.": "sad",
}


@sgl.function
def classify(s, sentence):
    s += FEW_SHOT
    # Each label's likelihood here minus its likelihood with no context: the model's prior
    # preference for one word cancels out (the default method compares plain likelihoods).
    label = sgl.select(
        "label", choices=LABELS, choices_method=sgl.unconditional_likelihood_normalized
    )
    s += "Sentence: " + sentence + "\nSentiment: " + label + "\n"


def run(backend) -> list:
    states = classify.run_batch(
        [{"sentence": x} for x in SENTENCES], backend=backend, progress_bar=True
    )
    for (x, want), st in zip(SENTENCES.items(), states):
        meta = st.get_meta_info("label")
        mark = "ok" if st["label"] == want else "--"
        print(
            f"{mark} {st['label']:>5}  cached {meta['cached_tokens']}/{meta['prompt_tokens']}  {x}"
        )
    print_trace_heads(
        states[-1], "trace of the last item (cached = prompt tokens served from the radix cache):"
    )
    return states


def main(argv: list[str] | None = None) -> list:
    return run_example(__doc__, run, argv)


if __name__ == "__main__":
    main()
