"""The D365 abandoned-cart journey, exactly as written in ARCHITECTURE §5."""

from __future__ import annotations

from datetime import timedelta

from cairn_journey.effects import SendRequested, TimerCancelled, TimerSet

from .support import Profile, catalogue, example


def shopper() -> Profile:
    profile = Profile(catalogue(example("abandoned-cart")))
    profile.identify(email="ann@example.com", phone="+15550100", push_token="tok-1")
    return profile


def test_cart_not_opened_gets_text_then_push_a_day_later_and_completes() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=42.5)
    assert p.sends() == ["initial-email"]
    p.fire_next()  # a day passes without an open
    assert p.sends() == ["initial-email", "text-reminder"]
    assert [t.step_id for t in p.pending_timers()] == ["pause"]
    p.fire_next()
    assert p.sends() == ["initial-email", "text-reminder", "final-push"]
    assert p.ended() == [("completed", "completed")]
    assert p.state.instances == ()


def test_opening_the_email_ends_the_journey_without_a_text() -> None:
    p = shopper()
    (email,) = [
        e
        for e in p.track("Cart Abandoned", cart_id="c1", cart_value=10)
        if isinstance(e, SendRequested)
    ]
    (timer,) = p.pending_timers()
    p.advance(timedelta(hours=3))
    effects = p.track("Email Opened", delivery_id=email.delivery.delivery_id)
    assert TimerCancelled(timer_id=timer.timer_id) in effects
    assert p.ended() == [("completed", "completed")]
    assert p.sends() == ["initial-email"]
    assert p.fire(timer) == []  # the scheduler firing a cancelled timer changes nothing


def test_an_open_of_some_other_email_does_not_count() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    assert p.track("Email Opened", delivery_id="dl_some_other_message") == []
    p.fire_next()
    assert p.sends() == ["initial-email", "text-reminder"]


def test_completing_the_order_exits_at_once_converts_and_cancels_the_pause() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    p.fire_next()  # not opened: text sent, now pausing a day
    (pause,) = p.pending_timers()
    effects = p.track("Order Completed", cart_id="c1")
    assert TimerCancelled(timer_id=pause.timer_id) in effects
    assert len(p.converted()) == 1
    assert p.ended() == [("exited", "exit:Order Completed")]
    assert p.fire(pause) == []
    assert p.sends() == ["initial-email", "text-reminder"]  # no push, ever


def test_completing_another_cart_leaves_this_journey_running() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    assert p.track("Order Completed", cart_id="c2") == []
    assert p.positions() == ["opened"]


def test_an_empty_cart_does_not_enter() -> None:
    p = shopper()
    assert p.track("Cart Abandoned", cart_id="c1", cart_value=0) == []
    assert p.track("Cart Abandoned", cart_id="c2") == []  # no value at all: where is false


def test_two_carts_run_side_by_side_and_a_repeat_of_an_active_cart_is_ignored() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    p.track("Cart Abandoned", cart_id="c2", cart_value=20)
    assert p.track("Cart Abandoned", cart_id="c1", cart_value=30) != []  # only counted
    assert [s.unique_value for s in p.started()] == ["c1", "c2"]
    assert ("", "skipped:already_active") in p.counters()
    p.track("Order Completed", cart_id="c2")
    assert [i.unique_value for i in p.state.instances] == ["c1"]


def test_a_cart_can_start_again_after_its_journey_ended() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    p.track("Order Completed", cart_id="c1")
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    assert len(p.started()) == 2


def test_a_shopper_without_a_phone_skips_the_text_and_still_gets_the_push() -> None:
    p = Profile(catalogue(example("abandoned-cart")))
    p.identify(email="ann@example.com", push_token="tok-1")
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    p.fire_next()
    assert ("text-reminder", "skipped:no_address") in p.counters()
    waits = [t.step_id for t in p.log if isinstance(t, TimerSet) and t.kind != "send"]
    assert waits == ["opened", "pause"]
    p.fire_next()
    assert p.sends() == ["initial-email", "final-push"]
    assert p.ended() == [("completed", "completed")]


def test_the_delivery_request_carries_what_the_dispatcher_needs() -> None:
    p = shopper()
    (send,) = [
        e
        for e in p.track("Cart Abandoned", cart_id="c1", cart_value=10, cart_url="u")
        if isinstance(e, SendRequested)
    ]
    d = send.delivery
    assert (d.channel, d.template, d.to, d.address) == (
        "email",
        "cart-reminder-email",
        "profile.email",
        "ann@example.com",
    )
    assert (d.journey, d.version, d.step_id, d.visit, d.unique_value) == (
        "abandoned-cart",
        1,
        "initial-email",
        1,
        "c1",
    )
    assert d.profile["phone"] == "+15550100"
    assert d.event["event"] == "Cart Abandoned"
    assert d.event["properties"] == {"cart_id": "c1", "cart_value": 10, "cart_url": "u"}


def test_analytics_counters_follow_the_shopper_through_the_journey() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    p.fire_next()
    p.track("Order Completed", cart_id="c1")
    assert p.counters() == [
        ("", "entered"),
        ("initial-email", "reached"),
        ("initial-email", "send_requested"),
        ("opened", "reached"),
        ("opened", "timed_out"),
        ("text-reminder", "reached"),
        ("text-reminder", "send_requested"),
        ("pause", "reached"),
        ("", "converted"),
        ("", "exited:Order Completed"),
    ]
