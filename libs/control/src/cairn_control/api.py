"""The admin HTTP API: the control plane over HTTP, for the ``cairn`` CLI and for scripts.

Served by the ingest process on its own, internal listener (decision 0004). Every route under
``/v1/`` needs ``Authorization: Bearer <CAIRN_ADMIN_TOKEN>``. Errors are JSON
``{"code", "message", "problems": [{"path", "message", "source", "line"}]}``. The routes are
declared once in ``ROUTES``; the OpenAPI document at ``/openapi.json`` is generated from them.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import structlog
from aiohttp import web
from nats.js.client import JetStreamContext

from cairn_common.topology import Topology
from cairn_control import deadletters, journeys, keys, resources, store, templates
from cairn_control.errors import ControlError, Invalid, NotFound, ProblemOut
from cairn_control.openapi import Route, openapi_document
from cairn_control.preview import Preview, preview_step
from cairn_control.requests import (
    AppliedList,
    ApplyRequest,
    AuditList,
    CreateKeyRequest,
    DocumentRef,
    JourneyDetail,
    JourneyList,
    KeyList,
    PreviewRequest,
    ResourceList,
    StopRequest,
    TemplateList,
    ValidateResponse,
    VersionList,
)
from cairn_control.stats import JourneyStats, journey_stats
from cairn_control.stop import Stopped, stop_journey
from cairn_control.validation import check_documents, parse_texts

log = structlog.get_logger(__name__)

POOL = web.AppKey("pool", asyncpg.Pool)
JS = web.AppKey("js", JetStreamContext)
TOPOLOGY = web.AppKey("topology", Topology)
PARTITIONS = web.AppKey("partitions", int)
MAX_BODY = 10 * 1024 * 1024
PUBLIC_PATHS = frozenset({"/openapi.json"})
"""Served without the token; everything else needs it (deny by default)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_encoder = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str, problems: Any = ()) -> web.Response:
    return json_response(
        {"code": code, "message": message, "problems": list(problems)}, status=status
    )


