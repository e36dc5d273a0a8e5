"""The OpenAPI 3.1 document of the admin API, generated from the route table so the two cannot
drift apart: a route is added in one place and appears in ``/openapi.json`` with its schemas."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

TITLE = "Cairn admin API"
VERSION = "1"
_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    request: type[Any] | None = None
    response: type[Any] | None = None
    status: int = 200
    yaml_body: bool = False
    """Also accepts a raw YAML/JSON body of documents (``Content-Type: application/yaml``)."""
    query: tuple[tuple[str, str, str], ...] = ()
    """Query parameters: (name, JSON Schema type, description)."""


def _ref(kind: type[Any]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{kind.__name__}"}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


def _operation(route: Route) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if route.response is not None:
        ok["content"] = {"application/json": {"schema": _ref(route.response)}}
    else:
        ok["content"] = {"application/json": {"schema": {"type": "object"}}}
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "responses": {
            str(route.status): ok,
            "401": _error("Missing or wrong bearer token"),
            "404": _error("No such resource"),
            "409": _error("Refused in the current state"),
            "422": _error("The documents or the request have problems"),
        },
    }
    parameters: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in _PARAM.findall(route.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind},
         "description": description}
        for name, kind, description in route.query
    ]  # fmt: skip
    if parameters:
        op["parameters"] = parameters
    if route.request is not None:
        content: dict[str, Any] = {"application/json": {"schema": _ref(route.request)}}
        if route.yaml_body:
            content["application/yaml"] = {"schema": {"type": "string"}}
        op["requestBody"] = {"required": True, "content": content}
    return op


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    from cairn_control.requests import ErrorBody

    kinds: list[type[Any]] = [ErrorBody]
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
        kinds.extend(k for k in (route.request, route.response) if k is not None)
    _, components = msgspec.json.schema_components(
        list(dict.fromkeys(kinds)), ref_template="#/components/schemas/{name}"
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "The control plane of Cairn: apply documents, publish and stop "
            "journeys, template status, write keys, previews, dead letters. Served on the ingest "
            "process's internal admin listener.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
