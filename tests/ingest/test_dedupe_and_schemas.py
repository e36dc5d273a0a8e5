"""A messageId is accepted once (within JetStream's window and long beyond it), and events are
checked against Trigger schemas."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from cairn_ingest import repo
from tests.ingest.conftest import Ingest, InProcessFactory


async def send(
    http: aiohttp.ClientSession, ingest: Ingest, path: str, body: Any
) -> tuple[int, dict[str, Any]]:
    auth = base64.b64encode(f"{ingest.write_key}:".encode()).decode()
    async with http.post(
        ingest.url + path, data=json.dumps(body), headers={"Authorization": f"Basic {auth}"}
    ) as resp:
        return resp.status, await resp.json()


async def test_a_repeated_message_id_is_accepted_once(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process()
    event = {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "m-1"}
    assert await send(http, ingest, "/v1/batch", {"batch": [event, event]}) == (
        200,
        {"success": True},
    )
    assert await send(http, ingest, "/v1/track", event) == (200, {"success": True})
    assert [e.message_id for e in await ingest.events(1)] == ["m-1"]


async def test_a_message_id_seen_a_day_ago_is_still_a_duplicate(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    """Beyond JetStream's 10-minute window only PostgreSQL remembers: a messageId accepted 23 h
    ago (recorded, long gone from the window) is dropped; a new one in the same batch is kept."""
    ingest = await in_process()
    assert ingest.pool is not None
    await ingest.pool.execute(
        "INSERT INTO ingest_dedupe VALUES ($1, now() - interval '23 hours')",
        f"{ingest.key_id}/m-old",
    )
    batch = [
        {"type": "track", "userId": "u1", "event": "Replayed", "messageId": "m-old"},
        {"type": "track", "userId": "u1", "event": "Fresh", "messageId": "m-new"},
    ]
    assert await send(http, ingest, "/v1/batch", {"batch": batch}) == (200, {"success": True})
    assert [e.message_id for e in await ingest.events(1)] == ["m-new"]
    remembered = await ingest.pool.fetchval("SELECT count(*) FROM ingest_dedupe")
    assert remembered == 2


async def test_one_write_keys_message_ids_never_shadow_anothers(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    """A messageId is unique within its source (Segment's rule): a client holding one public
    write key who sends another source's (predictable) messageIds first drops none of them."""
    ingest = await in_process()
    attacker = ingest.write_key
    shop = await ingest.new_key("shop")
    event = {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "order-7"}
    assert await send(http, ingest, "/v1/track", event) == (200, {"success": True})
    ingest.write_key = shop
    assert await send(http, ingest, "/v1/track", {**event, "userId": "u2"}) == (
        200,
        {"success": True},
    )
    assert await send(http, ingest, "/v1/track", {**event, "userId": "u2"}) == (
        200,
        {"success": True},
    )  # the shop's own repeat is still a duplicate
    ingest.write_key = attacker
    events = await ingest.events(2)
    assert [(e.message_id, e.profile_id) for e in events] == [("order-7", "u1"), ("order-7", "u2")]


async def test_pruning_forgets_only_message_ids_older_than_the_retention(
    in_process: InProcessFactory,
) -> None:
    ingest = await in_process()
    assert ingest.pool is not None
    await ingest.pool.execute(
        "INSERT INTO ingest_dedupe VALUES ('old', now() - interval '49 hours'), "
        "('recent', now() - interval '25 hours')"
    )
    assert await repo.prune_dedupe(ingest.pool, timedelta(hours=48)) == 1
    rows = await ingest.pool.fetch("SELECT message_id FROM ingest_dedupe")
    assert [r["message_id"] for r in rows] == ["recent"]


async def test_tracking_hits_are_remembered_as_long_as_their_links_work(
    in_process: InProcessFactory,
) -> None:
    ingest = await in_process()
    assert ingest.pool is not None
    await ingest.pool.execute(
        "INSERT INTO ingest_dedupe VALUES ('old', now() - interval '49 hours'), "
        "('tracking:open:a', now() - interval '100 days'), "
        "('tracking:open:b', now() - interval '181 days')"
    )
    pruned = await repo.prune_dedupe(
        ingest.pool, timedelta(hours=48), tracking_older_than=timedelta(days=180)
    )
    assert pruned == 2
    rows = await ingest.pool.fetch("SELECT message_id FROM ingest_dedupe")
    assert [r["message_id"] for r in rows] == ["tracking:open:a"]


TRIGGER = {
    "kind": "Trigger",
    "name": "cart-abandoned",
    "event": "Cart Abandoned",
    "properties": {"cart_id": {"type": "string", "required": True}, "cart_value": "number"},
}


async def add_trigger(ingest: Ingest) -> None:
    assert ingest.pool is not None
    assert ingest.triggers is not None
    await ingest.pool.execute(
        "INSERT INTO resources (kind, name, document, status) VALUES ('Trigger', $1, $2, 'ready')",
        TRIGGER["name"],
        json.dumps(TRIGGER),
    )
    await ingest.triggers.refresh()


async def test_flag_mode_keeps_a_violating_event_and_names_the_violations(
    in_process: InProcessFactory, http: aiohttp.ClientSession
) -> None:
    ingest = await in_process(trigger_schema_mode="flag")
    await add_trigger(ingest)
    bad = {"userId": "u1", "event": "Cart Abandoned", "properties": {"cart_value": "lots"}}
    good = {"userId": "u1", "event": "Cart Abandoned", "properties": {"cart_id": "c1"}}
    assert (await send(http, ingest, "/v1/track", bad))[0] == 200
    assert (await send(http, ingest, "/v1/track", good))[0] == 200
    flagged, clean = await ingest.events(2)
    assert flagged.context["cairn"]["schema_violations"] == [
        "properties.cart_id: required by trigger 'cart-abandoned'",
        "properties.cart_value: expected number, got string",
    ]
    assert "cairn" not in clean.context


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
async def test_reject_mode_refuses_a_violating_event(
    in_process: InProcessFactory, http: aiohttp.ClientSession, path: str
) -> None:
    ingest = await in_process(trigger_schema_mode="reject")
    await add_trigger(ingest)
    bad = {"type": "track", "userId": "u1", "event": "Cart Abandoned", "properties": {}}
    other = {"type": "track", "userId": "u1", "event": "Page Viewed"}
    if path == "/v1/track":
        status, body = await send(http, ingest, path, bad)
        assert (status, body["code"]) == (400, "schema_violation")
        assert "properties.cart_id: required" in body["message"]
        assert await ingest.events() == []
    else:
        status, body = await send(http, ingest, path, {"batch": [bad, other]})
        assert status == 200
        assert [(r["index"], r["code"]) for r in body["rejected"]] == [(0, "schema_violation")]
        assert [e.event for e in await ingest.events(1)] == ["Page Viewed"]
