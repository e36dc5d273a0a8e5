"""Property-based tests: random input sequences against a catalogue of journeys."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn_journey.effects import (
    InstanceConverted,
    InstanceEnded,
    InstanceStarted,
    SendRequested,
    TimerCancelled,
    TimerSet,
)
from cairn_journey.interpreter import run_input
from cairn_journey.state import decode_state, encode_state

from .support import Profile, TimerFiredMark, catalogue, example, journey

KITCHEN_SINK = journey("""
    kind: Journey
    name: sink
    trigger:
      event: Cart Abandoned
      where: [{any: [{property: cart_value, op: gt, value: 5}, {property: profile.vip, op: eq,
                                                                 value: true}]}]
    entry: {repeat: {after: 1h}, unique_by: cart_id}
    exit: [{event: Unsubscribed}]
    goal: {event: Order Completed, match: cart_id}
    steps:
      - {id: hello, send: {channel: email, template: t, to: profile.email}}
      - id: ab
        split:
          - percent: 50
            steps:
              - {id: short, wait: 10m}
          - percent: 50
            steps:
              - {id: tod, wait: {until_time: "09:00"}}
      - id: clicked
        wait_for:
          event: Email Delivered
          of: hello
          within: 2h
          matched:
            - id: big
              branch:
                cases:
                  - when: [{property: cart_value, op: gte, value: 50}]
                    steps: [{id: sms, send: {channel: sms, template: s, to: profile.phone}}]
                otherwise: [{id: nap, wait: 1d}]
      - id: returned
        wait_for: {event: Order Completed, match: cart_id, within: 1d}
      - {id: bye, send: {channel: push, template: p, to: profile.push_token}}
