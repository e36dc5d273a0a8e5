"""Reading a ``kind: Journey`` document (structure only; references are checked at publish)."""

from __future__ import annotations

import re
from typing import Any

from cairn_common.rates import RateError, parse_rate
from cairn_journey.condition_reader import ConditionReader, plain, valid_path
from cairn_journey.model import (
    WEEKDAYS,
    Awaited,
    Branch,
    BranchStep,
    Case,
    Entry,
    ExitRule,
    Goal,
    Journey,
    Repeat,
    RepeatAfter,
    Send,
    SendStep,
    SplitPath,
    SplitStep,
    Step,
    TriggerSpec,
    Update,
    UpdateStep,
    Wait,
    WaitFor,
    WaitForStep,
    WaitStep,
    Weekday,
    Winner,
)
from cairn_journey.reader import join

STEP_KINDS = ("send", "wait", "wait_for", "branch", "split", "update")
SPLIT_OPTIONS = ("sticky", "winner")
"""Step-level keys only a ``split`` step takes."""
UPDATE_KEYS = ("set", "unset", "increment")
MAX_TRAIT_NAME = 255
SINGLE_KEYS = ("event", "of", "match", "where", "matched")
WAIT_FOR_KEYS = (*SINGLE_KEYS, "within", "events", "reset_on", "timed_out", "not_sent")
PATH_KEYS = ("name", "event", "of", "match", "where", "steps")
RESET_KEYS = ("event", "of", "match", "where")
MAX_PATHS = 10
STEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TIME_OF_DAY = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
FULL_DAYS = {
    "mon": "monday",
    "tue": "tuesday",
    "wed": "wednesday",
    "thu": "thursday",
    "fri": "friday",
    "sat": "saturday",
    "sun": "sunday",
}


