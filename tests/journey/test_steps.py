"""Steps: wait variants, wait_for correlation, delivery results, branch, split, rejoin, order."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from cairn_journey.effects import SendRequested, TimerSet

from .support import T0, Profile, catalogue, journey


def wait_journey(wait: str) -> Profile:
    j = journey(f"""
        kind: Journey
        name: morning
        trigger: Booked
        steps:
          - {{id: w, wait: {wait}}}
          - {{id: hello, send: {{channel: sms, template: t, to: profile.phone}}}}
    """)
    p = Profile(catalogue(j))
    p.identify(phone="+1")
    return p


def test_wait_until_a_time_of_day_uses_the_profile_time_zone() -> None:
    p = wait_journey('{until_time: "09:00"}')
    p.identify(timezone="America/New_York")  # 08:00 UTC is 03:00 in New York (EST)
    p.track("Booked")
    (timer,) = p.pending_timers()
    assert timer.due_at == datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def test_wait_until_a_time_of_day_already_past_today_waits_until_tomorrow() -> None:
    p = wait_journey("{until_time: 07:30}")  # unquoted works too; no time zone: UTC
    p.track("Booked")
    (timer,) = p.pending_timers()
    assert timer.due_at == datetime(2026, 3, 3, 7, 30, tzinfo=UTC)


def test_an_unknown_time_zone_falls_back_to_utc() -> None:
    p = wait_journey('{until_time: "09:00"}')
    p.identify(timezone="Mars/Olympus_Mons")
    p.track("Booked")
    assert p.pending_timers()[0].due_at == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def test_wait_until_a_date_property_with_an_offset() -> None:
    p = wait_journey("{until: event.properties.appointment, offset: -1d}")
    p.track("Booked", appointment="2026-03-10T15:00:00Z")
    assert p.pending_timers()[0].due_at == datetime(2026, 3, 9, 15, 0, tzinfo=UTC)
    p.fire_next()
    assert p.sends() == ["hello"]


def test_a_date_already_past_continues_at_once() -> None:
    p = wait_journey("{until: appointment, offset: -1d}")
    p.track("Booked", appointment="2026-03-02")  # the day before is already past
    assert p.pending_timers() == []
    assert p.sends() == ["hello"]


def test_wait_for_with_match_takes_only_the_instance_with_that_value() -> None:
    j = journey("""
        kind: Journey
        name: delivery
        trigger: Order Shipped
        entry: {unique_by: order_id}
        steps:
          - id: arrived
            wait_for:
              event: Order Delivered
              match: order_id
              within: 5d
              matched:
                - {id: review, send: {channel: email, template: r, to: profile.email}}
              timed_out:
                - {id: sorry, send: {channel: email, template: s, to: profile.email}}
    """)
    p = Profile(catalogue(j))
    p.identify(email="a@example.com")
    p.track("Order Shipped", order_id="o1")
    p.track("Order Shipped", order_id="o2")
    p.track("Order Delivered", order_id="o2")
    assert p.sends() == ["review"]
    p.fire_next()  # o1 never arrives
    assert p.sends() == ["review", "sorry"]
    assert p.ended() == [("completed", "completed")] * 2


def test_a_plain_wait_for_with_where_and_rejoining_steps() -> None:
    j = journey("""
        kind: Journey
        name: activation
        trigger: Signed Up
        steps:
          - id: first-login
            wait_for:
              event: Logged In
              where: [{property: platform, op: eq, value: ios}]
              within: 2d
              timed_out:
                - {id: nudge, send: {channel: push, template: n, to: profile.push_token}}
          - {id: survey, send: {channel: email, template: s, to: profile.email}}
    """)
    p = Profile(catalogue(j))
    p.identify(email="a@example.com", push_token="t")
    p.track("Signed Up")
    p.track("Logged In", platform="android")  # where is false: still waiting
    p.track("Logged In", platform="ios")
    assert p.sends() == ["survey"]  # matched (no steps) carries on after the wait_for
    q = Profile(p.catalogue, profile_id="user-2")
    q.identify(email="b@example.com", push_token="t")
    q.track("Signed Up")
    q.fire_next()
    assert q.sends() == ["nudge", "survey"]  # the timed_out steps rejoin, then survey


def test_a_delivery_result_satisfies_wait_for_of_that_send() -> None:
    j = journey("""
        kind: Journey
        name: receipt
        trigger: Order Completed
        steps:
          - {id: receipt, send: {channel: email, template: r, to: profile.email}}
          - id: bounced
            wait_for:
              event: Email Bounced
              of: receipt
              within: 1h
              matched:
                - {id: by-sms, send: {channel: sms, template: r-sms, to: profile.phone}}
    """)
    p = Profile(catalogue(j), dispatch=False)  # the outcome is a failure, not sent-then-failed
    p.identify(email="bad@example.com", phone="+1")
    (receipt,) = [e for e in p.track("Order Completed") if isinstance(e, SendRequested)]
    assert p.result(receipt, "deferred") == []  # will be retried: not an event
    p.result(receipt, "failed", reason="550 mailbox unavailable")
    assert p.sends() == ["receipt", "by-sms"]
    (by_sms,) = p.requested()
    p.result(by_sms, "sent")
    assert p.ended() == [("completed", "completed")]


def test_branch_takes_the_first_true_case_else_otherwise() -> None:
    j = journey("""
        kind: Journey
        name: tiers
        trigger: Purchased
        steps:
          - id: by-value
            branch:
              cases:
                - name: vip
                  when: [{any: [{property: total, op: gte, value: 500},
                                {property: profile.vip, op: eq, value: true}]}]
                  steps: [{id: vip-mail, send: {channel: email, template: v, to: profile.email}}]
                - when: [{property: total, op: gte, value: 100}]
                  steps: [{id: thanks, send: {channel: email, template: t, to: profile.email}}]
              otherwise:
                - {id: coupon, send: {channel: email, template: c, to: profile.email}}
    """)
    seen = []
    for n, (total, vip) in enumerate([(600, False), (150, False), (150, True), (20, False)]):
        p = Profile(catalogue(j), profile_id=f"u{n}")
        p.identify(email="a@example.com", vip=vip)
        p.track("Purchased", total=total)
        seen.append(p.sends())
    assert seen == [["vip-mail"], ["thanks"], ["vip-mail"], ["coupon"]]


def test_split_is_sticky_deterministic_and_roughly_follows_the_percentages() -> None:
    j = journey("""
        kind: Journey
        name: ab
        trigger: Signed Up
        steps:
          - id: test
            split:
              - {name: a, percent: 20%, steps: [{id: a, wait: 1d}]}
              - {name: b, percent: 80, steps: [{id: b, wait: 1d}]}
    """)
    cat = catalogue(j)
    chosen: Counter[str] = Counter()
    for n in range(500):
        p = Profile(cat, profile_id=f"u{n}")
        p.track("Signed Up", message_id="m")
        again = Profile(cat, profile_id=f"u{n}")
        again.track("Signed Up", message_id="m")
        assert p.positions() == again.positions()  # same instance, same path
        (position,) = p.positions()
        chosen[position] += 1
        p.fire_next()
        assert p.state.instances == ()
    assert 50 < chosen["a"] < 150
    assert chosen["a"] + chosen["b"] == 500


def test_an_event_that_exits_and_triggers_exits_the_old_instance_first() -> None:
    j = journey("""
        kind: Journey
        name: latest-search
        trigger: Searched
        exit: [{event: Searched}]
        steps: [{id: w, wait: 1h}]
    """)
    p = Profile(catalogue(j))
    p.track("Searched")
    p.track("Searched")
    assert p.ended() == [("exited", "exit:Searched")]
    assert len(p.started()) == 2
    assert len(p.state.instances) == 1


def test_the_triggering_event_does_not_satisfy_the_new_instances_wait_for() -> None:
    j = journey("""
        kind: Journey
        name: second-visit
        trigger: Visited
        steps:
          - {id: again, wait_for: {event: Visited, within: 1d,
                                   matched: [{id: hi, send: {channel: webhook, template: t}}]}}
    """)
    p = Profile(catalogue(j))
    p.track("Visited")
    assert p.sends() == []
    p.track("Visited")
    assert p.sends() == ["hi"]


def test_a_repeated_input_changes_nothing() -> None:
    j = journey("""
        kind: Journey
        name: again
        trigger: Visited
        steps: [{id: w, wait_for: {event: Visited, within: 1d}}]
    """)
    p = Profile(catalogue(j))
    p.track("Visited", message_id="m1")
    before = p.state
    assert p.track("Visited", message_id="m1") == []
    assert p.state == before


def test_a_timer_fire_for_an_unknown_timer_is_ignored() -> None:
    p = wait_journey("1h")
    p.track("Booked")
    (timer,) = p.pending_timers()
    before = p.state
    bogus = TimerSet(
        timer_id="tm_nope",
        instance_id=timer.instance_id,
        step_id="w",
        due_at=timer.due_at,
        kind="wait",
    )
    assert p.fire(bogus) == []
    assert p.state == before
    p.fire(timer)
    assert p.fire(timer) == []  # a second fire of the same timer


def test_ids_are_deterministic_for_the_same_inputs() -> None:
    def run() -> list[str]:
        p = wait_journey("1h")
        p.track("Booked", message_id="m-1")
        p.fire_next()
        return [
            getattr(e, "timer_id", "") or getattr(e, "instance_id", "")
            for e in p.log
            if not hasattr(e, "counter")
        ] + [e.delivery.delivery_id for e in p.log if isinstance(e, SendRequested)]

    assert run() == run()


def test_identify_traits_are_read_by_trigger_conditions() -> None:
    j = journey("""
        kind: Journey
        name: eu
        trigger:
          event: Signed Up
          where: [{property: profile.region, op: eq, value: eu}]
        steps: [{id: w, wait: 1d}]
    """)
    p = Profile(catalogue(j))
    p.track("Signed Up")
    p.identify(region="eu")
    p.advance(timedelta(minutes=1))
    p.track("Signed Up")
    assert len(p.started()) == 1
    assert p.started()[0].started_at == T0 + timedelta(minutes=1)


def test_wait_for_of_a_skipped_send_takes_its_timed_out_path_at_once() -> None:
    j = journey("""
        kind: Journey
        name: sms-reply
        trigger: Booked
        steps:
          - {id: ask, send: {channel: sms, template: t, to: profile.phone}}
          - id: reply
            wait_for:
              event: SMS Delivered
              of: ask
              within: 1h
              timed_out: [{id: mail, send: {channel: email, template: m, to: profile.email}}]
    """)
    p = Profile(catalogue(j))
    p.identify(email="a@example.com")  # no phone
    p.track("Booked")
    assert p.sends() == ["mail"]  # no message to be delivered: no hour of waiting for it
    assert ("ask", "skipped:no_address") in p.counters()
    assert ("reply", "not_sent:skipped") in p.counters()
    assert ("reply", "timed_out") not in p.counters()


def test_a_time_of_day_skipped_by_daylight_saving_lands_an_hour_later() -> None:
    p = wait_journey('{until_time: "02:30"}')
    p.identify(timezone="Europe/Berlin")
    p.now = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)  # 01:00 in Berlin; 02:30 does not exist today
    p.track("Booked")
    (timer,) = p.pending_timers()
    assert timer.due_at == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST


def test_a_timer_of_a_version_not_loaded_changes_nothing() -> None:
    from cairn_journey.interpreter import Catalogue

    p = wait_journey("1h")
    p.track("Booked")
    (timer,) = p.pending_timers()
    before = p.state
    p.catalogue = Catalogue()
    assert p.fire(timer) == []
    assert p.state == before


def test_wait_until_a_time_on_weekdays_skips_the_weekend() -> None:
    p = wait_journey('{until_time: "09:00", on: [mon, tue, wed, thu, Friday]}')
    p.now = datetime(2026, 3, 6, 10, 0, tzinfo=UTC)  # a Friday, after 09:00
    p.track("Booked")
    assert p.pending_timers()[0].due_at == datetime(2026, 3, 9, 9, 0, tzinfo=UTC)  # Monday
