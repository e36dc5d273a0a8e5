"""The admin API's surface: bearer-token auth, JSON errors, OpenAPI covering every route."""

from __future__ import annotations

import hashlib

import asyncpg
from openapi_spec_validator import validate

from cairn_common.topology import Topology
from cairn_control import ROUTES, admin_app
from tests.control.conftest import TOKEN, Admin


async def test_requests_without_the_right_bearer_token_are_refused_with_json(admin: Admin) -> None:
    for token in (None, "wrong"):
        status, body = await admin.call("GET", "/v1/journeys", token=token)
        assert status == 401
        assert body["code"] == "unauthorized"
    async with admin.http.get(f"{admin.url}/v1/journeys") as resp:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    status, body = await admin.call("GET", "/v1/journeys", token=TOKEN)
    assert (status, body) == (200, {"journeys": []})


async def test_unknown_routes_and_bad_bodies_answer_json_errors(admin: Admin) -> None:
    status, body = await admin.call("GET", "/v1/nothing-here")
    assert (status, body["code"]) == (404, "not_found")
    status, body = await admin.call("POST", "/v1/write-keys", {"rate_limit": 5})
    assert (status, body["code"]) == (422, "invalid")
    assert "name" in body["message"]


async def test_openapi_document_describes_every_route(admin: Admin, topology: Topology) -> None:
    async with admin.http.get(f"{admin.url}/openapi.json") as resp:
        assert resp.status == 200
        document = await resp.json()
    assert document["openapi"].startswith("3.1")
    validate(document)  # a valid OpenAPI 3.1 document, as code generators will read it
    app = admin_app(admin.pool, None, topology, TOKEN)  # type: ignore[arg-type]
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
        and route.resource.canonical.startswith("/v1/")
    }  # fmt: skip
    described = {(m, path) for path, ops in document["paths"].items() for m in ops}
    assert served == described
    assert len(served) == len(ROUTES)
    stats = document["paths"]["/v1/journeys/{name}/stats"]["get"]
    assert {(p["name"], p["in"]) for p in stats["parameters"]} == {
        ("name", "path"), ("version", "query"), ("by", "query"),
    }  # fmt: skip
    schemas = document["components"]["schemas"]
    for path, ops in document["paths"].items():
        for op in ops.values():
            for response in op["responses"].values():
                ref = response.get("content", {}).get("application/json", {}).get("schema", {})
                if "$ref" in ref:
                    assert ref["$ref"].rsplit("/", 1)[1] in schemas, path


async def test_write_key_secret_is_shown_once_and_only_its_hash_is_stored(admin: Admin) -> None:
    status, created = await admin.call(
        "POST", "/v1/write-keys", {"name": "website", "rate_limit": 50}
    )
    assert status == 201, created
    secret = created["secret"]
    key_id = created["key"]["key_id"]
    assert key_id.startswith("wk_")
    row = await admin.pool.fetchrow("SELECT * FROM write_keys WHERE key_id = $1", key_id)
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in {str(v) for v in row.values()}
    assert row["rate_limit"] == 50

    status, listed = await admin.call("GET", "/v1/write-keys")
    assert status == 200
    assert secret not in str(listed)
    assert [(k["key_id"], k["name"], k["revoked_at"]) for k in listed["write_keys"]] == [
        (key_id, "website", None)
    ]


async def test_revoking_a_write_key_is_immediate_and_notifies_ingest(admin: Admin) -> None:
    _, created = await admin.call("POST", "/v1/write-keys", {"name": "app"})
    key_id = created["key"]["key_id"]
    heard: list[str] = []
    conn = await asyncpg.connect(admin.database_url)
    try:
        await conn.add_listener("cairn_write_keys", lambda *args: heard.append(args[3]))
        status, body = await admin.call("POST", f"/v1/write-keys/{key_id}/revoke")
        await conn.execute("SELECT 1")
    finally:
        await conn.close()
    assert status == 200, body
    assert body["revoked_at"] is not None
    assert heard, "ingest replicas are told to refresh their key cache"
    revoked = await admin.pool.fetchval(
        "SELECT revoked_at IS NOT NULL FROM write_keys WHERE key_id = $1", key_id
    )
    assert revoked
    status, body = await admin.call("POST", "/v1/write-keys/wk_nope/revoke")
    assert (status, body["code"]) == (404, "not_found")
