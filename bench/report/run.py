"""The whole proof as one Markdown report: every end-to-end measurement, the fault runs on one
node and scaled out, the soak, and the engine benches, with the command and the commit that
produced each figure.

    uv run python bench/report/run.py                        # everything (about an hour)
    uv run python bench/report/run.py --quick                # shorter runs (about 20 minutes)
    uv run python bench/report/run.py --only faults,cluster  # some parts
    uv run python bench/report/run.py --render-only          # rewrite the report from the JSON

Each part runs as its own process and leaves its JSON (and its printed output) in ``--dir``
(default ``bench/report/out``); the report is written to ``--dir``/report.md. A part that fails
is reported as failed with the end of its output, and the others still run. The exit code is
non-zero when a part failed or a fault run did not pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
E2E = "bench/e2e/run.py"


@dataclass(frozen=True)
class Part:
    name: str
    title: str
    argv: list[str]
    quick: list[str]
    json: bool = True
    """The part's JSON is an end-to-end report (tables); else its printed output is shown."""
    out: bool = True
    """The part takes ``--out FILE`` for its JSON."""


FAULTS = "--faults --rate 30 --kills 2 --within 5 --pause 3"
SHORT = "--within 5 --pause 3"
PARTS = [
    Part("ladder", "Highest rate that keeps up (p99 event->email < 500 ms, every send right)",
         f"{E2E} --ladder --seconds 60 --ladder-steps 2".split(),
         f"{E2E} --ladder --seconds 20 --ladder-steps 1 {SHORT}".split()),
    Part("full-speed", "As fast as ingest accepts",
         f"{E2E} --carts 20000".split(), f"{E2E} --carts 5000 {SHORT}".split()),
    Part("faults", "Fault run, one NATS server: each service killed twice, NATS, PostgreSQL once",
         f"{E2E} {FAULTS} --seconds 90".split(), f"{E2E} {FAULTS} --seconds 60".split()),
    Part("cluster", "Fault run scaled out: 3 NATS nodes (R3), 2 matchers, 2 dispatchers; the "
         "inputs leader node and each replica killed",
         f"{E2E} --cluster {FAULTS} --seconds 90".split(),
         f"{E2E} --cluster {FAULTS} --kills 1 --seconds 60".split()),
    Part("soak", "Soak at half the sustained rate", f"{E2E} --soak 30m --rate 75".split(),
         f"{E2E} --soak 5m --rate 75 --idle-seconds 0".split()),
    Part("parked", "1,000,000 instances waiting, the whole system up; 100,000 come due in 10 s",
         ["bench/e2e/parked.py"], ["bench/e2e/parked.py", "--total", "100000", "--due", "20000"],
         json=False),
    Part("timers", "Scheduler: 1,000,000 timers waiting, 100,000 due within 10 s",
         ["bench/engine/timers.py"],
         ["bench/engine/timers.py", "--total", "200000", "--due", "50000"], json=False,
         out=False),
    Part("matcher", "Matcher alone: backlog drain and steady rate", ["bench/engine/matcher.py"],
         ["bench/engine/matcher.py", "--backlog", "5000"], json=False, out=False),
]  # fmt: skip


