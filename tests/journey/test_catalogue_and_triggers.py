"""The catalogue the matcher builds, trigger schemas for ingest, and delivery-result events."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cairn_common.messages import DeliveryResult, Event
from cairn_journey.catalogue import Catalogue
from cairn_journey.correlation import delivery_event_name
from cairn_journey.documents import DocumentError, parse_text, to_document
from cairn_journey.model import Trigger

from .support import example

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_catalogue_builds_from_stored_documents_and_knows_which_events_matter() -> None:
    cart = to_document(example("abandoned-cart"))
    apps = to_document(example("application-reminders"))
    cat = Catalogue.from_documents(
        [
            ("abandoned-cart", 1, cart),
            ("abandoned-cart", 2, cart),
            ("application-reminders", 1, apps),
        ],
        live={"abandoned-cart": 2},  # application-reminders is stopped
    )
    assert cat.live["abandoned-cart"].version == 2
    assert cat.interested("Cart Abandoned")
    assert cat.interested("Email Opened")  # a wait_for of a running version
    assert cat.interested("Application Completed")  # exit of a stopped journey's instances
    assert not cat.interested("Application Started")  # stopped: no entries
    assert not cat.interested("Page Viewed")
    identify = Event(
        message_id="m", type="identify", profile_id="p", partition=0, received_at=NOW, timestamp=NOW
    )
    assert cat.interested_in(identify)


def test_a_stored_definition_that_is_not_valid_is_refused_with_its_problems() -> None:
    with pytest.raises(DocumentError, match=r"steps: required but missing \(cart v1\)"):
        Catalogue.from_documents(
            [("cart", 1, {"kind": "Journey", "name": "cart", "trigger": "A"})], live={}
        )


def test_trigger_schema_violations_name_each_property() -> None:
    (trigger,) = parse_text(
        "kind: Trigger\nname: t\nevent: Cart Abandoned\nadditional_properties: false\n"
        "properties:\n  cart_id: {type: string, required: true}\n  cart_value: number\n"
        "  items: integer\n  at: datetime\n",
        "t.yaml",
    ).documents
    assert isinstance(trigger, Trigger)
    assert (
        trigger.violations(
            {"cart_id": "c", "cart_value": 3.5, "items": 2.0, "at": "2026-01-01T00:00:00Z"}
        )
        == []
    )
    assert trigger.violations({"cart_value": "3", "items": 1.5, "at": "soon", "x": 1}) == [
        "properties.cart_id: required by trigger 't'",
        "properties.cart_value: expected number, got string",
        "properties.items: expected integer, got number",
        "properties.at: expected datetime, got string",
        "properties.x: not declared by trigger 't'",
    ]


@pytest.mark.parametrize(
    ("channel", "destination", "outcome", "name"),
    [
        ("email", None, "sent", "Email Delivered"),
        ("email", None, "failed", "Email Bounced"),
        ("sms", None, "failed", "SMS Failed"),
        ("push", None, "suppressed", "Push Suppressed"),
        ("webhook", None, "dead_lettered", "Webhook Failed"),
        (None, "braze", "sent", "Destination Delivered"),
        ("email", None, "deferred", None),
    ],
)
def test_delivery_outcomes_map_to_event_names(
    channel: str | None, destination: str | None, outcome: str, name: str | None
) -> None:
    result = DeliveryResult(
        delivery_id="d",
        profile_id="p",
        partition=0,
        instance_id="i",
        step_id="s",
        outcome=outcome,  # type: ignore[arg-type]
        at=NOW,
        channel=channel,
        destination=destination,
    )
    assert delivery_event_name(result) == name
