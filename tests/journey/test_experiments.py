"""Experiments and holdouts: per-path figures of a split, sticky paths, a decided winner, and a
journey-level control group that goes through the journey with nothing done to it."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn_journey.documents import parse_document, parse_text
from cairn_journey.effects import Counted, SendRequested, TraitsUpdated
from cairn_journey.interpreter import Catalogue
from cairn_journey.model import Journey, SplitStep
from cairn_journey.stepping import holdout_point
from cairn_journey.validate import Limits

from .support import Profile, catalogue, journey

HELD = """
    kind: Journey
    name: cart
    trigger: Cart Abandoned
    entry: {unique_by: cart_id}
    holdout: 10%
    goal: {event: Order Completed, match: cart_id}
    steps:
      - {id: email, send: {channel: email, template: t}}
      - id: opened
        wait_for: {event: Email Opened, of: email, within: 1d}
      - {id: flag, update: {set: {reminded: true}}}
      - {id: sms, send: {channel: sms, template: t}}
"""


def _held(cat: Catalogue, n: int) -> tuple[list[Profile], list[Profile]]:
    held: list[Profile] = []
    treated: list[Profile] = []
    for i in range(n):
        p = Profile(cat, profile_id=f"u{i}")
        p.track("Cart Abandoned", cart_id="c1")
        (instance,) = p.state.instances
        (held if instance.holdout else treated).append(p)
    return held, treated


def test_a_holdout_enters_about_its_share_of_profiles_and_the_same_ones_every_time() -> None:
    cat = catalogue(journey(HELD))
    held, treated = _held(cat, 1000)
    assert 60 < len(held) < 140  # 10% of 1000, give or take the hash
    for p in held[:20] + treated[:20]:
        assert (holdout_point(p.profile_id, "cart") < 10) == (p in held)
    # Entering again (a new cart) keeps a profile where it was.
    for p in held[:20]:
        p.track("Cart Abandoned", cart_id="c2")
        assert all(i.holdout for i in p.state.instances)


def test_a_held_out_profile_gets_nothing_but_waits_as_long_as_one_who_ignored_the_email() -> None:
    cat = catalogue(journey(HELD))
    held, treated = _held(cat, 200)
    p, q = held[0], treated[0]
    assert p.sends() == []
    assert [e for e in p.log if isinstance(e, TraitsUpdated)] == []
    assert q.sends() == ["email"]
    # Both wait a whole day at the wait_for: the holdout as long as a customer who did not open.
    assert p.positions() == q.positions() == ["opened"]
    assert p.state.instances[0].pending.due_at == q.state.instances[0].pending.due_at  # type: ignore[union-attr]
    p.fire_next()
    q.fire_next()
    assert p.sends() == []
    assert q.sends() == ["email", "sms"]
    assert "reminded" not in p.state.traits
    assert q.state.traits["reminded"] is True
    assert p.ended() == q.ended() == [("completed", "completed")]
    # Everything the holdout did is counted apart.
    assert all(c.startswith("holdout:") for _, c in p.counters())
    assert ("", "holdout:entered") in p.counters()
    assert ("", "holdout:completed") in p.counters()
    assert ("email", "holdout:withheld") in p.counters()
    assert ("flag", "holdout:withheld") in p.counters()
    assert not any(c.startswith("holdout:") for _, c in q.counters())


def test_a_holdout_converts_on_the_goal_and_counts_apart() -> None:
    cat = catalogue(journey(HELD))
    held, treated = _held(cat, 200)
    for p in (held[0], treated[0]):
        p.advance(timedelta(hours=2))
        p.track("Order Completed", cart_id="c1")
        assert len(p.converted()) == 1
    assert ("", "holdout:converted") in held[0].counters()
    assert ("", "converted") in treated[0].counters()
    assert ("", "converted") not in held[0].counters()


SPLIT = """
    kind: Journey
    name: subject-test
    trigger: Cart Abandoned
    entry: {unique_by: cart_id}
    goal: {event: Order Completed, match: cart_id}
    steps:
      - {id: first, send: {channel: email, template: t}}
      - id: subject
        split:
          - name: plain
            percent: 50
            steps: [{id: a, send: {channel: email, template: a}}]
          - name: urgent
            percent: 50
            steps:
              - {id: b, send: {channel: email, template: b}}
              - {id: b2, send: {channel: sms, template: b}}
        {options}
      - {id: w, wait: 1d}
