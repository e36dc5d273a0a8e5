"""Checking an event's properties against its :class:`~cairn_journey.model.Trigger` schema."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cairn_journey.model import PropertyType, Trigger


def _is_datetime(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def type_matches(kind: PropertyType, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    return _is_datetime(value)


def property_violations(trigger: Trigger, properties: dict[str, Any]) -> list[str]:
    """Human-readable violations (``properties.cart_value: expected number, got string``)."""
    out: list[str] = []
    for name, spec in trigger.properties.items():
        if name not in properties or properties[name] is None:
            if spec.required:
                out.append(f"properties.{name}: required by trigger {trigger.name!r}")
            continue
        value = properties[name]
        if not type_matches(spec.type, value):
            out.append(f"properties.{name}: expected {spec.type}, got {_json_type(value)}")
    if not trigger.additional_properties:
        out.extend(
            f"properties.{name}: not declared by trigger {trigger.name!r}"
            for name in properties
            if name not in trigger.properties
        )
    return out


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
