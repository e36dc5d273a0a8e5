"""How ``cairn stats`` prints a journey's funnel: totals, then each step, then the series."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

STEP_COUNTERS = (("reached", "reached"), ("matched", "matched"), ("timed_out", "timed out"))
SEND_COLUMNS = (
    ("requested", "requested"),
    ("sent", "sent"),
    ("opened", "opened"),
    ("clicked", "clicked"),
    ("skipped", "skipped"),
    ("failed", "failed"),
)
SEND_OTHER = ("bounced", "suppressed", "deferred", "dropped", "dead_lettered", "unsubscribed")
HIDDEN = {"send_requested", "skipped:no_address"}
"""Step counters the send columns already show."""
SERIES = ("entered", "completed", "converted", "sent", "opened", "clicked")


def _with_rate(n: int, rate: float | None) -> str:
    return f"{n} ({rate:g}%)" if rate is not None and n else str(n)


def _step_row(step: dict[str, Any]) -> list[Any]:
    counters = step["counters"]
    sends = step.get("sends")
    row: list[Any] = [step["step_id"], step["kind"] or "(other version)", counters.get("reached")]
    if sends is None:
        row += [None] * len(SEND_COLUMNS)
    else:
        values = {key: sends.get(key, 0) for key, _ in SEND_COLUMNS}
        values["opened"] = _with_rate(values["opened"], sends.get("open_rate"))
        values["clicked"] = _with_rate(values["clicked"], sends.get("click_rate"))
        row += [values[key] for key, _ in SEND_COLUMNS]
    row += [counters.get(key) for key, _ in STEP_COUNTERS[1:]]
    known = {key for key, _ in STEP_COUNTERS} | HIDDEN
    shown_apart = ("holdout:", "split:", "winner:") if step.get("paths") else ("holdout:",)
    other = [
        f"{k} {v}"
        for k, v in sorted(counters.items())
        if k not in known and not k.startswith(shown_apart)
    ]
    if sends is not None:
        other += [f"{k.replace('_', ' ')} {sends[k]}" for k in SEND_OTHER if sends.get(k)]
        if sends.get("rate_limited"):
            delay = sends.get("rate_limit_delay_seconds")
            other.append(f"rate limited {sends['rate_limited']} (held {delay:g} s on average)")
    return [*row, ", ".join(other) or None]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:g}%"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _print_holdout(h: dict[str, Any]) -> None:
    share = f" ({h['percent']:g}% of entries)" if h.get("percent") is not None else ""
    print(
        f"holdout{share}: entered {h['entered']}, converted {h['converted']} "
        f"({_pct(h['conversion_rate'])}) vs journey {h['treated_converted']}/"
        f"{h['treated_entered']} ({_pct(h['treated_rate'])})"
    )
    if h.get("lift") is not None:
        relative = f", {h['relative_lift']:+g}%" if h.get("relative_lift") is not None else ""
        print(f"lift: {h['lift']:+g} points{relative} (p = {_p(h.get('p_value'))})")
    else:
        print("lift: - (no conversions to compare yet)")


def _print_experiment(
    step: dict[str, Any], table: Callable[[Sequence[Sequence[Any]], Sequence[str]], None]
) -> None:
    print()
    print(f"experiment {step['step_id']}:")
    rows = [
        [
            ("* " if path.get("winner") else "") + path["name"],
            f"{path['percent']:g}%",
            path["entered"],
            path["sends"],
            path["converted"],
            _pct(path.get("conversion_rate")),
            _p(path.get("p_value")),
        ]
        for path in step["paths"]
    ]
    table(rows, ["path", "share", "entered", "sends", "converted", "conversion", "p vs first"])
    winner = step.get("winner")
    if winner and winner.get("path") is not None:
        when = str(winner.get("decided_at") or "").replace("T", " ")[:19]
        print(f"winner: {winner['path']} (decided {when}; {winner['reason']})")
    elif winner and winner["waiting_for"]:
        print(f"winner ({winner['rule']}): waiting for " + "; ".join(winner["waiting_for"]))
    elif winner:
        print(f"winner ({winner['rule']}): due; the matcher records it shortly")


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
    holdout = answer.get("holdout")
    if holdout:
        _print_holdout(holdout)
    if answer["steps"]:
        print()
        rows = [_step_row(step) for step in answer["steps"]]
        headers = ["step", "kind", "reached", *(t for _, t in SEND_COLUMNS)]
        table(rows, [*headers, *(t for _, t in STEP_COUNTERS[1:]), "other"])
        for step in answer["steps"]:
            for outcome, reasons in sorted((step.get("sends") or {}).get("reasons", {}).items()):
                listed = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
                print(f"{step['step_id']} {outcome}: {listed}")
        for step in answer["steps"]:
            if step.get("paths"):
                _print_experiment(step, table)
    if answer["series"]:
        print()
        width = 10 if answer["by"] == "day" else 16
        rows = [
            [point["period"].replace("T", " ")[:width]]
            + [point["counters"].get(c, 0) for c in SERIES]
            for point in answer["series"]
        ]
        table(rows, [answer["by"], *SERIES])
