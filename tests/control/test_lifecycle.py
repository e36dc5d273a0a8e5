"""Apply, publish, versions: the journey lifecycle through the admin API, stored in PostgreSQL."""

from __future__ import annotations

import json

import asyncpg
import pytest

from cairn_journey.documents import parse_document, parse_text
from tests.control.conftest import EXAMPLES, Admin

TEMPLATE_SMS = """\
kind: Template
name: hello-sms
channel: sms
body: "Hello {{ profile.first_name }}"
"""

JOURNEY = """\
kind: Journey
name: welcome
trigger:
  event: Signed Up
steps:
  - id: hello
    send: {channel: sms, template: hello-sms, to: profile.phone}
  - id: pause
    wait: 1d
"""

CHANNEL_SMS = """\
kind: Channel
name: sms
provider: twilio
credentials:
  auth_token: {env: TWILIO_AUTH_TOKEN}
"""


def documents(journey: str = JOURNEY) -> str:
    """The template, the journey (starting on line 6), then the channel."""
    return TEMPLATE_SMS + "---\n" + journey + "---\n" + CHANNEL_SMS


async def test_example_journeys_apply_and_publish_through_the_api(admin: Admin) -> None:
    status, body = await admin.apply_files(EXAMPLES)
    assert status == 200, body
    assert body["warnings"] == []
    applied = {(a["kind"], a["name"]): a["outcome"] for a in body["applied"]}
    assert applied[("Journey", "abandoned-cart")] == "created"
    assert applied[("Journey", "application-reminders")] == "created"
    assert set(applied.values()) == {"created"}
    await admin.ready_all_templates()

    for name in ("abandoned-cart", "application-reminders"):
        status, body = await admin.call("POST", f"/v1/journeys/{name}/publish")
        assert status == 200, body
        assert (body["version"], body["outcome"]) == (1, "published")

    status, body = await admin.call("GET", "/v1/journeys")
    assert status == 200
    states = {j["name"]: (j["state"], j["live_version"]) for j in body["journeys"]}
    assert states == {"abandoned-cart": ("live", 1), "application-reminders": ("live", 1)}


async def test_apply_reports_created_updated_and_unchanged(admin: Admin) -> None:
    status, body = await admin.apply_text(documents())
    assert status == 200, body
    assert [a["outcome"] for a in body["applied"]] == ["created", "created", "created"]

    changed = JOURNEY.replace("wait: 1d", "wait: 2d")
    # Same content written differently (flow style, reordered keys) is unchanged.
    same_template = (
        'kind: Template\nbody: "Hello {{ profile.first_name }}"\nchannel: sms\nname: hello-sms\n'
    )
    status, body = await admin.apply_text(same_template + "---\n" + changed + "---\n" + CHANNEL_SMS)
    assert status == 200, body
    outcomes = {a["name"]: a["outcome"] for a in body["applied"]}
    assert outcomes == {"hello-sms": "unchanged", "welcome": "updated", "sms": "unchanged"}


async def test_apply_with_problems_lists_each_with_path_and_line_and_stores_nothing(
    admin: Admin,
) -> None:
    bad = JOURNEY.replace("wait: 1d", "wait: 1x")
    status, body = await admin.apply_text(documents(bad), source="journeys/welcome.yaml")
    assert status == 422, body
    assert body["code"] == "invalid"
    problem = next(p for p in body["problems"] if "1x" in p["message"])
    assert problem["path"].startswith("steps[1].wait")
    assert problem["source"] == "journeys/welcome.yaml"
    assert problem["line"] == 5 + 9  # the template's 4 lines and '---', then line 9 of JOURNEY
    stored = await admin.pool.fetchval("SELECT count(*) FROM resources")
    assert stored == 0, "an apply with problems must change nothing"


async def test_publish_refuses_a_template_that_is_not_ready(admin: Admin) -> None:
    await admin.apply_text(documents(), source="welcome.yaml")
    status, body = await admin.call("POST", "/v1/journeys/welcome/publish")
    assert status == 422, body
    problem = next(p for p in body["problems"] if "hello-sms" in p["message"])
    assert problem["path"].startswith("steps[0].send")
    assert (problem["source"], problem["line"]) == ("welcome.yaml", 5 + 7)
    assert "ready" in problem["message"]
    assert await admin.pool.fetchval("SELECT count(*) FROM journey_versions") == 0

    status, _ = await admin.call("POST", "/v1/templates/hello-sms/ready")
    assert status == 200
    status, body = await admin.call("POST", "/v1/journeys/welcome/publish")
    assert status == 200, body


