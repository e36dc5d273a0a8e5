"""`cairn preview`: exactly what one step would send for a sample event and profile."""

from __future__ import annotations

import json
from pathlib import Path

from tests.control.conftest import EXAMPLES, Admin, run_cli

EVENT = {
    "type": "track",
    "event": "Cart Abandoned",
    "userId": "u1",
    "properties": {"cart_id": "c1", "cart_value": 99.5, "cart_url": "https://shop/c1"},
}


async def test_preview_renders_the_email_a_step_would_send(admin: Admin) -> None:
    await admin.apply_files(EXAMPLES)
    status, body = await admin.call(
        "POST",
        "/v1/preview",
        {
            "journey": "abandoned-cart",
            "step": "initial-email",
            "event": EVENT,
            "profile": {"email": "ada@example.com", "first_name": "Ada"},
        },
    )
    assert status == 200, body
    assert (body["channel"], body["address"], body["skipped"]) == ("email", "ada@example.com", None)
    assert body["rendered"]["subject"] == "Ada, your cart is waiting"
    assert "99.5" in body["rendered"]["text"]
    assert 'href="https://shop/c1"' in body["rendered"]["html"]
    assert "event.properties.item_count" in body["missing"] or body["missing"] == []


async def test_preview_says_a_profile_without_an_address_would_be_skipped(admin: Admin) -> None:
    await admin.apply_files(EXAMPLES)
    status, body = await admin.call(
        "POST",
        "/v1/preview",
        {"journey": "abandoned-cart", "step": "text-reminder", "event": EVENT, "profile": {}},
    )
    assert status == 200, body
    assert body["skipped"] is not None
    assert "profile.phone" in body["skipped"]
    assert body["rendered"]["body"].startswith("Your cart (99.5)")


async def test_preview_refuses_a_step_that_does_not_send(admin: Admin) -> None:
    await admin.apply_files(EXAMPLES)
    status, body = await admin.call(
        "POST", "/v1/preview", {"journey": "abandoned-cart", "step": "pause", "event": EVENT}
    )
    assert (status, body["code"]) == (422, "invalid")
    status, body = await admin.call(
        "POST", "/v1/preview", {"journey": "abandoned-cart", "step": "nope", "event": EVENT}
    )
    assert (status, body["code"]) == (404, "not_found")


async def test_cli_preview_prints_the_rendered_push(admin: Admin, tmp_path: Path) -> None:
    await admin.apply_files(EXAMPLES)
    event = tmp_path / "event.json"
    event.write_text(json.dumps(EVENT))
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"push_token": "tok-1"}))
    result = await run_cli(
        "preview", "abandoned-cart", "--step", "final-push", "--event", str(event),
        "--profile", str(profile), api=admin.url,
    )  # fmt: skip
    assert result.code == 0, result
    assert "title:     Still thinking it over?" in result.out
    assert '"cart_id": "c1"' in result.out
    assert "tok-1" in result.out


async def test_preview_of_a_destination_step_shows_the_payload_it_would_send(admin: Admin) -> None:
    await admin.apply_files(EXAMPLES)
    event = {
        "event": "Application Started",
        "userId": "u7",
        "properties": {"application_id": "app-1", "product": "loan"},
    }
    status, body = await admin.call(
        "POST",
        "/v1/preview",
        {"journey": "application-reminders", "step": "reminder", "event": event},
    )
    assert status == 200, body
    assert (body["destination"], body["skipped"]) == ("braze", None)
    payload = json.loads(body["rendered"]["body"])
    assert payload == {
        "application_id": "app-1",
        "product": "loan",
        "journey": "application-reminders",
        "step": "reminder",
    }
    assert body["delivery"]["destination"] == "braze"
    assert body["delivery"]["profile_id"] == "u7"
    sent = body["destination_event"]
    assert (sent["name"], sent["profile_id"]) == ("Journey Step Entered", "u7")
    assert sent["properties"]["application_id"] == "app-1"
    assert sent["properties"]["step_id"] == "reminder"
