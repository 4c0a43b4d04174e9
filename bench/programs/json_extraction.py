"""JSON extraction with ``gen(json_schema=...)``: structured facts about a text.

Each program is one ShareGPT user message (the first human turn, cut to
``--json-doc-tokens`` tokens) behind a shared instruction with two worked examples; one
constrained ``gen`` writes a JSON object that must match ``SCHEMA`` (string lengths and enums
bounded, so a random-weight model still finishes inside ``--json-max-tokens``). The quality
metric is the share of outputs that parse and validate against the schema.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from base import Workload, take

import radixlm_lang as sgl

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "minLength": 1, "maxLength": 24},
        "kind": {"enum": ["question", "request", "statement", "code", "other"]},
        "language": {"enum": ["English", "Chinese", "Spanish", "Korean", "other"]},
        "needs_code": {"type": "boolean"},
        "length": {"enum": ["short", "medium", "long"]},
    },
    "required": ["topic", "kind", "language", "needs_code", "length"],
    "additionalProperties": False,
}
INSTRUCTIONS = (
    "Extract structured information from the user message below as a JSON object with the "
    "fields topic (a few words), kind (question, request, statement, code or other), language, "
    "needs_code (whether answering needs code) and length (short, medium or long).\n\n"
    "Message: How do I reverse a linked list in Python?\n"
    'JSON: {"topic": "linked lists", "kind": "question", "language": "English", '
    '"needs_code": true, "length": "short"}\n\n'
    "Message: Write a friendly two-paragraph email inviting my team to a Friday picnic.\n"
    'JSON: {"topic": "team picnic email", "kind": "request", "language": "English", '
    '"needs_code": false, "length": "short"}\n\n'
)


@sgl.function
def json_extraction(s: Any, message: str, max_tokens: int) -> None:
    s += INSTRUCTIONS + "Message: " + message + "\nJSON:"
    s += sgl.gen("json", max_tokens=max_tokens, json_schema=SCHEMA)


def schema_valid(states: list[Any]) -> tuple[str, float]:
    """Share of outputs that parse as JSON and validate against ``SCHEMA``."""
    import jsonschema

    good = 0
    for state in states:
        try:
            jsonschema.validate(json.loads(state["json"]), SCHEMA)
        except Exception:  # noqa: BLE001 - unparsable, invalid or missing: not valid
            continue
        good += 1
    return "valid JSON", good / max(1, len(states))


def load(args: argparse.Namespace, tok: Any) -> Workload:
    with open(Path(args.sharegpt)) as f:
        conversations = json.load(f)
    messages = []
    for conv in conversations:
        text = next((t["value"] for t in conv["conversations"] if t["from"] == "human"), "")
        ids = tok.encode(" ".join(text.split()))[: args.json_doc_tokens]  # one line
        if ids:
            messages.append(tok.decode(ids))
    messages = take(messages, args.num_programs, args.sharegpt)
    return Workload(
        "json_extraction",
        json_extraction,
        [{"message": m, "max_tokens": args.json_max_tokens} for m in messages],
        f"ShareGPT message (<= {args.json_doc_tokens} tok) -> gen(json_schema) with 5 fields",
        quality=schema_valid,
    )