BROKEN = """\
kind: Journey
name: broken
trigger:
  event: Signed Up
steps:
  - id: hello
    send: {channel: sms, template: no-such-template, to: profile.phone}
  - id: sync
    send: {destination: no-such-destination}
"""


async def test_publish_refuses_unknown_template_and_unknown_destination(admin: Admin) -> None:
    status, body = await admin.apply_text(BROKEN, source="broken.yaml")
    assert status == 200, body  # a draft may be applied before what it uses...
    warned = {p["message"] for p in body["warnings"]}  # ...and apply says what is missing
    assert any("no-such-template" in m for m in warned), warned
    assert any("no-such-destination" in m for m in warned), warned
    status, body = await admin.call("POST", "/v1/journeys/broken/publish")
    assert status == 422, body
    template = next(p for p in body["problems"] if "no-such-template" in p["message"])
    assert template["path"].startswith("steps[0].send")
    assert (template["source"], template["line"]) == ("broken.yaml", 7)
    destination = next(p for p in body["problems"] if "no-such-destination" in p["message"])
    assert destination["path"].startswith("steps[1].send")
    assert (destination["source"], destination["line"]) == ("broken.yaml", 9)


async def test_apply_refuses_a_wait_for_of_a_step_that_is_not_an_earlier_send(
    admin: Admin,
) -> None:
    journey = BROKEN.replace(
        "  - id: sync\n    send: {destination: no-such-destination}\n",
        "  - id: opened\n    wait_for:\n      event: Email Opened\n      of: no-such-step\n"
        "      within: 1d\n",
    )
    status, body = await admin.apply_text(journey, source="broken.yaml")
    assert status == 422, body
    [problem] = body["problems"]
    assert problem["path"] == "steps[1].wait_for.of"
    assert "no-such-step" in problem["message"]
    assert (problem["source"], problem["line"]) == ("broken.yaml", 11)


async def test_republishing_freezes_version_n_plus_1_and_leaves_older_versions_and_instances(
    admin: Admin,
) -> None:
    await admin.apply_text(documents())
    await admin.ready_all_templates()
    status, v1 = await admin.call("POST", "/v1/journeys/welcome/publish")
    assert (status, v1["version"]) == (200, 1)
    # An instance started on v1 (as the matcher records it).
    await admin.pool.execute(
        "INSERT INTO journey_instances (instance_id, journey, version, profile_id, status, "
        "started_at) VALUES ('i1', 'welcome', 1, 'p1', 'active', now())"
    )
    _, before = await admin.call("GET", "/v1/journeys/welcome/versions/1")

    await admin.apply_text(documents(JOURNEY.replace("wait: 1d", "wait: 3d")))
    status, v2 = await admin.call("POST", "/v1/journeys/welcome/publish")
    assert (status, v2["version"], v2["outcome"]) == (200, 2, "published")

    _, after = await admin.call("GET", "/v1/journeys/welcome/versions/1")
    assert after["definition"] == before["definition"]
    assert after["checksum"] == before["checksum"] != v2["checksum"]
    assert after["live"] is False
    _, current = await admin.call("GET", "/v1/journeys/welcome/versions/2")
    assert current["live"] is True
    assert current["definition"]["steps"][1]["wait"] != before["definition"]["steps"][1]["wait"]
    instance_version = await admin.pool.fetchval(
        "SELECT version FROM journey_instances WHERE instance_id = 'i1'"
    )
    assert instance_version == 1, "a running instance keeps the version it started on"
    _, versions = await admin.call("GET", "/v1/journeys/welcome/versions")
    assert [(v["version"], v["live"], v["active_instances"]) for v in versions["versions"]] == [
        (1, False, 1),
        (2, True, 0),
    ]
    with pytest.raises(asyncpg.RaiseError, match="immutable"):
        await admin.pool.execute(
            "UPDATE journey_versions SET definition = '{}' WHERE journey = 'welcome'"
        )


