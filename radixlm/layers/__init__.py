"""Building blocks shared by the model definitions (norms, rotary embeddings)."""
