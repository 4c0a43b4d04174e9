"""KV memory: request→token table, per-layer KV pool with its slot allocator, prefix caches."""