class JourneyReader(ConditionReader):
    def __init__(self, source: str, line: int | None = None) -> None:
        super().__init__(source, line)
        self.step_ids: dict[str, str] = {}
        self.unique_by: str | None = None
        self.has_goal = False

    def journey(self, data: dict[str, Any]) -> Journey | None:
        self.keys(
            data,
            "",
            allowed=(
                "kind",
                "name",
                "title",
                "description",
                "trigger",
                "entry",
                "exit",
                "goal",
                "holdout",
                "rate_limit",
                "steps",
            ),
            required=("name", "trigger", "steps"),
        )
        name = self.name(data, "name", "")
        title = self.string(data, "title", "")
        description = self.string(data, "description", "")
        trigger = self.trigger(data.get("trigger"), "trigger", self.line_in(data, "trigger"))
        entry = self.entry(data.get("entry"), "entry", self.line_in(data, "entry"))
        exits = self.exits(data.get("exit"), "exit", self.line_in(data, "exit"))
        goal = None
        if data.get("goal") is not None:
            goal = self.goal(data["goal"], "goal", self.line_in(data, "goal"))
        holdout = self.holdout(data, goal)
        rate_limit = self.rate_limit(data, "rate_limit", "")
        self.has_goal = data.get("goal") is not None
        steps = self.steps(data.get("steps"), "steps", self.line_in(data, "steps"), frozenset())
        if data.get("steps") == []:
            self.problem("steps", "a journey needs at least one step", self.line_in(data, "steps"))
        if self.problems or name is None or trigger is None or entry is None:
            return None
        return Journey(
            name=name,
            title=title,
            description=description,
            trigger=trigger,
            entry=entry,
            exit=exits,
            goal=goal,
            holdout=holdout,
            rate_limit=rate_limit,
            steps=steps,
        )

    def rate_limit(self, data: dict[str, Any], key: str, path: str) -> str | None:
        """``500/min`` (kept as written once it reads)."""
        value = data.get(key)
        if value is None:
            return None
        try:
            parse_rate(value)
        except RateError as exc:
            self.problem(join(path, key), str(exc), self.line_in(data, key))
            return None
        return str(value)

    def holdout(self, data: dict[str, Any], goal: Goal | None) -> float | None:
        """``holdout: 10%``: more than 0 and less than 100, and only with a goal to measure."""
        line = self.line_in(data, "holdout")
        percent = self.percent(data.get("holdout"), "holdout", line)
        if percent is None:
            return None
        if not 0 < percent < 100:
            self.problem("holdout", f"{percent:g}% holds out nothing or everyone", line)
            return None
        if goal is None and data.get("goal") is None:
            self.problem("holdout", "a holdout needs a goal: its conversion is the measure", line)
        return percent

    def trigger(self, value: Any, path: str, line: int | None) -> TriggerSpec | None:
        if isinstance(value, str) and value:
            return TriggerSpec(event=value)
        data = self.mapping(value, path, line)
        if data is None:
            return None
        self.keys(data, path, allowed=("event", "where"), required=("event",))
        event = self.string(data, "event", path)
        where = self.conditions(data.get("where"), join(path, "where"), self.line_in(data, "where"))
        return TriggerSpec(event=event, where=where) if event else None

    def entry(self, value: Any, path: str, line: int | None) -> Entry | None:
        if value is None:
            return Entry()
        data = self.mapping(value, path, line)
        if data is None:
            return None
        self.keys(data, path, allowed=("repeat", "unique_by", "start_at", "end_at"))
        repeat = self.repeat(
            data.get("repeat", "always"), join(path, "repeat"), self.line_in(data, "repeat")
        )
        unique_by = self.property_path(data, "unique_by", path)
        self.unique_by = unique_by
        start_at = self.instant(data, "start_at", path)
        end_at = self.instant(data, "end_at", path)
        if start_at and end_at and end_at <= start_at:
            self.problem(
                join(path, "end_at"), "must be after start_at", self.line_in(data, "end_at")
            )
        if repeat is None:
            return None
        return Entry(repeat=repeat, unique_by=unique_by, start_at=start_at, end_at=end_at)

    def repeat(self, value: Any, path: str, line: int | None) -> Repeat | None:
        if value in ("always", "once"):
            return value  # type: ignore[no-any-return]
        if isinstance(value, dict):
            self.keys(value, path, allowed=("after",), required=("after",))
            after = self.duration(value, "after", path)
            return RepeatAfter(after=after) if after is not None else None
        self.problem(
            path, f'expected "always", "once" or {{after: <duration>}}, got {value!r}', line
        )
        return None

    def exits(self, value: Any, path: str, line: int | None) -> tuple[ExitRule, ...]:
        if value is None:
            return ()
        items = self.sequence(value, path, line)
        out: list[ExitRule] = []
        for i, item in enumerate(items or ()):
            item_path = join(path, i)
            data = self.mapping(item, item_path, self.line_in(items, i))
            if data is None:
                continue
            self.keys(data, item_path, allowed=("event", "match", "where"), required=("event",))
            event = self.string(data, "event", item_path)
            match = self.match(data, item_path)
            where = self.conditions(
                data.get("where"), join(item_path, "where"), self.line_in(data, "where")
            )
            if event:
                out.append(ExitRule(event=event, match=match, where=where))
        return tuple(out)

    def goal(self, value: Any, path: str, line: int | None) -> Goal | None:
        data = self.mapping(value, path, line)
        if data is None:
            return None
        self.keys(data, path, allowed=("event", "match", "where", "target"), required=("event",))
        event = self.string(data, "event", path)
        match = self.match(data, path)
        where = self.conditions(data.get("where"), join(path, "where"), self.line_in(data, "where"))
        target = self.percent(
            data.get("target"), join(path, "target"), self.line_in(data, "target")
        )
        return Goal(event=event, match=match, where=where, target=target) if event else None

    def match(self, data: dict[str, Any], path: str) -> str | None:
        match = self.property_path(data, "match", path)
        if match is not None and self.unique_by is None:
            self.problem(
                join(path, "match"),
                "needs entry.unique_by (the value it is compared with)",
                self.line_in(data, "match"),
            )
        return match

    # ------------------------------------------------------------------ steps

    def steps(
        self, value: Any, path: str, line: int | None, sends_before: frozenset[str]
    ) -> tuple[Step, ...]:
        if value is None:
            return ()
        items = self.sequence(value, path, line)
        out: list[Step] = []
        visible = set(sends_before)
        for i, item in enumerate(items or ()):
            step = self.step(item, join(path, i), self.line_in(items, i), frozenset(visible))
            if step is not None:
                out.append(step)
                if isinstance(step, SendStep):
                    visible.add(step.id)
        return tuple(out)

    def step(
        self, value: Any, path: str, line: int | None, sends_before: frozenset[str]
    ) -> Step | None:
        data = self.mapping(value, path, line)
        if data is None:
            return None
        self.keys(data, path, allowed=("id", "name", *STEP_KINDS, *SPLIT_OPTIONS), required=("id",))
        step_id = self.step_id(data, path)
        kinds = [k for k in STEP_KINDS if k in data]
        if not kinds:
            self.problem(path, f"a step needs one of {', '.join(STEP_KINDS)}", line)
            return None
        if len(kinds) > 1:
            self.problem(path, f"a step does one thing; found {' and '.join(kinds)}", line)
            return None
        kind = kinds[0]
        for option in SPLIT_OPTIONS:
            if option in data and kind != "split":
                self.problem(
                    join(path, option), "only a split step takes it", self.line_in(data, option)
                )
        body, body_path, body_line = data[kind], join(path, kind), self.line_in(data, kind)
        if kind == "send":
            send = self.send(body, body_path, body_line)
            return SendStep(id=step_id, send=send) if step_id and send else None
        if kind == "wait":
            wait = self.wait(body, body_path, body_line)
            return WaitStep(id=step_id, wait=wait) if step_id and wait else None
        if kind == "wait_for":
            wait_for = self.wait_for(body, body_path, body_line, sends_before)
            return WaitForStep(id=step_id, wait_for=wait_for) if step_id and wait_for else None
        if kind == "branch":
            branch = self.branch(body, body_path, body_line, sends_before)
            return BranchStep(id=step_id, branch=branch) if step_id and branch else None
        if kind == "update":
            update = self.update(body, body_path, body_line)
            return UpdateStep(id=step_id, update=update) if step_id and update else None
        split = self.split(body, body_path, body_line, sends_before)
        sticky = self.boolean(data, "sticky", path)
        winner = self.winner(data.get("winner"), join(path, "winner"), self.line_in(data, "winner"))
        if not (step_id and split):
            return None
        return SplitStep(id=step_id, split=split, sticky=bool(sticky), winner=winner)

    def winner(self, value: Any, path: str, line: int | None) -> Winner | None:
        if value is None:
            return None
        data = self.mapping(value, path, line)
        if data is None:
            return None
        self.keys(data, path, allowed=("after", "sample"))
        after = self.duration(data, "after", path) if "after" in data else None
        sample = data.get("sample")
        if sample is not None and (
            isinstance(sample, bool) or not isinstance(sample, int) or sample < 1
        ):
            self.problem(
                join(path, "sample"),
                f"{sample!r} is not a number of instances (1 or more)",
                self.line_in(data, "sample"),
            )
            sample = None
        if not self.has_goal:
            self.problem(path, "choosing a winner needs a goal: its conversion decides", line)
        if after is None and sample is None:
            if "after" not in data and "sample" not in data:
                self.problem(
                    path, "a winner needs after (a duration), sample (a count) or both", line
                )
            return None
        return Winner(after=after, sample=sample)

    def update(self, value: Any, path: str, line: int | None) -> Update | None:
        data = self.mapping(value, path, line)
        if data is None:
            return None
        self.keys(data, path, allowed=UPDATE_KEYS)
        if not any(data.get(k) for k in UPDATE_KEYS):
            self.problem(path, "an update needs at least one of set, unset or increment", line)
            return None
        seen: dict[str, str] = {}

        def trait(name: Any, here: str, op: str) -> bool:
            if not isinstance(name, str) or not name.strip() or len(name) > MAX_TRAIT_NAME:
                self.problem(here, f"{name!r} is not a trait name", line)
                return False
            if name in seen:
                self.problem(
                    here, f'"{name}" is already in {seen[name]}; one change per trait', line
                )
                return False
            seen[name] = op
            return True

        sets: dict[str, Any] = {}
        for name, item in (
            self.mapping(data.get("set") or {}, join(path, "set"), line) or {}
        ).items():
            here = join(join(path, "set"), name)
            if not trait(name, here, "set"):
                continue
            if isinstance(item, dict) and set(item) == {"from"}:
                source = item["from"]
                if not isinstance(source, str) or not valid_path(source):
                    self.problem(join(here, "from"), f"{source!r} is not a property path", line)
                    continue
                sets[name] = {"from": source}
            else:
                sets[name] = plain(item)
        increments: dict[str, int | float] = {}
        for name, by in (
            self.mapping(data.get("increment") or {}, join(path, "increment"), line) or {}
        ).items():
            here = join(join(path, "increment"), name)
            if not trait(name, here, "increment"):
                continue
            if isinstance(by, bool) or not isinstance(by, int | float):
                self.problem(here, f"{by!r} is not a number to add", line)
                continue
            increments[name] = by
        unset: list[str] = []
        items = self.sequence(data.get("unset") or [], join(path, "unset"), line) or []
        for i, name in enumerate(items):
            if trait(name, join(join(path, "unset"), i), "unset"):
                unset.append(name)
        return Update(set=sets, unset=tuple(unset), increment=increments)

    def step_id(self, data: dict[str, Any], path: str) -> str | None:
        value = data.get("id")
        if value is None:
            return None
        line = self.line_in(data, "id")
        if not isinstance(value, str) or not STEP_ID.fullmatch(value):
            self.problem(
                join(path, "id"),
                f"{value!r} is not a valid step id (letters, digits, '-', '_', '.'; at most 64)",
                line,
            )
            return None
        if value in self.step_ids:
            self.problem(
                join(path, "id"),
                f'"{value}" is already the id of '
                f"{self.step_ids[value]}; step ids are unique in a journey",
                line,
            )
            return None
        self.step_ids[value] = path
        return value

    def send(self, value: Any, path: str, line: int | None) -> Send | None:
        data = self.mapping(value, path, line)
        if data is None:
            return None
        self.keys(
            data, path, allowed=("channel", "destination", "template", "to", "outcome_within")
        )
        channel = self.name(data, "channel", path)
        destination = self.name(data, "destination", path)
        template = self.name(data, "template", path)
        to = self.property_path(data, "to", path)
        outcome_within = self.duration(data, "outcome_within", path)
        if ("channel" in data) == ("destination" in data):
            self.problem(path, "a send names exactly one of channel or destination", line)
            return None
        if "channel" in data and "template" not in data:
            self.problem(join(path, "template"), "required but missing", line)
        return Send(
            channel=channel,
            destination=destination,
            template=template,
            to=to,
            outcome_within=outcome_within,
        )

    def wait(self, value: Any, path: str, line: int | None) -> Wait | None:
        if isinstance(value, str):
            duration = self.duration_value(value, path, line)
            return Wait(duration=duration) if duration else None
        data = self.mapping(value, path, line)
        if data is None:
            return None
        self.keys(data, path, allowed=("duration", "until_time", "on", "until", "offset"))
        forms = [k for k in ("duration", "until_time", "until") if k in data]
        if len(forms) != 1:
            self.problem(path, "a wait has exactly one of duration, until_time or until", line)
            return None
        if "offset" in data and "until" not in data:
            self.problem(join(path, "offset"), "only goes with until", self.line_in(data, "offset"))
        duration = self.duration(data, "duration", path)
        until_time = self.string(data, "until_time", path)
        if until_time is not None and not TIME_OF_DAY.fullmatch(until_time):
            self.problem(
                join(path, "until_time"),
                f'"{until_time}" is not a time of day (HH:MM)',
                self.line_in(data, "until_time"),
            )
            until_time = None
        until = self.property_path(data, "until", path)
        offset = self.duration(data, "offset", path, signed=True)
        days = self.weekdays(data, path)
        if "on" in data and "until_time" not in data:
            self.problem(join(path, "on"), "only goes with until_time", self.line_in(data, "on"))
        if not (duration or until_time or until) or days is None:
            return None
        return Wait(duration=duration, until_time=until_time, on=days, until=until, offset=offset)

    def weekdays(self, data: dict[str, Any], path: str) -> tuple[Weekday, ...] | None:
        if data.get("on") is None:
            return ()
        here, line = join(path, "on"), self.line_in(data, "on")
        items = self.sequence(data["on"], here, line)
        if items is None:
            return None
        days: list[Weekday] = []
        for item in items:
            text = item.lower() if isinstance(item, str) else ""
            day = next((d for d in WEEKDAYS if text in (d, FULL_DAYS[d])), None)
            if day is None:
                self.problem(here, f"{item!r} is not a day (one of {', '.join(WEEKDAYS)})", line)
                return None
            days.append(day)
        return tuple(days)

    def wait_for(
        self, value: Any, path: str, line: int | None, sends_before: frozenset[str]
    ) -> WaitFor | None:
        data = self.mapping(value, path, line)
        if data is None:
            return None
        self.keys(data, path, allowed=WAIT_FOR_KEYS, required=("within",))
        within = self.duration(data, "within", path)
        single = [k for k in SINGLE_KEYS if k in data]
        if ("event" in data) == ("events" in data):
            self.problem(path, "a wait_for has exactly one of event or events", line)
            return None
        if "events" in data:
            for key in single:
                self.problem(
                    join(path, key),
                    "goes on each of events (a path has its own event, of, match, where, steps)",
                    self.line_in(data, key),
                )
            events = self.awaited_list(data, "events", path, sends_before, with_steps=True)
            if events is not None and not events:
                self.problem(join(path, "events"), "needs at least one event", line)
            if events and len(events) > MAX_PATHS:
                self.problem(
                    join(path, "events"), f"{len(events)} paths; the limit is {MAX_PATHS}", line
                )
            first: Awaited | None = None
        else:
            first = self.awaited(data, path, line, sends_before, steps_key="matched")
            events = ()
        reset_on = self.awaited_list(data, "reset_on", path, sends_before, with_steps=False)
        timed_out = self.steps(
            data.get("timed_out"),
            join(path, "timed_out"),
            self.line_in(data, "timed_out"),
            sends_before,
        )
        not_sent = self.steps(
            data.get("not_sent"),
            join(path, "not_sent"),
            self.line_in(data, "not_sent"),
            sends_before,
        )
        paths = events if first is None else (first,)
        if "not_sent" in data and not any(a.of for a in paths or ()):
            self.problem(
                join(path, "not_sent"),
                "only goes with of (the send whose message may not have been sent)",
                self.line_in(data, "not_sent"),
            )
        if within is None or (first is None and not events) or events is None:
            return None
        if first is not None:
            return WaitFor(
                within=within,
                event=first.event,
                of=first.of,
                match=first.match,
                where=first.where,
                matched=first.steps,
                reset_on=reset_on or (),
                timed_out=timed_out,
                not_sent=not_sent,
            )
        return WaitFor(
            within=within,
            events=events,
            reset_on=reset_on or (),
            timed_out=timed_out,
            not_sent=not_sent,
        )

    def awaited_list(
        self,
        data: dict[str, Any],
        key: str,
        path: str,
        sends_before: frozenset[str],
        *,
        with_steps: bool,
    ) -> tuple[Awaited, ...] | None:
        if data.get(key) is None:
            return ()
        here, line = join(path, key), self.line_in(data, key)
        items = self.sequence(data[key], here, line)
        if items is None:
            return None
        out: list[Awaited] = []
        names: set[str] = set()
        for i, item in enumerate(items):
            item_path, item_line = join(here, i), self.line_in(items, i)
            mapping = self.mapping(item, item_path, item_line)
            if mapping is None:
                continue
            self.keys(
                mapping,
                item_path,
                allowed=PATH_KEYS if with_steps else RESET_KEYS,
                required=("event",),
            )
            awaited = self.awaited(
                mapping,
                item_path,
                item_line,
                sends_before,
                steps_key="steps" if with_steps else None,
            )
            if awaited is None:
                continue
            if awaited.name is not None:
                if awaited.name in names:
                    self.problem(
                        join(item_path, "name"),
                        f'"{awaited.name}" names another path too; path names are unique',
                        self.line_in(mapping, "name"),
                    )
                names.add(awaited.name)
            out.append(awaited)
        return tuple(out)

    def awaited(
        self,
        data: dict[str, Any],
        path: str,
        line: int | None,
        sends_before: frozenset[str],
        *,
        steps_key: str | None,
    ) -> Awaited | None:
        event = self.string(data, "event", path)
        of = self.string(data, "of", path)
        if of is not None and of not in sends_before:
            self.problem(
                join(path, "of"),
                f'"{of}" is not an earlier send step on this path',
                self.line_in(data, "of"),
            )
        match = self.match(data, path)
        if of is not None and match is not None:
            self.problem(path, "use of or match, not both", line)
        where = self.conditions(data.get("where"), join(path, "where"), self.line_in(data, "where"))
        steps: tuple[Step, ...] = ()
        if steps_key is not None:
            steps = self.steps(
                data.get(steps_key),
                join(path, steps_key),
                self.line_in(data, steps_key),
                sends_before,
            )
        name = self.string(data, "name", path) if steps_key == "steps" else None
        if not event:
            return None
        return Awaited(event=event, of=of, match=match, where=where, steps=steps, name=name)

    def branch(
        self, value: Any, path: str, line: int | None, sends_before: frozenset[str]
    ) -> Branch | None:
        data = self.mapping(value, path, line)
        if data is None:
            return None
        self.keys(data, path, allowed=("cases", "otherwise"), required=("cases",))
        cases_path = join(path, "cases")
        items = self.sequence(data.get("cases", []), cases_path, self.line_in(data, "cases"))
        if items is not None and not items and "cases" in data:
            self.problem(
                cases_path, "a branch needs at least one case", self.line_in(data, "cases")
            )
        cases: list[Case] = []
        for i, item in enumerate(items or ()):
            case_path = join(cases_path, i)
            case = self.mapping(item, case_path, self.line_in(items, i))
            if case is None:
                continue
            self.keys(case, case_path, allowed=("name", "when", "steps"), required=("when",))
            when = self.conditions(
                case.get("when"), join(case_path, "when"), self.line_in(case, "when")
            )
            steps = self.steps(
                case.get("steps"),
                join(case_path, "steps"),
                self.line_in(case, "steps"),
                sends_before,
            )
            cases.append(Case(when=when, steps=steps, name=self.string(case, "name", case_path)))
        otherwise = self.steps(
            data.get("otherwise"),
            join(path, "otherwise"),
            self.line_in(data, "otherwise"),
            sends_before,
        )
        return Branch(cases=tuple(cases), otherwise=otherwise)

    def split(
        self, value: Any, path: str, line: int | None, sends_before: frozenset[str]
    ) -> tuple[SplitPath, ...] | None:
        items = self.sequence(value, path, line)
        if items is None:
            return None
        if len(items) < 2:
            self.problem(path, "a split needs at least two paths", line)
        paths: list[SplitPath] = []
        total = 0.0
        for i, item in enumerate(items):
            item_path = join(path, i)
            data = self.mapping(item, item_path, self.line_in(items, i))
            if data is None:
                continue
            self.keys(data, item_path, allowed=("name", "percent", "steps"), required=("percent",))
            percent = self.percent(
                data.get("percent"), join(item_path, "percent"), self.line_in(data, "percent")
            )
            steps = self.steps(
                data.get("steps"),
                join(item_path, "steps"),
                self.line_in(data, "steps"),
                sends_before,
            )
            if percent is not None:
                total += percent
                paths.append(
                    SplitPath(
                        percent=percent, steps=steps, name=self.string(data, "name", item_path)
                    )
                )
        if len(paths) == len(items) and items and abs(total - 100) > 1e-9:
            self.problem(path, f"percentages add up to {total:g}%, not 100%", line)
        return tuple(paths)
