"""Entry rules, exits, goals, stops and limits."""

from __future__ import annotations

from datetime import timedelta

from cairn_journey.effects import InstanceEnded, SendRequested, TimerCancelled
from cairn_journey.interpreter import Catalogue

from .support import T0, Profile, catalogue, example, journey

WELCOME = """
kind: Journey
name: welcome
trigger: {event: Signed Up}
entry: {repeat: %s}
steps:
  - {id: hello, send: {channel: email, template: hi, to: profile.email}}
  - {id: later, wait: 2d}
  - {id: tips, send: {channel: email, template: tips, to: profile.email}}
"""


def welcome(repeat: str) -> Profile:
    p = Profile(catalogue(journey(WELCOME % repeat)))
    p.identify(email="a@example.com")
    return p


def test_repeat_always_without_unique_by_keeps_one_instance_at_a_time() -> None:
    p = welcome("always")
    p.track("Signed Up")
    p.track("Signed Up")
    assert len(p.started()) == 1
    assert ("", "skipped:already_active") in p.counters()
    p.fire_next()  # completes
    p.track("Signed Up")
    assert len(p.started()) == 2


def test_a_message_id_repeats_only_within_its_source() -> None:
    p = welcome("always")
    p.track("Signed Up", message_id="signup-1", write_key="web")
    p.fire_next()  # completed
    p.track("Signed Up", message_id="signup-1", write_key="web")  # a redelivery: ignored
    assert len(p.started()) == 1
    # Another source's event with the same messageId is its own input (Segment's rule).
    p.track("Signed Up", message_id="signup-1", write_key="mobile")
    assert len(p.started()) == 2


def test_repeat_once_never_enters_again() -> None:
    p = welcome("once")
    p.track("Signed Up")
    p.fire_next()
    p.advance(timedelta(days=400))
    p.track("Signed Up")
    assert len(p.started()) == 1
    assert ("", "skipped:repeat_once") in p.counters()


def test_repeat_after_a_cool_down_counts_from_the_last_entry() -> None:
    p = welcome("{after: 7d}")
    p.track("Signed Up")
    p.fire_next()  # completes two days in
    p.advance(timedelta(days=4))  # six days since entry
    p.track("Signed Up")
    assert len(p.started()) == 1
    assert ("", "skipped:cooldown") in p.counters()
    p.advance(timedelta(days=1))  # seven days since entry
    p.track("Signed Up")
    assert len(p.started()) == 2


def test_entries_are_accepted_only_between_start_at_and_end_at() -> None:
    text = WELCOME % "always"
    text = text.replace(
        "entry: {repeat: always}",
        "entry: {start_at: 2026-03-02T09:00:00Z, end_at: '2026-03-02T10:00:00Z'}",
    )
    p = Profile(catalogue(journey(text)))
    p.identify(email="a@example.com")
    p.track("Signed Up")  # 08:00: too early
    p.advance(timedelta(hours=1, minutes=30))
    p.track("Signed Up")  # 09:30: accepted
    p.fire_next()
    p.advance(timedelta(hours=1))
    p.track("Signed Up")  # well after 10:00
    assert len(p.started()) == 1
    assert p.counters().count(("", "skipped:outside_window")) == 2


def test_application_journey_keeps_one_instance_per_application() -> None:
    p = Profile(catalogue(example("application-reminders")))
    p.identify(email="a@example.com")
    p.track("Application Started", application_id="loan-1")
    p.track("Application Started", application_id="card-2")
    assert len(p.state.instances) == 2
    effects = p.track("Application Completed", application_id="loan-1")
    assert [(e.status, e.reason) for e in effects if isinstance(e, InstanceEnded)] == [
        ("exited", "exit:Application Completed")
    ]
    assert [i.unique_value for i in p.state.instances] == ["card-2"]
    p.fire_next()  # a day later card-2 gets its reminder through Braze
    assert p.sends() == ["reminder"]
    (send,) = [e for e in p.log if isinstance(e, SendRequested)]
    assert send.delivery.destination == "braze"
    assert send.delivery.address is None


def test_a_trigger_without_the_unique_property_does_not_enter() -> None:
    p = Profile(catalogue(example("application-reminders")))
    p.track("Application Started")
    assert p.started() == []
    assert ("", "skipped:no_unique_value") in p.counters()


def test_numeric_and_string_unique_values_are_the_same_key() -> None:
    p = Profile(catalogue(example("application-reminders")))
    p.track("Application Started", application_id=7)
    p.track("Application Completed", application_id="7")
    assert p.ended() == [("exited", "exit:Application Completed")]


