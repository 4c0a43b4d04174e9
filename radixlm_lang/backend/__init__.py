"""Backends of the DSL: our server (``RuntimeEndpoint``), the in-process engine, any
OpenAI-compatible server, and a mock for tests."""
