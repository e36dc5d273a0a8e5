"""How ``cairn stats`` prints a journey's funnel: totals, then each step, then the series."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

STEP_COLUMNS = (
    ("reached", "reached"),
    ("send_requested", "sent"),
    ("skipped:no_address", "no address"),
    ("matched", "matched"),
    ("timed_out", "timed out"),
)


def print_stats(
    answer: dict[str, Any], table: Callable[[Sequence[Sequence[Any]], Sequence[str]], None]
) -> None:
    version = f"v{answer['version']}" if answer.get("version") is not None else "all versions"
    print(f"{answer['journey']} ({version})")
    rate = answer.get("conversion_rate")
    conversion = f"{answer['converted']}"
    if rate is not None:
        conversion += f" ({rate:g}%"
        if answer.get("goal_target") is not None:
            verdict = "met" if rate >= answer["goal_target"] else "below"
            conversion += f" vs target {answer['goal_target']:g}%: {verdict}"
        conversion += ")"
    active = answer.get("active")
    print(
        f"entered {answer['entered']}   active {'-' if active is None else active}   "
        f"completed {answer['completed']}   converted {conversion}"
    )
    if answer["exited"]:
        print("exited:  " + ", ".join(f"{k} {v}" for k, v in sorted(answer["exited"].items())))
    skipped = {
        k.split(":", 1)[1]: v
        for k, v in answer["journey_counters"].items()
        if k.startswith("skipped:")
    }
    if skipped:
        print("not entered:  " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    if answer["steps"]:
        print()
        known = {key for key, _ in STEP_COLUMNS}
        rows = []
        for step in answer["steps"]:
            counters = step["counters"]
            other = ", ".join(f"{k} {v}" for k, v in sorted(counters.items()) if k not in known)
            rows.append(
                [step["step_id"], step["kind"]]
                + [counters.get(key) for key, _ in STEP_COLUMNS]
                + [other or None]
            )
        table(rows, ["step", "kind", *(title for _, title in STEP_COLUMNS), "other"])
    if answer["series"]:
        print()
        width = 10 if answer["by"] == "day" else 16
        rows = [
            [point["period"].replace("T", " ")[:width]]
            + [point["counters"].get(c, 0) for c in ("entered", "completed", "converted")]
            for point in answer["series"]
        ]
        table(rows, [answer["by"], "entered", "completed", "converted"])