"""


def _split(options: str = "", **winners: int) -> Catalogue:
    j = journey(SPLIT.replace("{options}", options))
    return Catalogue({(j.name, 1): j}, {j.name: 1}, limits=Limits(), winners={(j.name, 1): winners})


def _path_counters(p: Profile) -> Counter[str]:
    return Counter(c for step, c in p.counters() if step == "subject")


def test_a_split_counts_entries_sends_and_conversions_per_path() -> None:
    cat = _split()
    totals: Counter[str] = Counter()
    for i in range(100):
        p = Profile(cat, profile_id=f"u{i}")
        p.track("Cart Abandoned", cart_id="c")
        if i % 3 == 0:
            p.track("Order Completed", cart_id="c")
        path = "plain" if p.sends()[1:] == ["a"] else "urgent"
        counted = _path_counters(p)
        assert counted[f"split:{path}"] == 1
        # Only the sends after the split count for its path: not the first email.
        assert counted[f"sends:{path}"] == (1 if path == "plain" else 2)
        assert counted[f"converted:{path}"] == (1 if i % 3 == 0 else 0)
        totals.update(counted)
    assert totals["split:plain"] + totals["split:urgent"] == 100
    assert totals["converted:plain"] + totals["converted:urgent"] == 34
    assert totals["sends:urgent"] == 2 * totals["split:urgent"]


def test_a_conversion_before_the_split_counts_for_no_path() -> None:
    j = journey(
        SPLIT.replace("{options}", "").replace(
            "- {id: first,", "- {id: w0, wait: 1h}\n      - {id: first,"
        )
    )
    # The order arrives while the instance waits before the split.
    p = Profile(catalogue(j))
    p.track("Cart Abandoned", cart_id="c")
    p.track("Order Completed", cart_id="c")
    assert len(p.converted()) == 1
    assert not [c for s, c in p.counters() if c.startswith("converted:")]


def test_a_sticky_split_keeps_a_returning_profile_on_its_first_path() -> None:
    sticky, loose = _split("sticky: true"), _split()
    changed = 0
    for i in range(40):
        for cat, must_keep in ((sticky, True), (loose, False)):
            p = Profile(cat, profile_id=f"u{i}")
            paths = []
            for cart in ("c1", "c2", "c3"):
                p.track("Cart Abandoned", cart_id=cart)
                paths.append(_last_path(p))
            if must_keep:
                assert len(set(paths)) == 1, paths
            elif len(set(paths)) > 1:
                changed += 1
    assert changed > 10  # without sticky, a new cart is a new draw


def _last_path(p: Profile) -> str:
    return [c for s, c in p.counters() if s == "subject" and c.startswith("split:")][-1]


def test_a_decided_winner_takes_every_later_entry_but_not_a_sticky_profiles_first_path() -> None:
    cat = _split(subject=1)
    for i in range(30):
        p = Profile(cat, profile_id=f"u{i}")
        p.track("Cart Abandoned", cart_id="c")
        assert _path_counters(p)["split:urgent"] == 1
        assert _path_counters(p)["winner:urgent"] == 1
    # A sticky profile that first took "plain" stays on it after the decision.
    before = _split("sticky: true")
    after = _split("sticky: true", subject=1)
    for i in range(40):
        p = Profile(before, profile_id=f"s{i}")
        p.track("Cart Abandoned", cart_id="c1")
        if _last_path(p) == "split:plain":
            p.catalogue = after
            p.track("Cart Abandoned", cart_id="c2")
            assert _last_path(p) == "split:plain"
            break
    else:
        pytest.fail("no profile took the plain path")


def test_a_winner_for_a_path_that_does_not_exist_is_ignored() -> None:
    cat = _split(subject=7)
    assert cat.get("subject-test", 1).winners == {}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ("holdout: 0%", "holdout", "holds out nothing or everyone"),
        ("holdout: 100%", "holdout", "holds out nothing or everyone"),
        ("holdout: lots", "holdout", "not a percentage"),
        ("holdout: 10%\ngoal: null", "holdout", "needs a goal"),
    ],
)
def test_a_bad_holdout_is_named(change: str, path: str, message: str) -> None:
    text = (
        "kind: Journey\nname: j\ntrigger: A\ngoal: {event: B}\n"
        + change
        + "\nsteps: [{id: w, wait: 1d}]\n"
    )
    if "goal: null" in change:
        text = text.replace("goal: {event: B}\n", "")
        text = text.replace("goal: null\n", "")
    problems = parse_text(text, "j.yaml").problems
    assert [p.path for p in problems] == [path], [str(p) for p in problems]
    assert message in problems[0].message


@pytest.mark.parametrize(
    ("options", "path", "message"),
    [
        ("winner: {}", "steps[0].winner", "needs after"),
        ("winner: {sample: 0}", "steps[0].winner.sample", "not a number of instances"),
        ("winner: {after: soon}", "steps[0].winner.after", "duration"),
        ("winner: {after: 1d, by: clicks}", "steps[0].winner.by", "unknown key"),
        ("sticky: 'yes'", "steps[0].sticky", "true or false"),
    ],
)
def test_bad_experiment_options_are_named(options: str, path: str, message: str) -> None:
    text = f"""
