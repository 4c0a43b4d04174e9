"""Constrained decoding: regex, JSON schema, JSON mode, choices and EBNF grammars, compiled by
outlines-core (token DFAs) or llguidance (Earley parser), chosen per spec by ``backends.py``."""
