"""Who may call what: API keys (one, or a file of keys with a tenant each) and the admin routes.

- ``--api-key`` and/or ``--api-key-file``: every route except OPTIONS, ``/health*``,
  ``/metrics`` and the ``/dashboard`` page (not its data) needs ``Authorization: Bearer <key>`` (the scheme in any case, RFC 7235; keys
  compared in constant time). A key from the file names a tenant, which the routes read from
  the ASGI scope (:func:`tenant_of`); the tokenizer manager puts each tenant's requests in their
  own prefix-cache namespace, so tenants never share cached KV (no cache-timing side channel).
- The admin routes (``/abort_request``, ``/flush_cache``) act on every tenant's requests and
  cache. With ``--admin-api-key`` they need that key; without it they answer loopback clients
  only.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from fastapi.responses import JSONResponse

from radixlm.errors import ConfigError

OPEN_PATHS = ("/health", "/health_generate", "/metrics")
DASHBOARD_PAGE = "/dashboard"  # the page holds no data; /dashboard/data needs the key
ADMIN_PATHS = ("/abort_request", "/flush_cache")
TENANT_SCOPE_KEY = "radixlm.tenant"


def load_api_keys(path: str) -> dict[bytes, str]:
    """``--api-key-file``: one ``KEY TENANT`` per line; blank lines and ``#`` comments are
    skipped. Raises ConfigError naming the line for anything else, and for a repeated key."""
    keys: dict[bytes, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read --api-key-file {path}: {e.strerror}") from e
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"{path}:{n}: expected 'KEY TENANT', got {len(parts)} field(s)")
        key, tenant = parts[0].encode(), parts[1]
        if key in keys:
            raise ConfigError(f"{path}:{n}: this key is already given to tenant {keys[key]!r}")
        keys[key] = tenant
    if not keys:
        raise ConfigError(f"--api-key-file {path} holds no keys")
    return keys


def bearer_token(scope: dict) -> bytes | None:
    """The token of ``Authorization: <scheme> <token>`` when the scheme is Bearer (any case)."""
    header = dict(scope["headers"]).get(b"authorization")
    scheme, _, token = (header or b"").strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None


def is_loopback(scope: dict) -> bool:
    client = scope.get("client")
    if not client:
        return False  # a Unix socket or an unknown peer: not provably local
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


def tenant_of(scope: dict) -> str | None:
    """The tenant whose key authorized this request (``--api-key-file``), else None."""
    return scope.get(TENANT_SCOPE_KEY)


class AuthMiddleware:
    """Plain ASGI (see :class:`radixlm.server.request_body.BodyLimitMiddleware` for why):
    checks the API key, records the tenant in the scope, and guards the admin routes.

    ``keys`` maps each accepted key to its tenant (None for ``--api-key``); empty means no key
    is required. ``admin_key`` None means the admin routes are loopback-only.
    """

    def __init__(self, app: Any, keys: dict[bytes, str | None], admin_key: str | None) -> None:
        self.app = app
        self.keys = keys
        self.admin_key = None if admin_key is None else admin_key.encode()

    def _tenant(self, token: bytes | None) -> tuple[bool, str | None]:
        """(authorized, tenant). Every key is compared, so the time does not tell which
        matched."""
        found: tuple[bool, str | None] = (False, None)
        for key, tenant in self.keys.items():
            if token is not None and hmac.compare_digest(token, key):
                found = (True, tenant)
        return found

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        token = bearer_token(scope)
        if path in ADMIN_PATHS:
            if self.admin_key is not None:
                ok = token is not None and hmac.compare_digest(token, self.admin_key)
                if not ok:
                    await _deny(scope, receive, send, 403, f"{path} is an admin route: pass "
                                "'Authorization: Bearer <admin key>' (--admin-api-key)")  # fmt: skip
                    return
                await self.app(scope, receive, send)
                return
            if not is_loopback(scope):
                await _deny(scope, receive, send, 403, f"{path} answers loopback clients only; "
                            "start the server with --admin-api-key to use it remotely")  # fmt: skip
                return
        if self.keys and not (path.startswith(OPEN_PATHS) or path == DASHBOARD_PAGE):
            ok, tenant = self._tenant(token)
            if not ok:
                await _deny(scope, receive, send, 401,
                            "Unauthorized: pass 'Authorization: Bearer <api key>'")  # fmt: skip
                return
            if tenant is not None:
                scope[TENANT_SCOPE_KEY] = tenant
        await self.app(scope, receive, send)


async def _deny(scope: dict, receive: Any, send: Any, status: int, message: str) -> None:
    if scope["path"].startswith("/v1"):
        body: dict[str, Any] = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": status,
            }  # fmt: skip
        }
    elif status == 401:
        body = {"error": "Unauthorized"}  # SGLang's native shape, which its clients match
    else:
        body = {"error": {"message": message, "code": status}}
    await JSONResponse(body, status_code=status)(scope, receive, send)
