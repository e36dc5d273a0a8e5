"""What publishing checks against the other documents and the limits."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from cairn_journey.documents import load_documents, parse_text
from cairn_journey.model import Document, Journey
from cairn_journey.validate import Limits, check_publishable

from .support import EXAMPLES, example, journey

DOCS = load_documents([EXAMPLES]).documents


def of_kind(kind: str) -> dict[str, Any]:
    return {d.name: d for d in DOCS if d.kind == kind}


def problems(
    j: Journey,
    *,
    ready: set[str] | None = None,
    limits: Limits | None = None,
    **override: Mapping[str, Document],
) -> list[str]:
    templates = override.get("templates", of_kind("Template"))
    found = check_publishable(
        j,
        templates=templates,  # type: ignore[arg-type]
        triggers=override.get("triggers", of_kind("Trigger")),  # type: ignore[arg-type]
        channels=override.get("channels", of_kind("Channel")),  # type: ignore[arg-type]
        destinations=override.get("destinations", of_kind("Destination")),  # type: ignore[arg-type]
        ready_templates=set(templates) if ready is None else ready,
        limits=limits or Limits(),
    )
    return [str(p) for p in found]


def test_both_example_journeys_are_publishable_with_their_documents() -> None:
    assert problems(example("abandoned-cart")) == []
    assert problems(example("application-reminders")) == []


def test_draft_and_missing_templates_and_unknown_channels_block_publishing() -> None:
    ready = set(of_kind("Template")) - {"cart-reminder-sms"}
    templates = {k: v for k, v in of_kind("Template").items() if k != "cart-reminder-push"}
    channels = {k: v for k, v in of_kind("Channel").items() if k != "email"}
    assert problems(
        example("abandoned-cart"), ready=ready, templates=templates, channels=channels
    ) == [
        'steps[0].send.channel: no channel "email" (apply a Channel document with that name)',
        'steps[1].wait_for.timed_out[0].send.template: template "cart-reminder-sms" is a '
        "draft; mark it ready before publishing",
        'steps[1].wait_for.timed_out[2].send.template: no template "cart-reminder-push"',
    ]


def test_a_template_for_another_channel_and_a_missing_address_are_problems() -> None:
    j = journey("""
        kind: Journey
        name: j
        trigger: Cart Abandoned
        steps:
          - {id: s, send: {channel: sms, template: cart-reminder-email}}
          - {id: d, send: {destination: nowhere, template: cart-reminder-sms}}
    """)
    assert problems(j) == [
        "steps[0].send.to: a sms send needs to: (where the address comes from, e.g. profile.email)",
        'steps[0].send.template: template "cart-reminder-email" is for email, not sms',
        'steps[1].send.destination: no destination "nowhere" (apply a Destination document '
        "with that name)",
        'steps[1].send.template: template "cart-reminder-sms" is for sms, not webhook',
    ]


def test_references_are_checked_against_trigger_documents() -> None:
    j = journey("""
        kind: Journey
        name: j
        trigger:
          event: Cart Abandoned
          where:
            - {property: cart_total, op: gt, value: 0}
            - {property: cart_value, op: eq, value: "ten"}
            - {property: profile.anything, op: exists}
        entry: {unique_by: cart_id}
        exit: [{event: Order Completed, match: order_ref}]
        steps: [{id: w, wait: 1d}]
    """)
    assert problems(j) == [
        'trigger.where[0].property: "cart_total" is not a property of "Cart Abandoned" '
        '(trigger "cart-abandoned" declares: cart_id, cart_url, cart_value, item_count)',
        "trigger.where[1].property: \"cart_value\" is a number; eq 'ten' can never hold",
        'exit[0].match: "order_ref" is not a property of "Order Completed" (trigger '
        '"order-completed" declares: cart_id, order_id, revenue)',
    ]


def test_limits_on_waits_and_steps() -> None:
    j = journey("""
        kind: Journey
        name: j
        trigger: A
        steps:
          - {id: a, wait: 400d}
          - {id: b, wait_for: {event: B, within: 2d}}
          - {id: c, wait: 1h}
    """)
    assert problems(j, limits=Limits(max_wait=timedelta(days=365), steps_per_journey=2)) == [
        "steps: 3 steps; the limit is 2",
        "steps[0].wait: 400d is longer than the limit 365d",
    ]


def test_liquid_problems_in_a_used_template_block_publishing() -> None:
    (bad,) = parse_text(
        "kind: Template\nname: cart-reminder-sms\nchannel: sms\nbody: '{{ profile.name | "
        "upcsae }}'\n",
        "t.yaml",
    ).documents
    templates = {**of_kind("Template"), "cart-reminder-sms": bad}
    found = problems(example("abandoned-cart"), templates=templates)
    assert len(found) == 1
    assert found[0].startswith(
        'steps[1].wait_for.timed_out[0].send.template: template "cart-reminder-sms": body: '
    )
    assert "upcsae" in found[0]
