"""Hold-until: a ``wait_for`` with several awaited events, each with its own steps, and resets."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cairn_journey.documents import parse_text
from cairn_journey.effects import SendRequested, TimerSet

from .support import T0, Profile, catalogue, journey

H = timedelta(hours=1)

HOLD = """
    kind: Journey
    name: hold
    trigger: Cart Abandoned
    entry: {unique_by: cart_id}
    steps:
      - {id: email, send: {channel: email, template: e, to: profile.email}}
      - id: hold
        wait_for:
          within: 1d
          events:
            - name: clicked
              event: Email Link Clicked
              of: email
              steps: [{id: thanks, send: {channel: email, template: t, to: profile.email}}]
            - name: ordered
              event: Order Completed
              match: cart_id
              steps: [{id: receipt, send: {channel: email, template: r, to: profile.email}}]
            - name: big-order
              event: Quote Requested
              where: [{property: amount, op: gte, value: 1000}]
              steps: [{id: sales, send: {destination: crm, template: q}}]
            - name: support
              event: Ticket Opened
              match: cart_id
          reset_on:
            - {event: Cart Modified, match: cart_id}
          timed_out:
            - {id: sms, send: {channel: sms, template: s, to: profile.phone}}
      - {id: after, send: {channel: push, template: p, to: profile.push_token}}
"""


def shopper(text: str = HOLD, *, dispatch: bool = True) -> Profile:
    p = Profile(catalogue(journey(text)), dispatch=dispatch)
    p.identify(email="a@example.com", phone="+1", push_token="tok")
    p.track("Cart Abandoned", cart_id="c1")
    return p


def email_id(p: Profile) -> str:
    (email,) = [e.delivery for e in p.log if isinstance(e, SendRequested)][:1]
    return email.delivery_id


@pytest.mark.parametrize(
    ("event", "properties", "path", "steps"),
    [
        ("Order Completed", {"cart_id": "c1"}, "ordered", ["receipt", "after"]),
        ("Quote Requested", {"amount": 5000}, "big-order", ["sales", "after"]),
        ("Ticket Opened", {"cart_id": "c1"}, "support", ["after"]),
    ],
)
def test_the_first_awaited_event_takes_its_own_path_then_rejoins(
    event: str, properties: dict[str, object], path: str, steps: list[str]
) -> None:
    p = shopper()
    p.advance(H)
    p.track(event, **properties)
    assert p.sends() == ["email", *steps]
    assert ("hold", "matched") in p.counters()
    assert ("hold", f"matched:{path}") in p.counters()
    assert p.ended() == [("completed", "completed")]


def test_the_click_path_correlates_with_the_email_it_waits_on() -> None:
    p = shopper()
    p.track("Email Link Clicked", delivery_id="dl_someone_else")
    assert p.sends() == ["email"]
    p.track("Email Link Clicked", delivery_id=email_id(p))
    assert p.sends() == ["email", "thanks", "after"]


def test_events_not_matching_any_path_leave_the_hold_waiting() -> None:
    p = shopper()
    p.track("Order Completed", cart_id="other-cart")
    p.track("Quote Requested", amount=10)
    assert p.sends() == ["email"]
    p.fire_next()
    assert p.sends() == ["email", "sms", "after"]
    assert ("hold", "timed_out") in p.counters()


def test_only_the_first_arrival_counts() -> None:
    p = shopper()
    p.track("Ticket Opened", cart_id="c1")
    p.track("Order Completed", cart_id="c1")
    assert p.sends() == ["email", "after"]
    assert ("hold", "matched:ordered") not in p.counters()


def test_a_reset_event_restarts_the_whole_window() -> None:
    p = shopper()
    (window,) = [t for t in p.pending_timers() if t.step_id == "hold"]
    assert window.due_at == T0 + timedelta(days=1)
    p.advance(20 * H)
    p.track("Cart Modified", cart_id="c1")
    (reset,) = [t for t in p.pending_timers() if t.step_id == "hold"]
    assert reset.due_at == T0 + 20 * H + timedelta(days=1)
    assert reset.timer_id != window.timer_id
    assert ("hold", "reset") in p.counters()
    p.advance(20 * H)
    p.track("Cart Modified", cart_id="another")  # not this cart: no reset
    p.track("Cart Modified", cart_id="c1")
    (again,) = [t for t in p.pending_timers() if t.step_id == "hold"]
    assert again.due_at == T0 + 40 * H + timedelta(days=1)
    p.fire_next()
    assert p.sends() == ["email", "sms", "after"]


def test_a_fire_of_the_timer_a_reset_replaced_is_ignored() -> None:
    p = shopper()
    (window,) = [t for t in p.pending_timers() if t.step_id == "hold"]
    p.track("Cart Modified", cart_id="c1")
    assert p.fire(window) == []
    assert p.sends() == ["email"]


def test_the_matched_event_and_its_path_are_kept_for_later_steps() -> None:
    text = HOLD.replace(
        "{id: after, send: {channel: push, template: p, to: profile.push_token}}",
        "{id: after, update: {set: {last_path: {from: steps.hold.event.path},"
        " quoted: {from: steps.hold.event.properties.amount}}}}",
    )
    p = shopper(text)
    p.track("Quote Requested", amount=1200)
    assert p.state.traits["last_path"] == "big-order"
    assert p.state.traits["quoted"] == 1200


def test_an_early_click_on_any_path_counts_once_the_email_is_sent() -> None:
    p = shopper(dispatch=False)
    (email,) = p.requested()
    p.track("Email Link Clicked", delivery_id=email.delivery.delivery_id)  # before the result
    p.result(email, "sent")
    assert p.sends() == ["email", "thanks"]


def test_an_unsent_email_leaves_the_other_paths_waiting() -> None:
    p = shopper(dispatch=False)
    (email,) = p.requested()
    p.result(email, "suppressed", reason="unsubscribed")
    assert p.sends() == ["email"], "the order can still come: the hold keeps waiting"
    assert [t.kind for t in p.pending_timers()] == ["wait_for"]
    p.track("Order Completed", cart_id="c1")
    assert "receipt" in p.sends()


ONLY_OF = """
    kind: Journey
    name: engagement
    trigger: Signed Up
    steps:
      - {id: email, send: {channel: email, template: e, to: profile.email}}
      - id: hold
        wait_for:
          within: 1d
          events:
            - {name: opened, event: Email Opened, of: email}
            - {name: clicked, event: Email Link Clicked, of: email}
          not_sent: [{id: fallback, send: {channel: sms, template: s, to: profile.phone}}]
