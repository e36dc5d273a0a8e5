"""Bad input of any shape gets problems, never an exception (and never a stack trace)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn_journey.documents import DocumentError, parse_document, parse_text

KEYS = st.sampled_from(
    [
        "kind",
        "name",
        "trigger",
        "event",
        "where",
        "entry",
        "repeat",
        "unique_by",
        "exit",
        "goal",
        "steps",
        "id",
        "send",
        "wait",
        "wait_for",
        "branch",
        "split",
        "cases",
        "when",
        "otherwise",
        "percent",
        "property",
        "op",
        "value",
        "all",
        "any",
        "within",
        "of",
        "match",
        "matched",
        "timed_out",
        "channel",
        "template",
        "to",
        "until_time",
        "until",
        "offset",
        "after",
        "properties",
        "type",
        "credentials",
        "env",
        "provider",
        "subject",
        "body",
        "target",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False),
    st.sampled_from(
        [
            "Journey",
            "Template",
            "Trigger",
            "Channel",
            "Destination",
            "1d",
            "x",
            "09:00",
            "eq",
            "in",
            "gt",
            "email",
            "profile.email",
            "50%",
            "",
            "once",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)
KINDS = st.sampled_from(["Journey", "Template", "Trigger", "Channel", "Destination"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(KINDS, st.dictionaries(KEYS, VALUES, max_size=8))
def test_any_shape_of_document_gives_problems_not_exceptions(
    kind: str, body: dict[str, Any]
) -> None:
    problems = []
    try:
        parse_document({**body, "kind": kind})
    except DocumentError as exc:
        problems = exc.problems
        assert problems
    assert all(p.message for p in problems)
    assert not any(p.message.startswith("not a valid ") for p in problems), "a silent refusal"


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_problems_not_exceptions(text: str) -> None:
    parse_text(text, "fuzz.yaml")


def test_an_alias_bomb_and_self_reference_are_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    (problem,) = parse_text(bomb, "bomb.yaml").problems
    assert "too large" in problem.message
    assert [str(p) for p in parse_text("&a [*a]\n", "self.yaml").problems] == [
        "not valid YAML/JSON: an alias refers to itself (self.yaml:1)"
    ]


def test_absurd_nesting_is_a_problem() -> None:
    text = "kind: Journey\nname: j\ntrigger: A\nsteps: " + "[" * 3000 + "]" * 3000 + "\n"
    (problem,) = parse_text(text, "deep.yaml").problems
    assert "nested too deeply" in problem.message
