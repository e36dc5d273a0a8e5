"""Reading plain data into model structs while collecting every problem with path and line."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from cairn_journey.durations import DurationError, parse_duration
from cairn_journey.located import LocatedList, LocatedMap
from cairn_journey.problems import Problem

NAME = re.compile(r"[^\x00-\x1f/]{1,128}")


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Reader:
    """Collects problems for one document; helpers return ``None`` after reporting one."""

    def __init__(self, source: str, line: int | None = None) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.line = line

    def problem(self, path: str, message: str, line: int | None) -> None:
        self.problems.append(
            Problem(path=path, message=message, source=self.source, line=line or self.line)
        )

    # ------------------------------------------------------------------ structure

    @staticmethod
    def line_in(container: Any, key: str | int) -> int | None:
        if isinstance(container, LocatedMap) and isinstance(key, str):
            return container.line_of(key)
        if isinstance(container, LocatedList) and isinstance(key, int):
            return container.line_of(key)
        return getattr(container, "line", None)

    def mapping(self, value: Any, path: str, line: int | None) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, got {type_name(value)}", line)
            return None
        for key, dup_line in getattr(value, "duplicates", ()):
            self.problem(join(path, key), "duplicate key", dup_line)
        return value

    def sequence(self, value: Any, path: str, line: int | None) -> list[Any] | None:
        if isinstance(value, tuple):  # msgspec.to_builtins output
            return list(value)
        if not isinstance(value, list):
            self.problem(path, f"expected a list, got {type_name(value)}", line)
            return None
        return value

    def keys(
        self,
        data: dict[str, Any],
        path: str,
        *,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> None:
        allowed_set = set(allowed)
        for key in data:
            if key not in allowed_set:
                hint = difflib.get_close_matches(key, sorted(allowed_set), n=1, cutoff=0.6)
                message = "unknown key" + (f'; did you mean "{hint[0]}"?' if hint else "")
                self.problem(join(path, key), message, self.line_in(data, key))
        for key in required:
            if data.get(key) is None:
                self.problem(join(path, key), "required but missing", self.line_in(data, ""))

    # ------------------------------------------------------------------ scalars

    def string(self, data: dict[str, Any], key: str, path: str) -> str | None:
        if key not in data or data[key] is None:
            return None
        value = data[key]
        if not isinstance(value, str) or not value:
            what = "an empty string" if value == "" else type_name(value)
            self.problem(join(path, key), f"expected a string, got {what}", self.line_in(data, key))
            return None
        return value

    def name(self, data: dict[str, Any], key: str, path: str) -> str | None:
        value = self.string(data, key, path)
        if value is not None and not NAME.fullmatch(value):
            self.problem(
                join(path, key),
                f'"{value}" is not a valid name (1-128 characters, no "/")',
                self.line_in(data, key),
            )
            return None
        return value

    def boolean(self, data: dict[str, Any], key: str, path: str) -> bool | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.problem(
                join(path, key),
                f"expected true or false, got {type_name(value)}",
                self.line_in(data, key),
            )
            return None
        return value

    def duration(
        self, data: dict[str, Any], key: str, path: str, *, signed: bool = False
    ) -> timedelta | None:
        if key not in data or data[key] is None:
            return None
        return self.duration_value(data[key], join(path, key), self.line_in(data, key), signed)

    def duration_value(
        self, value: Any, path: str, line: int | None, signed: bool = False
    ) -> timedelta | None:
        text = value if isinstance(value, str) else str(value)
        if isinstance(value, bool) or not isinstance(value, str):
            self.problem(path, f'"{text}" is not a duration', line)
            return None
        try:
            result = parse_duration(value)
        except DurationError as exc:
            self.problem(path, str(exc), line)
            return None
        if not signed and result <= timedelta(0):
            self.problem(path, f'"{value}" must be longer than zero', line)
            return None
        return result

    def instant(self, data: dict[str, Any], key: str, path: str) -> datetime | None:
        value = data.get(key)
        if value is None:
            return None
        parsed = parse_instant(value)
        if parsed is None:
            self.problem(
                join(path, key),
                f'"{value}" is not a date-time (ISO 8601, e.g. 2026-12-01T09:00:00Z)',
                self.line_in(data, key),
            )
        return parsed


def parse_instant(value: Any) -> datetime | None:
    """An ISO-8601 date or date-time; a naive one is taken as UTC. ``None`` if not one."""
    if isinstance(value, datetime):
        result = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            result = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if result.tzinfo is None:
        result = result.replace(tzinfo=UTC)
    return result.astimezone(UTC)
