"""A send step finishes when its outcome is known; waits count from the real send.

The abandoned-cart example throughout: email, ``wait_for Email Opened of: initial-email within
1d``, SMS, ``wait 1d``, push. The profile reports outcomes by hand (``dispatch=False``), so each
test decides when the dispatcher's result arrives and what it says.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn_common.messages import Event
from cairn_journey.effects import SendRequested, TimerCancelled, TimerSet
from cairn_journey.run import LATE_GRACE

from .support import T0, Profile, catalogue, example, journey

DAY = timedelta(days=1)
H = timedelta(hours=1)


def shopper(**limits: object) -> Profile:
    p = Profile(catalogue(example("abandoned-cart"), **limits), dispatch=False)  # type: ignore[arg-type]
    p.identify(email="ann@example.com", phone="+15550100", push_token="tok-1")
    return p


def only_send(p: Profile) -> SendRequested:
    (send,) = p.requested()
    return send


def timers(p: Profile, kind: str) -> list[TimerSet]:
    return [t for t in p.pending_timers() if t.kind == kind]


def test_the_instance_waits_at_the_send_until_its_outcome_is_known() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    assert p.positions() == ["initial-email"]
    (bound,) = timers(p, "send")
    assert bound.due_at == T0 + DAY  # the default bound
    assert timers(p, "wait_for") == []
    email = only_send(p)
    p.advance(3 * H)  # a dispatch backlog: the email leaves three hours late
    effects = p.result(email, "sent")
    assert TimerCancelled(timer_id=bound.timer_id) in effects
    (window,) = timers(p, "wait_for")
    assert window.due_at == T0 + 3 * H + DAY  # one day after it was sent, not requested


def test_an_open_within_a_day_of_the_real_send_stops_the_text() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    p.advance(4 * H)
    p.result(email, "sent")
    p.advance(DAY - H)  # 23 h after sending, 27 h after the request
    p.track("Email Opened", delivery_id=email.delivery.delivery_id)
    assert p.sends() == ["initial-email"]
    assert p.positions() == []  # matched, ran off the end
    assert p.ended() == [("completed", "completed")]


def test_the_text_and_the_push_count_from_when_each_message_went_out() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    p.advance(2 * H)
    p.result(only_send(p), "sent")
    p.fire_next()  # the open window ends at T0 + 2h + 1d
    assert p.now == T0 + 2 * H + DAY
    sms = only_send(p)
    p.advance(5 * H)  # the text waits out quiet hours
    p.result(sms, "sent")
    (pause,) = timers(p, "wait")
    assert pause.due_at == T0 + 7 * H + 2 * DAY  # "one day after the text was sent"


def test_a_result_that_reports_an_earlier_sending_time_counts_from_it() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    p.advance(H)
    sent_at = p.now
    p.advance(10 * timedelta(minutes=1))  # the result itself waited in the partition
    p.result(email, "sent", at=sent_at)
    (window,) = timers(p, "wait_for")
    assert window.due_at == sent_at + DAY


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("skipped", "frequency cap: 1 per 1d on email"),
        ("suppressed", "unsubscribed"),
        ("failed", "550 mailbox unavailable"),
        ("bounced", "hard bounce"),
        ("dropped", "instance exited"),
        ("dead_lettered", "gave up after 5 attempts"),
    ],
)
def test_a_message_not_sent_ends_the_of_wait_at_once(outcome: str, reason: str) -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    p.result(only_send(p), outcome, reason=reason)
    assert p.sends() == ["initial-email", "text-reminder"]  # no day waiting for an open
    assert ("opened", "not_sent") in p.counters()
    assert ("opened", f"not_sent:{outcome}") in p.counters()
    assert ("opened", "timed_out") not in p.counters()
    assert p.state.instances[0].outcomes["initial-email"].reason == reason


NOT_SENT_PATH = """
    kind: Journey
    name: capped
    trigger: Cart Abandoned
    entry: {unique_by: cart_id}
    steps:
      - {id: email, send: {channel: email, template: e, to: profile.email}}
      - id: opened
        wait_for:
          event: Email Opened
          of: email
          within: 1d
          timed_out:
            - {id: sms, send: {channel: sms, template: s, to: profile.phone}}
          not_sent:
            - {id: push, send: {channel: push, template: p, to: profile.push_token}}
