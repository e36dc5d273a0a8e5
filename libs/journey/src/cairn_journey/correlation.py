"""How events find their way back to the journey instance that caused them.

- ``wait_for: {of: <send step>}`` matches an event whose ``properties.delivery_id`` equals the
  delivery id that step's send requested (the dispatcher passes the id to providers and puts it in
  tracking links, so ``Email Opened`` / ``Email Link Clicked`` events carry it). The name is
  :data:`DELIVERY_ID_PROPERTY`.
- A :class:`~cairn_common.messages.DeliveryResult` enters the interpreter as an event named by
  :func:`delivery_event_name` (``Email Delivered``, ``SMS Failed``, ...), with properties
  ``delivery_id``, ``instance_id``, ``step_id``, ``outcome``, ``reason``, ``channel``,
  ``destination``, ``provider_message_id``, so journeys can wait for (or start on) them.
"""

from __future__ import annotations

from typing import Any

from cairn_common.messages import DeliveryResult, Event

DELIVERY_ID_PROPERTY = "delivery_id"

VIEW_EVENTS = {"page": "Page Viewed", "screen": "Screen Viewed"}
"""The events ``page`` and ``screen`` calls stand for in journeys (their ``name`` becomes the
property ``name``; ingest already moved ``category`` into the properties)."""


def journey_event_name(event: Event) -> str | None:
    """The name journeys know an event by: a track's ``event``; ``Page Viewed`` for a page call
    and ``Screen Viewed`` for a screen call; ``None`` for anything else (identify, group,
    alias)."""
    if event.type == "track":
        return event.event
    return VIEW_EVENTS.get(event.type)


def journey_event_properties(event: Event) -> dict[str, Any]:
    if event.type in VIEW_EVENTS and event.name is not None and "name" not in event.properties:
        return {**event.properties, "name": event.name}
    return event.properties


_CHANNEL_NOUN = {"email": "Email", "sms": "SMS", "push": "Push", "webhook": "Webhook"}
_OUTCOME_VERB = {
    "sent": "Delivered",
    "failed": "Failed",
    "dead_lettered": "Failed",
    "bounced": "Failed",
    "skipped": "Skipped",
    "suppressed": "Suppressed",
    "dropped": "Dropped",
}


def delivery_event_name(result: DeliveryResult) -> str | None:
    """The event a delivery result stands for, or ``None`` (``deferred``: it will be retried).

    ``<Noun> <Verb>`` where the noun is ``Email``/``SMS``/``Push``/``Webhook`` for channels and
    ``Destination`` for destinations, and the verb is ``Delivered`` (sent), ``Failed``
    (failed, dead-lettered), ``Skipped``, ``Suppressed`` or ``Dropped``. A failed email is
    ``Email Bounced``.
    """
    verb = _OUTCOME_VERB.get(result.outcome)
    if verb is None:
        return None
    if result.channel is not None:
        noun = _CHANNEL_NOUN.get(result.channel, result.channel.capitalize())
    else:
        noun = "Destination"
    if noun == "Email" and verb == "Failed":
        verb = "Bounced"
    return f"{noun} {verb}"


def delivery_event_properties(result: DeliveryResult) -> dict[str, Any]:
    props: dict[str, Any] = {
        DELIVERY_ID_PROPERTY: result.delivery_id,
        "instance_id": result.instance_id,
        "step_id": result.step_id,
        "outcome": result.outcome,
        "attempts": result.attempts,
    }
    for key in ("reason", "channel", "destination", "provider_message_id"):
        value = getattr(result, key)
        if value is not None:
            props[key] = value
    return props


ALL_DELIVERY_EVENTS = frozenset(
    f"{noun} {verb}"
    for noun in (*_CHANNEL_NOUN.values(), "Destination")
    for verb in (*_OUTCOME_VERB.values(), "Bounced")
)
