"""Conditions on event and profile data: ``{property, op, value}`` combined with ``all``/``any``.

Property paths:

- a bare name (``cart_value``, ``items.0.sku``) is an event property;
- ``event.properties.x``, ``event.context.x`` read the event, ``event.name`` its name;
- ``profile.x`` reads the profile's traits; ``profile.id``, ``profile.user_id`` and
  ``profile.anonymous_id`` its ids;
- ``steps.<step id>.event.properties.x`` reads the event a ``wait_for`` step matched.

Dots walk into objects; a numeric segment indexes a list. Evaluation never raises: a missing
property makes every operator false except ``not_exists``; a type mismatch (``gt`` on a string
against a number, ``contains`` on a number, ...) is false. Booleans are not numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

Op = Literal[
    "eq",
    "ne",
    "in",
    "not_in",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
    "not_exists",
    "contains",
    "starts_with",
]
OPS: tuple[Op, ...] = (
    "eq",
    "ne",
    "in",
    "not_in",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
    "not_exists",
    "contains",
    "starts_with",
)
UNARY_OPS = frozenset({"exists", "not_exists"})
LIST_OPS = frozenset({"in", "not_in"})
ORDER_OPS = frozenset({"gt", "gte", "lt", "lte"})

_MISSING: Any = object()


class Condition(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    property: str
    op: Op
    value: Any = None


class AllOf(msgspec.Struct, frozen=True, kw_only=True):
    all: tuple[ConditionNode, ...]


class AnyOf(msgspec.Struct, frozen=True, kw_only=True):
    any: tuple[ConditionNode, ...]


ConditionNode = Condition | AllOf | AnyOf


class Scope(msgspec.Struct, frozen=True):
    """What conditions read: the event (name, properties, context), the profile's traits and
    ids (``id``, ``user_id``, ``anonymous_id``), and the events earlier ``wait_for`` steps of
    the instance matched (``steps.<step id>.event``)."""

    properties: Mapping[str, Any]
    context: Mapping[str, Any]
    traits: Mapping[str, Any]
    event: str | None = None
    ids: Mapping[str, Any] = msgspec.field(default_factory=dict)
    steps: Mapping[str, Any] = msgspec.field(default_factory=dict)


def resolve(path: str, scope: Scope) -> Any:
    """The value at ``path`` in ``scope``, or :data:`MISSING` when there is none."""
    if "." not in path:
        value = scope.properties.get(path, _MISSING)
        return value
    head, _, rest = path.partition(".")
    if head == "profile" and rest:
        if "." not in rest:
            if rest in scope.ids:  # the profile's own ids win over a trait of that name
                return scope.ids[rest]
            return scope.traits.get(rest, _MISSING)
        return _walk(scope.traits, rest)
    if head == "steps" and rest:
        return _walk(scope.steps, rest)
    if head == "event" and rest:
        area, _, tail = rest.partition(".")
        if area == "properties" and tail:
            return _walk(scope.properties, tail)
        if area == "context" and tail:
            return _walk(scope.context, tail)
        if area == "name" and not tail:
            return scope.event if scope.event is not None else _MISSING
        return _MISSING
    return _walk(scope.properties, path)


MISSING = _MISSING


def _walk(root: Any, path: str) -> Any:
    value = root
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
            if value is _MISSING:
                return _MISSING
        elif isinstance(value, list) and part.isdigit():
            index = int(part)
            if index >= len(value):
                return _MISSING
            value = value[index]
        else:
            return _MISSING
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_kind(a: Any, b: Any) -> bool:
    if _is_number(a):
        return _is_number(b)
    if isinstance(a, bool):
        return isinstance(b, bool)
    return type(a) is type(b)


def _eq(a: Any, b: Any) -> bool:
    return _same_kind(a, b) and a == b


def check(cond: Condition, scope: Scope) -> bool:
    """Evaluate one condition; never raises."""
    op = cond.op
    actual = resolve(cond.property, scope)
    if op == "exists":
        return actual is not _MISSING and actual is not None
    if op == "not_exists":
        return actual is _MISSING or actual is None
    if actual is _MISSING or actual is None:
        return False
    expected = cond.value
    if op == "eq":
        return _eq(actual, expected)
    if op == "ne":
        return _same_kind(actual, expected) and actual != expected
    if op == "in" or op == "not_in":
        if not isinstance(expected, Sequence) or isinstance(expected, str):
            return False
        found = any(_eq(actual, item) for item in expected)
        if op == "in":
            return found
        return not found and (not expected or any(_same_kind(actual, i) for i in expected))
    if op in ORDER_OPS:
        if not (
            (_is_number(actual) and _is_number(expected))
            or (isinstance(actual, str) and isinstance(expected, str))
        ):
            return False
        if op == "gt":
            return bool(actual > expected)
        if op == "gte":
            return bool(actual >= expected)
        if op == "lt":
            return bool(actual < expected)
        return bool(actual <= expected)
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        if isinstance(actual, list):
            return any(_eq(item, expected) for item in actual)
        return False
    if op == "starts_with":
        return isinstance(actual, str) and isinstance(expected, str) and actual.startswith(expected)
    return False


def evaluate(node: ConditionNode, scope: Scope) -> bool:
    if isinstance(node, Condition):
        return check(node, scope)
    if isinstance(node, AllOf):
        return all(evaluate(child, scope) for child in node.all)
    return any(evaluate(child, scope) for child in node.any)


def matches(conditions: Sequence[ConditionNode], scope: Scope) -> bool:
    """A ``where`` list: every condition must hold (an empty list holds)."""
    return all(evaluate(node, scope) for node in conditions)


def property_paths(conditions: Sequence[ConditionNode]) -> list[str]:
    """Every property path the conditions read, depth first."""
    out: list[str] = []
    stack = list(reversed(conditions))
    while stack:
        node = stack.pop()
        if isinstance(node, Condition):
            out.append(node.property)
        elif isinstance(node, AllOf):
            stack.extend(reversed(node.all))
        else:
            stack.extend(reversed(node.any))
    return out
