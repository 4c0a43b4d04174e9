"""HTTP server: processes, tokenizer manager, native and OpenAI APIs."""
