"""Reading documents: the examples validate; every malformed document gets path-and-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from cairn_journey.documents import (
    DocumentError,
    load_documents,
    parse_document,
    parse_text,
    to_document,
)
from cairn_journey.model import Journey, RepeatAfter, Wait, WaitStep

from .support import EXAMPLES

ARCHITECTURE_EXAMPLE = """\
kind: Journey
name: abandoned-cart
title: Abandoned cart reminders
trigger:
  event: Cart Abandoned
  where:
    - {property: cart_value, op: gt, value: 0}
entry: {repeat: always, unique_by: cart_id}
exit:
  - {event: Order Completed, match: cart_id}
goal: {event: Order Completed, match: cart_id, target: 50%}
steps:
  - id: initial-email
    send: {channel: email, template: cart-reminder-email, to: profile.email}
  - id: opened
    wait_for:
      event: Email Opened
      of: initial-email
      within: 1d
      timed_out:
        - id: text-reminder
          send: {channel: sms, template: cart-reminder-sms, to: profile.phone}
        - id: pause
          wait: 1d
        - id: final-push
          send: {channel: push, template: cart-reminder-push, to: profile.push_token}
"""


def test_the_architecture_example_validates_exactly_as_written() -> None:
    result = parse_text(ARCHITECTURE_EXAMPLE, "journeys/cart.yaml")
    assert result.problems == []
    (journey,) = result.documents
    assert isinstance(journey, Journey)
    assert journey.goal is not None
    assert journey.goal.target == 50.0
    assert (EXAMPLES / "journeys" / "abandoned-cart.yaml").read_text() == ARCHITECTURE_EXAMPLE


def test_every_example_document_loads_from_the_directory() -> None:
    result = load_documents([EXAMPLES])
    assert [str(p) for p in result.problems] == []
    kinds = sorted({d.kind for d in result.documents})
    assert kinds == ["Channel", "Destination", "Journey", "Template", "Trigger"]
    assert {d.name for d in result.documents if d.kind == "Journey"} == {
        "abandoned-cart",
        "application-reminders",
    }


def test_a_document_survives_the_round_trip_through_stored_json() -> None:
    for loaded in load_documents([EXAMPLES]).loaded:
        stored = json.loads(json.dumps(to_document(loaded.document)))
        assert parse_document(stored) == loaded.document
        assert parse_document(loaded.raw) == loaded.document
        builtins = {"kind": loaded.document.kind, **msgspec.to_builtins(loaded.document)}
        assert parse_document(builtins) == loaded.document  # tuples are lists too


BAD = [
    (
        "kind: Jouney\nname: x\n",
        ["kind: unknown kind 'Jouney'; did you mean \"Journey\"? (j.yaml:1)"],
    ),
    (
        "name: x\n",
        [
            "kind: required but missing (one of Journey, Template, Trigger, Channel, "
            "Destination) (j.yaml:1)"
        ],
    ),
    (
        "kind: Journey\nname: cart\ntrigger: {event: A}\nsteps:\n  - id: s\n    send: {channel: "
        "email, template: t, to: profile.email}\n  - id: w\n    wait_for:\n      event: Email "
        "Opened\n      of: s\n      within: 1x\n",
        ['steps[1].wait_for.within: "1x" is not a duration (j.yaml:11)'],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps:\n  - {id: a, wait: 1d}\n"
        "  - {id: a, wait: 2d}\n",
        [
            'steps[1].id: "a" is already the id of steps[0]; step ids are unique in a journey '
            "(j.yaml:6)"
        ],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps:\n  - {id: a, wait: 1d}\n  - id: b\n    branch:"
        "\n      cases:\n        - when: [{property: x, op: eq, value: 1}]\n          steps: "
        "[{id: a, wait: 1d}]\n",
        [
            'steps[1].branch.cases[0].steps[0].id: "a" is already the id of steps[0]; step ids are '
            "unique in a journey (j.yaml:10)"
        ],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps:\n  - {id: a, wait: 1d, send: {channel: email, "
        "template: t}}\n",
        ["steps[0]: a step does one thing; found send and wait (j.yaml:5)"],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps:\n  - {id: a, wiat: 1d}\n",
        [
            'steps[0].wiat: unknown key; did you mean "wait"? (j.yaml:5)',
            "steps[0]: a step needs one of send, wait, wait_for, branch, split, update (j.yaml:5)",
        ],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps: []\n",
        ["steps: a journey needs at least one step (j.yaml:4)"],
    ),
    ("kind: Journey\nname: j\ntrigger: A\n", ["steps: required but missing (j.yaml:1)"]),
    (
        "kind: Journey\nname: j\ntrigger: A\nexit: [{event: B, match: id}]\nsteps: [{id: a, wait: "
        "1d}]\n",
        ["exit[0].match: needs entry.unique_by (the value it is compared with) (j.yaml:4)"],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps:\n  - id: s\n    split: [{percent: 50}, "
        "{percent: 40}]\n",
        ["steps[0].split: percentages add up to 90%, not 100% (j.yaml:6)"],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps: [{id: a, wait: 0s}]\n",
        ['steps[0].wait: "0s" must be longer than zero (j.yaml:4)'],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps: [{id: a, wait: {duration: 1d, until_time: "
        "'09:00'}}]\n",
        ["steps[0].wait: a wait has exactly one of duration, until_time or until (j.yaml:4)"],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps: [{id: a, wait: {until_time: '09:00', "
        "on: [mon, someday]}}]\n",
        [
            "steps[0].wait.on: 'someday' is not a day (one of mon, tue, wed, thu, fri, sat, sun) "
            "(j.yaml:4)"
        ],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps: [{id: a, wait: {until_time: '9am'}}]\n",
        ['steps[0].wait.until_time: "9am" is not a time of day (HH:MM) (j.yaml:4)'],
    ),
    (
        "kind: Journey\nname: j\ntrigger: {event: A, where: [{property: x, op: in, value: 3}]}\n"
        "steps: [{id: a, wait: 1d}]\n",
        ["trigger.where[0].value: in needs a list, got a number (j.yaml:3)"],
    ),
    (
        "kind: Journey\nname: j\ntrigger: {event: A, where: [{property: x, op: exists, "
        "value: 3}]}\n"
        "steps: [{id: a, wait: 1d}]\n",
        ["trigger.where[0].value: exists takes no value (j.yaml:3)"],
    ),
    (
        "kind: Journey\nname: j\ntrigger: {event: A, where: [{property: x, op: gtt, value: 3}]}\n"
        "steps: [{id: a, wait: 1d}]\n",
        [
            "trigger.where[0].op: unknown operator 'gtt' (one of eq, ne, in, not_in, gt, gte, lt, "
            "lte, exists, not_exists, contains, starts_with) (j.yaml:3)"
        ],
    ),
    (
        "kind: Journey\nname: j\ntrigger: {event: A, where: [{all: []}]}\nsteps: [{id: a, wait: "
        "1d}]\n",
        ["trigger.where[0].all: expected a non-empty list of conditions (j.yaml:3)"],
    ),
    (
        "kind: Journey\nname: j\ntrigger: {event: A, where: [{property: profile., op: exists}]}\n"
        "steps: [{id: a, wait: 1d}]\n",
        ['trigger.where[0].property: "profile." is not a property path (j.yaml:3)'],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps: [{id: a, send: {channel: email, destination: "
        "braze}}]\n",
        ["steps[0].send: a send names exactly one of channel or destination (j.yaml:4)"],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nentry: {start_at: 2026-02-01, end_at: 2026-01-01}\n"
        "steps: [{id: a, wait: 1d}]\n",
        ["entry.end_at: must be after start_at (j.yaml:4)"],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nentry: {repeat: sometimes}\nsteps: [{id: a, wait: 1d}]"
        "\n",
        [
            'entry.repeat: expected "always", "once" or {after: <duration>}, got \'sometimes\' '
            "(j.yaml:4)"
        ],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\ngoal: {event: B, target: 150%}\nsteps: [{id: a, wait: "
        "1d}]\n",
        ["goal.target: '150%' is not a percentage between 0% and 100% (j.yaml:4)"],
    ),
    (
        "kind: Journey\nname: j\ntrigger: A\nsteps:\n  - id: w\n    wait_for: {event: "
        "Email Opened, of: s, within: 1d}\n  - {id: s, send: {channel: email, template: t, "
        "to: profile.email}}\n",
        ['steps[0].wait_for.of: "s" is not an earlier send step on this path (j.yaml:6)'],
    ),
    (
        "kind: Journey\nname: a\nname: b\ntrigger: A\nsteps: [{id: a, wait: 1d}]\n",
        ["name: duplicate key (j.yaml:3)"],
    ),
    (
        "kind: Channel\nname: email\nprovider: smtp\ncredentials:\n  password: hunter2\n",
        [
            "credentials.password: a literal secret is not allowed; use {env: VAR} or "
            "{file: /path} (j.yaml:5)"
        ],
    ),
    (
        "kind: Destination\nname: braze\nprovider: braze\noptions: {api_key: abc}\n",
        [
            "options.api_key: looks like a secret: put it under credentials as {env: VAR} or "
            "{file: /path} (j.yaml:4)"
        ],
    ),
    (
        "kind: Channel\nname: hooks\ntype: webhook\nprovider: webhook\noptions:\n"
        "  allow_networks: [10.0.0.0/8, 127.0.0.1/33, intranet]\n",
        [
            "options.allow_networks[1]: '127.0.0.1/33' is not a network like 10.0.0.0/8 or "
            "fd00::/8 (j.yaml:6)",
            "options.allow_networks[2]: 'intranet' is not a network like 10.0.0.0/8 or "
            "fd00::/8 (j.yaml:6)",
        ],
    ),
    (
        "kind: Channel\nname: mail\ntype: email\nprovider: smtp\noptions:\n  tracking:\n"
        "    link_hosts: [shop.example, '*.shop.example', 'https://x.example', 'a@b.example']\n",
        [
            "options.tracking.link_hosts[2]: 'https://x.example' is not a host like shop.example "
            "or *.shop.example (no scheme, path, port or user) (j.yaml:7)",
            "options.tracking.link_hosts[3]: 'a@b.example' is not a host like shop.example "
            "or *.shop.example (no scheme, path, port or user) (j.yaml:7)",
        ],
    ),
    (
        "kind: Channel\nname: hooks\ntype: webhook\nprovider: webhook\n"
        "options: {allow_networks: 10.0.0.0/8}\n",
        ["options.allow_networks: expected a list of networks like 10.0.0.0/8 (j.yaml:5)"],
    ),
    (
        "kind: Channel\nname: mail\nprovider: smtp\n",
        ["type: required but missing (one of email, sms, push, webhook) (j.yaml:1)"],
    ),
    (
        "kind: Template\nname: t\nchannel: email\nsubject: Hi\n",
        ["html: an email template needs html, text or both (j.yaml:1)"],
    ),
    (
        "kind: Template\nname: t\nchannel: sms\nbody: hi\nsubject: nope\n",
        ["subject: unknown key (j.yaml:5)"],
    ),
    (
        "kind: Trigger\nname: t\nevent: E\nproperties:\n  a: strin\n  b: {type: number, required: "
        "yes}\n",
        [
            "properties.a.type: 'strin' is not a property type (one of string, number, integer, "
            "boolean, object, array, datetime) (j.yaml:5)",
            "properties.b.required: expected true or false, got a string (j.yaml:6)",
        ],
    ),
    (
        "kind: Journey\nname: [unclosed\n",
        [
            "not valid YAML/JSON: expected ',' or ']', but got "
            "'<stream end>' (while parsing a flow sequence) (j.yaml:3)"
        ],
    ),
    ("- a\n- b\n", ["a document must be a mapping with a kind, got a list (j.yaml:1)"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[e[0] for e in BAD])
def test_a_malformed_document_gets_every_problem_with_path_and_line(
    text: str, expected: list[str]
) -> None:
    result = parse_text(text, "j.yaml")
    assert [str(p) for p in result.problems] == expected
    assert result.documents == []


def test_every_problem_of_a_document_is_reported_not_just_the_first() -> None:
    text = (
        ARCHITECTURE_EXAMPLE.replace("within: 1d", "within: 1x")
        .replace("wait: 1d", "wait: forever")
        .replace("op: gt", "op: bigger")
    )
    problems = [str(p) for p in parse_text(text, "journeys/cart.yaml").problems]
    assert problems == [
        "trigger.where[0].op: unknown operator 'bigger' (one of eq, ne, in, not_in, gt, gte, "
        "lt, lte, exists, not_exists, contains, starts_with) (journeys/cart.yaml:7)",
        'steps[1].wait_for.within: "1x" is not a duration (journeys/cart.yaml:19)',
        'steps[1].wait_for.timed_out[1].wait: "forever" is not a duration (journeys/cart.yaml:24)',
    ]


def test_good_documents_are_kept_when_another_in_the_same_file_is_bad() -> None:
    text = ARCHITECTURE_EXAMPLE + "---\nkind: Template\nname: t\nchannel: fax\n"
    result = parse_text(text, "all.yaml")
    assert [d.name for d in result.documents] == ["abandoned-cart"]
    assert [str(p) for p in result.problems] == [
        "channel: 'fax' is not a channel (one of email, sms, push, webhook) (all.yaml:30)"
    ]


def test_a_name_defined_twice_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ARCHITECTURE_EXAMPLE)
    (tmp_path / "b.yaml").write_text(ARCHITECTURE_EXAMPLE)
    result = load_documents([tmp_path])
    assert [str(p) for p in result.problems] == [
        f"name: Journey 'abandoned-cart' is defined twice (first at {tmp_path}/a.yaml:1) "
        f"({tmp_path}/b.yaml:1)"
    ]


def test_json_documents_load_and_a_missing_path_is_reported(tmp_path: Path) -> None:
    doc = {"kind": "Trigger", "name": "t", "event": "Signed Up", "properties": {"plan": "string"}}
    (tmp_path / "t.json").write_text(json.dumps([doc]))
    result = load_documents([tmp_path / "t.json", tmp_path / "nope.yaml"])
    assert [d.name for d in result.documents] == ["t"]
    assert [str(p) for p in result.problems] == [
        f"no such file or directory ({tmp_path}/nope.yaml)"
    ]


def test_times_of_day_and_yes_stay_strings_as_in_yaml_1_2() -> None:
    text = "kind: Journey\nname: j\ntrigger: A\nsteps: [{id: a, wait: {until_time: 09:00}}]\n"
    (journey,) = parse_text(text, "j.yaml").documents
    assert isinstance(journey, Journey)
    assert journey.steps == (WaitStep(id="a", wait=Wait(until_time="09:00")),)


def test_parse_document_raises_with_every_problem() -> None:
    with pytest.raises(DocumentError) as info:
        parse_document(
            {
                "kind": "Journey",
                "name": "j",
                "trigger": "A",
                "entry": {"repeat": {"after": "soon"}},
                "steps": "none",
            }
        )
    assert [str(p) for p in info.value.problems] == [
        'entry.repeat.after: "soon" is not a duration',
        "steps: expected a list, got a string",
    ]


def test_repeat_after_and_iso_durations_read_into_the_model() -> None:
    doc = parse_document(
        {
            "kind": "Journey",
            "name": "j",
            "trigger": "A",
            "entry": {"repeat": {"after": "P7D"}},
            "steps": [{"id": "a", "wait": "PT2H"}],
        }
    )
    assert isinstance(doc, Journey)
    assert isinstance(doc.entry.repeat, RepeatAfter)
    assert doc.entry.repeat.after.days == 7


def test_json_documents_get_lines_too(tmp_path: Path) -> None:
    text = (
        '[\n  {"kind": "Trigger", "name": "t", "event": "E"},\n  {"kind": "Trigger",\n'
        '   "name": "u", "event": "F", "properties": {"x": "strng"}}\n]\n'
    )
    (tmp_path / "t.json").write_text(text)
    result = load_documents([tmp_path / "t.json"])
    assert [d.name for d in result.documents] == ["t"]
    assert [str(p) for p in result.problems] == [
        "properties.x.type: 'strng' is not a property type (one of string, number, integer, "
        f"boolean, object, array, datetime) ({tmp_path}/t.json:4)"
    ]
