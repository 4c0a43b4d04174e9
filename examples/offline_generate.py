"""Offline generation with the in-process engine (bundled demo model unless a path is given).

python examples/offline_generate.py [MODEL_DIR]
"""

from __future__ import annotations

import sys

import radixlm


def main() -> None:
    model_path = sys.argv[1] if len(sys.argv) > 1 else None
    with radixlm.Engine(model_path) as engine:
        # One prompt -> one result dict.
        out = engine.generate("Once upon a time", {"temperature": 0, "max_new_tokens": 32})
        print(repr(out["text"]), out["meta_info"]["finish_reason"])

        # A batch, different sampling per prompt, reproducible with sampling_seed.
        outs = engine.generate(
            ["Lily and Tom went to the park", "The little dog was sad because"],
            [
                {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 24, "sampling_seed": 1},
                {"temperature": 0, "max_new_tokens": 24, "stop": ["."]},
            ],
        )
        for r in outs:
            print(repr(r["text"]), r["meta_info"]["finish_reason"])

        # n samples of one prompt, with logprobs of the output tokens.
        samples = engine.generate(
            "One day, a girl named Sue",
            {"temperature": 1.0, "max_new_tokens": 12, "n": 3, "sampling_seed": 7},
            return_logprob=True,
        )
        for r in samples:
            lps = [round(lp, 2) for lp, _, _ in r["meta_info"]["output_token_logprobs"]]
            print(repr(r["text"]), lps[:4])

        # Streaming: each chunk carries the cumulative text.
        shown = 0
        for chunk in engine.generate(
            "Tim had a big red ball.", {"max_new_tokens": 32}, stream=True
        ):
            print(chunk["text"][shown:], end="", flush=True)
            shown = len(chunk["text"])
        print()


if __name__ == "__main__":
    main()