"""


def test_when_every_path_waits_on_an_unsent_message_the_hold_ends_at_once() -> None:
    p = Profile(catalogue(journey(ONLY_OF)), dispatch=False)
    p.identify(email="a@example.com", phone="+1")
    p.track("Signed Up")
    (email,) = p.requested()
    p.advance(H)
    p.result(email, "skipped", reason="frequency cap")
    assert p.sends() == ["email", "fallback"]
    assert ("hold", "not_sent:skipped") in p.counters()


def test_the_window_of_paths_on_one_send_counts_from_its_sending() -> None:
    p = Profile(catalogue(journey(ONLY_OF)), dispatch=False)
    p.identify(email="a@example.com", phone="+1")
    p.track("Signed Up")
    (email,) = p.requested()
    p.advance(5 * H)
    p.result(email, "sent")
    (window,) = [t for t in p.pending_timers() if isinstance(t, TimerSet) and t.kind == "wait_for"]
    assert window.due_at == T0 + 5 * H + timedelta(days=1)


# --------------------------------------------------------------------------- validation


def _problems(wait_for: str) -> list[tuple[str, str]]:
    text = f"""
kind: Journey
name: bad
trigger: Cart Abandoned
entry: {{unique_by: cart_id}}
steps:
  - {{id: email, send: {{channel: email, template: e, to: profile.email}}}}
  - id: hold
    wait_for: {wait_for}
"""
    return [(p.path, p.message) for p in parse_text(text, "bad.yaml").problems]


@pytest.mark.parametrize(
    ("wait_for", "path", "message"),
    [
        ("{within: 1d}", "steps[1].wait_for", "exactly one of event or events"),
        (
            "{within: 1d, event: A, events: [{event: B}]}",
            "steps[1].wait_for",
            "exactly one of event or events",
        ),
        (
            "{within: 1d, of: email, events: [{event: B}]}",
            "steps[1].wait_for.of",
            "goes on each of events",
        ),
        ("{within: 1d, events: []}", "steps[1].wait_for.events", "at least one event"),
        (
            "{within: 1d, events: [{name: x, event: A}, {name: x, event: B}]}",
            "steps[1].wait_for.events[1].name",
            "path names are unique",
        ),
        (
            "{within: 1d, events: [{event: A, of: nowhere}]}",
            "steps[1].wait_for.events[0].of",
            "not an earlier send step",
        ),
        ("{within: 1d, events: [{of: email}]}", "steps[1].wait_for.events[0].event", "required"),
        (
            "{within: 1d, event: A, reset_on: [{event: B, steps: []}]}",
            "steps[1].wait_for.reset_on[0].steps",
            "",
        ),
        (
            "{within: 1d, events: [{event: A, match: cart_id, of: email}]}",
            "steps[1].wait_for.events[0]",
            "use of or match, not both",
        ),
        (
            "{within: 1d, events: [" + ", ".join(f"{{event: E{i}}}" for i in range(11)) + "]}",
            "steps[1].wait_for.events",
            "the limit is 10",
        ),
    ],
)
def test_a_bad_hold_until_is_named_by_its_path(wait_for: str, path: str, message: str) -> None:
    problems = _problems(wait_for)
    assert problems, "expected a problem"
    assert problems[0][0] == path, problems
    assert message in problems[0][1]


def test_a_good_hold_until_reads_back_to_the_same_document() -> None:
    import msgspec

    from cairn_journey.documents import parse_document

    doc = journey(HOLD)
    again = parse_document({"kind": "Journey", **msgspec.to_builtins(doc)}, source="again")
    assert again == doc
