"""Reading conditions and property paths (shared by every part of a journey document)."""

from __future__ import annotations

import re
from typing import Any

from cairn_journey.conditions import (
    LIST_OPS,
    OPS,
    ORDER_OPS,
    UNARY_OPS,
    AllOf,
    AnyOf,
    Condition,
    ConditionNode,
)
from cairn_journey.reader import Reader, join, type_name

PATH = re.compile(r"[^\s.][^\s]*")
_PERCENT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*")


class ConditionReader(Reader):
    def percent(self, value: Any, path: str, line: int | None) -> float | None:
        if value is None:
            return None
        number: float | None = None
        if isinstance(value, str) and (m := _PERCENT.fullmatch(value)):
            number = float(m.group(1))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        if number is None or not 0 <= number <= 100:
            self.problem(path, f"{value!r} is not a percentage between 0% and 100%", line)
            return None
        return number

    def property_path(self, data: dict[str, Any], key: str, path: str) -> str | None:
        value = self.string(data, key, path)
        if value is not None and not valid_path(value):
            self.problem(
                join(path, key), f'"{value}" is not a property path', self.line_in(data, key)
            )
            return None
        return value

    # ------------------------------------------------------------------ conditions

    def conditions(self, value: Any, path: str, line: int | None) -> tuple[ConditionNode, ...]:
        if value is None:
            return ()
        if isinstance(value, dict):
            node = self.condition(value, path, line)
            return (node,) if node is not None else ()
        items = self.sequence(value, path, line)
        out = []
        for i, item in enumerate(items or ()):
            node = self.condition(item, join(path, i), self.line_in(items, i))
            if node is not None:
                out.append(node)
        return tuple(out)

    def condition(self, value: Any, path: str, line: int | None) -> ConditionNode | None:
        data = self.mapping(value, path, line)
        if data is None:
            return None
        for group in ("all", "any"):
            if group in data:
                self.keys(data, path, allowed=(group,))
                children = self.conditions_list(
                    data[group], join(path, group), self.line_in(data, group)
                )
                return AllOf(all=children) if group == "all" else AnyOf(any=children)
        self.keys(data, path, allowed=("property", "op", "value"), required=("property", "op"))
        prop = self.property_path(data, "property", path)
        op = data.get("op")
        if "op" in data and op not in OPS:
            self.problem(
                join(path, "op"),
                f"unknown operator {op!r} (one of {', '.join(OPS)})",
                self.line_in(data, "op"),
            )
            return None
        if prop is None or op is None:
            return None
        value_path, value_line = join(path, "value"), self.line_in(data, "value")
        cond_value = data.get("value")
        if op in UNARY_OPS:
            if "value" in data:
                self.problem(value_path, f"{op} takes no value", value_line)
        elif "value" not in data:
            self.problem(value_path, f"{op} needs a value", self.line_in(data, ""))
        elif op in LIST_OPS and not isinstance(cond_value, list | tuple):
            self.problem(value_path, f"{op} needs a list, got {type_name(cond_value)}", value_line)
        elif op in ORDER_OPS and (
            isinstance(cond_value, bool) or not isinstance(cond_value, int | float | str)
        ):
            self.problem(
                value_path,
                f"{op} needs a number or a string, got {type_name(cond_value)}",
                value_line,
            )
        elif op == "starts_with" and not isinstance(cond_value, str):
            self.problem(
                value_path, f"starts_with needs a string, got {type_name(cond_value)}", value_line
            )
        return Condition(property=prop, op=op, value=plain(cond_value))

    def conditions_list(self, value: Any, path: str, line: int | None) -> tuple[ConditionNode, ...]:
        if not isinstance(value, list | tuple) or not value:
            self.problem(path, "expected a non-empty list of conditions", line)
            return ()
        return self.conditions(value, path, line)


def valid_path(path: str) -> bool:
    if not PATH.fullmatch(path) or path.endswith(".") or ".." in path:
        return False
    head, _, rest = path.partition(".")
    if head == "profile":
        return bool(rest)
    if head == "event":
        area, _, tail = rest.partition(".")
        return (area in ("properties", "context") and bool(tail)) or rest == "name"
    return True


def plain(value: Any) -> Any:
    """Located containers back to plain ``dict``/``list``."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
