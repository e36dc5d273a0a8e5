"""Update-profile steps, the profile's own ids, page and screen calls, ``steps.<id>.event``."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cairn_common.messages import Event
from cairn_journey.documents import parse_text
from cairn_journey.effects import SendRequested, TraitsUpdated

from .support import T0, Profile, catalogue, journey

COUNTER = """
    kind: Journey
    name: counter
    trigger: Cart Abandoned
    steps:
      - id: mark
        update:
          set: {last_cart: {from: event.properties.cart_id}, reminded: true}
          increment: {carts_abandoned: 1}
          unset: [cart_cleared_at]
      - id: vip-check
        branch:
          cases:
            - when: [{property: profile.carts_abandoned, op: gte, value: 2}]
              steps: [{id: vip, send: {channel: email, template: t, to: profile.email}}]
"""

FOLLOWER = """
    kind: Journey
    name: follower
    trigger:
      event: Page Viewed
      where: [{property: profile.reminded, op: eq, value: true}]
    steps:
      - {id: hello, send: {channel: email, template: t, to: profile.email}}
"""


def test_an_update_sets_increments_and_unsets_traits_in_order() -> None:
    p = Profile(catalogue(journey(COUNTER)))
    p.identify(email="a@example.com", cart_cleared_at="2026-01-01")
    effects = p.track("Cart Abandoned", cart_id="c1")
    (update,) = [e for e in effects if isinstance(e, TraitsUpdated)]
    assert update.set == {"last_cart": "c1", "reminded": True, "carts_abandoned": 1}
    assert update.unset == ("cart_cleared_at",)
    assert p.state.traits == {
        "email": "a@example.com",
        "last_cart": "c1",
        "reminded": True,
        "carts_abandoned": 1,
    }
    assert p.sends() == []  # one cart: not yet a VIP
    p.track("Cart Abandoned", cart_id="c2")
    assert p.state.traits["carts_abandoned"] == 2
    assert p.sends() == ["vip"], "the next step's condition reads the updated trait"
    assert ("mark", "updated") in p.counters()


def test_an_increment_of_a_trait_that_is_not_a_number_starts_from_zero() -> None:
    p = Profile(catalogue(journey(COUNTER)))
    p.identify(carts_abandoned="many")
    p.track("Cart Abandoned", cart_id="c1")
    assert p.state.traits["carts_abandoned"] == 1


def test_a_set_from_a_missing_property_changes_nothing_and_says_so() -> None:
    p = Profile(catalogue(journey(COUNTER)))
    p.identify(last_cart="c0")
    p.track("Cart Abandoned")  # no cart_id
    assert p.state.traits["last_cart"] == "c0"
    assert ("mark", "update:missing:last_cart") in p.counters()


def test_another_journeys_trigger_reads_the_updated_trait() -> None:
    p = Profile(catalogue(journey(COUNTER), journey(FOLLOWER)))
    p.identify(email="a@example.com")
    p.apply(_view("page", "Pricing"))
    assert p.sends() == []  # not reminded yet
    p.track("Cart Abandoned", cart_id="c1")
    p.apply(_view("page", "Pricing"))
    assert p.sends() == ["hello"]


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ("{}", "steps[0].update", "at least one of set, unset or increment"),
        ("{set: {a: 1}, unset: [a]}", "steps[0].update.unset[0]", "already in set"),
        ("{increment: {n: yes}}", "steps[0].update.increment.n", "not a number to add"),
        ("{increment: {n: '2'}}", "steps[0].update.increment.n", "not a number to add"),
        ("{set: {a: {from: 'not a path!'}}}", "steps[0].update.set.a.from", "not a property path"),
        ("{unset: ['']}", "steps[0].update.unset[0]", "not a trait name"),
        ("{add: {a: 1}}", "steps[0].update.add", ""),
    ],
)
def test_a_bad_update_is_named_by_its_path(body: str, path: str, message: str) -> None:
    text = f"""
kind: Journey
name: bad
trigger: Cart Abandoned
steps:
  - id: u
    update: {body}