""")
CATALOGUE = catalogue(example("abandoned-cart"), example("application-reminders"), KITCHEN_SINK)

CARTS = st.sampled_from(["c1", "c2", "c3"])
ACTIONS = st.one_of(
    st.tuples(
        st.just("track"),
        st.sampled_from(["Cart Abandoned", "Order Completed"]),
        CARTS,
        st.sampled_from([0, 10, 60]),
    ),
    st.tuples(
        st.just("track"),
        st.sampled_from(["Application Started", "Application Completed"]),
        st.sampled_from(["a1", "a2"]),
        st.just(0),
    ),
    st.tuples(st.just("track"), st.just("Unsubscribed"), CARTS, st.just(0)),
    st.tuples(st.just("opened"), st.integers(0, 5)),
    st.tuples(st.just("result"), st.integers(0, 5), st.sampled_from(["sent", "failed"])),
    st.tuples(st.just("identify"), st.booleans(), st.sampled_from(["UTC", "Asia/Tokyo", "bad"])),
    st.tuples(st.just("fire"), st.integers(0, 5)),
    st.tuples(st.just("refire"), st.integers(0, 5)),
    st.tuples(st.just("advance"), st.integers(1, 60 * 30)),
    st.tuples(st.just("stop"), st.sampled_from(["abandoned-cart", "sink"])),
)


def play(actions: list[tuple[Any, ...]], *, check_repeat: bool = False) -> Profile:
    p = Profile(CATALOGUE)
    p.identify(email="a@example.com", phone="+1", push_token="tok")
    fired: list[TimerSet] = []
    for n, action in enumerate(actions):
        kind = action[0]
        sends = [e for e in p.log if isinstance(e, SendRequested)]
        if kind == "track":
            _, name, key, value = action
            props = {"cart_id": key, "application_id": key, "cart_value": value}
            p.track(name, message_id=f"m{n}", **props)
        elif kind == "opened" and sends:
            p.track(
                "Email Opened",
                message_id=f"m{n}",
                delivery_id=sends[action[1] % len(sends)].delivery.delivery_id,
            )
        elif kind == "result" and sends:
            p.result(sends[action[1] % len(sends)], action[2])
        elif kind == "identify":
            p.identify(vip=action[1], timezone=action[2])
        elif kind == "fire" and (timers := p.pending_timers()):
            timer = sorted(timers, key=lambda t: (t.due_at, t.timer_id))[action[1] % len(timers)]
            fired.append(timer)
            p.fire(timer)
        elif kind == "refire" and fired:
            before = p.state
            assert p.fire(fired[action[1] % len(fired)]) == []
            assert p.state == before
        elif kind == "advance":
            p.advance(timedelta(seconds=action[1]))
        elif kind == "stop":
            p.exit_all(action[1])
        if check_repeat and n < len(actions) and kind == "track":
            _, name, key, value = action
            before = p.state
            assert (
                p.track(name, message_id=f"m{n}", cart_id=key, application_id=key, cart_value=value)
                == []
            )
            assert p.state == before
    return p


def drain(p: Profile) -> None:
    for _ in range(200):
        if not p.pending_timers():
            return
        p.fire_next()
    raise AssertionError("timers keep coming")


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.lists(ACTIONS, min_size=4, max_size=30))
def test_the_same_inputs_in_the_same_order_give_the_same_result(actions: list[Any]) -> None:
    a, b = play(actions), play(actions)
    assert a.log == b.log
    assert a.state == b.state


@FAST
@given(st.lists(ACTIONS, min_size=4, max_size=30))
def test_an_ended_instance_never_emits_another_effect(actions: list[Any]) -> None:
    p = play(actions)
    drain(p)
    ended: set[str] = set()
    timer_owner: dict[str, str] = {}
    for effect in p.log:
        instance = _instance_of(effect, timer_owner)
        if instance is not None:
            assert instance not in ended, effect
        if isinstance(effect, InstanceEnded):
            ended.add(effect.instance_id)
    started = {e.instance_id for e in p.log if isinstance(e, InstanceStarted)}
    assert ended == started  # with every timer fired, every instance ends
    assert p.state.instances == ()


def _instance_of(effect: object, timer_owner: dict[str, str]) -> str | None:
    if isinstance(effect, TimerSet):
        timer_owner[effect.timer_id] = effect.instance_id
        return effect.instance_id
    if isinstance(effect, TimerCancelled):
        return None  # cancelling is part of ending
    if isinstance(effect, SendRequested):
        return effect.delivery.instance_id
    if isinstance(effect, InstanceConverted | InstanceStarted):
        return effect.instance_id
    return None


@FAST
@given(st.lists(ACTIONS, min_size=4, max_size=30))
def test_every_timer_set_is_fired_or_cancelled_exactly_once(actions: list[Any]) -> None:
    p = play(actions)
    drain(p)
    settled: dict[str, int] = {}
    live: set[str] = set()
    for effect in p.log:
        if isinstance(effect, TimerSet):
            assert effect.timer_id not in settled, "a timer id was reused"
            settled[effect.timer_id] = 0
            live.add(effect.timer_id)
        elif isinstance(effect, TimerCancelled | TimerFiredMark):
            if isinstance(effect, TimerFiredMark) and effect.timer_id not in live:
                continue  # the scheduler firing a stale timer is allowed and ignored
            assert effect.timer_id in live, "cancelled a timer that was not pending"
            live.discard(effect.timer_id)
            settled[effect.timer_id] += 1
    assert live == set()
    assert all(count == 1 for count in settled.values())


@FAST
@given(st.lists(ACTIONS, min_size=4, max_size=20))
def test_reapplying_an_input_already_applied_changes_nothing(actions: list[Any]) -> None:
    play(actions, check_repeat=True)


@FAST
@given(st.lists(ACTIONS, min_size=4, max_size=30))
def test_state_round_trips_through_encode_and_decode(actions: list[Any]) -> None:
    p = play(actions)
    assert decode_state(encode_state(p.state)) == p.state
    # and the decoded state behaves exactly like the original
    for state in (p.state, decode_state(encode_state(p.state))):
        _, effects = run_input(state, _order("c1", p), catalogue=CATALOGUE, now=p.now)
        assert effects == run_input(p.state, _order("c1", p), catalogue=CATALOGUE, now=p.now)[1]


def _order(cart: str, p: Profile) -> Any:
    from cairn_common.messages import Event

    return Event(
        message_id="final",
        type="track",
        profile_id=p.profile_id,
        partition=0,
        received_at=p.now,
        timestamp=p.now,
        event="Order Completed",
        properties={"cart_id": cart},
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
NAMES = st.sampled_from(
    [
        "Cart Abandoned",
        "Order Completed",
        "Email Opened",
        "Email Delivered",
        "Application Started",
        "Application Completed",
        "Unsubscribed",
    ]
)


@FAST
@given(
    st.lists(
        st.tuples(
            NAMES,
            st.dictionaries(
                st.sampled_from(["cart_id", "cart_value", "application_id", "delivery_id", "x"]),
                JSON,
                max_size=4,
            ),
            JSON,
        ),
        max_size=12,
    )
)
def test_events_with_any_property_values_never_break_the_interpreter(
    events: list[tuple[str, dict[str, Any], Any]],
) -> None:
    p = Profile(CATALOGUE)
    for n, (name, props, timezone) in enumerate(events):
        p.identify(email=props.get("x"), timezone=timezone, vip=props.get("cart_value"))
        p.track(name, message_id=f"m{n}", **props)
    drain(p)
    assert decode_state(encode_state(p.state)) == p.state
