"""Prefix sharing with the radix cache: a few-shot template is computed once and reused.

    python examples/prefix_sharing.py

Runs on the bundled demo model (CPU). The first batch computes the shared template once (the
scheduler lets one request build it and the others hit it); later calls report the reused
tokens in ``meta_info.cached_tokens``. Requests with different ``cache_salt`` never share.
"""

from __future__ import annotations

import radixlm

TEMPLATE = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside. "
    "One day, she found a shiny red ball in the park. "
)
ENDINGS = ["Then she", "Her friend Tom", "The ball", "Mom called and"]
GREEDY = {"temperature": 0, "max_new_tokens": 16}


def main() -> None:
    with radixlm.Engine() as engine:
        outs = engine.generate([TEMPLATE + e for e in ENDINGS], GREEDY)
        for e, out in zip(ENDINGS, outs):
            meta = out["meta_info"]
            print(
                f"{e!r:18} cached {meta['cached_tokens']:3}/{meta['prompt_tokens']}  {out['text']!r}"
            )

        # A follow-up turn re-sends the conversation: everything computed before is a hit.
        turn2 = TEMPLATE + ENDINGS[0] + outs[0]["text"] + " The end."
        meta = engine.generate(turn2, GREEDY)["meta_info"]
        print(f"second turn: cached {meta['cached_tokens']}/{meta['prompt_tokens']} prompt tokens")

        # Tenants with their own salt get their own namespace: no sharing, no timing leak.
        meta = engine.generate(TEMPLATE + ENDINGS[1], GREEDY, cache_salt="tenant-42")["meta_info"]
        print(f"salted request: cached {meta['cached_tokens']}/{meta['prompt_tokens']}")

        stats = engine.get_server_info()["prefix_cache"]
        print(
            f"hit {stats['hit_tokens']} of {stats['queried_tokens']} queried prompt tokens; "
            f"tree holds {stats['tree_tokens']} tokens"
        )


if __name__ == "__main__":
    main()
