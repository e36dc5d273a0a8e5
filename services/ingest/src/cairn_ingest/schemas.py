"""Trigger schemas: an event whose name a ``Trigger`` document defines is checked against it.

A Trigger document (applied with ``cairn apply``, stored in ``resources``) reads::

    kind: Trigger
    name: cart-abandoned
    event: Cart Abandoned
    properties:
      cart_id: {type: string, required: true}
      cart_value: number          # shorthand for {type: number}

Types: ``string``, ``number``, ``integer``, ``boolean``, ``object``, ``array``, ``datetime``
(an ISO-8601 string) and ``any``. A property listed in ``required`` (a list at the top level) or
marked ``required: true`` must be present and not null. Properties the schema does not name are
allowed. What happens to a violation is ``CAIRN_TRIGGER_SCHEMA_MODE``: ``reject`` refuses the
event with the list of problems, ``flag`` keeps it and adds ``context.cairn.schema_violations``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec
import structlog

log = structlog.get_logger(__name__)


def _is_datetime(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "datetime": _is_datetime,
    "any": lambda v: True,
}
_JSON_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}


class PropertyRule(msgspec.Struct, frozen=True):
    name: str
    type: str
    required: bool


class TriggerSchema(msgspec.Struct, frozen=True):
    trigger: str
    event: str
    rules: tuple[PropertyRule, ...]

    def violations(self, properties: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        for rule in self.rules:
            value = properties.get(rule.name)
            if value is None:
                if rule.required:
                    problems.append(f"properties.{rule.name} is required by trigger {self.trigger}")
                continue
            if not _CHECKS[rule.type](value):
                got = "array" if isinstance(value, list) else _JSON_NAMES.get(type(value), "value")
                problems.append(f"properties.{rule.name} must be {rule.type}, got {got}")
        return problems


class SchemaDocumentError(Exception):
    pass


def parse_trigger(name: str, document: Mapping[str, Any]) -> TriggerSchema:
    event = document.get("event")
    if isinstance(document.get("trigger"), dict) and event is None:
        event = document["trigger"].get("event")
    if not isinstance(event, str) or not event:
        raise SchemaDocumentError(f"trigger {name}: 'event' must be a non-empty string")
    required_list = document.get("required") or []
    if not isinstance(required_list, list):
        raise SchemaDocumentError(f"trigger {name}: 'required' must be a list")
    props = document.get("properties") or {}
    if not isinstance(props, dict):
        raise SchemaDocumentError(f"trigger {name}: 'properties' must be a mapping")
    rules: list[PropertyRule] = []
    for prop, spec in props.items():
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, dict):
            raise SchemaDocumentError(
                f"trigger {name}: properties.{prop} must be a type or mapping"
            )
        kind = str(spec.get("type", "any"))
        if kind not in _CHECKS:
            raise SchemaDocumentError(
                f"trigger {name}: properties.{prop}.type {kind!r} is not one of "
                f"{', '.join(sorted(_CHECKS))}"
            )
        required = bool(spec.get("required", False)) or prop in required_list
        rules.append(PropertyRule(str(prop), kind, required))
    rules.extend(
        PropertyRule(str(prop), "any", True) for prop in required_list if prop not in props
    )
    return TriggerSchema(name, event, tuple(rules))


class TriggerSchemas:
    """The schemas in force, by event name (several Triggers may describe one event)."""

    def __init__(self, schemas: Iterable[TriggerSchema] = ()) -> None:
        self._by_event: dict[str, list[TriggerSchema]] = {}
        for schema in schemas:
            self._by_event.setdefault(schema.event, []).append(schema)

    @classmethod
    def from_documents(cls, documents: Iterable[tuple[str, Mapping[str, Any]]]) -> TriggerSchemas:
        schemas: list[TriggerSchema] = []
        for name, document in documents:
            try:
                schemas.append(parse_trigger(name, document))
            except SchemaDocumentError as exc:
                log.warning("trigger ignored", trigger=name, error=str(exc))
        return cls(schemas)

    def __bool__(self) -> bool:
        return bool(self._by_event)

    def violations(self, event: str | None, properties: Mapping[str, Any]) -> list[str]:
        if event is None:
            return []
        schemas = self._by_event.get(event)
        if not schemas:
            return []
        return [p for schema in schemas for p in schema.violations(properties)]