kind: Journey
name: j
trigger: A
goal: {{event: B}}
steps:
  - id: s
    split: [{{percent: 50}}, {{percent: 50}}]
    {options}
"""
    problems = parse_text(text, "j.yaml").problems
    assert [p.path for p in problems] == [path], [str(p) for p in problems]
    assert message in problems[0].message


def test_a_winner_needs_a_goal_and_only_a_split_takes_split_options() -> None:
    text = """
kind: Journey
name: j
trigger: A
steps:
  - id: s
    split: [{percent: 50}, {percent: 50}]
    winner: {sample: 100}
  - {id: w, wait: 1d, sticky: true}
"""
    problems = parse_text(text, "j.yaml").problems
    assert [(p.path, p.message) for p in problems] == [
        ("steps[0].winner", "choosing a winner needs a goal: its conversion decides"),
        ("steps[1].sticky", "only a split step takes it"),
    ]


def test_experiments_survive_the_round_trip_through_stored_json() -> None:
    j = journey(
        SPLIT.replace("{options}", "sticky: true\n        winner: {after: 7d, sample: 500}")
    )
    j = msgspec.structs.replace(j, holdout=12.5)
    again = parse_document({"kind": "Journey", **msgspec.to_builtins(j)}, source="again")
    assert isinstance(again, Journey)
    assert again == j
    step = again.steps[1]
    assert isinstance(step, SplitStep)
    assert step.sticky
    assert step.winner is not None
    assert step.winner.after == timedelta(days=7)
    assert step.winner.sample == 500


def test_counted_prefix_leaves_no_holdout_counter_unprefixed() -> None:
    cat = catalogue(journey(HELD))
    held, _ = _held(cat, 100)
    p = held[0]
    p.advance(timedelta(minutes=5))
    p.track("Order Completed", cart_id="c1")
    p.fire_next()
    counted = [e for e in p.log if isinstance(e, Counted)]
    assert counted
    assert all(e.counter.startswith("holdout:") for e in counted)
    assert not [e for e in p.log if isinstance(e, SendRequested)]


EXPERIMENT = journey(
    SPLIT.replace("{options}", "sticky: true").replace(
        "goal: {event: Order Completed, match: cart_id}",
        "goal: {event: Order Completed, match: cart_id}\n    holdout: 20%",
    )
)

Action = tuple[str, int]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=0, max_value=10_000),
    st.lists(
        st.tuples(st.sampled_from(["enter", "order", "tick"]), st.integers(0, 3)), max_size=25
    ),
)
def test_experiment_figures_always_add_up(seed: int, actions: list[Action]) -> None:
    """Whatever arrives in whatever order: a held-out profile never gets a message nor counts
    in the journey's own figures; each path's conversions are at most its entries, and every
    entry and conversion of a treated instance that reached the split is one path's."""
    p = Profile(catalogue(EXPERIMENT), profile_id=f"u{seed}")
    for kind, n in actions:
        if kind == "enter":
            p.track("Cart Abandoned", cart_id=f"c{n}")
        elif kind == "order":
            p.track("Order Completed", cart_id=f"c{n}")
        elif p.pending_timers():
            p.fire_next()
    # Entry refusals (skipped:already_active, ...) belong to no instance, so to no group.
    counted = Counter(c for c in p.counters() if not c[1].startswith("skipped:"))
    held = holdout_point(p.profile_id, "subject-test") < 20
    if held:
        assert p.sends() == []
        assert all(c.startswith("holdout:") for _, c in counted)
    else:
        assert not any(c.startswith("holdout:") for _, c in counted)
    prefix = "holdout:" if held else ""
    per_path = {
        name: (counted[("subject", f"{prefix}split:{name}")],
               counted[("subject", f"{prefix}converted:{name}")])
        for name in ("plain", "urgent")
    }  # fmt: skip
    assert all(converted <= entered for entered, converted in per_path.values())
    assert sum(e for e, _ in per_path.values()) == counted[("subject", f"{prefix}reached")]
    converted = counted[("", f"{prefix}converted")]
    assert sum(c for _, c in per_path.values()) <= converted
    # sticky: one path for the profile, however often it entered
    assert len([name for name, (e, _) in per_path.items() if e]) <= 1
