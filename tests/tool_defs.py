"""Tools shared by the server and DSL tool-calling tests: bounded schemas (a ``$ref`` enum, a
capped string, bounded integers), so that every sampled call stays short."""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 12},
                    "unit": {"$ref": "#/$defs/Unit"},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
                "$defs": {"Unit": {"enum": ["c", "f"]}},
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "minimum": 0, "maximum": 99},
                    "b": {"type": "integer", "minimum": 0, "maximum": 99},
                },
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
