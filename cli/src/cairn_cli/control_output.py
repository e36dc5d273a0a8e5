"""What the control-plane commands read (document files, sample JSON) and how they print
(tables, problems, JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cairn_cli.control_client import EXIT_PROBLEMS, CliFailure, problem_line

DOCUMENT_SUFFIXES = (".yaml", ".yml", ".json")


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[show_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def show_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    text = str(value)
    if len(text) >= 19 and text[4:5] == "-" and text[10:11] == "T":
        return text[:19].replace("T", " ")  # ISO timestamps, to the second
    return text


REASON_WIDTH = 60


def print_dead_letters(answer: dict[str, Any]) -> None:
    rows = [
        (d["id"], d["at"], d["stream"], d["subject"], d.get("profile_id"),
         _truncate(d["reason"], REASON_WIDTH))
        for d in answer["dead_letters"]
    ]  # fmt: skip
    print_table(rows, ["id", "when", "source", "subject", "profile", "reason"])
    shown = len(rows)
    if answer.get("next_cursor") is not None:
        print(f"{shown} shown of {answer['total']}; more with --cursor {answer['next_cursor']}")


def print_dead_letter(answer: dict[str, Any]) -> None:
    letter = answer["dead_letter"]
    for key in ("id", "at", "stream", "consumer", "subject", "deliveries", "message_type",
                "profile_id", "message_id", "size", "reason"):  # fmt: skip
        if letter.get(key) is not None:
            print(f"{key.replace('_', ' ') + ':':<15}{show_cell(letter[key])}")
    for name, value in sorted(answer.get("headers", {}).items()):
        print(f"{'header:':<15}{name}: {value}")
    if answer.get("original") is not None:
        print("original:")
        print(json.dumps(answer["original"], indent=2, ensure_ascii=False))
    elif answer.get("original_text") is not None:
        print("original (not JSON):")
        print(answer["original_text"])


def _truncate(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def print_problems(problems: Sequence[dict[str, Any]]) -> None:
    for problem in problems:
        print(f"  {problem_line(problem)}", file=sys.stderr)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# ---- documents from files ------------------------------------------------------------------------


def document_files(paths: Sequence[str]) -> list[Path]:
    """Files named, and every .yaml/.yml/.json file under directories named, in a stable order."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DOCUMENT_SUFFIXES)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise CliFailure(f"{name}: no such file or directory", EXIT_PROBLEMS)
    if not found:
        raise CliFailure(f"no .yaml, .yml or .json files in {', '.join(paths)}", EXIT_PROBLEMS)
    return found


def read_documents(paths: Sequence[str]) -> list[dict[str, str]]:
    out = []
    for path in document_files(paths):
        try:
            out.append({"source": str(path), "text": path.read_text(encoding="utf-8")})
        except (OSError, UnicodeDecodeError) as exc:
            raise CliFailure(f"{path}: cannot read it ({exc})", EXIT_PROBLEMS) from None
    return out


def read_json_file(name: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(Path(name).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliFailure(f"{what} file {name}: {exc.strerror or exc}", EXIT_PROBLEMS) from None
    except json.JSONDecodeError as exc:
        raise CliFailure(f"{what} file {name}: not JSON ({exc})", EXIT_PROBLEMS) from None
    if not isinstance(value, dict):
        raise CliFailure(f"{what} file {name}: expected a JSON object", EXIT_PROBLEMS)
    return value
