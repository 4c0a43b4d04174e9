"""A ReAct-style agent: Thought / Action / Observation steps with tools run in Python.

    python examples/dsl_react_agent.py                       # bundled model, in-process
    python examples/dsl_react_agent.py --url http://127.0.0.1:30000

Each step writes a free-text thought, picks the action with ``sgl.select`` among the tool names,
and writes the tool's argument with a ``gen`` constrained by that tool's regex, so the argument
always parses. Reading ``s["action"]`` blocks until the select has run; the program then calls
the tool in Python and appends the observation. It stops at ``finish`` or after ``max_steps``.
The tiny demo model is no planner, but every step is well-formed, and each call reuses the
transcript before it from the radix cache.
"""

from __future__ import annotations

import operator

from _dsl_cli import print_trace_heads, run_example

import radixlm_lang as sgl

FACTS = {"cat": "A cat has 4 legs.", "bird": "A bird has 2 legs.", "spider": "A spider has 8 legs."}
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
ARG_REGEX = {  # each tool's argument grammar; finish's argument is the (numeric) answer
    "calculator": r"[0-9]{1,3} [-+*] [0-9]{1,3}",
    "lookup": "(cat|bird|spider)",
    "finish": r"[0-9]{1,4}",
}
TOOLS = list(ARG_REGEX)
EXAMPLE = (  # one worked example, so the steps have a pattern to follow
    "Question: How many legs do 2 spiders have?\nThought: I need to know the legs of a spider."
    "\nAction: lookup\nInput: spider\nObservation: A spider has 8 legs.\n"
    "Thought: Now I multiply.\nAction: calculator\nInput: 2 * 8\nObservation: 16\n"
    "Thought: I know the answer.\nAction: finish\nInput: 16\n\n"
)


def call_tool(tool: str, arg: str) -> str:
    if tool == "calculator":
        a, op, b = arg.split()
        return str(OPS[op](int(a), int(b)))
    return FACTS[arg]


@sgl.function
def agent(s, question, max_steps=3):
    s += f"Tools: {', '.join(TOOLS)}.\n" + EXAMPLE + f"Question: {question}\n"
    for i in range(max_steps):
        s += "Thought: " + sgl.gen(f"thought{i}", max_tokens=16, stop="\n") + "\n"
        tools = TOOLS if i else TOOLS[:-1]  # use a tool before answering
        s += "Action: " + sgl.select("action", choices=tools) + "\n"
        tool = s["action"]  # blocks until the select has run
        s += "Input: " + sgl.gen("arg", max_tokens=12, regex=ARG_REGEX[tool]) + "\n"
        if tool == "finish":
            s["answer"] = s["arg"]
            return
        s += f"Observation: {call_tool(tool, s['arg'])}\n"
    s["answer"] = None  # out of steps


def run(backend):
    question = "How many legs do 3 cats and 2 birds have?"
    st = agent.run(question=question, temperature=0, backend=backend)
    print(st.text())
    if st.error() is not None:  # backend errors never escape run(): they are on the state
        print(f"the program failed: {st.error()!r}")
    else:
        print(f"answer: {st['answer']}")
    print_trace_heads(st, "trace (each call reuses the transcript before it from the cache):")
    return st


def main(argv: list[str] | None = None):
    return run_example(__doc__, run, argv)


if __name__ == "__main__":
    main()
