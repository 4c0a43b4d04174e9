"""One HTTP exchange with a generation route, checked against the API contract: the response
models (``server/api_responses.py``) and the schemas the server publishes in ``/openapi.json``.

The contract for every reply: never a 5xx; a 4xx is JSON with an error ``message`` in the
route's error shape; a 200 is the route's result (JSON), or for a stream SSE ``data:`` events,
each a chunk (or an error event with a 4xx code), ending with ``data: [DONE]``.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import TypeAdapter
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from radixlm.server import api_responses as r

GEN, CMPL, CHAT = "/generate", "/v1/completions", "/v1/chat/completions"
ROUTES = (GEN, CMPL, CHAT)
_DOC = "urn:radixlm:openapi"

# route -> (result, stream event, error) models
MODELS: dict[str, tuple[TypeAdapter, TypeAdapter, TypeAdapter]] = {
    GEN: (
        TypeAdapter(r.GenerateResponse | list[r.GenerateResponse]),
        TypeAdapter(r.GenerateChunk | r.ErrorResponse),
        TypeAdapter(r.ErrorResponse),
    ),
    CMPL: (
        TypeAdapter(r.CompletionResponse),
        TypeAdapter(r.CompletionChunk | r.OpenAIErrorResponse),
        TypeAdapter(r.OpenAIErrorResponse),
    ),
    CHAT: (
        TypeAdapter(r.ChatCompletionResponse),
        TypeAdapter(r.ChatCompletionChunk | r.OpenAIErrorResponse),
        TypeAdapter(r.OpenAIErrorResponse),
    ),
}


@dataclass
class Reply:
    status: int
    content_type: str
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    def events(self) -> list[Any]:
        """The SSE ``data:`` payloads, JSON-decoded except ``[DONE]``."""
        out = []
        for line in self.text.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
        return out


def send(url: str, path: str, body: bytes, timeout: float = 120.0) -> Reply:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        text = resp.read().decode("utf-8")
        return Reply(resp.status, resp.getheader("Content-Type") or "", text)
    finally:
        conn.close()


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class Contract:
    """Checks replies against the models and against ``doc`` (the served ``/openapi.json``)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(_DOC, resource)
        self._validators: dict[tuple[str, ...], Draft202012Validator] = {}

    def validator(self, *path: str) -> Draft202012Validator:
        """A validator for the schema at ``path`` in the document (its refs resolve there)."""
        return Draft202012Validator({"$ref": f"{_DOC}#/{_pointer(*path)}"}, registry=self.registry)

    def _validate(self, path: tuple[str, ...], value: Any) -> list[str]:
        if path not in self._validators:
            self._validators[path] = self.validator(*path)
        return [e.message for e in self._validators[path].iter_errors(value)]

    def request_schema(self, route: str) -> dict[str, Any]:
        content = self.doc["paths"][route]["post"]["requestBody"]["content"]
        return content["application/json"]["schema"]

    def check_request(self, route: str, body: Any) -> None:
        """Assert that ``body`` is valid for the route's published request schema."""
        path = ("paths", route, "post", "requestBody", "content", "application/json", "schema")
        errors = self._validate(path, body)
        assert not errors, f"{route}: the body fails the request schema: {errors[0]}"

    def _published(self, route: str, status: int, media: str, value: Any) -> None:
        responses = self.doc["paths"][route]["post"]["responses"]
        key = str(status) if str(status) in responses else "400"  # other 4xx: the error shape
        path = ("paths", route, "post", "responses", key, "content", media, "schema")
        errors = self._validate(path, value)
        assert not errors, f"{route} {status} fails its published schema: {errors[0]}"

    def check(self, route: str, reply: Reply) -> str:
        """Assert the contract for ``reply``; return ``"ok"``, ``"stream"`` or ``"4xx"``."""
        result, event, error = MODELS[route]
        assert reply.status < 500, f"{route} answered {reply.status}: {reply.text[:500]}"
        if reply.status >= 400:
            assert reply.content_type.startswith("application/json"), reply
            body = reply.json()
            error.validate_python(body)
            assert body["error"]["message"], body
            self._published(route, reply.status, "application/json", body)
            return "4xx"
        assert reply.status == 200, reply
        if reply.content_type.startswith("text/event-stream"):
            events = reply.events()
            assert events and events[-1] == "[DONE]", reply.text[-300:]
            for e in events[:-1]:
                event.validate_python(e)
                self._published(route, 200, "text/event-stream", e)
                if "error" in e:
                    assert e["error"]["code"] not in range(500, 600), e
            return "stream"
        body = reply.json()
        result.validate_python(body)
        self._published(route, 200, "application/json", body)
        return "ok"