"""


def test_a_not_sent_path_is_taken_instead_of_timed_out() -> None:
    p = Profile(catalogue(journey(NOT_SENT_PATH)), dispatch=False)
    p.identify(email="a@example.com", phone="+1", push_token="tok")
    p.track("Cart Abandoned", cart_id="c1")
    p.result(only_send(p), "skipped", reason="frequency cap")
    assert p.sends() == ["email", "push"]


def test_not_sent_is_only_valid_with_of() -> None:
    from cairn_journey.documents import parse_text

    text = NOT_SENT_PATH.replace("of: email", "match: cart_id")
    result = parse_text(text, "capped.yaml")
    assert [p.path for p in result.problems] == ["steps[1].wait_for.not_sent"]
    assert "only goes with of" in result.problems[0].message


def test_an_open_that_overtakes_the_emails_result_still_counts() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    p.advance(timedelta(seconds=2))
    p.track("Email Opened", delivery_id=email.delivery.delivery_id)  # before the result
    assert p.positions() == ["initial-email"]
    p.result(email, "sent")
    assert p.sends() == ["initial-email"]
    assert ("opened", "matched") in p.counters()
    assert p.ended() == [("completed", "completed")]


def test_an_exit_acts_at_once_while_the_instance_waits_on_a_send() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    (bound,) = timers(p, "send")
    effects = p.track("Order Completed", cart_id="c1")
    assert TimerCancelled(timer_id=bound.timer_id) in effects
    assert p.ended() == [("exited", "exit:Order Completed")]
    assert p.result(email, "sent") == []  # the late result moves nothing
    assert p.sends() == ["initial-email"]


def test_no_result_within_the_bound_moves_on_as_unknown() -> None:
    p = shopper(send_outcome_bound=timedelta(hours=2))
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    p.fire_next()
    assert ("initial-email", "unknown") in p.counters()
    outcome = p.state.instances[0].outcomes["initial-email"]
    assert (outcome.outcome, outcome.reason) == ("unknown", "no outcome within 2h")
    (window,) = timers(p, "wait_for")
    assert window.due_at == T0 + 2 * H + DAY


def test_a_result_after_the_bound_re_times_the_of_wait() -> None:
    p = shopper(send_outcome_bound=timedelta(hours=2))
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    p.fire_next()  # unknown at T0 + 2h
    p.advance(H)  # it went out at T0 + 3h after all
    p.result(email, "sent")
    (window,) = timers(p, "wait_for")
    assert window.due_at == T0 + 3 * H + DAY
    p.now = T0 + 2 * H + DAY + H / 2  # past the first window, inside the real one
    p.track("Email Opened", delivery_id=email.delivery.delivery_id)
    assert p.sends() == ["initial-email"]


def test_a_not_sent_result_after_the_bound_takes_the_path_at_once() -> None:
    p = shopper(send_outcome_bound=timedelta(hours=2))
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    p.fire_next()
    p.result(email, "suppressed", reason="unsubscribed")
    assert p.sends() == ["initial-email", "text-reminder"]
    assert ("opened", "not_sent:suppressed") in p.counters()


def test_a_per_step_bound_overrides_the_default() -> None:
    text = NOT_SENT_PATH.replace(
        "template: e, to: profile.email}", "template: e, to: profile.email, outcome_within: 90s}"
    )
    p = Profile(catalogue(journey(text)), dispatch=False)
    p.identify(email="a@example.com")
    p.track("Cart Abandoned", cart_id="c1")
    (bound,) = timers(p, "send")
    assert bound.due_at == T0 + timedelta(seconds=90)


def test_a_deferred_result_keeps_the_instance_waiting() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    assert p.result(email, "deferred", reason="quiet hours until 2026-03-02T09:00:00+00:00") == []
    assert p.positions() == ["initial-email"]
    p.advance(H)
    p.result(email, "sent")
    (window,) = timers(p, "wait_for")
    assert window.due_at == T0 + H + DAY


def test_a_repeated_result_changes_nothing() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    p.result(email, "sent")
    state = p.state
    assert p.result(email, "sent") == []
    assert p.state == state


def test_state_written_before_outcomes_existed_still_decodes() -> None:
    import msgspec

    from cairn_journey.state import Instance, TriggerEvent

    old = [
        "in_1", "j", 1, None, T0.isoformat(), ["E", "m", {}, {}],
        "w", None, False, {}, {}, {}, {},
    ]  # fmt: skip
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=Instance)
    assert decoded.outcomes == {}
    assert decoded.heard == ()
    assert decoded.trigger == TriggerEvent(name="E", message_id="m", properties={}, context={})


# --------------------------------------------------------------------------- ordering races

ARRIVALS = ("result", "open", "order")


@pytest.mark.parametrize("order", list(itertools.permutations(ARRIVALS)))
def test_any_arrival_order_of_result_open_and_order_sends_no_text(order: tuple[str, ...]) -> None:
    """Whatever order the email's result, its open and the order reach the partition in (all
    within the window), the shopper gets nothing after the email."""
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    for arrival in order:
        p.advance(timedelta(seconds=1))
        if arrival == "result":
            p.result(email, "sent")
        elif arrival == "open":
            p.track("Email Opened", delivery_id=email.delivery.delivery_id)
        else:
            p.track("Order Completed", cart_id="c1")
    while p.pending_timers():
        p.fire_next()
    assert p.sends() == ["initial-email"]
    assert p.state.instances == ()


@settings(max_examples=200, deadline=None)
@given(
    result_after=st.integers(min_value=0, max_value=48 * 3600),
    open_after_send=st.one_of(st.none(), st.integers(min_value=0, max_value=48 * 3600)),
    open_first=st.booleans(),
)
def test_the_text_goes_exactly_when_no_open_came_within_a_day_of_sending(
    result_after: int, open_after_send: int | None, open_first: bool
) -> None:
    """Property: with the result arriving at any delay and the open at any time after the email
    went out, the text is sent if and only if there was no open within 1 d of the sending."""
    p = shopper(send_outcome_bound=timedelta(days=3))
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    sent_at = T0 + timedelta(seconds=result_after)
    open_at = None if open_after_send is None else sent_at + timedelta(seconds=open_after_send)
    window_end = sent_at + DAY

    def deliver() -> None:
        p.now = max(p.now, sent_at)
        p.result(email, "sent", at=sent_at)

    def open_email() -> None:
        assert open_at is not None
        p.now = max(p.now, open_at)
        p.track("Email Opened", delivery_id=email.delivery.delivery_id)

    # The scheduler fires what is due before each arrival, as it would in time.
    def run_timers_until(moment: object) -> None:
        while (due := sorted(p.pending_timers(), key=lambda t: t.due_at)) and (
            due[0].due_at <= moment  # type: ignore[operator]
        ):
            p.fire(due[0])

    steps = [(sent_at, deliver)]
    if open_at is not None:
        steps.append((open_at, open_email))
        if open_first and open_at < T0 + timedelta(days=3):
            steps.reverse()  # the open overtakes the result (which is applied after it)
    for moment, action in steps:
        run_timers_until(moment)
        action()
    while p.pending_timers():
        p.fire_next()
    opened_in_time = open_at is not None and open_at < window_end
    assert ("text-reminder" in p.sends()) == (not opened_in_time)


def _opened(p: Profile, email: SendRequested, accepted: datetime) -> None:
    """An open Cairn accepted at ``accepted`` and the matcher applies now (a backlog)."""
    p.apply(
        Event(
            message_id=f"open-{accepted.isoformat()}",
            type="track",
            profile_id=p.profile_id,
            partition=0,
            received_at=accepted,
            timestamp=accepted,
            event="Email Opened",
            properties={"delivery_id": email.delivery.delivery_id},
        )
    )


def test_a_backlog_judges_the_window_by_when_inputs_were_accepted_not_applied() -> None:
    """The matcher was down: the email's result and an open accepted inside the window are
    applied only after the window ended. The open, queued behind the result, still counts: the
    window parks with its timer due at once instead of timing out on the spot."""
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    sent = p.now
    p.advance(DAY + 2 * H)  # everything below is applied two hours after the window closed
    p.result(email, "sent", at=sent)
    (window,) = timers(p, "wait_for")
    assert window.due_at == sent + DAY  # already past: the scheduler fires it at once
    _opened(p, email, accepted=sent + 3 * H)
    assert p.sends() == ["initial-email"]
    assert p.ended() == [("completed", "completed")]


def test_an_open_accepted_after_the_window_closed_is_too_late_even_before_the_timer_fires() -> None:
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    sent = p.now
    p.advance(DAY + 2 * H)
    p.result(email, "sent", at=sent)
    _opened(p, email, accepted=sent + DAY + H)  # an hour after the window closed
    assert p.positions() == ["opened"]  # not matched: the window's timer decides
    p.fire_next()
    assert p.sends() == ["initial-email", "text-reminder"]


def test_a_window_timer_that_came_through_an_outage_waits_once_for_inputs_on_their_way() -> None:
    """NATS was electing a leader: ingest kept an open it accepted inside the window in its
    backlog while the scheduler's retried fire got into the stream first, 20 s after the window
    ended. The window waits ``LATE_GRACE`` more, once; the open arrives and matches."""
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    p.result(email, "sent", at=p.now)
    sent = p.now
    (window,) = timers(p, "wait_for")
    p.advance(DAY + timedelta(seconds=20))
    p.fire(window, after_outage=True)
    (grace,) = [t for t in timers(p, "wait_for") if t.timer_id != window.timer_id]
    assert grace.due_at == p.now + LATE_GRACE
    assert p.sends() == ["initial-email"]
    _opened(p, email, accepted=sent + DAY - H)  # accepted inside the window, applied now
    assert p.sends() == ["initial-email"]
    assert p.ended() == [("completed", "completed")]


def test_a_window_after_an_outage_with_nothing_on_its_way_times_out_after_one_grace() -> None:
    """An open accepted after the window, applied during the grace, still does not match; the
    grace timer, refused by the stream as well, times the window out: no second grace."""
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    p.result(email, "sent", at=p.now)
    sent = p.now
    (window,) = timers(p, "wait_for")
    p.advance(DAY + timedelta(seconds=20))
    p.fire(window, after_outage=True)
    _opened(p, email, accepted=sent + DAY + timedelta(seconds=1))
    assert p.sends() == ["initial-email"]
    (grace,) = [t for t in timers(p, "wait_for") if t.timer_id != window.timer_id]
    p.fire(grace, after_outage=True)
    assert p.sends() == ["initial-email", "text-reminder"]


def test_a_late_window_timer_without_an_outage_times_out_at_once() -> None:
    """Late because the matcher or scheduler was busy, not because the stream refused it: the
    inputs accepted inside the window are already queued ahead of it (decision 0063)."""
    p = shopper()
    p.track("Cart Abandoned", cart_id="c1", cart_value=10)
    email = only_send(p)
    p.result(email, "sent", at=p.now)
    (window,) = timers(p, "wait_for")
    p.advance(DAY + timedelta(seconds=20))
    p.fire(window)
    assert p.sends() == ["initial-email", "text-reminder"]