"""
    problems = parse_text(text, "bad.yaml").problems
    assert [p.path for p in problems][:1] == [path], [str(p) for p in problems]
    assert message in problems[0].message


# --------------------------------------------------------------------------- ids


def _event(kind: str, **fields: Any) -> Event:
    return Event(
        message_id=fields.pop("message_id", f"m-{kind}-{fields.get('name')}"),
        type=kind,  # type: ignore[arg-type]
        profile_id=fields.pop("profile_id", "user-1"),
        partition=0,
        received_at=T0,
        timestamp=T0,
        **fields,
    )


_views = itertools.count()


def _view(kind: str, name: str, **properties: Any) -> Event:
    return _event(kind, name=name, properties=properties, message_id=f"view-{next(_views)}")


IDS = """
    kind: Journey
    name: ids
    trigger: Cart Abandoned
    steps:
      - {id: hook, send: {channel: webhook, template: t, to: profile.user_id}}
      - id: anon
        branch:
          cases:
            - when: [{property: profile.anonymous_id, op: eq, value: anon-7}]
              steps: [{id: known, send: {channel: sms, template: t, to: profile.id}}]
"""


def test_the_profiles_own_ids_are_readable_as_profile_fields() -> None:
    p = Profile(catalogue(journey(IDS)))
    p.apply(_event("identify", user_id="user-1", anonymous_id="anon-7", traits={"plan": "pro"}))
    p.apply(_event("track", event="Cart Abandoned", user_id="user-1", message_id="t1"))
    sends = [e.delivery for e in p.log if isinstance(e, SendRequested)]
    assert [(d.step_id, d.address) for d in sends] == [("hook", "user-1"), ("known", "user-1")]
    assert sends[0].profile == {
        "plan": "pro",
        "id": "user-1",
        "user_id": "user-1",
        "anonymous_id": "anon-7",
    }, "templates read profile.id / profile.user_id / profile.anonymous_id too"


def test_an_id_wins_over_a_trait_of_the_same_name() -> None:
    p = Profile(catalogue(journey(IDS)))
    p.apply(_event("identify", user_id="user-1", traits={"user_id": "spoofed"}))
    p.apply(_event("track", event="Cart Abandoned", user_id="user-1", message_id="t1"))
    (hook,) = [e.delivery for e in p.log if isinstance(e, SendRequested)]
    assert hook.address == "user-1"


# --------------------------------------------------------------------------- page and screen

VIEWS = """
    kind: Journey
    name: pricing-interest
    trigger:
      event: Page Viewed
      where: [{property: name, op: eq, value: Pricing}]
    exit: [{event: Screen Viewed, where: [{property: name, op: eq, value: Checkout}]}]
    steps:
      - id: later
        wait_for:
          event: Screen Viewed
          within: 1h
          where: [{property: category, op: eq, value: shop}]
          matched: [{id: nudge, send: {channel: push, template: t, to: profile.push_token}}]
"""


def test_page_and_screen_calls_trigger_and_are_awaited_as_events() -> None:
    p = Profile(catalogue(journey(VIEWS)))
    p.identify(push_token="tok")
    p.apply(_view("page", "Home"))
    assert p.started() == []
    p.apply(_view("page", "Pricing", path="/pricing"))
    assert len(p.started()) == 1
    assert p.state.instances[0].trigger.properties == {"path": "/pricing", "name": "Pricing"}
    p.apply(_view("screen", "Catalogue", category="shop"))
    assert p.sends() == ["nudge"]


def test_a_screen_call_can_exit() -> None:
    p = Profile(catalogue(journey(VIEWS)))
    p.apply(_view("page", "Pricing"))
    p.apply(_view("screen", "Checkout"))
    assert p.ended() == [("exited", "exit:Screen Viewed")]


# --------------------------------------------------------------------------- steps.<id>.event

MATCHED = """
    kind: Journey
    name: matched
    trigger: Order Placed
    steps:
      - id: shipped
        wait_for:
          event: Order Shipped
          within: 1d
      - id: carrier
        branch:
          cases:
            - when: [{property: steps.shipped.event.properties.carrier, op: eq, value: ups}]
              steps: [{id: ups, send: {channel: email, template: t, to: profile.email}}]
          otherwise: [{id: other, send: {channel: email, template: t, to: profile.email}}]
      - id: remember
        update:
          set: {last_carrier: {from: steps.shipped.event.properties.carrier}}
"""


def test_later_steps_read_the_event_a_wait_for_matched() -> None:
    p = Profile(catalogue(journey(MATCHED)))
    p.identify(email="a@example.com")
    p.track("Order Placed")
    p.track("Order Shipped", carrier="ups")
    assert p.sends() == ["ups"]
    assert p.state.traits["last_carrier"] == "ups"
    (send,) = [e.delivery for e in p.log if isinstance(e, SendRequested)]
    assert send.matched_events["shipped"]["properties"] == {"carrier": "ups"}
