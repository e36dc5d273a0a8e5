"""Trigger schemas: an event whose name a ``Trigger`` document defines is checked against it.

The documents are the journey language's (``cairn_journey.model.Trigger``, applied with
``cairn apply`` and stored in ``resources``)::

    kind: Trigger
    name: cart-abandoned
    event: Cart Abandoned
    properties:
      cart_id: {type: string, required: true}
      cart_value: number

What happens to a violation is ``CAIRN_TRIGGER_SCHEMA_MODE``: ``reject`` refuses the event with
the list of problems, ``flag`` keeps it and adds ``context.cairn.schema_violations``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from cairn_journey.documents import DocumentError, parse_document
from cairn_journey.model import Trigger

log = structlog.get_logger(__name__)


class TriggerSchemas:
    """The schemas in force, by event name (several Triggers may describe one event)."""

    def __init__(self, triggers: Iterable[Trigger] = ()) -> None:
        self._by_event: dict[str, list[Trigger]] = {}
        for trigger in triggers:
            self._by_event.setdefault(trigger.event, []).append(trigger)

    @classmethod
    def from_documents(cls, documents: Iterable[tuple[str, Mapping[str, Any]]]) -> TriggerSchemas:
        triggers: list[Trigger] = []
        for name, document in documents:
            try:
                parsed = parse_document({"kind": "Trigger", "name": name, **document})
            except DocumentError as exc:
                log.warning("trigger ignored: not a valid Trigger document", trigger=name,
                            error=str(exc))  # fmt: skip
                continue
            if isinstance(parsed, Trigger):
                triggers.append(parsed)
        return cls(triggers)

    def __bool__(self) -> bool:
        return bool(self._by_event)

    def violations(self, event: str | None, properties: dict[str, Any]) -> list[str]:
        if event is None:
            return []
        triggers = self._by_event.get(event)
        if not triggers:
            return []
        return [p for trigger in triggers for p in trigger.violations(properties)]