def decode_body(raw: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise Invalid(f"request body: {exc}") from None


# ---- handlers ------------------------------------------------------------------------------------


async def _documents_of(request: web.Request) -> list[tuple[str, str]]:
    """Documents from ``{"documents": [{"source", "text"} | {...document...}]}``, or a raw
    YAML/JSON body (``Content-Type: application/yaml``) holding one or more documents."""
    raw = await request.read()
    if request.content_type in ("application/yaml", "application/x-yaml", "text/yaml"):
        return [(raw.decode("utf-8", errors="replace"), request.headers.get("X-Source", "request"))]
    body: ApplyRequest = decode_body(raw, ApplyRequest)
    texts = []
    for i, item in enumerate(body.documents):
        if item.text is not None:
            texts.append((item.text, item.source or f"documents[{i}]"))
        elif item.document is not None:
            texts.append(
                (_encoder.encode(item.document).decode(), item.source or f"documents[{i}]")
            )
        else:
            raise Invalid(f"documents[{i}]: give either 'text' (YAML or JSON) or 'document'")
    if not texts:
        raise Invalid("no documents given")
    return texts


async def apply(request: web.Request) -> web.Response:
    documents, problems = parse_texts(await _documents_of(request))
    if problems:
        raise Invalid(f"{len(problems)} problem(s) in the documents; nothing was applied", problems)
    if not documents:
        raise Invalid("the request holds no documents")
    problems = await templates.check_ready_templates(request.app[POOL], documents)
    if problems:
        message = "a ready template's new content cannot render; nothing was applied"
        raise Invalid(message, problems)
    applied = await store.apply_documents(request.app[POOL], documents)
    warnings: list[ProblemOut] = []
    if any(d.kind == "Journey" for d in documents):
        async with request.app[POOL].acquire() as conn:
            stored = await store.load_stored(conn)
        warnings = check_documents([d for d in documents if d.kind == "Journey"], stored)
    return json_response(AppliedList(applied=applied, warnings=warnings))


async def validate(request: web.Request) -> web.Response:
    documents, problems = parse_texts(await _documents_of(request))
    async with request.app[POOL].acquire() as conn:
        stored = await store.load_stored(conn)
    problems += check_documents(documents, stored)
    return json_response(
        ValidateResponse(
            valid=not problems,
            problems=problems,
            documents=[DocumentRef(kind=d.kind, name=d.name, source=d.source) for d in documents],
        )
    )


async def list_journeys(request: web.Request) -> web.Response:
    return json_response(JourneyList(journeys=await journeys.list_journeys(request.app[POOL])))


async def show_journey(request: web.Request) -> web.Response:
    summary, draft = await journeys.get_journey(request.app[POOL], request.match_info["name"])
    return json_response(JourneyDetail(journey=summary, draft=draft))


async def list_versions(request: web.Request) -> web.Response:
    versions = await journeys.list_versions(request.app[POOL], request.match_info["name"])
    return json_response(VersionList(versions=versions))


async def show_version(request: web.Request) -> web.Response:
    try:
        number = int(request.match_info["version"])
    except ValueError:
        raise Invalid(f"version must be a number, not {request.match_info['version']!r}") from None
    info = await journeys.get_version(request.app[POOL], request.match_info["name"], number)
    return json_response(info)


async def stats(request: web.Request) -> web.Response:
    query = request.query
    by = query.get("by", "day")
    if by not in ("day", "hour"):
        raise Invalid(f"by must be 'day' or 'hour', not {by!r}")
    version = None
    if "version" in query:
        try:
            version = int(query["version"])
        except ValueError:
            raise Invalid(f"version must be a number, not {query['version']!r}") from None
    name = request.match_info["name"]
    result = await journey_stats(request.app[POOL], name, version=version, by=by)  # type: ignore[arg-type]
    return json_response(result)


async def publish(request: web.Request) -> web.Response:
    dry_run = request.query.get("dry_run", "false").lower() in ("1", "true", "yes")
    name = request.match_info["name"]
    return json_response(await store.publish(request.app[POOL], name, dry_run=dry_run))


async def stop(request: web.Request) -> web.Response:
    body: StopRequest = decode_body(await request.read(), StopRequest)
    app = request.app
    result: Stopped = await stop_journey(
        app[POOL], app[JS], app[TOPOLOGY], request.match_info["name"], body.mode,
        partitions=app[PARTITIONS],
    )  # fmt: skip
    return json_response(result)


async def list_templates(request: web.Request) -> web.Response:
    return json_response(TemplateList(templates=await templates.list_templates(request.app[POOL])))


async def show_template(request: web.Request) -> web.Response:
    return json_response(
        await templates.get_template(request.app[POOL], request.match_info["name"])
    )


async def template_ready(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return json_response(await templates.set_template_status(request.app[POOL], name, "ready"))


async def template_draft(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return json_response(await templates.set_template_status(request.app[POOL], name, "draft"))


async def preview(request: web.Request) -> web.Response:
    body: PreviewRequest = decode_body(await request.read(), PreviewRequest)
    return json_response(await preview_step(request.app[POOL], body))


async def list_resources(request: web.Request) -> web.Response:
    found = await resources.list_resources(request.app[POOL], request.query.get("kind"))
    return json_response(ResourceList(resources=found))


async def show_resource(request: web.Request) -> web.Response:
    kind, name = request.match_info["kind"], request.match_info["name"]
    return json_response(await resources.get_resource(request.app[POOL], kind, name))


async def audit(request: web.Request) -> web.Response:
    query = request.query
    try:
        limit = int(query.get("limit", "100"))
    except ValueError:
        raise Invalid(f"limit must be a number, not {query['limit']!r}") from None
    changes = await resources.audit_trail(
        request.app[POOL], kind=query.get("kind"), name=query.get("name"), limit=limit
    )
    return json_response(AuditList(changes=changes))


def _number(query: Any, name: str) -> int | None:
    if name not in query:
        return None
    try:
        return int(query[name])
    except ValueError:
        raise Invalid(f"{name} must be a number, not {query[name]!r}") from None


def _letter_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or int(raw) < 1:
        raise NotFound(f"dead letter {raw!r} does not exist (ids are positive numbers)")
    return int(raw)


async def list_dead_letters(request: web.Request) -> web.Response:
    query = request.query
    order = query.get("order", "newest")
    if order not in ("newest", "oldest"):
        raise Invalid(f"order must be 'newest' or 'oldest', not {order!r}")
    limit = _number(query, "limit")
    wanted = deadletters.ListQuery(
        limit=deadletters.DEFAULT_LIMIT if limit is None else limit,
        cursor=_number(query, "cursor"),
        order=order,  # type: ignore[arg-type]
        stream=query.get("stream") or None,
        consumer=query.get("consumer") or None,
        subject=query.get("subject") or None,
    )
    app = request.app
    return json_response(await deadletters.list_dead_letters(app[JS], app[TOPOLOGY], wanted))


async def show_dead_letter(request: web.Request) -> web.Response:
    app = request.app
    letter_id = _letter_id(request)
    return json_response(await deadletters.get_dead_letter(app[JS], app[TOPOLOGY], letter_id))


async def redrive_dead_letter(request: web.Request) -> web.Response:
    app = request.app
    letter_id = _letter_id(request)
    return json_response(await deadletters.redrive(app[JS], app[TOPOLOGY], letter_id))


async def discard_dead_letter(request: web.Request) -> web.Response:
    app = request.app
    letter_id = _letter_id(request)
    return json_response(await deadletters.discard(app[JS], app[TOPOLOGY], letter_id))


async def list_keys(request: web.Request) -> web.Response:
    return json_response(KeyList(write_keys=await keys.list_keys(request.app[POOL])))


async def create_key(request: web.Request) -> web.Response:
    body: CreateKeyRequest = decode_body(await request.read(), CreateKeyRequest)
    created = await keys.create_key(request.app[POOL], body.name, body.rate_limit)
    return json_response(created, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    return json_response(await keys.revoke_key(request.app[POOL], request.match_info["key_id"]))


ROUTES: list[Route] = [
    Route("POST", "/v1/apply", apply, "Create or update drafts from documents",
          request=ApplyRequest, response=AppliedList, yaml_body=True),
    Route("POST", "/v1/validate", validate, "Check documents without storing them",
          request=ApplyRequest, response=ValidateResponse, yaml_body=True),
    Route("GET", "/v1/journeys", list_journeys, "List journeys", response=JourneyList),
    Route("GET", "/v1/journeys/{name}", show_journey, "A journey and its draft",
          response=JourneyDetail),
    Route("GET", "/v1/journeys/{name}/versions", list_versions, "Published versions",
          response=VersionList),
    Route("GET", "/v1/journeys/{name}/versions/{version}", show_version,
          "One frozen version with its definition", response=journeys.VersionInfo),
    Route("GET", "/v1/journeys/{name}/stats", stats,
          "Analytics: totals, per-step funnel, conversion against the goal, series",
          response=JourneyStats,
          query=(("version", "integer", "one version; default all added together"),
                 ("by", "string", "series period: day (default) or hour"))),
    Route("POST", "/v1/journeys/{name}/publish", publish,
          "Validate the draft and freeze it as the next version", response=store.Published,
          query=(("dry_run", "boolean", "only check; say what publishing would do"),)),
    Route("POST", "/v1/journeys/{name}/stop", stop,
          "Stop new entries; drain or exit running instances", request=StopRequest,
          response=Stopped),
    Route("GET", "/v1/templates", list_templates, "List templates", response=TemplateList),
    Route("GET", "/v1/templates/{name}", show_template, "One template",
          response=templates.TemplateInfo),
    Route("POST", "/v1/templates/{name}/ready", template_ready, "Mark a template ready",
          response=templates.TemplateInfo),
    Route("POST", "/v1/templates/{name}/draft", template_draft,
          "Move a template back to draft (refused while a live journey sends it)",
          response=templates.TemplateInfo),
    Route("POST", "/v1/preview", preview, "What one send step would send for a sample event",
          request=PreviewRequest, response=Preview),
    Route("GET", "/v1/resources", list_resources,
          "Every applied resource", response=ResourceList,
          query=(("kind", "string", "Journey, Template, Trigger, Channel or Destination"),)),
    Route("GET", "/v1/resources/{kind}/{name}", show_resource, "One resource's document",
          response=resources.ResourceInfo),
    Route("GET", "/v1/audit", audit,
          "Control-plane changes, oldest first", response=AuditList,
          query=(("kind", "string", "only this kind"), ("name", "string", "only this resource"),
                 ("limit", "integer", "the newest N changes (default 100, at most 1000)"))),
    Route("GET", "/v1/dead-letters", list_dead_letters,
          "Messages consumers gave up on, with their reasons (newest first by default)",
          response=deadletters.DeadLetterList,
          query=(("limit", "integer", f"at most N (default {deadletters.DEFAULT_LIMIT}, "
                                      f"at most {deadletters.MAX_LIMIT})"),
                 ("cursor", "integer", "the next_cursor of the previous page"),
                 ("order", "string", "newest (default) or oldest"),
                 ("stream", "string", "only from this source stream"),
                 ("consumer", "string", "only given up by this consumer"),
                 ("subject", "string", "only with this original subject (* and > allowed)"))),
    Route("GET", "/v1/dead-letters/{id}", show_dead_letter,
          "One dead letter with its original message", response=deadletters.DeadLetterDetail),
    Route("POST", "/v1/dead-letters/{id}/redrive", redrive_dead_letter,
          "Publish the original again to its subject, then remove the dead letter",
          response=deadletters.Redriven),
    Route("DELETE", "/v1/dead-letters/{id}", discard_dead_letter, "Discard one dead letter",
          response=deadletters.Discarded),
    Route("GET", "/v1/write-keys", list_keys, "List write keys", response=KeyList),
    Route("POST", "/v1/write-keys", create_key, "Create a write key (the secret is shown once)",
          request=CreateKeyRequest, response=keys.CreatedKey, status=201),
    Route("POST", "/v1/write-keys/{key_id}/revoke", revoke_key, "Revoke a write key",
          response=keys.WriteKey),
]  # fmt: skip


# ---- middleware and app --------------------------------------------------------------------------


def _auth_middleware(token: str) -> Any:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                response = error_response(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token (Authorization: Bearer <CAIRN_ADMIN_TOKEN>)",
                )
                response.headers["WWW-Authenticate"] = 'Bearer realm="cairn-admin"'
                return response
        return await handler(request)

    return authenticate


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ControlError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.problems)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("admin request failed: database unreachable", path=request.path)
        return error_response(503, "unavailable", f"the database is not answering: {exc}")
    except Exception:
        log.exception("admin request failed", path=request.path)
        return error_response(500, "internal", "internal error; the ingest log has the details")


def admin_app(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    topology: Topology,
    token: str,
    *,
    partitions: int = 64,
) -> web.Application:
    if not token:
        raise ValueError("the admin API needs a token (CAIRN_ADMIN_TOKEN)")
    app = web.Application(
        middlewares=[_errors_middleware, _auth_middleware(token)], client_max_size=MAX_BODY
    )
    app[POOL] = pool
    app[JS] = js
    app[TOPOLOGY] = topology
    app[PARTITIONS] = partitions
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    document = _encoder.encode(openapi_document(ROUTES))

    async def serve_openapi(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app.router.add_get("/openapi.json", serve_openapi)
    return app
