"""Skeleton-of-thought with ``fork``: outline N points, expand each in its own branch, summarise.

    python examples/dsl_tree_of_thought.py                       # bundled model, in-process
    python examples/dsl_tree_of_thought.py --url http://127.0.0.1:30000

``s.fork(n)`` copies the program state into n branches. Before the branches start, the text so
far is prefilled once (``cache_prefix`` in the trace), so every branch's first call reuses it
from the radix cache instead of recomputing it; the branches then run concurrently and the
engine batches them. ``join()`` gathers each branch's variable into a list on the parent,
which appends the expansions and writes the summary.
"""

from __future__ import annotations

from _dsl_cli import print_trace_heads, run_example

import radixlm_lang as sgl


@sgl.function
def skeleton_of_thought(s, topic, n_points=3):
    s += f"Here is a story about {topic}, in {n_points} parts.\n"
    for i in range(n_points):  # the skeleton: one short line per point
        s += f"Part {i + 1}: " + sgl.gen(f"point{i}", max_tokens=16, stop="\n") + "\n"
    branches = s.fork(n_points)
    for i, b in enumerate(branches):  # each branch expands one point
        b += f"\nMore about part {i + 1}, {b[f'point{i}']}" + sgl.gen("detail", max_tokens=32)
    branches.join()  # s["detail"] is now a list with one entry per branch
    s += "\n" + "\n".join(d.strip() for d in s["detail"])  # the parent reads all branches
    s += "\nIn the end," + sgl.gen("summary", max_tokens=24, stop="\n")


def run(backend, n_points: int = 3):
    st = skeleton_of_thought.run(
        topic="a brave little cat", n_points=n_points, temperature=0.5, backend=backend
    )
    for i, detail in enumerate(st["detail"]):
        print(f"part {i + 1}: {st[f'point{i}'].strip()}\n  expanded: {detail.strip()}")
    print(f"summary: In the end,{st['summary']}")
    print_trace_heads(
        st, "trace (cache_prefix = the fork's shared prefill; branches start cached):"
    )
    return st


def main(argv: list[str] | None = None):
    return run_example(__doc__, run, argv)


if __name__ == "__main__":
    main()
