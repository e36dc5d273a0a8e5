"""Conditions over event properties, event context and profile traits."""

from __future__ import annotations

from typing import Any

import pytest

from cairn_journey.conditions import AllOf, AnyOf, Condition, Scope, evaluate, matches

SCOPE = Scope(
    properties={
        "total": 120,
        "currency": "EUR",
        "tags": ["sale", "new"],
        "coupon": None,
        "paid": True,
        "items": [{"sku": "A-1"}],
        "when": "2026-03-01T10:00:00Z",
    },
    context={"locale": "fr-FR", "app": {"version": "2.1.0"}},
    traits={"plan": "pro", "age": 31, "email": "ann@example.com"},
    event="Order Completed",
)


@pytest.mark.parametrize(
    ("prop", "op", "value", "expected"),
    [
        ("total", "eq", 120, True),
        ("total", "eq", 120.0, True),
        ("total", "eq", "120", False),  # a string is not a number
        ("paid", "eq", 1, False),  # a boolean is not a number
        ("currency", "ne", "USD", True),
        ("currency", "ne", 3, False),  # type mismatch is false, never true
        ("missing", "ne", "USD", False),  # missing: only not_exists holds
        ("currency", "in", ["EUR", "GBP"], True),
        ("currency", "not_in", ["EUR", "GBP"], False),
        ("currency", "not_in", ["USD"], True),
        ("total", "gt", 100, True),
        ("total", "gte", 120, True),
        ("total", "lt", 120, False),
        ("total", "lte", 120, True),
        ("total", "gt", "100", False),
        ("when", "gte", "2026-01-01", True),  # ISO dates compare as text
        ("coupon", "exists", None, False),  # null counts as absent
        ("coupon", "not_exists", None, True),
        ("nothing", "not_exists", None, True),
        ("tags", "contains", "sale", True),
        ("currency", "contains", "U", True),
        ("total", "contains", 1, False),
        ("email", "starts_with", "ann", False),  # bare name: an event property, not a trait
        ("profile.email", "starts_with", "ann", True),
        ("profile.age", "gte", 18, True),
        ("event.properties.items.0.sku", "eq", "A-1", True),
        ("items.5.sku", "exists", None, False),
        ("event.context.app.version", "starts_with", "2.", True),
        ("event.context.locale", "eq", "fr-FR", True),
        ("event.name", "eq", "Order Completed", True),
        ("total.deeper", "exists", None, False),
    ],
)
def test_operator(prop: str, op: Any, value: Any, expected: bool) -> None:
    assert evaluate(Condition(property=prop, op=op, value=value), SCOPE) is expected


def test_all_and_any_nest() -> None:
    rich = Condition(property="total", op="gt", value=100)
    pro = Condition(property="profile.plan", op="eq", value="pro")
    usd = Condition(property="currency", op="eq", value="USD")
    assert evaluate(AllOf(all=(rich, AnyOf(any=(usd, pro)))), SCOPE)
    assert not evaluate(AllOf(all=(rich, usd)), SCOPE)
    assert matches((), SCOPE)
    assert not matches((rich, usd), SCOPE)
