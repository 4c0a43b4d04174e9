"""Checks a finished constrained output against what the request asked for.

Every complete output of a ``json_schema`` request is parsed and validated with ``jsonschema``
against the schema exactly as the user sent it (formats included, where ``jsonschema`` has a
checker for them), whatever the backend enforced while decoding; ``json_object`` outputs must
parse to a JSON object and ``choices`` outputs must be one of the choices. Other kinds (regex,
ebnf, dtype) are enforced by construction and not re-checked (``valid`` is None).

Invariant: the check never raises for any output text; a validator that cannot be built (a
schema ``jsonschema`` cannot handle) reports ``valid=None`` with the reason.
"""

from __future__ import annotations

import json
from typing import Any

MAX_ERROR_CHARS = 300


class OutputCheck:
    """``check(text) -> (valid, error)`` for one spec; build once per compiled grammar."""

    def __init__(self, spec: Any) -> None:
        self.kind = spec.kind
        self._validator: Any = None
        self._choices: list[str] | None = None
        self._unavailable: str | None = None
        if spec.kind == "choices":
            self._choices = json.loads(spec.value)
        elif spec.kind == "json_schema":
            import jsonschema

            try:
                schema = json.loads(spec.value)
                cls = jsonschema.validators.validator_for(schema)
                self._validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
            except Exception as e:  # noqa: BLE001 (reported as "not checked", never raised)
                self._unavailable = f"the schema cannot be checked: {type(e).__name__}: {e}"

    def __call__(self, text: str) -> tuple[bool | None, str | None]:
        if self._choices is not None:
            return (True, None) if text in self._choices else (False, "not one of the choices")
        if self.kind not in ("json_schema", "json_object"):
            return None, None
        if self._unavailable is not None:
            return None, self._unavailable
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as e:
            return False, _clip(f"the output is not valid JSON: {e}")
        if self.kind == "json_object":
            ok = isinstance(value, dict)
            return ok, None if ok else "the output is JSON but not an object"
        try:
            import jsonschema

            error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        except RecursionError:
            return None, "the output nests too deeply to be checked"
        except Exception as e:  # noqa: BLE001 (a schema jsonschema cannot evaluate: not checked)
            return None, _clip(f"the schema cannot be checked: {type(e).__name__}: {e}")
        if error is None:
            return True, None
        where = "/".join(str(p) for p in error.absolute_path)
        return False, _clip(f"at /{where}: {error.message}")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
