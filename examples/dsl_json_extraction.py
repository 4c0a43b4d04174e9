"""Extract fields from a short text into JSON with ``sgl.gen(json_schema=...)``.

    python examples/dsl_json_extraction.py                       # bundled model, in-process
    python examples/dsl_json_extraction.py --url http://127.0.0.1:30000

The schema is compiled into a token-level automaton by the server, so the output always parses
and matches the schema whatever the model: the bundled stories260K model knows nothing about
JSON, yet ``json.loads`` never fails. (A pydantic model class works as ``json_schema`` too.)
Bounding every string (``maxLength``) keeps the generation short; keywords the grammar cannot
enforce (e.g. ``minimum``) are logged and ignored (``--json-schema-unenforced reject`` refuses).
"""

from __future__ import annotations

import json

from _dsl_cli import print_trace_heads, run_example

import radixlm_lang as sgl

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "pet": {"type": "string", "enum": ["dog", "cat", "bird", "none"]},
        "happy": {"type": "boolean"},
    },
    "required": ["name", "age", "pet", "happy"],
    "additionalProperties": False,
}
TEXTS = [
    "Lily was five years old. She had a little dog named Max and she was very happy.",
    "Tom was seven. He did not have a pet and he was sad because it was raining.",
]


@sgl.function
def extract(s, text):
    s += "Read the story and fill in the card.\nStory: " + text + "\nCard: "
    s += sgl.gen("card", max_tokens=96, temperature=0, json_schema=SCHEMA)


def run(backend) -> list[dict]:
    cards = []
    for text in TEXTS:
        st = extract.run(text=text, backend=backend)
        card = json.loads(st["card"])  # always valid JSON that matches SCHEMA
        print(f"{text}\n  -> {card}")
        cards.append(card)
    print_trace_heads(st, "trace of the last program:")
    return cards


def main(argv: list[str] | None = None) -> list[dict]:
    return run_example(__doc__, run, argv)


if __name__ == "__main__":
    main()
