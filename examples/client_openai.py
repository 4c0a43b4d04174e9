"""Talk to a running ``radixlm serve`` with the OpenAI SDK and with the native API.

    radixlm serve &                 # bundled demo model on :30000
    python examples/client_openai.py

It runs a completion twice (the second from the radix cache), a streamed chat, and a native
``/generate`` batch with prompt logprobs.
"""

from __future__ import annotations

import json
import urllib.request

from openai import OpenAI

BASE = "http://127.0.0.1:30000"

client = OpenAI(base_url=f"{BASE}/v1", api_key="none")
model = client.models.list().data[0].id
print("model:", model)

r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=32, temperature=0)
print("completion:", r.choices[0].text)

# The same prompt again: its KV comes from the radix cache.
r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0)
print("cached prompt tokens:", r.usage.prompt_tokens_details.cached_tokens)

for chunk in client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Tell me a story about a cat."}],
    max_tokens=40,
    stream=True,
):
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()

# Native /generate: a batch returns a list; prompt logprobs start with null.
body = {
    "text": ["Lily went to", "Tom saw a"],
    "sampling_params": {"temperature": 0, "max_new_tokens": 12},
    "return_logprob": True,
    "logprob_start_len": 0,
    "return_text_in_logprobs": True,
}
req = urllib.request.Request(f"{BASE}/generate", data=json.dumps(body).encode())
for item in json.load(urllib.request.urlopen(req)):
    print(item["text"], item["meta_info"]["input_token_logprobs"][:2])
