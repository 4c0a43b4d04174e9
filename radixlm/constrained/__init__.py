"""Constrained decoding: grammars (regex, JSON schema, JSON mode, choices) compiled to token FSMs."""