def run_part(part: Part, argv: list[str], folder: Path) -> dict[str, Any]:
    out = folder / f"{part.name}.json"
    log = folder / f"{part.name}.log"
    command = [sys.executable, *argv, *(["--out", str(out)] if part.out else [])]
    print(f"report | {part.name}: {' '.join(argv)}", flush=True)
    started = time.monotonic()
    with log.open("wb") as sink:
        code = subprocess.call(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    meta = {
        "argv": argv,
        "exit_code": code,
        "seconds": time.monotonic() - started,
        "commit": commit(),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (folder / f"{part.name}.meta.json").write_text(json.dumps(meta, indent=2))
    print(f"report | {part.name}: exit {code} after {meta['seconds']:.0f} s", flush=True)
    return meta


def commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (result.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else "")


# ---- rendering -----------------------------------------------------------------------------------


def ms(p: dict[str, float] | None, key: str = "p99") -> str:
    return "-" if not p else f"{p[key] * 1000:,.0f}"


def run_rows(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| carts | offered | accepted ev/s | kept up carts/s | accept p99 ms"
        " | event→email p50 / p99 ms | SMS late p99 ms | push late p99 ms | correct"
        " | CPU ms/cart | PG xacts/cart |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        offered = "full speed" if r["offered_rate"] is None else f"{r['offered_rate']:g}/s"
        wrong = ", ".join(f"{k} {v['count']}" for k, v in r["problems"].items() if v["count"])
        lines.append(
            f"| {r['carts']:,} | {offered} | {r['events_per_s_accepted']:,.0f} | "
            f"{r['carts_per_s_kept_up']:,.0f} | {ms(r['accept_latency_s'])} | "
            f"{ms(r['event_to_email_s'], 'p50')} / {ms(r['event_to_email_s'])} | "
            f"{ms(r['sms_lateness_s'])} | {ms(r['push_lateness_s'])} | "
            f"{'yes' if r['correct'] else 'NO: ' + wrong} | {r['cpu_ms_per_cart']:.1f} | "
            f"{r['postgres']['transactions_per_cart']:.1f} |"
        )
    return lines


def resources(r: dict[str, Any]) -> list[str]:
    names = sorted(r["cpu_s"], key=lambda n: -r["cpu_s"][n])
    return [
        "| process | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| CPU s | " + " | ".join(f"{r['cpu_s'][n]:.1f}" for n in names) + " |",
        "| peak MB | " + " | ".join(f"{r['peak_mb'].get(n, 0):.0f}" for n in names) + " |",
    ]


def faults_table(r: dict[str, Any]) -> list[str]:
    lines = [
        "| +s | SIGKILL | back after | partitions owned again | longest gaps: accepts / sends |",
        "|---|---|---|---|---|",
    ]
    for f in r.get("faults", []):
        back = "never" if f["back_after_s"] is None else f"{f['back_after_s']:.2f} s"
        owned = f.get("partitions_owned_after_s")
        lines.append(
            f"| {f['offset_s']:.1f} | {f['target']} | {back} | "
            f"{'-' if owned is None else f'{owned:.2f} s'} | "
            f"{f['accept_gap_s']:.2f} s / {f['send_gap_s']:.2f} s |"
        )
    late = r.get("after_late_reaction", {}).get("count", 0)
    verdict = "PASSED" if r.get("fault_run_passed") else "FAILED"
    problems = ", ".join(f"{k} {v['count']}" for k, v in r["problems"].items())
    dups = r.get("duplicate_delivery_ids", [])
    same_key = all(len(set(d["delivery_ids"])) == 1 for d in dups)
    lines += [
        "",
        f"**Fault run {verdict}**: {problems}; duplicates "
        f"{len(dups)} (each repeating one delivery id: {same_key}); "
        f"follow-ups after a reaction Cairn accepted only after the wait ended: {late}; "
        f"dead letters {r.get('dead_letters', 0)}.",
    ]
    return lines


def soak_table(r: dict[str, Any]) -> list[str]:
    rows = r.get("per_minute") or []
    if not rows:
        return []
    names = sorted(rows[-1]["rss_mb"])
    lines = [
        "| minute | carts | event→email p50 ms | p99 ms | "
        + " | ".join(f"{n} MB" for n in names)
        + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for row in rows:
        lat = row["event_to_email_s"]
        rss = " | ".join(f"{row['rss_mb'].get(n, 0):.0f}" for n in names)
        lines.append(
            f"| {row['minute']} | {row['carts']:,} | {ms(lat, 'p50')} | {ms(lat)} | {rss} |"
        )
    slope = r["drift"]["rss_mb_per_minute"]
    lines += [
        "",
        "RSS growth after warm-up (least squares, MB per minute): "
        + ", ".join(f"{k} {v:+.2f}" for k, v in slope.items())
        + ".",
    ]
    return lines


def render(folder: Path, parts: list[Part]) -> str:
    out = [
        "# Cairn end to end: the report",
        "",
        f"Machine: {os.cpu_count()} cores, {memory_gib():.0f} GiB, {platform.platform()}; every "
        "process (the four services, NATS, PostgreSQL, the providers, the customers and the "
        "load client) on this one machine, all traffic on 127.0.0.1. Written by "
        "`uv run python bench/report/run.py`; each section names the command and the commit.",
    ]
    for part in parts:
        meta_file = folder / f"{part.name}.meta.json"
        if not meta_file.exists():
            continue
        meta = json.loads(meta_file.read_text())
        out += [
            "",
            f"## {part.title}",
            "",
            f"`uv run python {' '.join(meta['argv'])}` at {meta['commit']}, "
            f"{meta['finished']}, {meta['seconds']:.0f} s.",
        ]
        data = folder / f"{part.name}.json"
        if meta["exit_code"] != 0 and not (part.json and data.exists()):
            tail = (folder / f"{part.name}.log").read_text(errors="replace")[-3000:]
            out += ["", f"**Failed** (exit {meta['exit_code']}):", "", "```", tail, "```"]
            continue
        if not part.json:
            text = (folder / f"{part.name}.log").read_text(errors="replace")
            out += ["", "```", text.strip()[-6000:], "```"]
            continue
        report = json.loads(data.read_text())
        for session in report["sessions"]:
            runs = session["runs"]
            if idle := session.get("idle_cores"):
                each = ", ".join(f"{k} {100 * v:.1f}" for k, v in idle.items())
                out += [
                    "",
                    f"Idle before the load: {100 * sum(idle.values()):.1f} % of one core ({each}).",
                ]
            out += ["", f"JetStream sync `{session['jetstream_sync']}`.", "", *run_rows(runs)]
            last = runs[-1]
            out += ["", "Resources of the last run:", "", *resources(last)]
            if "faults" in last:
                out += ["", *faults_table(last)]
            out += soak_table(last)
    return "\n".join(out) + "\n"


def memory_gib() -> float:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter runs of every part")
    p.add_argument(
        "--only",
        type=lambda v: v.split(","),
        help="parts: " + ", ".join(part.name for part in PARTS),
    )
    p.add_argument("--dir", default=str(ROOT / "bench" / "report" / "out"))
    p.add_argument("--render-only", action="store_true", help="only rewrite report.md")
    args = p.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [part for part in PARTS if not args.only or part.name in args.only]
    unknown = set(args.only or []) - {part.name for part in PARTS}
    if unknown:
        raise SystemExit(f"unknown parts: {', '.join(sorted(unknown))}")
    failed = []
    if not args.render_only:
        for part in chosen:
            meta = run_part(part, part.quick if args.quick else part.argv, folder)
            if meta["exit_code"] != 0:
                failed.append(part.name)
    report = folder / "report.md"
    report.write_text(render(folder, PARTS))
    print(f"report | written to {report}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
