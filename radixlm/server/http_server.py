"""The FastAPI app: SGLang-native routes, the OpenAI router, API-key auth, error mapping.

Every error a client can cause is answered as JSON with a 4xx status and a message that says
what to fix (``{"error": {"message": ...}}`` on native routes; the OpenAI shape on ``/v1``).
A client that disconnects — streaming or not — has its requests aborted (their KV freed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from radixlm import __version__
from radixlm.errors import RadixLMError
from radixlm.server import openapi
from radixlm.server.auth import AuthMiddleware, load_api_keys, tenant_of
from radixlm.server.dashboard import create_dashboard_router
from radixlm.server.http_util import (
    SSE_DONE,
    ClientDisconnected,
    EventStream,
    close_quietly,
    next_unless_disconnected,
    sse,
)
from radixlm.server.openai_api import create_openai_router
from radixlm.server.openai_errors import INTERNAL_ERROR
from radixlm.server.request_body import BodyLimitMiddleware, parse_json_bytes
from radixlm.server.tokenizer_manager import TokenizerManager

logger = logging.getLogger(__name__)


def error_json(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": status}}, status_code=status)


def _error(e: Exception) -> JSONResponse:
    if isinstance(e, RadixLMError):
        return error_json(e.http_status, str(e))
    logger.exception("internal error")
    return error_json(500, INTERNAL_ERROR)  # the exception's text stays in the log


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    return parse_json_bytes(raw)


async def _sse_events(first: Any, it: AsyncIterator[Any]) -> AsyncIterator[str]:
    try:
        yield sse(first)
        async for chunk in it:
            yield sse(chunk)
    except RadixLMError as e:
        yield sse({"error": {"message": str(e), "code": e.http_status}})
    finally:
        await close_quietly(it)  # on disconnect too: aborts what is unfinished
    yield SSE_DONE


def create_app(tm: TokenizerManager, lifespan: Any = None) -> FastAPI:
    app = FastAPI(title="RadixLM", version=__version__, lifespan=lifespan)
    openapi.install(app)  # the generation routes' request and response schemas
    app.state.tm = tm
    cfg = tm.server_config

    keys: dict[bytes, str | None] = {}
    if cfg.api_key_file is not None:
        keys.update(load_api_keys(cfg.api_key_file))
    if cfg.api_key is not None:
        keys[cfg.api_key.encode()] = None
    app.add_middleware(AuthMiddleware, keys=keys, admin_key=cfg.admin_api_key)
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=cfg.max_request_bytes, read_timeout=cfg.read_timeout
    )

    @app.exception_handler(RadixLMError)
    async def on_radixlm_error(request: Request, e: RadixLMError):
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        """Routing errors (404 no such route, 405 wrong method) in this server's error shape."""
        if e.status_code == 404:
            message = f"no route {request.method} {request.url.path}; the API is at /docs"
        elif e.status_code == 405:
            message = f"{request.url.path} does not take {request.method}; see /docs"
        else:
            message = str(e.detail)
        if request.url.path.startswith("/v1"):
            body = {"message": message, "type": "invalid_request_error", "param": None,
                    "code": e.status_code}  # fmt: skip
            return JSONResponse({"error": body}, status_code=e.status_code, headers=e.headers)
        response = error_json(e.status_code, message)
        response.headers.update(e.headers or {})  # e.g. Allow on a 405
        return response

    # ---- generation ----------------------------------------------------------------------
    @app.post("/generate", **openapi.generate_docs())
    @app.put("/generate", **openapi.generate_docs())  # one route per method: unique operationIds
    async def generate(request: Request) -> Response:
        it = None
        streaming = False
        try:
            obj = await _json_body(request)
            it = tm.generate(obj, tenant_of(request.scope))
            first = await next_unless_disconnected(request, it)
            if isinstance(obj, dict) and obj.get("stream"):
                streaming = True
                return EventStream(_sse_events(first, it), it)
            return JSONResponse(first)
        except ClientDisconnected:
            return Response(status_code=499)
        except Exception as e:
            return _error(e)
        finally:
            if not streaming:
                await close_quietly(it)  # aborts what is unfinished

    @app.post("/abort_request")  # an admin route (server/auth.py)
    async def abort_request(request: Request) -> Response:
        obj = await _json_body(request)
        rid = obj.get("rid") if isinstance(obj, dict) else None
        if not isinstance(rid, str):
            return error_json(400, 'pass the request id to abort as {"rid": "..."}')
        found = await tm.abort(rid)
        return JSONResponse({"rid": rid, "aborted": found})

    # ---- info + maintenance --------------------------------------------------------------
    @app.get("/get_model_info")
    async def get_model_info() -> Response:
        return JSONResponse(
            {
                "model_path": tm.engine_config.model_path,
                "tokenizer_path": tm.engine_config.tokenizer_path,
                "is_generation": True,
                "served_model_name": tm.served_model_name,
                "architecture": tm.ready.architecture,
                "context_length": tm.context_length,
                "weight_version": "default",
            }
        )

    @app.get("/get_server_info")
    async def get_server_info() -> Response:
        stats = await tm.scheduler_stats()
        info: dict[str, Any] = {
            k: getattr(tm.engine_config, k) for k in tm.engine_config.field_names()
        }
        info.update(
            {k: getattr(cfg, k) for k in cfg.field_names() if k not in ("api_key", "admin_api_key")}
        )
        info.update(tm.ready.server_info())
        info.update(
            served_model_name=tm.served_model_name,
            version=__version__,
            scheduler=stats,
            internal_states=[
                {
                    "cpu_seconds_outside_forward": stats["cpu_seconds_outside_forward"]
                    + tm.cpu_seconds(),
                    "forward_seconds": stats["forward_seconds"],
                    "num_finished_requests": stats["num_finished_requests"],
                    "last_gen_throughput": tm.health.stats.get("gen_throughput", 0.0),
                }
            ],
        )
        return JSONResponse(info)

    @app.get("/flush_cache")  # an admin route (server/auth.py)
    @app.post("/flush_cache")  # one route per method: unique operationIds
    async def flush_cache() -> Response:
        if await tm.flush_cache():
            return PlainTextResponse("Cache flushed.\n")
        return PlainTextResponse(
            "Cache not flushed: requests are running or waiting; retry when the server is idle.\n",
            status_code=400,
        )

    @app.get("/health")
    async def health() -> Response:
        if not tm.health.healthy:
            return PlainTextResponse(f"unhealthy: {tm.health.reason}\n", status_code=503)
        if tm.draining:
            return PlainTextResponse("unhealthy: shutting down\n", status_code=503)
        return Response(status_code=200)

    @app.get("/health_generate")
    async def health_generate() -> Response:
        if not tm.health.healthy:
            return PlainTextResponse(f"unhealthy: {tm.health.reason}\n", status_code=503)
        if tm.states:  # real requests are being served: the scheduler is evidently alive
            return Response(status_code=200)
        probe = {"input_ids": [0], "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
        it = tm.generate(probe)
        try:
            await asyncio.wait_for(it.__anext__(), cfg.health_check_timeout)
        except Exception as e:
            return PlainTextResponse(f"unhealthy: {e}\n", status_code=503)
        finally:
            await it.aclose()
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        if tm.metrics is None:
            return PlainTextResponse("metrics are off; start the server with --enable-metrics\n",
                                     status_code=404)  # fmt: skip
        from radixlm.server.metrics import CONTENT_TYPE

        return Response(tm.metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(create_openai_router(lambda: tm))
    app.include_router(create_dashboard_router(tm))
    return app