def test_an_exit_without_match_ends_every_instance_of_the_journey() -> None:
    j = journey("""
        kind: Journey
        name: nudges
        trigger: {event: Viewed}
        entry: {unique_by: sku}
        exit: [{event: Unsubscribed}]
        steps: [{id: w, wait: 1d}]
    """)
    p = Profile(catalogue(j))
    p.track("Viewed", sku="a")
    p.track("Viewed", sku="b")
    effects = p.track("Unsubscribed")
    assert sum(isinstance(e, TimerCancelled) for e in effects) == 2
    assert p.ended() == [("exited", "exit:Unsubscribed")] * 2
    assert p.pending_timers() == []


def test_an_exit_with_where_only_exits_when_it_holds() -> None:
    j = journey("""
        kind: Journey
        name: trial
        trigger: Trial Started
        exit:
          - event: Plan Changed
            where: [{property: plan, op: in, value: [pro, team]}]
        steps: [{id: w, wait: 1d}]
    """)
    p = Profile(catalogue(j))
    p.track("Trial Started")
    assert p.track("Plan Changed", plan="free") == []
    p.track("Plan Changed", plan="team")
    assert p.ended() == [("exited", "exit:Plan Changed")]


def test_a_goal_converts_once_and_does_not_exit() -> None:
    j = journey("""
        kind: Journey
        name: onboarding
        trigger: Signed Up
        goal: {event: Project Created, target: 30%}
        steps: [{id: w, wait: 3d}]
    """)
    p = Profile(catalogue(j))
    p.track("Signed Up")
    p.track("Project Created")
    p.track("Project Created")
    assert len(p.converted()) == 1
    assert p.positions() == ["w"]
    p.fire_next()
    assert p.ended() == [("completed", "completed")]


def test_stop_with_exit_all_ends_running_instances_and_cancels_their_timers() -> None:
    p = Profile(catalogue(example("abandoned-cart")))
    p.identify(email="a@example.com")
    p.track("Cart Abandoned", cart_id="c1", cart_value=1)
    p.track("Cart Abandoned", cart_id="c2", cart_value=1)
    effects = p.exit_all("abandoned-cart", reason="stopped")
    assert sum(isinstance(e, TimerCancelled) for e in effects) == 2
    assert p.ended() == [("exited", "stopped")] * 2
    assert p.exit_all("abandoned-cart") == []  # applying it again changes nothing


def test_a_stopped_journey_takes_no_entries_but_running_instances_drain() -> None:
    cart = example("abandoned-cart")
    p = Profile(catalogue(cart))
    p.identify(email="a@example.com", phone="+1")
    p.track("Cart Abandoned", cart_id="c1", cart_value=1)
    p.catalogue = Catalogue({("abandoned-cart", 1): cart}, {})  # stopped: no live version
    p.track("Cart Abandoned", cart_id="c2", cart_value=1)
    assert len(p.started()) == 1
    p.fire_next()
    assert p.sends() == ["initial-email", "text-reminder"]


def test_new_entries_go_to_the_live_version_while_running_ones_keep_theirs() -> None:
    v1 = journey(WELCOME % "always")
    v2 = journey((WELCOME % "always").replace("later, wait: 2d", "later, wait: 1d"))
    p = Profile(Catalogue({("welcome", 1): v1}, {"welcome": 1}), profile_id="a")
    q = Profile(p.catalogue, profile_id="b")
    for profile in (p, q):
        profile.identify(email="x@example.com")
    p.track("Signed Up")
    both = Catalogue({("welcome", 1): v1, ("welcome", 2): v2}, {"welcome": 2})
    p.catalogue = q.catalogue = both
    q.track("Signed Up")
    assert [s.version for s in p.started() + q.started()] == [1, 2]
    assert p.pending_timers()[0].due_at - T0 == timedelta(days=2)
    assert q.pending_timers()[0].due_at - T0 == timedelta(days=1)


def test_a_profile_runs_at_most_the_instance_limit_at_once() -> None:
    j = journey("""
        kind: Journey
        name: views
        trigger: Viewed
        entry: {unique_by: sku}
        steps: [{id: w, wait: 1d}]
    """)
    p = Profile(catalogue(j, instances_per_profile=25))
    for n in range(30):
        p.track("Viewed", sku=f"s{n}")
    assert len(p.state.instances) == 25
    assert p.counters().count(("", "skipped:instance_limit")) == 5


def test_an_instance_older_than_its_lifetime_is_exited() -> None:
    j = journey("""
        kind: Journey
        name: slow
        trigger: Go
        steps:
          - {id: w, wait_for: {event: Never, within: 300d}}
          - {id: w2, wait: 300d}
    """)
    p = Profile(catalogue(j, instance_lifetime=timedelta(days=365)))
    p.track("Go")
    p.fire_next()  # 300 days
    p.advance(timedelta(days=70))
    p.track("Never")  # any input a journey cares about
    assert p.ended() == [("exited", "lifetime")]
    assert p.pending_timers() == []