async def test_a_version_sends_the_templates_it_was_published_with(admin: Admin) -> None:
    await admin.apply_text(documents())
    await admin.ready_all_templates()
    status, v1 = await admin.call("POST", "/v1/journeys/welcome/publish")
    assert (status, v1["version"]) == (200, 1)
    frozen = json.loads(
        await admin.pool.fetchval("SELECT templates FROM journey_versions WHERE version = 1")
    )
    assert frozen["hello-sms"]["body"] == "Hello {{ profile.first_name }}"

    # Editing the template leaves v1 as published; publishing again freezes v2 with the edit.
    edited = TEMPLATE_SMS.replace("Hello", "Hi there")
    status, body = await admin.apply_text(edited + "---\n" + JOURNEY + "---\n" + CHANNEL_SMS)
    assert status == 200, body
    frozen = json.loads(
        await admin.pool.fetchval("SELECT templates FROM journey_versions WHERE version = 1")
    )
    assert frozen["hello-sms"]["body"] == "Hello {{ profile.first_name }}"
    status, v2 = await admin.call("POST", "/v1/journeys/welcome/publish")
    assert (status, v2["version"], v2["outcome"]) == (200, 2, "published"), v2
    frozen = json.loads(
        await admin.pool.fetchval("SELECT templates FROM journey_versions WHERE version = 2")
    )
    assert frozen["hello-sms"]["body"] == "Hi there {{ profile.first_name }}"


async def test_publishing_an_unchanged_draft_again_is_a_no_op_that_says_so(admin: Admin) -> None:
    await admin.apply_text(documents())
    await admin.ready_all_templates()
    await admin.call("POST", "/v1/journeys/welcome/publish")
    status, body = await admin.call("POST", "/v1/journeys/welcome/publish")
    assert status == 200, body
    assert (body["version"], body["outcome"]) == (1, "unchanged")
    assert "unchanged" in body["message"]
    assert await admin.pool.fetchval("SELECT count(*) FROM journey_versions") == 1


async def test_publish_notifies_matchers_to_reload(admin: Admin) -> None:
    await admin.apply_text(documents())
    await admin.ready_all_templates()
    heard: list[str] = []
    conn = await asyncpg.connect(admin.database_url)
    try:
        await conn.add_listener("cairn_journeys", lambda *args: heard.append(args[3]))
        await admin.call("POST", "/v1/journeys/welcome/publish")
        await conn.execute("SELECT 1")  # a round trip delivers pending notifications
    finally:
        await conn.close()
    assert [json.loads(p) for p in heard] == [
        {"journey": "welcome", "action": "publish", "version": 1}
    ]


async def test_a_template_a_live_journey_sends_cannot_go_back_to_draft(admin: Admin) -> None:
    await admin.apply_text(documents())
    await admin.ready_all_templates()
    await admin.call("POST", "/v1/journeys/welcome/publish")
    status, body = await admin.call("POST", "/v1/templates/hello-sms/draft")
    assert status == 409, body
    assert "welcome" in body["message"]
    _, listed = await admin.call("GET", "/v1/templates")
    assert [(t["name"], t["status"], t["used_by"]) for t in listed["templates"]] == [
        ("hello-sms", "ready", ["welcome"])
    ]


async def test_unknown_journey_is_a_404_with_a_json_error(admin: Admin) -> None:
    status, body = await admin.call("POST", "/v1/journeys/nope/publish")
    assert status == 404
    assert body["code"] == "not_found"
    assert "nope" in body["message"]


async def test_a_published_definition_loads_back_as_the_journey_that_was_applied(
    admin: Admin,
) -> None:
    """The matcher builds its catalogue with ``parse_document(definition)``: the frozen
    definition must give back exactly the journey the operator applied."""
    await admin.apply_files(EXAMPLES)
    await admin.ready_all_templates()
    await admin.call("POST", "/v1/journeys/abandoned-cart/publish")
    stored = await admin.pool.fetchval(
        "SELECT definition::text FROM journey_versions WHERE journey = 'abandoned-cart'"
    )
    path = EXAMPLES / "journeys" / "abandoned-cart.yaml"
    [applied] = parse_text(path.read_text(), str(path)).documents
    assert parse_document(json.loads(stored)) == applied


async def test_a_dry_run_publish_checks_and_stores_nothing(admin: Admin) -> None:
    await admin.apply_text(documents(), source="welcome.yaml")
    status, body = await admin.call("POST", "/v1/journeys/welcome/publish?dry_run=true")
    assert status == 422, body  # the template is still a draft: same refusal as a real publish
    await admin.ready_all_templates()
    status, body = await admin.call("POST", "/v1/journeys/welcome/publish?dry_run=true")
    assert status == 200, body
    assert (body["dry_run"], body["outcome"], body["version"]) == (True, "published", 1)
    assert await admin.pool.fetchval("SELECT count(*) FROM journey_versions") == 0
    state = await admin.pool.fetchval("SELECT state FROM journeys WHERE name = 'welcome'")
    assert state == "draft"
